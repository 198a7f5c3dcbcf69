"""``label_smoothing``: cross-entropy's own, so the trained model stops short of certainty."""

from cxr_estimators import CXRClassifier


def test_label_smoothing_reaches_the_criterion_and_caps_confidence(toy_binary,
                                                                   small_clf_params):
    X, y = toy_binary
    params = {**small_clf_params, "max_epochs": 15, "validation_fraction": 0,
              "early_stopping": None, "dropout": 0.0}
    plain = CXRClassifier(**params).fit(X, y)
    smooth = CXRClassifier(**params, label_smoothing=0.5).fit(X, y)
    assert smooth.net_.criterion_.label_smoothing == 0.5
    assert plain.net_.criterion_.label_smoothing == 0.0
    assert (plain.predict(X) == y).mean() == 1 and (smooth.predict(X) == y).mean() == 1
    # with smoothing 0.5 the loss is lowest at p = 1 - 0.5 / 2 = 0.75 for the true class
    assert plain.predict_proba(X).max(axis=1).mean() > 0.95
    assert smooth.predict_proba(X).max(axis=1).max() < 0.85
