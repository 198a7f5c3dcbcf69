"""Bad input to CXRClassifier.fit: exception type and a message fragment per case, and a
previously fitted model left exactly as it was when such a fit fails."""

import numpy as np
import pytest
import torch

from cxr_estimators import CXRClassifier

from conftest import _toy_images

X, Y = _toy_images(n=32)
XV, YV = _toy_images(n=12, seed=1)

#: (id, estimator params, fit kwargs, message fragment)
BAD_FITS = [
    ("X_val without y_val", {}, {"X_val": XV}, "X_val was given without y_val"),
    ("y_val without X_val", {}, {"y_val": YV}, "y_val was given without X_val"),
    ("X_val of another image shape", {}, {"X_val": XV[:, :, :8], "y_val": YV},
     r"X_val has images of shape \(1, 8, 16\) but X has \(1, 16, 16\)"),
    ("y_val with an unseen label", {}, {"X_val": XV, "y_val": np.r_[YV[:-1], ["covid"]]},
     r"y_val has labels \['covid'\] not in y's classes"),
    ("y_val of another length", {}, {"X_val": XV, "y_val": YV[:-1]},
     "X_val has 12 images but y_val has 11 labels"),
    ("unknown monitor", {"early_stopping": {"patience": 3, "monitor": "auc"}}, {},
     r"monitor='auc' is not one of .*did you mean 'roc_auc'"),
    ("negative min_delta", {"early_stopping": {"patience": 3, "min_delta": -0.1}}, {},
     "min_delta must be a number >= 0; got -0.1"),
    ("unknown early_stopping key", {"early_stopping": {"patience": 3, "monitr": "f1"}}, {},
     "unknown key 'monitr'.*did you mean 'monitor'"),
    ("early_stopping without patience", {"early_stopping": {"monitor": "f1"}}, {},
     "needs a 'patience'"),
    ("f1 on string labels without pos_label", {"early_stopping": {"patience": 3,
                                                                  "monitor": "f1"}}, {},
     r"monitor='f1' needs a positive class: y's classes are \['normal', 'pneumonia'\]"),
    ("pos_label not a class", {"early_stopping": {"patience": 3, "monitor": "f1",
                                                   "pos_label": "covid"}}, {},
     "pos_label='covid' is not one of y's classes"),
    # label smoothing, LR schedules, weight averaging (issue #14)
    ("label_smoothing 1", {"label_smoothing": 1.0}, {}, r"'label_smoothing'.*Got 1.0"),
    ("negative label_smoothing", {"label_smoothing": -0.1}, {},
     r"'label_smoothing'.*\[0.0, 1.0\).*Got -0.1"),
    ("unknown schedule", {"lr_schedule": "cosin"}, {},
     r"lr_schedule='cosin' is not a known schedule.*did you mean 'cosine'"),
    ("unknown schedule policy", {"lr_schedule": {"policy": "one_cycle"}}, {},
     r"'one_cycle' is not a known schedule.*did you mean 'onecycle'"),
    ("unknown schedule argument", {"lr_schedule": {"policy": "cosine", "warmup": 1}}, {},
     r"'cosine' has no argument 'warmup'.*did you mean 'warmup_epochs'"),
    ("schedule argument set by the package", {"lr_schedule": {"policy": "onecycle",
                                                              "max_lr": 1}}, {},
     r"'onecycle' has no argument 'max_lr'"),
    ("unknown plateau argument", {"lr_schedule": {"pateince": 2}}, {},
     r"'plateau' has no argument 'pateince'.*did you mean 'patience'"),
    ("warm-up as long as training", {"lr_schedule": {"policy": "cosine",
                                                     "warmup_epochs": 3}, "max_epochs": 3},
     {}, r"warmup_epochs=3 must be >= 0 and below max_epochs=3"),
    ("ema with one epoch", {"average_weights": "ema"}, {},
     r"average_weights='ema' averages weights across epochs and needs max_epochs >= 2; "
     r"got max_epochs=1"),
    ("swa with one epoch", {"average_weights": "swa"}, {},
     r"average_weights='swa' .*got max_epochs=1"),
    ("unknown averaging", {"average_weights": "mean"}, {},
     r"'average_weights' parameter .* Got 'mean'"),
    ("unknown averaging method", {"average_weights": {"method": "polyak"}}, {},
     r"method 'polyak' is not one of \['ema', 'swa'\]"),
    ("ema decay 1", {"average_weights": {"method": "ema", "decay": 1.0}, "max_epochs": 3},
     {}, r"decay=1.0 must be in \(0, 1\)"),
    ("ema with an swa option", {"average_weights": {"method": "ema", "start": 2}}, {},
     r"'ema' has no option \['start'\]"),
    ("swa start after training", {"average_weights": {"method": "swa", "start": 4},
                                  "max_epochs": 3}, {},
     r"start=4 must be .* an epoch number in \[1, 3\]"),
]  # bad tta (read at predict time too): tests/test_tta.py


@pytest.mark.parametrize("params, fit_kwargs, match",
                         [case[1:] for case in BAD_FITS], ids=[case[0] for case in BAD_FITS])
def test_bad_fit_input_raises_and_keeps_fitted_model(params, fit_kwargs, match,
                                                     small_clf_params):
    clf = CXRClassifier(**{**small_clf_params, "max_epochs": 1}).fit(X, Y)
    before = {"proba": clf.predict_proba(X), "net": clf.net_, "classes": clf.classes_,
              "best_epoch": clf.best_epoch_,
              "state": {k: v.clone() for k, v in clf.module_.state_dict().items()}}
    clf.set_params(**params)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, Y, **fit_kwargs)
    assert clf.net_ is before["net"] and clf.classes_ is before["classes"]
    assert clf.best_epoch_ == before["best_epoch"]
    for k, v in clf.module_.state_dict().items():
        assert torch.equal(v, before["state"][k]), k
    np.testing.assert_array_equal(clf.predict_proba(X), before["proba"])
