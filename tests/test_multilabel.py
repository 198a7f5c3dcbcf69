"""CXRClassifier on multilabel targets (n, k): one network, k sigmoid outputs, NaN labels
masked out of the loss, uncertain-label policies, per-finding weights, thresholds,
early stopping on the per-finding AUC, and everything around it (Pipeline, search,
save/load, Grad-CAM, TTA, the frozen-feature cache). Bad input: tests/test_multilabel_errors.py."""

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.multioutput import MultiOutputClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from cxr_estimators import CXRClassifier, load, save
from cxr_estimators._targets import MaskedBCEWithLogitsLoss, stratification_key
from cxr_estimators.evaluation import grouped_cv
from cxr_estimators.explain import grad_cam
from cxr_estimators.metrics import clinical_scorers

FINDINGS = ["Atelectasis", "Effusion", "Edema"]


def planted(n=96, seed=0, missing=0.2):
    """Images whose findings are bright squares in three corners; NaN labels sprinkled."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, size=(n, 1, 16, 16)).astype(np.float32)
    Y = (rng.random((n, 3)) < [0.4, 0.3, 0.5]).astype(np.float32)
    for j, (r, c) in enumerate([(1, 1), (1, 10), (10, 1)]):
        X[Y[:, j] == 1, 0, r:r + 5, c:c + 5] += 1.5
    Y[rng.random((n, 3)) < missing] = np.nan
    return X, pd.DataFrame(Y, columns=FINDINGS)


def small(**params):
    return CXRClassifier(**{"backbone": "simple_cnn", "max_epochs": 2, "random_state": 0,
                            "batch_size": 16, "early_stopping": None, **params})


@pytest.fixture(scope="module")
def fitted():
    X, Y = planted()
    clf = small(max_epochs=12, lr=3e-3, validation_fraction=0.2,
                early_stopping={"patience": 12, "monitor": "roc_auc"}).fit(X, Y)
    return clf, X, Y


def test_one_network_k_outputs(fitted):
    clf, X, Y = fitted
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.all((proba >= 0) & (proba <= 1))
    assert not np.allclose(proba.sum(axis=1), 1)  # independent sigmoids, not a softmax
    assert clf.classes_.tolist() == [0, 1, 2] and clf.findings_.tolist() == FINDINGS
    assert clf.module_.head(torch.zeros(1, clf.module_.head[0].in_features)).shape[1] == 3
    pred = clf.predict(X)
    assert pred.shape == (len(X), 3) and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba >= 0.5).astype(int))


def test_learns_planted_findings_and_monitors_auc(fitted):
    clf, X, Y = fitted
    history = clf.history_
    assert "valid_roc_auc" in history[-1] and history[-1]["valid_roc_auc_skipped"] == []
    assert 1 <= clf.best_epoch_ <= 12
    best = max(history[:, "valid_roc_auc"])
    assert history[clf.best_epoch_ - 1, "valid_roc_auc"] == best
    Xt, Yt = planted(64, seed=5, missing=0)
    from sklearn.metrics import roc_auc_score
    aucs = [roc_auc_score(Yt.iloc[:, j], clf.predict_proba(Xt)[:, j]) for j in range(3)]
    assert min(aucs) > 0.8, aucs


def test_thresholds_set_predict(fitted):
    clf, X, _ = fitted
    proba = clf.predict_proba(X)
    clf.set_params(thresholds={"Effusion": 0.9})
    try:
        pred = clf.predict(X)
        np.testing.assert_array_equal(pred[:, 1], proba[:, 1] >= 0.9)
        np.testing.assert_array_equal(pred[:, 0], proba[:, 0] >= 0.5)
        clf.set_params(thresholds=[0.1, 0.2, 0.3])
        np.testing.assert_array_equal(clf.predict(X), proba >= [0.1, 0.2, 0.3])
    finally:
        clf.set_params(thresholds=None)


def test_decision_function_is_logit(fitted):
    clf, X, _ = fitted
    np.testing.assert_allclose(1 / (1 + np.exp(-clf.decision_function(X[:5]))),
                               clf.predict_proba(X[:5]), atol=1e-6)


def test_masked_loss_ignores_nan_and_weights():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    target = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    loss = MaskedBCEWithLogitsLoss()(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(logits[[0, 1, 1], [0, 0, 1]], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.isclose(loss, expected)
    w = torch.tensor([3.0, 1.0])
    weighted = MaskedBCEWithLogitsLoss()(logits, target, w)
    terms = bce(logits[[0, 1, 1], [0, 0, 1]], torch.tensor([1.0, 0.0, 1.0]),
                reduction="none")
    assert torch.isclose(weighted, (terms * torch.tensor([3.0, 1, 1])).sum() / 5)
    pos = MaskedBCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0]))(logits, target)
    assert pos > loss  # the positive of finding 0 counts twice


def test_nan_labels_train_without_nan_leaking():
    """NaN labels train (no NaN in the loss or the weights) and are not zeros: the fit
    differs from one where they were filled with 0."""
    X, Y = planted(48, missing=0.4)
    clf = small(validation_fraction=0).fit(X, Y)
    a = clf.predict_proba(X)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(clf.history_[:, "train_loss"]))
    c = small(validation_fraction=0).fit(X, Y.fillna(0)).predict_proba(X)
    assert not np.allclose(a, c, atol=1e-4)


def test_uncertain_policies_and_balanced_weights():
    X, Y = planted(48)
    Yu = Y.copy()
    Yu.iloc[:6, 2] = -1
    ones = small(validation_fraction=0, uncertain={"Edema": "ones"}).fit(X, Yu)
    Yo = Yu.copy()
    Yo.iloc[:6, 2] = 1
    same = small(validation_fraction=0).fit(X, Yo)
    np.testing.assert_allclose(ones.predict_proba(X), same.predict_proba(X), atol=1e-6)
    ignore = small(validation_fraction=0, uncertain="ignore").fit(X, Yu)
    Yn = Yu.copy()
    Yn.iloc[:6, 2] = np.nan
    nan = small(validation_fraction=0).fit(X, Yn)
    np.testing.assert_allclose(ignore.predict_proba(X), nan.predict_proba(X), atol=1e-6)
    balanced = small(validation_fraction=0, class_weight="balanced").fit(X, Y)
    weight = balanced.net_.criterion_.pos_weight.cpu().numpy()
    labelled = Y.to_numpy()
    expected = np.nansum(labelled == 0, 0) / np.nansum(labelled == 1, 0)
    np.testing.assert_allclose(weight, expected, rtol=1e-6)


def test_sample_weight_zero_is_dropping_the_image():
    X, Y = planted(48)
    w = np.ones(48)
    w[:8] = 0
    a = small(validation_fraction=0).fit(X, Y, sample_weight=w).predict_proba(X)
    Yd = Y.copy()
    Yd.iloc[:8] = np.nan  # same images, no label: nothing of them reaches the loss
    b = small(validation_fraction=0).fit(X, Yd).predict_proba(X)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_named_finding_monitor_and_x_val():
    X, Y = planted(64)
    Xv, Yv = planted(32, seed=3)
    Yv["Edema"] = np.nan  # no class in validation: skipped, reported
    clf = small(max_epochs=3, early_stopping={"patience": 3, "monitor": "roc_auc",
                                              "finding": "Effusion"}).fit(
        X, Y, X_val=Xv, y_val=Yv)
    assert clf.history_[-1]["valid_roc_auc_skipped"] == ["Edema"]
    from sklearn.metrics import roc_auc_score
    labelled = ~Yv["Effusion"].isna()
    # the last epoch's weights are not necessarily kept; refit to the last epoch
    last = small(max_epochs=3).fit(X, Y, X_val=Xv, y_val=Yv)
    assert last.history_[-1]["valid_roc_auc_skipped"] == ["Edema"]
    auc = roc_auc_score(Yv["Effusion"][labelled], last.predict_proba(Xv)[labelled, 1])
    mean = np.mean([roc_auc_score(Yv.iloc[:, j][~Yv.iloc[:, j].isna()],
                                  last.predict_proba(Xv)[~Yv.iloc[:, j].isna(), j])
                    for j in range(2)])
    assert last.history_[-1]["valid_roc_auc"] == pytest.approx(mean, abs=1e-6)
    assert 0 <= auc <= 1


def test_pipeline_search_cv_and_multioutput():
    X, Y = planted(60)
    groups = np.arange(60) // 2
    pipe = Pipeline([("id", FunctionTransformer()), ("clf", small(max_epochs=1))])
    search = GridSearchCV(pipe, {"clf__lr": [1e-3, 3e-3]}, cv=grouped_cv(3, random_state=0),
                          scoring=clinical_scorers(), refit="roc_auc").fit(X, Y, groups=groups)
    assert np.all(np.isfinite(search.cv_results_["mean_test_roc_auc"]))
    assert search.predict_proba(X).shape == (60, 3)
    scores = cross_validate(small(max_epochs=1), X, Y, groups=groups, cv=GroupKFold(3),
                            scoring=clinical_scorers(per_class=True))
    assert np.all(np.isfinite(scores["test_roc_auc_Effusion"]))
    multi = MultiOutputClassifier(pipe).fit(X, Y.fillna(0).astype(int))
    assert np.array(multi.predict_proba(X)).shape == (3, 60, 2)


def test_nan_targets_need_a_splitter_object():
    """sklearn's check_cv refuses NaN in y for an int cv: documented, and the splitter
    object is the way out."""
    X, Y = planted(30)
    with pytest.raises(ValueError, match="NaN|Input contains"):
        GridSearchCV(small(max_epochs=1), {"lr": [1e-3]}, cv=3,
                     scoring=clinical_scorers(), refit="roc_auc").fit(X, Y)


def test_grouped_cv_keeps_patients_and_stratifies_findings():
    X, Y = planted(90)
    groups = np.arange(90) // 3
    for train, test in grouped_cv(3, random_state=0).split(X, Y, groups):
        assert not set(groups[train]) & set(groups[test])
    key = stratification_key(Y.to_numpy())
    assert key.shape == (90,) and key.max() <= 3


def test_save_load_joblib_roundtrip(fitted, tmp_path):
    clf, X, _ = fitted
    clf.set_params(thresholds={"Edema": 0.3}, uncertain={"default": "ignore"})
    try:
        save(clf, tmp_path / "m.safetensors")
    finally:
        clf.set_params(thresholds=None, uncertain=None)
    loaded = load(tmp_path / "m.safetensors")
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert loaded.findings_.tolist() == FINDINGS
    assert loaded.thresholds == {"Edema": 0.3}
    np.testing.assert_array_equal(loaded.predict(X)[:, 2], clf.predict_proba(X)[:, 2] >= 0.3)
    joblib.dump(clf, tmp_path / "m.joblib")
    again = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))


def test_grad_cam_per_finding(fitted):
    clf, X, Y = fitted
    eff = grad_cam(clf, X[:8], target="Effusion", layer="trunk.features.1")
    ate = grad_cam(clf, X[:8], target="Atelectasis", layer="trunk.features.1")
    assert eff.shape == (8, 16, 16) and not np.allclose(eff, ate)
    with pytest.raises(ValueError, match="did you mean 'Effusion'"):
        grad_cam(clf, X[:2], target="Efusion", layer="trunk.features.1")
    # the shortcut check per finding: its heatmaps, scored as for one label
    from cxr_estimators.explain import attention_outside
    assert attention_outside(eff).shape == (8,)


def test_tta_and_cache_and_warm_start():
    X, Y = planted(48)
    clf = small(validation_fraction=0, tta=2).fit(X, Y)
    proba = clf.predict_proba(X)
    assert proba.shape == (48, 3) and np.all((proba > 0) & (proba < 1))
    cached = small(validation_fraction=0, freeze=True, cache=True).fit(X, Y)
    assert cached._uses_cache  # the head alone ran on cached features: same as the model
    np.testing.assert_allclose(cached.predict_proba(X), cached._stream_proba(X), atol=1e-5)
    warm = small(validation_fraction=0, warm_start=True).fit(X, Y)
    first = warm.predict_proba(X)
    warm.fit(X, Y)
    assert len(warm.history_) == 2 and not np.allclose(first, warm.predict_proba(X))


def test_single_label_fit_unchanged():
    X, Y = planted(32)
    y = np.where(Y["Effusion"].fillna(0) == 1, "effusion", "normal")
    clf = small(max_epochs=1).fit(X, y)
    assert not hasattr(clf, "findings_")
    np.testing.assert_allclose(clf.predict_proba(X).sum(1), 1)
    assert "train_acc" in clf.history_[-1]




def test_uncertain_default_key():
    from cxr_estimators._targets import multilabel_targets
    Y = pd.DataFrame([[-1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], columns=FINDINGS)
    _, out = multilabel_targets(Y, {"Atelectasis": "ones", "default": "zeros"})
    np.testing.assert_array_equal(out, [[1, 0, 0], [1, 0, 0]])
    _, out = multilabel_targets(Y, {"Effusion": "ignore", "default": "ones"})
    np.testing.assert_array_equal(out, [[1, np.nan, 0], [1, 0, 1]])


def test_averaging_schedule_checkpoint(tmp_path):
    X, Y = planted(48)
    Xv, Yv = planted(24, seed=4)
    clf = small(max_epochs=3, average_weights="swa", lr_schedule="plateau",
                checkpoint_dir=str(tmp_path), early_stopping={"patience": 2,
                                                              "monitor": "roc_auc"})
    clf.fit(X, Y, X_val=Xv, y_val=Yv)
    assert (tmp_path / "params.pt").is_file()
    assert np.all(np.isfinite(clf.predict_proba(Xv)))
    ema = small(max_epochs=2, average_weights="ema", validation_fraction=0).fit(X, Y)
    assert ema.predict_proba(X).shape == (48, 3)
