"""`CXRClassifier`: an sklearn classifier over torchvision backbones, trained by skorch.

skorch owns the training loop, validation split, early stopping, LR scheduling,
checkpointing, progress bar and history; this module composes a
:class:`skorch.NeuralNetClassifier` from sklearn-style parameters. Written here by hand:
the use of the frozen-feature cache (:mod:`cxr_estimators._features`); the input checks
and label encoding are in :mod:`cxr_estimators._inputs`, the skorch/torch plumbing
(autocast forward pass, prediction loop, grouped validation split, sample weights, warm
start) is in :mod:`cxr_estimators._training`, layout, precision, threads and ``compile``
in :mod:`cxr_estimators._runtime`, the per-fit random streams in :mod:`cxr_estimators._rng`,
device placement and data-parallel training in :mod:`cxr_estimators.distributed`, the
batch-gathered input and the device-resident training set in :mod:`cxr_estimators._feed`.
"""

from __future__ import annotations

import copy
import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import _feed, _features, _inputs, _runtime, _targets, distributed
from ._averaging import check_average_weights
from ._callbacks import (
    best_epoch, check_checkpoint_dir, clone_callbacks, early_stopping_spec, raise_if_interrupted,
)
from ._inputs import check_known_labels, prediction_input, training_input, validation_set
from ._rng import FitRandomness, fit_seed
from ._schedules import check_lr_schedule
from ._training import (
    OPTIMIZERS, _check_sample_weight, _drop_training_state, _Labelled,
    _training_data, load_warm_start, make_net, stream_proba, train_split, valid_dataset,
    warm_start_module, warn_double_balancing,
)
from ._tta import check_tta, tta_context
from ._validation import StrictParamsMixin, check_fit_memory
from .augment import make_augmenter
from .backbones import build_model, check_frozen_features
from .backbones.heads import POOLINGS

__all__ = ["CXRClassifier"]


class CXRClassifier(StrictParamsMixin, ClassifierMixin, BaseEstimator):
    """Chest X-ray classifier: a torchvision backbone + dense head, trained with skorch.

    Parameters
    ----------
    backbone : str, default="resnet18"
        Any torchvision classification model name (``torchvision.models.list_models``),
        e.g. "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "vgg16",
        "inception_v3"; "timm:<name>" (any timm model, extra ``[timm]``);
        "xrv:<name>" (torchxrayvision's chest-X-ray models, e.g.
        "xrv:densenet121-res224-all", extra ``[xrv]``); "resnet50v2" (Keras'); or a small
        from-scratch CNN, "simple_cnn" (3 conv blocks) or "deep_cnn" (5 conv blocks with
        BatchNorm). :func:`~cxr_estimators.backbones.list_backbones` lists them;
        docs/backbones.md describes the registry.
    backbone_kwargs : dict or None, default=None
        Passed to the backbone's builder. Small CNNs: ``widths`` (channels per conv
        block, one block each, e.g. ``(64, 128, 256)``) and ``batch_norm``; torchvision
        models: arguments of their builder (e.g. ``{"dropout": 0.3}`` for EfficientNet);
        timm: of ``timm.create_model``; torchxrayvision: ``{"outputs": "pathologies"}``
        makes its 18 pathology logits the head's input.
    weights : None, str or path, default=None
        None: random init. A torchvision weights name ("DEFAULT", "IMAGENET1K_V1", ...):
        loaded through torchvision's Weights API (downloaded once into ``$TORCH_HOME``);
        "DEFAULT" or a pretrained tag for timm; "DEFAULT" for torchxrayvision (its cache
        folder). A path to a local ``state_dict`` / checkpoint of the backbone (or of a
        whole model saved from this package). Weights that cannot be had raise
        :class:`~cxr_estimators.WeightsUnavailableError` before any training, naming the
        file to place.
    freeze : bool or int, default=False
        True: train only the head; False: fine-tune everything; int k: train the head and
        the last k blocks of the backbone (0 = True). Blocks are the registry's (for
        torchvision, the trunk's top-level children with parameters,
        :func:`~cxr_estimators.backbones.trunk_blocks`; for timm, ``feature_info``): a
        resnet's ``layer1``–``layer4`` after its stem, a densenet's dense blocks and
        transitions, a VGG's ``features`` and ``classifier`` (with ``pooling`` set, the
        layers of its conv base); k above their number is an error. Frozen BatchNorm
        layers stay in inference mode. With ``weights=None`` a frozen part of a
        torchvision backbone gives random features: a UserWarning; frozen features that
        do not vary over the training images are an error.
    pooling : None, "avg", "max" or "flatten", default=None
        How the backbone's output becomes the head's input (:mod:`cxr_estimators.heads`).
        None: as the torchvision model does before its classifier (global average pooling
        for most; VGG's frozen fc6/fc7 and MobileNetV3's pre-logit layer included).
        "avg" / "max": global pooling of the last conv feature map; "flatten": that map
        as is (Keras' ``Flatten()``; for VGG the conv base without fc6/fc7). A 1 × 1 map
        cannot be flattened meaningfully: an error.
    neurons : int or tuple of int, default=128
        Width of the dense layer of the head; a tuple gives several dense layers.
    head_batch_norm : bool, default=False
        BatchNorm after each dense layer (``Linear → BatchNorm → ReLU → Dropout``).
    head_order : {"bn_act", "act_bn"}, default="bn_act"
        With ``head_batch_norm``: "bn_act" is ``Linear → BatchNorm → ReLU`` (Keras'
        ``Dense → BatchNormalization → Activation``); "act_bn" is ``Linear → ReLU →
        BatchNorm`` (Keras' ``Dense(activation="relu") → BatchNormalization``).
    dropout : float in [0, 1), default=0.5
        Dropout after each dense layer.
    input_dropout : float in [0, 1), default=0.0
        Dropout on the head's input, before the first dense layer.
    weight_decay : float, default=0.0
        L2 penalty passed to the optimizer.
    weight_decay_scope : {"all", "head"} or list of str, default="all"
        "all": ``weight_decay`` on every parameter (torch's behaviour); "head": only on
        the weights of the head's dense layers (Keras' ``kernel_regularizer`` on them);
        a list of fnmatch patterns of parameter names (``module_.named_parameters()``):
        only on those, e.g. ``["head.0.weight"]`` for the first dense layer only; a
        pattern matching no parameter is an error.
    optimizer : {"adam", "rmsprop", "sgd"}, default="adam"
    optimizer_kwargs : dict or None, default=None
        Further arguments of the torch optimizer, e.g. ``{"betas": (0.9, 0.999)}``,
        ``{"alpha": 0.9, "eps": 1e-7}`` (RMSprop, Keras' defaults) or ``{"momentum":
        0.9}``; ``lr`` and ``weight_decay`` have their own parameters.
    lr : float, default=1e-3
    batch_size : int, default=32
    max_epochs : int, default=10
    early_stopping : int, dict or None, default=5
        int: patience in epochs on the validation loss. dict: ``{"patience": 7,
        "monitor": "f1", "min_delta": 0.001}`` with ``monitor`` in "loss" (default),
        "f1", "roc_auc", "accuracy", "balanced_accuracy"; training stops when the
        monitored value has not improved by more than ``min_delta`` (absolute, default 0)
        for ``patience`` epochs, and the weights of the best epoch are restored
        (``best_epoch_``). The monitored metric is in ``history_`` as ``valid_<metric>``
        every epoch. f1 on binary labels other than {0, 1} needs ``"pos_label"`` (as
        sklearn's ``f1_score``); multiclass f1 is macro-averaged, multiclass roc_auc
        one-vs-rest. Without a validation set the training batches' value is watched
        (``train_<metric>``). None disables early stopping.
    lr_schedule : None, {"plateau", "cosine", "onecycle"} or dict, default=None
        "plateau": reduce-on-plateau on the validation loss (train loss without
        validation), every epoch; "cosine": cosine decay from ``lr`` to 0 over
        ``max_epochs``, every batch; "onecycle": torch's ``OneCycleLR`` peaking at
        ``lr``, every batch. A dict names the schedule under ``"policy"`` (default
        "plateau") and passes the torch scheduler's arguments, e.g. ``{"patience": 2,
        "factor": 0.5}``, ``{"policy": "cosine", "warmup_epochs": 1}`` (linear warm-up)
        or ``{"policy": "onecycle", "pct_start": 0.2}``. The learning rate used is in the
        history, per epoch (``history_[:, "event_lr"]``) for "plateau", per training
        batch (``history_[-1, "batches", 0, "event_lr"]``) for the others.
    label_smoothing : float in [0, 1), default=0.0
        Label smoothing of the cross-entropy loss (``torch.nn.CrossEntropyLoss``'s own).
    average_weights : None, {"ema", "swa"} or dict, default=None
        Weight averaging with ``torch.optim.swa_utils``; the averaged weights are the
        fitted ones. "ema": exponential moving average after every training batch
        (``{"method": "ema", "decay": 0.99}``); "swa": equal average of the weights at the
        end of each epoch from ``start`` on (default 0.75 of ``max_epochs``; ``{"method":
        "swa", "start": 0.5}``), BatchNorm statistics then recomputed on the training
        split. Early stopping still decides when training ends, but the averaged weights
        replace its best epoch's. Needs ``max_epochs >= 2``
        (:mod:`cxr_estimators._averaging`).
    validation_fraction : float in [0, 1), default=0.1
        Stratified internal validation split used for early stopping, LR schedule,
        checkpoints and the history, when ``fit`` is not given ``X_val``. 0 disables it.
    class_weight : None, "balanced" or dict, default=None
        Class weights of the cross-entropy loss, as in sklearn.
    valid_class_weight : bool, default=False
        Whether the validation loss (``valid_loss`` in ``history_``, which early
        stopping and checkpoints watch) applies ``class_weight``. False, as Keras'
        ``val_loss``: class weights correct the training gradients; the validation loss
        estimates the loss on images as they come.
    sampling : None or "balanced", default=None
        "balanced": every epoch draws as many training images as there are, each class
        equally often, with replacement (torch's ``WeightedRandomSampler``), so minority
        images recur under fresh augmentation; seeded by ``random_state``. The
        validation set is not resampled.
    augment : None, bool or dict, default=None
        Train-time augmentation (see :mod:`cxr_estimators.augment`); never applied at
        predict time. True uses mild defaults without horizontal flip. A dict names the
        transforms to apply, with Keras ``ImageDataGenerator``'s meaning: ``rotation``,
        ``shift``, ``shear`` (degrees), ``zoom`` (Keras' ``zoom_range``: float or
        ``(min, max)``, each axis divided by its own factor, > 1 zooms out), ``scale``
        (torchvision's ``RandomAffine`` scale: one factor, > 1 enlarges),
        ``horizontal_flip`` (True/False), ``fill`` ("constant", "nearest", "reflect"), ``brightness``
        (float: additive; ``(lo, hi)``: multiplicative), ``contrast``; **a key it omits
        is off**.
    tta : None, int >= 0 or dict, default=None
        Test-time augmentation: ``predict_proba`` averages the probabilities of each image
        and of ``tta`` augmented views of it, drawn with the ``augment`` settings (the
        mild defaults if training did not augment); a dict gives augmentation settings
        plus ``"views"`` (default 8). Seeded by the fit's seed (``random_state``); read
        at predict time, so it can be set after fit. None or 0: off. Grad-CAM is unaffected
        (:mod:`cxr_estimators._tta`).
    checkpoint_dir : str or None, default=None
        Save the best epoch's parameters, optimizer and history there (skorch Checkpoint:
        ``params.pt``, ``optimizer.pt``, ``criterion.pt``, ``history.json``). They are
        written to ``checkpoint_dir/.incoming`` during the fit and replace the folder's
        files when training ends, so a fit that crashes leaves the previous checkpoint.
        With cached features (``cache``) only the head is trained, so ``params.pt``
        holds the head's weights only: reload it with
        ``clf.net_.module_.head.load_state_dict(torch.load(path, weights_only=True))``.
    cache : None, bool or str, default=None
        With a fully frozen backbone and no augmentation, compute backbone features once
        and train the head on them; True caches in memory across fits (CV folds, grid
        points), a directory path caches on disk (safetensors files with a digest, never
        pickles: see :mod:`cxr_estimators._features`). Ignored otherwise.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default="auto"
        "auto" picks CUDA, then MPS, then CPU; on CUDA the first GPU that
        ``CUDA_VISIBLE_DEVICES`` shows the process, or ``cuda:<LOCAL_RANK>`` when a
        distributed launcher (torchrun) sets ``LOCAL_RANK`` — so one Dask worker or
        rank per GPU needs no code (docs/scale_out.md). "cuda:N" picks GPU N. On CUDA,
        bf16 mixed precision and channels_last are used when the GPU supports bf16
        (Ampere and newer); older GPUs (T4, V100) train in float32 (see ``precision``).
        On CPU the model and every batch use the channels_last memory layout for the
        backbone families where it was measured faster (small CNNs, resnets, densenets,
        mobilenets/efficientnets, VGG; others stay contiguous): results equal the
        contiguous layout's within float tolerance. While a torch.distributed process group is open, fit trains one
        model data-parallel over its processes (:mod:`cxr_estimators.distributed`).
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        "auto": bf16 mixed precision (autocast; weights and optimizer stay float32) on a
        CUDA GPU with bf16, and on a CPU with native bf16 (AMX-BF16 or AVX512-BF16, e.g.
        Intel Xeon 4th gen and newer, AMD Zen 4) for the families where it is faster
        (small CNNs, resnets, densenets); float32 elsewhere. "float32" never autocasts;
        "bfloat16" always does, on CPU and CUDA (slow on a CPU without native bf16).
        Probabilities under bf16 differ from float32's by up to about 1e-2.
    predict_batch_size : int or None, default=None
        Images per forward pass in ``predict_proba`` / ``predict``, the validation pass
        and the frozen-feature cache. None: on CPU, for ``simple_cnn`` / ``deep_cnn``
        as many images (4 to 64) as keep the largest activation within 8 MiB (under
        bf16 with the default widths: 64 at 28 px, 32 at 64 px, 8 at 128 px, 4 from
        160 px; fewer in float32), for other backbones as many (at least 4, at most 32
        per torch thread, 256 in all) as keep it within 64 MiB (under bf16 with two
        threads: 64 at 128 px, 32 for resnet18 / densenet121 at 224 px) (measured:
        docs/design.md); ``batch_size`` on CUDA and MPS.
        On CPU, ``predict_proba`` runs a copy of the model with each BatchNorm folded
        into the convolution before it (made at the first prediction after a fit or
        load, kept while the weights stay the same; equal within float tolerance, ~1e-3
        under bf16 autocast); a model with forward hooks runs itself.
    compile : bool, default=False
        Compile the model with ``torch.compile`` (inductor) for training and prediction,
        on CPU or CUDA. Compiling takes seconds to minutes (again for the last, smaller
        batch and for prediction), so it pays off only in long fits. Needs a C++
        compiler (checked at fit: a ValueError if none). The fitted model pickles
        uncompiled, and a loaded one predicts uncompiled.
    num_workers : int, default=0
        DataLoader worker processes for lazily decoded images (``ImageLoader(lazy=True)``);
        batches are pinned in memory on CUDA. In-memory arrays are gathered batch by batch
        in the main process (one indexing operation per batch; on CUDA into pinned staging
        buffers, copied asynchronously while the previous batch computes).
    data_device : {"auto", "cpu", "cuda"}, default="auto"
        Where an in-memory training set lives during fit. "cuda": copied to the fit's GPU
        once, batches gathered there (a ValueError if the fit is not on CUDA or the data
        take more than half the free GPU memory). "auto": "cuda" when the fit runs on
        CUDA and the data fit, else host memory (with ``verbose``, one line says why).
        "cpu": host memory. Lazy datasets are always read from the host. Pass uint8
        images (``ImageLoader(dtype="uint8")``) to fit 4x more images.
    random_state : int, RandomState or None, default=None
        Seeds weight init, dropout, augmentation, the data order and the validation
        split; same seed → same model on CPU, also for fits running in parallel threads.
        Each fit draws from its own random stream: torch's global RNG is left as the
        caller had it (:mod:`cxr_estimators._rng`). None draws the seed from numpy's
        global RNG, as sklearn does.
    verbose : int, default=0
        0 silent, 1 epoch table, 2 epoch table and progress bar.
    callbacks : list or None, default=None
        Extra skorch callbacks (a logger such as ``skorch.callbacks.TensorBoard``, an
        ``EpochScoring``), instances or ``(name, callback)`` pairs, run after ours. Each
        fit uses a clone (``sklearn.base.clone``; a shallow copy where a parameter, such
        as a writer, cannot be deep-copied), so the given objects are never changed. A
        name (or score name) that one of ours already has is an error. Callbacks are
        code, which ``cxr_estimators.save`` does not store: set ``callbacks=None`` on
        the fitted model before saving it.
    warm_start : bool, default=False
        True: a second ``fit`` starts from the fitted weights (with a new optimizer)
        instead of a new initialisation, for ``max_epochs`` more epochs. The classes and
        the image shape must be those of the first fit (the findings, for multilabel y).
    uncertain : None, {"ignore", "zeros", "ones"} or dict, default=None
        Multilabel ``y`` only (docs/multilabel.md): what an uncertain label (-1, as
        CheXpert writes it) means. "ignore": left out of the loss and the metrics, as a
        missing label (NaN) always is; "zeros" / "ones": absent / present; a dict gives a
        policy per finding (``{"Atelectasis": "ones", "Edema": "ones"}``), with the key
        ``"default"`` for the findings it does not name. A -1 without a policy is an
        error naming the finding.
    thresholds : None, float, array-like of shape (k,) or dict, default=None
        Multilabel ``y`` only: the probability from which ``predict`` calls a finding
        present, one for all, one per finding, or ``{finding: threshold}`` (others 0.5);
        None: 0.5. Read at predict time; :func:`cxr_estimators.thresholds.tune_thresholds`
        sets them for a target sensitivity or specificity.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        With multilabel ``y`` (n, k): ``0 .. k-1``, the output indices (as sklearn's
        ``MLPClassifier``); ``predict_proba`` then gives (n, k) independent probabilities
        and ``predict`` (n, k) 0/1 at ``thresholds``.
    findings_ : ndarray of shape (k,)
        Multilabel ``y`` only: the finding names (a DataFrame's columns, else 0 .. k-1).
    input_normalization_ : (tuple, tuple) or None
        ``(mean, std)`` of the :class:`~cxr_estimators.preprocessing.CompactImages` seen in
        fit, which the model applies to uint8/uint16 input (buffers of its ``input_norm``
        step); None when fitted on float images. Predicting on compact images with another
        normalisation is an error.
    data_device_ : str
        Where the training set lived during fit ("cpu" or "cuda").
    n_features_in_ : int
        Number of values per image (C·H·W); images at predict time must have the same shape.
    image_shape_ : tuple
        ``(C, H, W)`` seen in fit.
    net_ : skorch.NeuralNetClassifier
        The trained skorch net; ``module_`` is the :class:`~cxr_estimators.backbones.CXRNet`.
    module_ : torch.nn.Module
    history_ : skorch.History
        Per-epoch ``train_loss``, ``train_acc`` (on the training batches as trained, with
        dropout and augmentation on), ``valid_loss``, ``valid_acc`` and the monitored
        ``valid_<metric>`` of ``early_stopping``.
    best_epoch_ : int
        The epoch (1-based) whose weights the model holds: early stopping's best epoch,
        else the last one (with ``average_weights``, the last epoch trained: the average
        runs up to it). Retraining on train + validation for that many epochs without
        an internal split is ``clf.set_params(max_epochs=clf.best_epoch_,
        early_stopping=None, validation_fraction=0).fit(X_all, y_all)``.
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
        "backbone_kwargs": [dict, None],
        "weights": [str, os.PathLike, None],
        "freeze": ["boolean", Interval(numbers.Integral, 0, None, closed="left")],
        "pooling": [StrOptions(set(POOLINGS)), None],
        "neurons": [Interval(numbers.Integral, 1, None, closed="left"), tuple],
        "head_batch_norm": ["boolean"],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "input_dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "weight_decay_scope": [StrOptions({"all", "head"}), list, tuple],
        "head_order": [StrOptions({"bn_act", "act_bn"})],
        "valid_class_weight": ["boolean"],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "optimizer_kwargs": [dict, None],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "early_stopping": [Interval(numbers.Integral, 1, None, closed="left"), dict, None],
        "lr_schedule": [str, dict, None],
        "label_smoothing": [Interval(numbers.Real, 0, 1, closed="left")],
        "average_weights": [StrOptions({"ema", "swa"}), dict, None],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "sampling": [StrOptions({"balanced"}), None],
        "augment": ["boolean", dict, None],
        "tta": [Interval(numbers.Integral, 0, None, closed="left"), dict, None],
        "checkpoint_dir": [str, os.PathLike, None],
        "cache": ["boolean", str, os.PathLike, None],
        "device": [str],  # "cuda:N" too: checked by distributed.resolve_device
        "precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "predict_batch_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "compile": ["boolean"],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "data_device": [StrOptions({"auto", "cpu", "cuda"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
        "warm_start": ["boolean"],
        "uncertain": [StrOptions(set(_targets.UNCERTAIN_POLICIES)), dict, None],
        "thresholds": [Interval(numbers.Real, 0, 1, closed="both"), dict, "array-like",
                       None],
    }

    #: Upper bounds that keep allocations sane (neurons=10**9 is a 512 GB head).
    _param_upper_bounds = {"neurons": 65536}

    def __init__(self, backbone="resnet18", weights=None, freeze=False, neurons=128,
                 dropout=0.5, weight_decay=0.0, optimizer="adam", lr=1e-3, batch_size=32,
                 max_epochs=10, early_stopping=5, lr_schedule=None, label_smoothing=0.0,
                 average_weights=None, validation_fraction=0.1,
                 class_weight=None, augment=None, tta=None, checkpoint_dir=None, cache=None,
                 device="auto", precision="auto", predict_batch_size=None, compile=False,
                 num_workers=0, data_device="auto", random_state=None,
                 verbose=0, callbacks=None, warm_start=False, backbone_kwargs=None, pooling=None,
                 head_batch_norm=False, input_dropout=0.0, weight_decay_scope="all",
                 optimizer_kwargs=None, sampling=None, uncertain=None, thresholds=None,
                 head_order="bn_act", valid_class_weight=False):
        self.backbone = backbone
        self.backbone_kwargs = backbone_kwargs
        self.weights = weights
        self.freeze = freeze
        self.pooling = pooling
        self.neurons = neurons
        self.head_batch_norm = head_batch_norm
        self.head_order = head_order
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.weight_decay = weight_decay
        self.weight_decay_scope = weight_decay_scope
        self.optimizer = optimizer
        self.optimizer_kwargs = optimizer_kwargs
        self.sampling = sampling
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.lr_schedule = lr_schedule
        self.label_smoothing = label_smoothing
        self.average_weights = average_weights
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.valid_class_weight = valid_class_weight
        self.augment = augment
        self.tta = tta
        self.checkpoint_dir = checkpoint_dir
        self.cache = cache
        self.device = device
        self.precision = precision
        self.predict_batch_size = predict_batch_size
        self.compile = compile
        self.num_workers = num_workers
        self.data_device = data_device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.uncertain = uncertain
        self.thresholds = thresholds

    # ------------------------------------------------------------------ fit helpers
    def _build_module(self, n_classes, image_shape, weights, augmenter, normalization=None):
        """The untrained :class:`~cxr_estimators.backbones.CXRNet` for these parameters:
        what ``fit`` trains and what :func:`cxr_estimators.load` fills with saved weights.
        ``normalization``: of compact training images (``input_normalization_``)."""
        return build_model(
            self.backbone, n_classes, weights=weights, in_channels=image_shape[0],
            neurons=self.neurons, dropout=self.dropout, freeze=self.freeze,
            augment=augmenter, pooling=self.pooling, head_batch_norm=self.head_batch_norm,
            input_dropout=self.input_dropout, backbone_kwargs=self.backbone_kwargs,
            image_size=tuple(image_shape[1:]), normalization=normalization,
            head_order=self.head_order,
        )

    # ------------------------------------------------------------------ public API
    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, groups=None):
        """Train on images ``X`` (n, C, H, W) / (n, H, W) with labels ``y`` (n,).

        Every input is checked before anything fitted is replaced, so a fit that fails on
        bad input leaves a previously fitted model as it was.

        Parameters
        ----------
        X : array-like of shape (n, C, H, W) or (n, H, W), or an image dataset
            Normalised float images, or
            :class:`~cxr_estimators.preprocessing.CompactImages` (uint8/uint16 from
            ``ImageLoader(dtype="uint8")``), normalised inside the model.
        y : array-like of shape (n,), or (n, k) for k findings
            Labels; a 2-D ``y`` (array or DataFrame, k >= 2) trains one network with k
            sigmoid outputs and a binary cross-entropy per finding: 1 present, 0 absent,
            NaN not labelled (masked out of the loss), -1 uncertain (see ``uncertain``).
            ``class_weight="balanced"`` then weighs each finding's positives by its
            negatives / positives ratio; early stopping may monitor "loss" or "roc_auc"
            (the mean over the findings with both classes in the validation set; those
            skipped are in ``history_`` as ``valid_roc_auc_skipped``), or one finding's
            with ``{"monitor": "roc_auc", "finding": "Effusion"}``.
        sample_weight : array-like of shape (n,), default=None
            Non-negative weight of each image's loss, in training and in the internal
            validation loss: each batch's loss is the weighted mean of its images'
            losses (times their class weights, if any), as in sklearn's
            ``MLPClassifier``. A given ``X_val`` is scored unweighted. Under metadata
            routing request it with ``set_fit_request(sample_weight=True)``.
        X_val : array-like of shape (n_val, C, H, W) or image dataset, default=None
            A validation set (images shaped like ``X``) for early stopping, the LR
            schedule, checkpoints and the per-epoch history, instead of an internal split:
            all of ``X`` is then trained on and ``validation_fraction`` is ignored (as in
            sklearn's ``HistGradientBoostingClassifier.fit(X_val=, y_val=)``). In a
            Pipeline, ``Pipeline(..., transform_input=["X_val"])`` with metadata routing
            and ``clf.set_fit_request(X_val=True, y_val=True)`` passes it through the same
            preprocessing as ``X``.
        y_val : array-like of shape (n_val,) or (n_val, k), default=None
            Labels of ``X_val``, all among those of ``y`` (the same findings, in the same
            order, for multilabel ``y``).
        groups : array-like of shape (n,), default=None
            Patient ids. The internal validation split (early stopping, LR schedule,
            checkpoint) then keeps each patient on one side, like the outer CV should.
            In a Pipeline pass ``clf__groups=groups``; in ``GridSearchCV.fit`` pass both
            ``groups=groups`` (for the outer folds) and ``clf__groups=groups``. Unused
            with ``X_val``.

        Returns
        -------
        self : CXRClassifier

        Raises
        ------
        TrainingDivergedError
            The loss became NaN or inf, exploded (finite but a million times its start),
            or the model collapsed to one class with a high loss (rules:
            :mod:`cxr_estimators._divergence`); the message names the epoch and the
            likely cause (lr, sample or class weights, augmentation, input). A previously fitted model is left as it was (as for any error).
        KeyboardInterrupt
            Ctrl-C during training, re-raised after the estimator was left usable with the
            weights so far (early stopping's best) and ``history_[-1]["interrupted"]``
            set, so that a search stops instead of scoring a half-trained model.
        MemoryError
            A training batch's estimated activations do not fit in the available memory.
        """
        self._validate_params()
        name = type(self).__name__
        X, classes, y_enc, groups = training_input(X, y, groups, name, self.sampling,
                                                   self.uncertain)
        findings = classes if y_enc.ndim == 2 else None  # multilabel: _targets
        if findings is not None:
            classes = np.arange(len(findings))  # as sklearn's MLPClassifier
        image_shape = _inputs.image_shape(X)
        normalization = getattr(X, "normalization", None)
        sample_weight = _check_sample_weight(sample_weight, len(y_enc))
        previous = warm_start_module(self, findings if findings is not None else classes,
                                     image_shape, multilabel=findings is not None)
        valid = validation_set(X_val, y_val, classes if findings is None else findings,
                               image_shape, normalization, name, X, self.uncertain,
                               multilabel=findings is not None)
        es_spec = early_stopping_spec(self.early_stopping, classes)
        _targets.check_monitor(es_spec, findings)
        check_lr_schedule(self.lr_schedule, self.max_epochs, self.lr)
        check_average_weights(self.average_weights, self.max_epochs)
        check_tta(self.tta, self.augment)
        _features.check_cache(self.cache)
        warn_double_balancing(self.class_weight, self.sampling)
        if self.checkpoint_dir is not None and distributed.is_main_process():
            check_checkpoint_dir(self.checkpoint_dir)  # made here, by fit, not by load
        augmenter = make_augmenter(self.augment)
        device = distributed.resolve_device(self.device)
        runtime = _runtime.resolve_runtime(self.backbone, device, self.precision)
        if self.compile:
            _runtime.check_compile(device)
        distributed.check_same_data(len(y_enc), classes)
        seed = distributed.same_on_all_ranks(fit_seed(self.random_state))
        rng = FitRandomness(seed, device)
        with rng.global_stream():  # weight init draws from this fit's stream
            module = self._build_module(len(classes), image_shape,
                                        self.weights if previous is None else None,
                                        augmenter, normalization)
        if previous is not None:
            load_warm_start(self, module, previous)
        if distributed.rank() > 0:  # DDP: own dropout/augmentation draws per rank
            rng.reseed(distributed.rank())
        runtime.prepare(module)
        use_cache = (self.cache not in (None, False) and self.freeze is True
                     and module.augment is None)
        check_fit_memory(module, image_shape, min(self.batch_size, len(X)), device,
                         runtime.amp, training=not use_cache, backbone=self.backbone)
        check_frozen_features(module, X, self.backbone)
        digest = _features.features_digest(module) if use_cache else None  # frozen: fixed
        # the validation pass's batch; without one, not worth a probe of the model
        predict_batch_size = (self._predict_batch_size(device, module, image_shape, runtime)
                              if valid is not None or self.validation_fraction else None)
        with _runtime.thread_share():
            if use_cache:
                X = np.array(self._cached_features(module, X, runtime, device, digest))
                if valid is not None:
                    valid = (np.array(self._cached_features(module, valid[0], runtime,
                                                            device, digest)), valid[1])
            split = train_split(self.validation_fraction, y_enc, groups, seed,
                                valid=None if valid is None else valid_dataset(*valid))
            net = make_net(self, module.head if use_cache else module, classes, y_enc,
                           device=device, runtime=runtime, split=split, es_spec=es_spec,
                           rng=rng, weighted=sample_weight is not None,
                           predict_batch_size=predict_batch_size, findings=findings)
            placed, data_device, why = _feed.place(X, y_enc, self.data_device, device,
                                                   sample_weight)
            if why and self.verbose:
                print(why)
            net.fit(_training_data(X, y_enc, sample_weight)
                    if isinstance(X, torch.utils.data.Dataset) else placed, y_enc)
        distributed.finish_fit(net)  # DDP: every rank keeps rank 0's weights
        if use_cache:
            # The head was trained in place; serve predictions with the whole model.
            net.module_ = module.to(device)
            net.module = module
        net.module_.eval()
        _drop_training_state(net)
        # Training succeeded: only now replace what a previous fit learned.
        self.classes_ = classes
        self.__dict__.pop("findings_", None)
        if findings is not None:
            self.findings_ = findings
        self.image_shape_ = image_shape
        self.n_features_in_ = int(np.prod(image_shape))
        self.input_normalization_ = normalization
        self.device_ = device
        self.data_device_ = data_device
        self._uses_cache = use_cache
        self._trunk_digest = digest
        self._seed = seed  # also seeds test-time augmentation
        self.net_ = net
        self.best_epoch_ = best_epoch(net)
        raise_if_interrupted(net)  # after the state above: usable, and marked as such
        return self

    def _initialize_net(self):
        """The skorch net ``fit`` builds for ``classes_``, ``image_shape_`` and ``device_``,
        initialised but not trained (``weights`` is not read: random init), in eval mode.
        :func:`cxr_estimators.load` puts the saved weights into it."""
        device = self.device_
        runtime = _runtime.resolve_runtime(self.backbone, device, self.precision)
        with warnings.catch_warnings():  # about the random init this is about to replace
            warnings.simplefilter("ignore", UserWarning)
            module = self._build_module(len(self.classes_), self.image_shape_, None,
                                        make_augmenter(self.augment),
                                        getattr(self, "input_normalization_", None))
        runtime.prepare(module)
        # no validation pass (split=None) to size: predictions size their own batches;
        # no checkpoint (skorch's would make checkpoint_dir where the model is loaded)
        net = make_net(self, module, self.classes_, np.arange(len(self.classes_)),
                       device=device, runtime=runtime, split=None, es_spec=None,
                       rng=FitRandomness(getattr(self, "_seed", 0) or 0, device),
                       writes_files=False, findings=self._findings())
        # a loaded model predicts uncompiled: compiling needs a C++ compiler on this machine
        net.set_params(compile=False)
        net.initialize()
        net.module_.eval()
        _drop_training_state(net)
        return net

    def _findings(self):
        """``findings_`` of a multilabel fit, else None (also for models fitted before
        the attribute existed)."""
        return getattr(self, "findings_", None)

    @property
    def module_(self):
        check_is_fitted(self, "net_")
        return self.net_.module_

    @property
    def history_(self):
        check_is_fitted(self, "net_")
        return self.net_.history

    def __sklearn_clone__(self):
        """sklearn's clone; a ``callbacks`` entry whose parameters cannot be deep-copied
        (an open writer, a lock) is copied shallowly instead of failing, as fit does."""
        try:
            return super().__sklearn_clone__()
        except Exception:  # noqa: BLE001 - deep-copying a callback parameter failed
            if not self.callbacks:
                raise
        stripped = copy.copy(self)
        stripped.callbacks = None
        new = clone(stripped)
        new.callbacks = clone_callbacks(self.callbacks)
        return new

    def __setstate__(self, state):
        super().__setstate__(state)
        if "net_" in state:  # skorch may have mapped a CUDA model to the CPU on load
            self.device_ = str(self.net_.device)

    def _check_X(self, X):
        check_is_fitted(self, "net_")
        X = prediction_input(X, self.image_shape_, getattr(self, "input_normalization_", None),
                             type(self).__name__)
        return _Labelled(X) if isinstance(X, torch.utils.data.Dataset) else X

    def _predict_batch_size(self, device=None, module=None, image_shape=None, runtime=None):
        """``predict_batch_size``, or its default for ``module`` on ``device`` and images of
        ``image_shape`` under ``runtime`` (each by default the fitted one)."""
        if self.predict_batch_size is not None:
            return int(self.predict_batch_size)
        device = device or self.device_
        if torch.device(device).type != "cpu":
            return self.batch_size
        return _runtime.cpu_predict_batch_size(
            self.module_ if module is None else module, image_shape or self.image_shape_,
            (runtime or self._runtime()).amp)

    def _runtime(self):
        """The fitted net's layout and precision (:class:`cxr_estimators._runtime.Runtime`);
        plain float32 once the model was moved off the device type it was fitted for."""
        net = self.net_
        if torch.device(net.device).type != getattr(net, "amp_device", "cuda"):
            return _runtime.Runtime(net.device)
        return _runtime.Runtime(net.device, channels_last=net.channels_last, amp=net.amp)

    def _cached_features(self, module, X, runtime, device, digest):
        return _features.trunk_features(
            module, X, self.backbone, device,
            self._predict_batch_size(device, module, _inputs.image_shape(X), runtime),
            memory=self.cache, runtime=runtime, digest=digest,
        )

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes), columns in ``classes_`` order."""
        X = self._check_X(X)
        tta = check_tta(self.tta, self.augment)
        with _runtime.thread_share():
            if tta is not None:
                with tta_context(self.net_, *tta, seed=getattr(self, "_seed", None),
                                 multilabel=self._findings() is not None):
                    proba = self._stream_proba(X)
            elif getattr(self, "_uses_cache", False):
                # frozen trunk: features of X come from the cache shared by all grid
                # points (a CV test fold is the same for every one); only the head runs
                images = X.images if isinstance(X, _Labelled) else X
                runtime = self._runtime()
                features = self._cached_features(self.module_, images, runtime,
                                                 self.device_, self._trunk_digest)
                head = self.module_.head.eval()
                with torch.inference_mode(), runtime.autocast():
                    # a copy: cached features are read-only, shared by every fit
                    logits = head(torch.tensor(features, device=self.device_))
                proba = (torch.sigmoid(logits.float()) if self._findings() is not None
                         else torch.softmax(logits.float(), dim=1)).cpu().numpy().astype(
                    np.float64)
            else:
                proba = self._stream_proba(X)
        if self._findings() is not None:  # one probability per finding, (n, k)
            return proba
        return proba / proba.sum(axis=1, keepdims=True)

    def _stream_proba(self, X):
        """Probabilities (n, n_classes) of the whole model, batch by batch into one array
        (:func:`cxr_estimators._training.stream_proba`)."""
        return stream_proba(self.net_, X, len(self.classes_), self._predict_batch_size(),
                            multilabel=self._findings() is not None)

    def decision_function(self, X):
        """Log-odds of ``classes_[1]`` for binary problems, else per-class log-probabilities."""
        proba = self.predict_proba(X)
        if self._findings() is not None:  # multilabel: the log-odds of each finding
            proba = np.clip(proba, 1e-12, 1 - 1e-12)
            return np.log(proba) - np.log1p(-proba)
        proba = np.clip(proba, 1e-12, 1.0)
        if len(self.classes_) == 2:
            return np.log(proba[:, 1]) - np.log(proba[:, 0])
        return np.log(proba)

    def predict(self, X):
        """Predicted labels, shape (n,), values from ``classes_``."""
        proba = self.predict_proba(X)
        if self._findings() is not None:  # multilabel: (n, k) 0/1 at per-finding thresholds
            cut = _targets.check_thresholds(self.thresholds, self._findings())
            return (proba >= cut[None, :]).astype(np.int64)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``(X, y)``, as sklearn's; labels not in ``classes_`` are an error
        (no prediction can match them, so the score would be silently low). Multilabel:
        subset accuracy (every finding right), with missing labels an error."""
        check_is_fitted(self, "net_")
        if self._findings() is None:
            check_known_labels(y, self.classes_, "score: y")
            return super().score(X, y, sample_weight=sample_weight)
        # multilabel: sklearn's subset accuracy, on labels checked against the findings
        _, Y = _targets.multilabel_targets(y, self.uncertain, "score: y",
                                           findings=self._findings(), against="the model")
        if np.isnan(Y).any():
            raise ValueError("score: y has missing (NaN) or ignored uncertain labels; "
                             "subset accuracy needs every label of every image. Use "
                             "metrics.clinical_report(y, predict_proba(X)) per finding")
        return super().score(X, Y.astype(np.int64), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.input_tags.allow_nan = False
        return tags
