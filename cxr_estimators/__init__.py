"""cxr_estimators: scikit-learn classifiers for chest X-rays over torchvision backbones."""

from .classifier import CXRClassifier
from .preprocessing import ImageLoader

__version__ = "0.1.0"

__all__ = ["CXRClassifier", "ImageLoader", "__version__"]
