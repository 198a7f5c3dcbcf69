"""cxr_estimators: scikit-learn classifiers for chest X-rays over torchvision backbones.

Public API: :class:`CXRClassifier`, :class:`ImageLoader` (and the :class:`CompactImages`
it returns with ``dtype="uint8"``), and the submodules
``metrics``, ``plotting``, ``explain``, ``datasets``, ``audit``, ``evaluation``,
``backbones``, ``augment``, ``io`` and ``distributed``; :func:`save` / :func:`load` write
and read model files that cannot run code (:mod:`cxr_estimators.persistence`);
:func:`tune_cpu_malloc` makes glibc's malloc keep freed memory (CPU training on Linux).
"""

from . import (
    audit, augment, backbones, datasets, distributed, evaluation, explain, io, metrics,
    plotting, thresholds,
)
from ._callbacks import OneClassWarning, TrainingDivergedError
from ._runtime import tune_cpu_malloc
from .classifier import CXRClassifier
from .persistence import load, save
from .backbones import WeightsUnavailableError
from .preprocessing import CompactImages, ImageDataset, ImageLoader

__version__ = "0.1.0"

__all__ = [
    "CXRClassifier",
    "ImageLoader",
    "ImageDataset",
    "CompactImages",
    "save",
    "load",
    "TrainingDivergedError",
    "OneClassWarning",
    "WeightsUnavailableError",
    "tune_cpu_malloc",
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
    "thresholds",
    "__version__",
]
