"""shift_audit: the domain-classifier two-sample test (cxr_estimators/_shift.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state

from cxr_estimators import CompactImages, CXRClassifier
from cxr_estimators._shift import RIDGE_ALPHA, _held_out_scores, _pixel_features, _ridge_maps
from cxr_estimators.audit import MIN_IMAGES_PER_SET, shift_audit

NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "pneumoniamnist.npz"
needs_npz = pytest.mark.skipif(not NPZ.exists(), reason=f"{NPZ} not found (../shared)")


def _noise(n, seed, shift=0.0, size=16):
    rng = np.random.default_rng(seed)
    return np.clip(rng.random((n, size, size)) * 0.6 + 0.2 + shift, 0, 1).astype(np.float32)


def test_closed_form_ridge_equals_sklearn_ridge_classifier():
    """The permutation shortcut is exact: held-out scores are RidgeClassifier's."""
    Z = np.concatenate([_pixel_features(_noise(40, 0), "a"),
                        _pixel_features(_noise(40, 1, 0.05), "b")])
    domain = np.r_[np.zeros(40, int), np.ones(40, int)]
    groups = np.arange(80).astype(str)
    maps = _ridge_maps(Z, domain, groups, check_random_state(0))
    ours = _held_out_scores(maps, domain[:, None].astype(float))[:, 0]
    for test, train, *_ in maps:
        ref = make_pipeline(StandardScaler(), RidgeClassifier(alpha=RIDGE_ALPHA))
        ref.fit(Z[train], domain[train])
        # RidgeClassifier regresses on {-1, 1}: its score is 2 * ours - 1
        np.testing.assert_allclose(ref.decision_function(Z[test]), 2 * ours[test] - 1,
                                   atol=1e-6)


def test_same_source_is_not_flagged_and_a_shift_is():
    same = shift_audit(_noise(60, 0), _noise(60, 1), n_permutations=199, random_state=0)
    assert not same.shifted and same.p_value > 0.05
    assert same.auc_ci[0] < 0.5 < same.auc_ci[1] or abs(same.auc - 0.5) < 0.1
    moved = shift_audit(_noise(60, 0), _noise(60, 1, shift=0.1), n_permutations=199,
                        random_state=0)
    assert moved.shifted and moved.auc > 0.8 and moved.p_value <= 0.01
    assert "distinguishable" in str(moved) and "No shift" in str(same)
    assert moved.to_dict()["shifted"] is True


def test_atypical_points_at_the_odd_images_and_per_class():
    ref, new = _noise(60, 0), _noise(60, 1)
    new[[3, 17, 42]] = 0.95  # three blank white exports
    y_ref, y_new = np.repeat(["a", "b"], 30), np.repeat(["a", "b"], 30)
    audit = shift_audit(ref, new, y_ref=y_ref, y_new=y_new, n_permutations=99,
                        random_state=0)
    assert {3, 17, 42} <= set(audit.atypical)  # among the 10 most atypical of 60
    assert set(audit.per_class) == {"a", "b"}
    assert audit.per_class["a"]["n_new"] == 30
    assert "class a: domain AUC" in str(audit)


def test_groups_stay_on_one_side_and_small_classes_are_skipped():
    ref, new = _noise(30, 0), _noise(30, 1)
    audit = shift_audit(ref, new, y_ref=["a"] * 25 + ["b"] * 5, y_new=["a"] * 25 + ["b"] * 5,
                        groups_ref=np.repeat(np.arange(10), 3),
                        groups_new=np.repeat(np.arange(10, 20), 3), n_permutations=49,
                        random_state=0)
    assert "skipped" in audit.per_class["b"] and np.isnan(audit.per_class["b"]["auc"])
    assert "fewer than 10" in str(audit)


def test_a_patient_never_straddles_a_fold():
    Z = _pixel_features(np.concatenate([_noise(30, 0), _noise(30, 1)]), "X")
    domain = np.r_[np.zeros(30, int), np.ones(30, int)]
    groups = np.repeat(np.arange(20), 3).astype(str)  # patient 5 has images 15, 16, 17
    for test, train, *_ in _ridge_maps(Z, domain, groups, check_random_state(0)):
        assert not set(groups[test]) & set(groups[train])


def test_permutations_move_whole_patients():
    from cxr_estimators._shift import _shuffler

    domain = np.r_[np.zeros(30, int), np.ones(30, int)]
    groups = np.repeat(np.arange(20), 3).astype(str)
    rng = check_random_state(0)
    shuffle = _shuffler(domain, groups)
    draws = [shuffle(rng) for _ in range(20)]
    for shuffled in draws:
        assert (shuffled.reshape(20, 3) == shuffled.reshape(20, 3)[:, :1]).all()
    assert len({d.tobytes() for d in draws}) > 10
    # a patient with images in both sets: images are shuffled one by one
    mixed = groups.copy()
    mixed[29] = mixed[30]
    shuffled = [_shuffler(domain, mixed)(rng) for _ in range(20)]
    assert any((s.reshape(20, 3) != s.reshape(20, 3)[:, :1]).any() for s in shuffled)


def test_compact_images_and_paths(tmp_path):
    ref, new = (np.round(_noise(20, s, shift) * 255).astype(np.uint8)
                for s, shift in ((0, 0.0), (1, 0.2)))
    compact = shift_audit(CompactImages(ref[:, None], (0.5,), (0.5,)),
                          CompactImages(new[:, None], (0.5,), (0.5,)),
                          n_permutations=49, random_state=0)
    paths = {}
    for name, images in (("ref", ref), ("new", new)):
        paths[name] = []
        for i, im in enumerate(images):
            Image.fromarray(im).save(tmp_path / f"{name}{i}.png")
            paths[name].append(str(tmp_path / f"{name}{i}.png"))
    from_files = shift_audit(paths["ref"], paths["new"], n_permutations=49, random_state=0)
    assert compact.shifted and from_files.shifted
    assert from_files.auc == pytest.approx(compact.auc, abs=0.02)


def test_model_features(toy_binary, small_clf_params):
    X, y = toy_binary
    clf = CXRClassifier(**small_clf_params).fit(X, y)
    audit = shift_audit(X[:24], X[24:] + 0.5, model=clf, n_permutations=49, random_state=0)
    assert audit.representation == "model features" and audit.shifted


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(X_ref=np.zeros((20, 16, 16)), X_new=np.zeros((20, 28, 28))), ValueError,
     "X_new images are 28x28 with 1 channel.* X_ref images are 16x16 with 1"),
    (dict(X_ref=np.zeros((20, 1, 16, 16)), X_new=np.zeros((20, 3, 16, 16))), ValueError,
     "3 channel"),
    (dict(X_ref=np.zeros((20, 16, 16)), X_new=np.zeros((9, 16, 16))), ValueError,
     f"at least {MIN_IMAGES_PER_SET} images in each set.*X_new has 9"),
    (dict(X_ref=np.zeros((20, 16, 16)), X_new=np.zeros((20, 16, 16)), y_ref=[0] * 20),
     ValueError, "y_ref is given but not the other"),
    (dict(X_ref=np.zeros((20, 16, 16)), X_new=np.zeros((20, 16, 16)), y_ref=[0] * 20,
          y_new=[0] * 19), ValueError, "y_new has 19 labels but its set has 20"),
    (dict(X_ref=np.zeros((20, 16, 16)), X_new=["a.png"] * 20), ValueError,
     "both be paths or both be image arrays"),
    (dict(X_ref=np.zeros((20, 16)), X_new=np.zeros((20, 16))), ValueError,
     "X_ref must be images"),
    (dict(X_ref=np.zeros((20, 16, 16)), X_new=np.zeros((20, 16, 16)),
          model=CXRClassifier()), NotFittedError, "not fitted"),
])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        shift_audit(**kwargs, n_permutations=9)


@needs_npz
def test_pneumoniamnist_val_test_shift_found_train_val_not():
    data = np.load(NPZ)
    order = np.random.default_rng(0).permutation(len(data["train_images"]))
    train = data["train_images"][order[:1000]]
    val, test = data["val_images"], data["test_images"]
    halves = shift_audit(train[:500], train[500:], n_permutations=199, random_state=0)
    train_val = shift_audit(train, val, n_permutations=199, random_state=0)
    val_test = shift_audit(val, test, y_ref=data["val_labels"].ravel(),
                           y_new=data["test_labels"].ravel(), n_permutations=199,
                           random_state=0)
    assert not halves.shifted and not train_val.shifted
    assert val_test.shifted and val_test.auc_ci[0] > 0.55
    # the normal class moved most: the benchmark model's specificity fell, not sensitivity
    assert val_test.per_class[0]["auc"] > val_test.per_class[1]["auc"]
