"""What a model file may name, and how a keyed one is verified (for
:mod:`cxr_estimators.persistence`).

:func:`allowed_classes` is the exact list of estimator classes :func:`~cxr_estimators.load`
builds; :func:`trusted_class` resolves a ``module:qualname`` from a file against it,
importing nothing outside scikit-learn and cxr_estimators. :func:`check_hmac` verifies the
HMAC-SHA256 that ``save(..., key=)`` records (stdlib :mod:`hmac`), in constant time.
"""

from __future__ import annotations

import hmac
import importlib

from sklearn.base import BaseEstimator

from ._safefile import tensor_digest

__all__ = ["allowed_classes", "trusted_class", "check_hmac"]

_TRUSTED_ROOTS = ("sklearn", "cxr_estimators")
_ALLOWED = None  # built on first use: all_estimators() imports all of sklearn (~1 s)


def allowed_classes():
    """The exact classes a model file may name: scikit-learn's public estimators (as
    ``sklearn.utils.discovery.all_estimators`` lists them, plus the calibrators of
    ``CalibratedClassifierCV``) and cxr_estimators' ``CXRClassifier`` and
    ``ImageLoader``. A subclass, or another class reached through one of their modules
    (a skorch net re-exported by a ``cxr_estimators._…`` module), is not one of them."""
    global _ALLOWED
    if _ALLOWED is None:
        from sklearn import calibration
        from sklearn.utils.discovery import all_estimators

        from .classifier import CXRClassifier
        from .preprocessing import ImageLoader

        # the calibrators a fitted CalibratedClassifierCV holds (private sklearn classes)
        calibrators = [getattr(calibration, name) for name in
                       ("_SigmoidCalibration", "_TemperatureScaling")
                       if hasattr(calibration, name)]
        _ALLOWED = frozenset([cls for _, cls in all_estimators()] + calibrators
                             + [CXRClassifier, ImageLoader])
    return _ALLOWED


def trusted_class(path, fail):
    """The class named ``module:qualname`` if it is one of :func:`allowed_classes`;
    anything else fails before any module outside scikit-learn and cxr_estimators is
    imported."""
    module_name, _, qualname = str(path).partition(":")
    if module_name.split(".")[0] not in _TRUSTED_ROOTS or not qualname:
        fail(f"class {path!r} is not a scikit-learn or cxr_estimators estimator; refused")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        fail(f"class {path!r} does not exist in the installed packages")
    if not (isinstance(obj, type) and issubclass(obj, BaseEstimator)):
        fail(f"{path!r} is not an estimator class; refused")
    if obj not in allowed_classes():
        fail(f"class {path!r} is not one of the scikit-learn or cxr_estimators estimator "
             "classes a model file may name; refused")
    return obj


def check_hmac(name, metadata, tensors, key, error):
    """Raise ``error`` unless the file's recorded HMAC is that of its content under ``key``."""
    recorded = metadata.get("hmac")
    if recorded is None:
        raise error(f"model file {name!r} carries no HMAC: it was saved without key=, so "
                    "load(..., key=) cannot verify it; refused")
    actual = tensor_digest(tensors, metadata["format"], metadata.get("tree", ""),
                           metadata.get("versions", ""), key=key)
    if not hmac.compare_digest(str(recorded), actual):
        raise error(f"model file {name!r} was modified after it was saved, or the key is "
                    "not the one it was saved with: its HMAC does not match key; refused")
