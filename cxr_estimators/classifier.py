"""`CXRClassifier`: an sklearn classifier over torchvision backbones, trained by skorch.

skorch owns the training loop, validation split, early stopping, LR scheduling,
checkpointing, progress bar and history; this module composes a
:class:`skorch.NeuralNetClassifier` from sklearn-style parameters. Written here by hand:
label encoding, input checks that name the offending value, and the use of the
frozen-feature cache (:mod:`cxr_estimators._features`); the skorch/torch plumbing
(autocast forward pass, prediction loop, grouped validation split, seeding) is in
:mod:`cxr_estimators._training`; layout, precision, threads and ``compile`` are decided in
:mod:`cxr_estimators._runtime`.
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import compute_class_weight
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d
from skorch.callbacks import Checkpoint, EarlyStopping, EpochScoring, LRScheduler, ProgressBar
from skorch.dataset import ValidSplit
from skorch.utils import noop
from torch import nn

from . import _features, _runtime
from ._training import (
    _drop_training_state, _GroupedValidSplit, _Labelled, _Net, _resolve_device,
    _seed_everything, stream_proba,
)
from .augment import make_augmenter
from .backbones import build_model

__all__ = ["CXRClassifier"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


def _image_shape(X):
    return tuple(X.shape[1:]) if hasattr(X, "shape") else tuple(X[0].shape)


def _as_images(X):
    """Validate X and return float32 (n, C, H, W), or a lazy image dataset as is.

    2-D X of shape (n, d) is taken as n images of 1 × 1 × d pixels (so sklearn's generic
    estimator checks can run); (n, H, W) as single-channel images. A
    ``torch.utils.data.Dataset`` of ``(C, H, W)`` tensors (e.g. ``ImageLoader(lazy=True)``
    output) is used lazily: images are produced batch by batch.
    """
    if isinstance(X, torch.utils.data.Dataset):
        if len(X) == 0:
            raise ValueError("X is an empty dataset")
        shape = _image_shape(X)
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"X's items must be (C, H, W) with C = 1 or 3; got {shape}")
        return X
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = check_array(X, allow_nd=True, dtype=np.float32, ensure_min_samples=1,
                    input_name="X")
    if X.ndim == 2:
        X = X[:, None, None, :]
    elif X.ndim == 3:
        X = X[:, None]
    elif X.ndim != 4:
        raise ValueError(f"X must have shape (n, C, H, W), (n, H, W) or (n, d); got {X.shape}")
    if X.shape[1] not in (1, 3):
        raise ValueError(
            f"X has {X.shape[1]} channels (shape {X.shape}); expected 1 or 3 in (n, C, H, W) "
            "order. Use ImageLoader to convert images."
        )
    return np.ascontiguousarray(X)


class CXRClassifier(ClassifierMixin, BaseEstimator):
    """Chest X-ray classifier: a torchvision backbone + dense head, trained with skorch.

    Parameters
    ----------
    backbone : str, default="resnet18"
        Any torchvision classification model name (``torchvision.models.list_models``),
        e.g. "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "vgg16",
        "inception_v3"; or a small from-scratch CNN, "simple_cnn" (3 conv blocks) or
        "deep_cnn" (5 conv blocks with BatchNorm).
    weights : None, str or path, default=None
        None: random init. A torchvision weights name ("DEFAULT", "IMAGENET1K_V1", ...):
        loaded through torchvision's Weights API (downloaded once into ``$TORCH_HOME``).
        A path to a local ``state_dict`` / checkpoint of the backbone (or of a whole model
        saved from this package).
    freeze : bool or int, default=False
        True: train only the head; False: fine-tune everything; int k: train the head and
        the last k blocks of the backbone (0 = True). Blocks are the trunk's top-level
        children with parameters (:func:`~cxr_estimators.backbones.trunk_blocks`): a
        resnet's ``layer1``–``layer4`` after its stem, a densenet's dense blocks and
        transitions, a VGG's ``features`` and ``classifier``; k above their number is an
        error. Frozen BatchNorm layers stay in inference mode.
    neurons : int, default=128
        Width of the dense layer of the head.
    dropout : float in [0, 1), default=0.5
        Dropout after the dense layer.
    weight_decay : float, default=0.0
        L2 penalty passed to the optimizer.
    optimizer : {"adam", "rmsprop", "sgd"}, default="adam"
    lr : float, default=1e-3
    batch_size : int, default=32
    max_epochs : int, default=10
    early_stopping : int or None, default=5
        Patience in epochs on the validation loss (train loss without validation); the
        weights of the best epoch are restored at the end. None disables it.
    lr_schedule : None, "plateau" or dict, default=None
        Reduce-on-plateau schedule on the monitored loss; a dict gives
        ``torch.optim.lr_scheduler.ReduceLROnPlateau`` arguments (e.g. ``{"patience": 2,
        "factor": 0.5}``).
    validation_fraction : float in [0, 1), default=0.1
        Stratified internal validation split used for early stopping, LR schedule and the
        history. 0 disables it.
    class_weight : None, "balanced" or dict, default=None
        Class weights of the cross-entropy loss, as in sklearn.
    augment : None, bool or dict, default=None
        Train-time augmentation (see :mod:`cxr_estimators.augment`); never applied at
        predict time. True uses mild defaults without horizontal flip.
    checkpoint_dir : str or None, default=None
        Save the best epoch's parameters, optimizer and history there (skorch Checkpoint).
    cache : None, bool or str, default=None
        With a fully frozen backbone and no augmentation, compute backbone features once
        and train the head on them; True caches in memory across fits (CV folds, grid
        points), a directory path caches on disk with ``joblib.Memory``. Ignored otherwise.
    device : {"auto", "cpu", "cuda", "mps"}, default="auto"
        "auto" picks CUDA, then MPS, then CPU. The model and every batch use the
        channels_last memory layout on CPU for the backbone families where it is faster
        (small CNNs, resnets, densenets, mobilenets/efficientnets; not VGG) and on CUDA
        with bf16; results equal the contiguous layout's within float tolerance.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        "auto": bf16 mixed precision (autocast; weights and optimizer stay float32) on a
        CUDA GPU with bf16 (Ampere and newer), and on a CPU with native bf16 (AMX-BF16 or
        AVX512-BF16, e.g. Intel Sapphire Rapids, AMD Zen 4) for the families where it is
        faster (small CNNs, resnets, densenets: 1.5-3x on fit); float32 elsewhere (older
        GPUs, other CPUs, MPS). "float32" never autocasts;
        "bfloat16" always does on CPU and CUDA.
    predict_batch_size : int or None, default=None
        Images per forward pass in ``predict_proba`` / ``predict``, in the validation
        pass and in the frozen-feature cache. None: 32 on CPU (small batches stay in the
        CPU cache and measured fastest), ``batch_size`` on CUDA and MPS.
    compile : bool, default=False
        Compile the model with ``torch.compile`` (inductor) for training and prediction,
        on CPU or CUDA. The first batches take seconds to minutes to compile (again for
        the last, smaller batch and for prediction); it pays off only for long fits.
        Needs a C++ compiler (checked at fit: a ValueError if missing). The fitted
        model pickles uncompiled; a loaded model predicts uncompiled.
    num_workers : int, default=0
        DataLoader worker processes (useful with lazily decoded images,
        ``ImageLoader(lazy=True)``); batches are pinned in memory on CUDA.
    random_state : int or None, default=None
        Seeds torch (weight init, dropout, augmentation), the data order and the
        validation split; same seed → same model on CPU.
    verbose : int, default=0
        0 silent, 1 epoch table, 2 epoch table and progress bar.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
        Number of values per image (C·H·W); images at predict time must have the same shape.
    image_shape_ : tuple
        ``(C, H, W)`` seen in fit.
    net_ : skorch.NeuralNetClassifier
        The trained skorch net; ``module_`` is the :class:`~cxr_estimators.backbones.CXRNet`.
    module_ : torch.nn.Module
    history_ : skorch.History
        Per-epoch ``train_loss``, ``train_acc`` (on the training batches as trained, with
        dropout and augmentation on), ``valid_loss`` and ``valid_acc``.
    device_ : str

    Examples
    --------
    >>> import numpy as np
    >>> from cxr_estimators import CXRClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((20, 1, 16, 16), dtype=np.float32)
    >>> y = np.array(["normal", "pneumonia"] * 10)
    >>> clf = CXRClassifier(backbone="simple_cnn", max_epochs=1, random_state=0).fit(X, y)
    >>> clf.predict_proba(X).shape
    (20, 2)
    """

    _parameter_constraints = {
        "backbone": [str],
        "weights": [str, os.PathLike, None],
        "freeze": ["boolean", Interval(numbers.Integral, 0, None, closed="left")],
        "neurons": [Interval(numbers.Integral, 1, None, closed="left")],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(_OPTIMIZERS))],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "early_stopping": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "lr_schedule": [StrOptions({"plateau"}), dict, None],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "augment": ["boolean", dict, None],
        "checkpoint_dir": [str, os.PathLike, None],
        "cache": ["boolean", str, os.PathLike, None],
        "device": [StrOptions({"auto", "cpu", "cuda", "mps"})],
        "precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "predict_batch_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "compile": ["boolean"],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, backbone="resnet18", weights=None, freeze=False, neurons=128,
                 dropout=0.5, weight_decay=0.0, optimizer="adam", lr=1e-3, batch_size=32,
                 max_epochs=10, early_stopping=5, lr_schedule=None, validation_fraction=0.1,
                 class_weight=None, augment=None, checkpoint_dir=None, cache=None,
                 device="auto", precision="auto", predict_batch_size=None, compile=False,
                 num_workers=0, random_state=None, verbose=0):
        self.backbone = backbone
        self.weights = weights
        self.freeze = freeze
        self.neurons = neurons
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.lr_schedule = lr_schedule
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.augment = augment
        self.checkpoint_dir = checkpoint_dir
        self.cache = cache
        self.device = device
        self.precision = precision
        self.predict_batch_size = predict_batch_size
        self.compile = compile
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit helpers
    def _encode_targets(self, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        y = column_or_1d(y, warn=True)
        if len(y) < 2:
            raise ValueError(f"n_samples={len(y)}: need at least 2 labelled images to fit")
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y has a single class {encoder.classes_.tolist()}; need at least 2 classes"
            )
        return encoder.classes_, encoder.transform(y).astype(np.int64)

    def _class_weights(self, y_enc):
        if self.class_weight is None:
            return None
        cw = self.class_weight
        if isinstance(cw, dict):
            unknown = set(cw) - set(self.classes_.tolist())
            if unknown:
                raise ValueError(
                    f"class_weight has labels {sorted(map(str, unknown))} not in y's classes "
                    f"{self.classes_.tolist()}"
                )
            weights = np.array([float(cw.get(c, 1.0)) for c in self.classes_])
        else:
            weights = compute_class_weight(
                cw, classes=np.arange(len(self.classes_)), y=y_enc
            )
        return torch.as_tensor(weights, dtype=torch.float32)

    def _train_split(self, y_enc, groups=None):
        frac = self.validation_fraction
        if frac == 0:
            return None
        counts = np.bincount(y_enc)
        n_valid = int(np.ceil(frac * len(y_enc)))
        too_few = counts.min() < 2 or n_valid < len(counts) or len(y_enc) - n_valid < len(counts)
        if groups is not None:
            n_groups = len(np.unique(groups))
            too_few = too_few or n_groups < max(2, round(1 / frac))
        if too_few:
            warnings.warn(
                f"validation_fraction={frac}: too few samples ({len(y_enc)}, smallest class "
                f"{counts.min()}{'' if groups is None else f', {n_groups} groups'}) for a "
                "stratified validation split; training without one",
                UserWarning,
            )
            return None
        if groups is not None:
            return _GroupedValidSplit(frac, groups, self._seed)
        return ValidSplit(frac, stratified=True, random_state=self._seed)

    def _callbacks(self, has_valid):
        monitor = "valid_loss" if has_valid else "train_loss"
        # accuracy of the training batches as trained (dropout, augmentation), from the
        # predictions skorch already made: no extra forward pass
        callbacks = [("train_acc", EpochScoring("accuracy", on_train=True, name="train_acc",
                                                lower_is_better=False))]
        if self.early_stopping is not None:
            callbacks.append(("early_stopping", EarlyStopping(
                monitor=monitor, patience=self.early_stopping, load_best=True, threshold=0,
                sink=print if self.verbose else noop,
            )))
        if self.lr_schedule is not None:
            kwargs = {} if self.lr_schedule == "plateau" else dict(self.lr_schedule)
            callbacks.append(("lr_schedule", LRScheduler(
                policy=torch.optim.lr_scheduler.ReduceLROnPlateau, monitor=monitor, **kwargs
            )))
        if self.checkpoint_dir is not None:
            callbacks.append(("checkpoint", Checkpoint(
                monitor=f"{monitor}_best", dirname=str(self.checkpoint_dir)
            )))
        if self.verbose and self.verbose > 1:
            callbacks.append(("progress", ProgressBar()))
        return callbacks

    def _make_net(self, module, y_enc, device, runtime, groups=None):
        weights = self._class_weights(y_enc)
        train_split = self._train_split(y_enc, groups)
        kwargs = {}
        if weights is not None:
            kwargs["criterion__weight"] = weights
        if not self.verbose:
            kwargs["callbacks__print_log"] = None
        net = _Net(
            module=module,
            criterion=nn.CrossEntropyLoss,
            optimizer=_OPTIMIZERS[self.optimizer],
            optimizer__weight_decay=self.weight_decay,
            lr=self.lr,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            train_split=train_split,
            callbacks=self._callbacks(train_split is not None),
            classes=np.arange(len(self.classes_)),
            iterator_train__shuffle=True,
            iterator_train__generator=torch.Generator().manual_seed(self._seed)
            if self._seed is not None else None,
            iterator_train__num_workers=self.num_workers,
            iterator_valid__num_workers=self.num_workers,
            iterator_train__pin_memory=device == "cuda",
            iterator_valid__pin_memory=device == "cuda",
            iterator_valid__batch_size=self._predict_batch_size(),
            device=device,
            amp=runtime.amp,
            channels_last=runtime.channels_last,
            amp_device=runtime.device_type,
            compile=self.compile,
            verbose=int(bool(self.verbose)),
            **kwargs,
        )
        return net

    # ------------------------------------------------------------------ public API
    def fit(self, X, y, groups=None):
        """Train on images ``X`` (n, C, H, W) / (n, H, W) with labels ``y`` (n,).

        Parameters
        ----------
        X : array-like of shape (n, C, H, W) or (n, H, W), or an image dataset
        y : array-like of shape (n,)
        groups : array-like of shape (n,), default=None
            Patient ids. The internal validation split (early stopping, LR schedule,
            checkpoint) then keeps each patient on one side, like the outer CV should.
            In a Pipeline pass ``clf__groups=groups``; in ``GridSearchCV.fit`` pass both
            ``groups=groups`` (for the outer folds) and ``clf__groups=groups``.

        Returns
        -------
        self : CXRClassifier
        """
        self._validate_params()
        self.classes_, y_enc = self._encode_targets(y)
        X = _as_images(X)
        if len(X) != len(y_enc):
            raise ValueError(f"X has {len(X)} images but y has {len(y_enc)} labels")
        if groups is not None:
            groups = column_or_1d(groups)
            if len(groups) != len(y_enc):
                raise ValueError(f"groups has {len(groups)} entries but y has "
                                 f"{len(y_enc)} labels")
        self.image_shape_ = _image_shape(X)
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self._seed = _seed_everything(self.random_state)
        self.device_ = _resolve_device(self.device)
        if self.compile:
            _runtime.check_compile(self.device_)
        runtime = _runtime.resolve_runtime(self.backbone, self.device_, self.precision)
        module = build_model(
            self.backbone, len(self.classes_), weights=self.weights,
            in_channels=self.image_shape_[0],
            neurons=self.neurons, dropout=self.dropout, freeze=self.freeze,
            augment=make_augmenter(self.augment),
        )
        runtime.prepare(module)
        use_cache = (self.cache not in (None, False) and self.freeze is True
                     and module.augment is None)
        self._uses_cache = use_cache
        with _runtime.thread_share():
            if use_cache:
                self._trunk_digest = _features.trunk_digest(module.trunk)  # frozen: fixed
                features = self._cached_features(module, X, runtime)
                self.net_ = self._make_net(module.head, y_enc, self.device_, runtime,
                                           groups)
                self.net_.fit(np.array(features), y_enc)
                # The head was trained in place; serve predictions with the whole model.
                self.net_.module_ = module.to(self.device_)
                self.net_.module = module
            else:
                self.net_ = self._make_net(module, y_enc, self.device_, runtime, groups)
                self.net_.fit(_Labelled(X, y_enc) if isinstance(X, torch.utils.data.Dataset)
                              else X, y_enc)
        self.net_.module_.eval()
        _drop_training_state(self.net_)
        return self

    @property
    def module_(self):
        check_is_fitted(self, "net_")
        return self.net_.module_

    @property
    def history_(self):
        check_is_fitted(self, "net_")
        return self.net_.history

    def __setstate__(self, state):
        super().__setstate__(state)
        if "net_" in state:  # skorch may have mapped a CUDA model to the CPU on load
            self.device_ = str(self.net_.device)

    def _check_X(self, X):
        check_is_fitted(self, "net_")
        X = _as_images(X)
        shape = _image_shape(X)
        if shape != self.image_shape_:
            raise ValueError(
                f"X has {int(np.prod(shape))} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input (images of shape "
                f"{shape} vs {self.image_shape_} seen in fit)"
            )
        return _Labelled(X) if isinstance(X, torch.utils.data.Dataset) else X

    def _predict_batch_size(self):
        if self.predict_batch_size is not None:
            return self.predict_batch_size
        return 32 if self.device_ == "cpu" else self.batch_size

    def _runtime(self):
        """The fitted net's layout and precision (see :mod:`cxr_estimators._runtime`);
        plain float32 once the model was moved off the device type it was fitted for."""
        net = self.net_
        if torch.device(net.device).type != getattr(net, "amp_device", "cuda"):
            return _runtime.Runtime(net.device)
        return _runtime.Runtime(net.device, channels_last=net.channels_last, amp=net.amp)

    def _cached_features(self, module, X, runtime):
        return _features.trunk_features(
            module, X, self.backbone, self.device_, self._predict_batch_size(),
            memory=self.cache, runtime=runtime,
            digest=getattr(self, "_trunk_digest", None),
        )

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes), columns in ``classes_`` order."""
        X = self._check_X(X)
        with _runtime.thread_share():
            if getattr(self, "_uses_cache", False):
                # frozen trunk: features of X come from the cache shared by all grid
                # points (a CV test fold is the same for every one); only the head runs
                images = X.images if isinstance(X, _Labelled) else X
                features = self._cached_features(self.module_, images, self._runtime())
                head, runtime = self.module_.head.eval(), self._runtime()
                with torch.inference_mode(), runtime.autocast():
                    logits = head(torch.from_numpy(features).to(self.device_))
                proba = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
            else:
                proba = self._stream_proba(X)
        return proba / proba.sum(axis=1, keepdims=True)

    def _stream_proba(self, X):
        """Probabilities (n, n_classes) from the whole model: see
        :func:`cxr_estimators._training.stream_proba`."""
        return stream_proba(self.net_, X, len(self.classes_), self._predict_batch_size())

    def decision_function(self, X):
        """Log-odds of ``classes_[1]`` for binary problems, else per-class log-probabilities."""
        proba = np.clip(self.predict_proba(X), 1e-12, 1.0)
        if len(self.classes_) == 2:
            return np.log(proba[:, 1]) - np.log(proba[:, 0])
        return np.log(proba)

    def predict(self, X):
        """Predicted labels, shape (n,), values from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.input_tags.allow_nan = False
        return tags
