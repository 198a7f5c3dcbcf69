"""`CXRClassifier`: an sklearn classifier over torchvision backbones, trained by skorch.

skorch owns the training loop, validation split, early stopping, LR scheduling,
checkpointing, progress bar and history; this module composes a
:class:`skorch.NeuralNetClassifier` from sklearn-style parameters. Written here by hand:
label encoding, input checks that name the offending value, and the use of the
frozen-feature cache (:mod:`cxr_estimators._features`); the skorch/torch plumbing
(bf16 autocast on CUDA, grouped validation split, seeding) is in
:mod:`cxr_estimators._training`.
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

from . import _features
from . import distributed
from ._training import (
    _bf16_supported, _check_sample_weight, _drop_training_state, _FitRandomness,
    _fit_seed, _GroupedValidSplit, _Labelled, _Net, _resolve_device, _training_data,
    _user_callbacks,
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
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default="auto"
        "auto" picks CUDA, then MPS, then CPU; on CUDA the first GPU that
        ``CUDA_VISIBLE_DEVICES`` shows the process, or ``cuda:<LOCAL_RANK>`` when a
        distributed launcher (torchrun) sets ``LOCAL_RANK`` — so one Dask worker or
        rank per GPU needs no code (docs/scale_out.md). "cuda:N" picks GPU N. On CUDA,
        bf16 mixed precision and channels_last are used when the GPU supports bf16
        (Ampere and newer); older GPUs (T4, V100) train in float32, as do CPU and MPS.
    num_workers : int, default=0
        DataLoader worker processes (useful with lazily decoded images,
        ``ImageLoader(lazy=True)``); batches are pinned in memory on CUDA.
    random_state : int, RandomState or None, default=None
        Seeds weight init, dropout, augmentation, the data order and the validation
        split; same seed → same model on CPU, also for fits running in parallel threads.
        Each fit draws from its own random stream: torch's global RNG is left as the
        caller had it (see ``_training._FitRandomness`` for the lock this needs).
    verbose : int, default=0
        0 silent, 1 epoch table, 2 epoch table and progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks (a logger such as ``skorch.callbacks.TensorBoard``, an
        ``EpochScoring``), instances or ``(name, callback)`` pairs, run after ours. Each
        fit uses a clone (``sklearn.base.clone``; a shallow copy where a parameter, such
        as a writer, cannot be deep-copied), so the given objects are never changed. A
        name that one of ours already has is an error.
    warm_start : bool, default=False
        True: a second ``fit`` starts from the fitted weights (with a new optimizer)
        instead of a new initialisation, for ``max_epochs`` more epochs. The classes and
        the image shape must be those of the first fit.

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
        "device": [str],  # "cuda:N" too: checked in _training._resolve_device
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
        "warm_start": ["boolean"],
    }

    def __init__(self, backbone="resnet18", weights=None, freeze=False, neurons=128,
                 dropout=0.5, weight_decay=0.0, optimizer="adam", lr=1e-3, batch_size=32,
                 max_epochs=10, early_stopping=5, lr_schedule=None, validation_fraction=0.1,
                 class_weight=None, augment=None, checkpoint_dir=None, cache=None,
                 device="auto", num_workers=0, random_state=None, verbose=0,
                 callbacks=None, warm_start=False):
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
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.warm_start = warm_start

    # ------------------------------------------------------------------ fit helpers
    def _encode_targets(self, y):  # -> (classes, y encoded as 0..n_classes-1)
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
        if distributed.is_active():  # before anything that reads the epoch's scores
            callbacks.append(("sync_ranks", distributed.SyncEpochScores()))
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
        if self.checkpoint_dir is not None and distributed.is_main_process():
            callbacks.append(("checkpoint", Checkpoint(
                monitor=f"{monitor}_best", dirname=str(self.checkpoint_dir)
            )))
        if self.verbose and self.verbose > 1:
            callbacks.append(("progress", ProgressBar()))
        return callbacks + _user_callbacks(self.callbacks, [name for name, _ in callbacks])

    def _make_net(self, module, y_enc, device, amp, rng, groups=None, weighted=False):
        weights = self._class_weights(y_enc)
        train_split = self._train_split(y_enc, groups)
        kwargs = {}
        if weights is not None:
            kwargs["criterion__weight"] = weights
        if weighted:  # per-image losses, weighted in _Net.get_loss
            kwargs["criterion__reduction"] = "none"
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
            iterator_train__generator=rng.generator(),
            # a DataLoader without a generator draws its base seed from torch's global RNG
            iterator_valid__generator=rng.generator(1),
            iterator_train__num_workers=self.num_workers,
            iterator_valid__num_workers=self.num_workers,
            iterator_train__pin_memory=device.startswith("cuda"),
            iterator_valid__pin_memory=device.startswith("cuda"),
            device=device,
            amp=amp,
            channels_last=amp,
            verbose=int(bool(self.verbose)),
            **kwargs,
        )
        net.fit_rng_ = rng
        distributed.begin_fit(net, rng.seed)
        return net

    # ------------------------------------------------------------------ public API
    def fit(self, X, y, sample_weight=None, *, groups=None):
        """Train on images ``X`` (n, C, H, W) / (n, H, W) with labels ``y`` (n,).

        Parameters
        ----------
        X : array-like of shape (n, C, H, W) or (n, H, W), or an image dataset
        y : array-like of shape (n,)
        sample_weight : array-like of shape (n,), default=None
            Non-negative weight of each image's loss, in training and in the internal
            validation loss (each batch's loss is the weighted mean of its images'
            losses, times their class weights if any). Under metadata routing request
            it with ``set_fit_request(sample_weight=True)``.
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
        classes, y_enc = self._encode_targets(y)
        X = _as_images(X)
        if len(X) != len(y_enc):
            raise ValueError(f"X has {len(X)} images but y has {len(y_enc)} labels")
        if groups is not None:
            groups = column_or_1d(groups)
            if len(groups) != len(y_enc):
                raise ValueError(f"groups has {len(groups)} entries but y has "
                                 f"{len(y_enc)} labels")
        sample_weight = _check_sample_weight(sample_weight, len(y_enc))
        previous = self._warm_start_module(classes, _image_shape(X))
        distributed.check_same_data(len(y_enc), classes)
        self.classes_ = classes
        self.image_shape_ = _image_shape(X)
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self.device_ = _resolve_device(self.device)
        self._seed = distributed.same_on_all_ranks(_fit_seed(self.random_state))
        rng = _FitRandomness(self._seed, self.device_)
        amp = _bf16_supported(self.device_)
        with rng.global_stream():  # weight init draws from this fit's stream
            module = build_model(
                self.backbone, len(self.classes_),
                weights=self.weights if previous is None else None,
                in_channels=self.image_shape_[0],
                neurons=self.neurons, dropout=self.dropout, freeze=self.freeze,
                augment=make_augmenter(self.augment),
            )
        if previous is not None:
            self._load_previous(module, previous)
        if distributed.rank() > 0:  # DDP: own dropout/augmentation draws per rank
            rng.reseed(distributed.rank())
        if amp:
            module = module.to(memory_format=torch.channels_last)
        use_cache = (self.cache not in (None, False) and self.freeze is True
                     and module.augment is None)
        self._uses_cache = use_cache
        weighted = sample_weight is not None
        if use_cache:
            self._trunk_digest = _features.trunk_digest(module.trunk)  # frozen: fixed
            features = self._cached_features(module, X, amp)
            self.net_ = self._make_net(module.head, y_enc, self.device_, amp, rng, groups,
                                       weighted)
            self.net_.fit(_training_data(np.array(features), y_enc, sample_weight), y_enc)
            # The head was trained in place; serve predictions with the whole model.
            self.net_.module_ = module.to(self.device_)
            self.net_.module = module
        else:
            self.net_ = self._make_net(module, y_enc, self.device_, amp, rng, groups,
                                       weighted)
            self.net_.fit(_training_data(X, y_enc, sample_weight), y_enc)
        distributed.finish_fit(self.net_)
        self.net_.module_.eval()
        _drop_training_state(self.net_)
        return self

    def _warm_start_module(self, classes, image_shape):
        """The fitted module to continue from (``warm_start=True``), or None."""
        if not (self.warm_start and hasattr(self, "net_")):
            return None
        if not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start=True: y has classes {classes.tolist()} but the "
                             f"fitted model has {self.classes_.tolist()}; fit a new model "
                             "(warm_start=False) to change the classes")
        if tuple(image_shape) != tuple(self.image_shape_):
            raise ValueError(f"warm_start=True: X has images of shape {tuple(image_shape)}"
                             f" but the fitted model was trained on {self.image_shape_}")
        return self.net_.module_

    def _load_previous(self, module, previous):
        try:
            module.load_state_dict(previous.state_dict())
        except RuntimeError as exc:
            raise ValueError(
                "warm_start=True: the fitted model's weights do not fit the model these "
                f"parameters build (backbone={self.backbone!r}, neurons={self.neurons}); "
                f"{str(exc).splitlines()[0]}") from None

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

    def _cached_features(self, module, X, amp):
        return _features.trunk_features(
            module, X, self.backbone, self.device_, self.batch_size,
            memory=self.cache, amp=amp, digest=getattr(self, "_trunk_digest", None),
        )

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes), columns in ``classes_`` order."""
        X = self._check_X(X)
        if getattr(self, "_uses_cache", False):
            # frozen trunk: features of X come from the cache shared by all grid points
            # (a CV test fold is the same for every one); only the head runs here
            images = X.images if isinstance(X, _Labelled) else X
            features = self._cached_features(self.module_, images, self.net_.amp)
            head = self.module_.head.eval()
            with torch.no_grad():
                logits = head(torch.tensor(features, device=self.device_))
            proba = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
        else:
            proba = self._stream_proba(X)
        return proba / proba.sum(axis=1, keepdims=True)

    def _stream_proba(self, X):
        """skorch's ``predict_proba``, but writing each batch into one array allocated up
        front.

        skorch collects a list of small per-batch arrays and concatenates them at the
        end. ``benchmarks/memory.py`` (modes ``lazy`` and ``lazy_skorch``, 224 px, up to
        10,000 images; docs/benchmarks.md) measured the process growing with the number
        of images that way, and not this way. Our reading, not verified further: the
        small arrays, allocated between the large per-batch buffers, keep glibc from
        reusing or returning the freed ones."""
        proba = np.empty((len(X), len(self.classes_)), dtype=np.float64)
        start = 0
        for logits in self.net_.forward_iter(X, training=False):
            batch = torch.softmax(logits.float(), dim=1).numpy()
            proba[start:start + len(batch)] = batch
            start += len(batch)
        return proba

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
