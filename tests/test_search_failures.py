"""Searches that would otherwise end looking successful: scorers failing on every split
(NaN scores) and candidates that predict one class only."""

import warnings

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from cxr_estimators import CXRClassifier, OneClassWarning
from cxr_estimators.evaluation import best_epoch_scorer, retrain_on_all
from cxr_estimators.metrics import clinical_report, clinical_scorers


@pytest.fixture
def kaggle_names(toy_binary):
    """Labels as Kaggle's chest_xray folders name them."""
    X, y = toy_binary
    return X, np.where(y == "pneumonia", "PNEUMONIA", "NORMAL")


def _search(params, **kwargs):
    clf = CXRClassifier(**{**params, "max_epochs": 1})
    return GridSearchCV(clf, {"lr": [1e-2]}, cv=2, **kwargs)


def test_kaggle_folder_names_with_lowercase_pos_label_stop_the_search(kaggle_names,
                                                                      small_clf_params):
    """The README's search with error_score='raise': the first scoring error stops it,
    naming pos_label, the classes found and the one meant."""
    X, y = kaggle_names
    search = _search(small_clf_params, scoring=clinical_scorers(pos_label="pneumonia"),
                     refit="roc_auc", error_score="raise")
    with pytest.raises(ValueError, match=r"pos_label='pneumonia' is not one of the "
                       r"estimator's classes \['NORMAL', 'PNEUMONIA'\]; did you mean "
                       r"'PNEUMONIA'\?"):
        search.fit(X, y)


def test_nan_search_cannot_be_retrained(kaggle_names, small_clf_params):
    """sklearn's default error_score=np.nan turns each scorer error into a warning and a
    NaN score; retrain_on_all refuses to pick a winner among NaNs."""
    X, y = kaggle_names
    scoring = {**clinical_scorers(pos_label="pneumonia"), "best_epoch": best_epoch_scorer}
    search = _search(small_clf_params, scoring=scoring, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's "Scoring failed" tracebacks
        search.fit(X, y)
    assert np.isnan(search.cv_results_["mean_test_sensitivity"]).all()
    with pytest.raises(ValueError, match="mean_test_sensitivity is NaN.*error_score='raise'"):
        retrain_on_all(search, X, y, metric="sensitivity")


def test_clinical_report_suggests_the_label_meant(kaggle_names):
    _, y = kaggle_names
    with pytest.raises(ValueError, match="did you mean 'PNEUMONIA'"):
        clinical_report(y, np.full(len(y), 0.5), labels=["NORMAL", "PNEUMONIA"],
                        pos_label="pneumonia")


def _one_class_data(n=32):
    """Every image identical: any model predicts the same class for all of them."""
    X = np.full((n, 1, 16, 16), 0.5, dtype=np.float32)
    y = np.array(["normal", "pneumonia"] * (n // 2))
    return X, y


def test_a_one_class_model_is_named(small_clf_params):
    X, y = _one_class_data()
    clf = CXRClassifier(**small_clf_params, validation_fraction=0.25)
    with pytest.warns(OneClassWarning, match=r"single class \('(normal|pneumonia)'.*every "
                      r"validation image at each of its 3 epoch\(s\).*2 classes"):
        clf.fit(X, y)
    assert set(clf.history_[:, "valid_single_class"]) <= {0.0, 1.0}


def test_a_model_that_learns_is_not_warned(toy_binary, small_clf_params):
    X, y = toy_binary
    with warnings.catch_warnings():
        warnings.simplefilter("error", OneClassWarning)
        clf = CXRClassifier(**{**small_clf_params, "max_epochs": 6},
                            validation_fraction=0.25).fit(X, y)
    assert -1 in clf.history_[:, "valid_single_class"]


def test_retrain_on_all_names_a_one_class_winner(small_clf_params):
    X, y = _one_class_data()
    scoring = {**clinical_scorers(pos_label="pneumonia"), "best_epoch": best_epoch_scorer}
    fold = np.tile([-1, -1, 0, 0], len(y) // 4)  # validation images: both classes
    search = GridSearchCV(CXRClassifier(**{**small_clf_params, "max_epochs": 2}),
                          {"lr": [1e-3, 1e-2]}, cv=PredefinedSplit(fold), scoring=scoring,
                          refit=False, error_score="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)  # each fit's own warning
        search.fit(X, y)
    with pytest.warns(OneClassWarning, match=r"predicted one class on every validation "
                      r"split \(sensitivity / specificity (1\.000 / 0\.000|0\.000 / 1\.000)"):
        retrain_on_all(search, X, y, metric="roc_auc")
