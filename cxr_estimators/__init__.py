"""cxr_estimators: scikit-learn classifiers for chest X-rays over torchvision backbones.

Public API: :class:`CXRClassifier`, :class:`ImageLoader`, and the submodules
``metrics``, ``plotting``, ``explain``, ``datasets``, ``audit``, ``evaluation``,
``backbones``, ``augment``, ``io`` and ``distributed``.
"""

from . import (
    audit, augment, backbones, datasets, distributed, evaluation, explain, io, metrics,
    plotting,
)
from .classifier import CXRClassifier
from .preprocessing import ImageDataset, ImageLoader

__version__ = "0.1.0"

__all__ = [
    "CXRClassifier",
    "ImageLoader",
    "ImageDataset",
    "audit",
    "augment",
    "backbones",
    "datasets",
    "distributed",
    "evaluation",
    "explain",
    "io",
    "metrics",
    "plotting",
    "__version__",
]
