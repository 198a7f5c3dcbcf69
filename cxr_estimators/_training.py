"""skorch and torch plumbing of :class:`~cxr_estimators.CXRClassifier`.

The skorch net with the bf16-autocast / channels_last forward pass (skorch's own AMP
needs ``accelerate``; what runs how is decided in :mod:`cxr_estimators._runtime`), the
prediction loop, per-image loss weights (``sample_weight``), its construction from
the estimator's parameters, the validation set (skorch's ``predefined_split`` for a given
one, a stratified or grouped split otherwise), the dataset wrapper that pairs lazily
decoded images with labels, and what is dropped from a fitted net before pickling.
Written here because skorch does none of these as we need. Device resolution is in
:mod:`cxr_estimators.distributed`, the per-fit random streams in
:mod:`cxr_estimators._rng`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import numbers
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils import compute_class_weight
from skorch import NeuralNetClassifier
from skorch.callbacks import ProgressBar
from skorch.dataset import ValidSplit, get_len
from skorch.helper import predefined_split
from skorch.utils import to_tensor
from torch import nn

from . import _feed, _runtime, _targets, distributed
from ._callbacks import make_callbacks, mark_interrupted
from ._validation import check_class_weights, did_you_mean, is_finite_number
from .backbones.heads import decay_param_groups

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


class _Net(NeuralNetClassifier):
    """skorch net whose forward pass may run under bf16 autocast with channels_last input,
    on the device type it was fitted for (``amp_device``; see :mod:`cxr_estimators._runtime`).

    Also: training forward passes draw from the fit's own random stream
    (:class:`_FitRandomness`, attribute ``fit_rng_``), a batch given as
    ``{"X": images, "sample_weight": w}`` weights each image's loss, and under torch DDP
    (:mod:`cxr_estimators.distributed`) training batches go through the DDP wrapper and
    each rank trains on its share of the training set; fits running at once in one
    process share the cores (:func:`cxr_estimators._runtime.thread_share`, refreshed each
    epoch)."""

    def __init__(self, *args, amp=False, channels_last=False, amp_device="cuda", **kwargs):
        super().__init__(*args, **kwargs)
        self.amp = amp
        self.channels_last = channels_last
        self.amp_device = amp_device

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        _runtime.refresh_thread_share()
        self._modes_set = None  # the first batch of each epoch sets the modes in full

    def _set_training(self, training=True):
        """skorch's, but done once per epoch and mode rather than before every batch.

        skorch calls ``module.train(training)`` before each batch; the backbone's
        ``train`` walks its trunk to keep frozen blocks in eval mode, the largest wrapper
        cost in a cProfile of a simple_cnn epoch on the CPU.
        The modes are set in full on the first call of each epoch (so a callback that
        unfreezes blocks at an epoch's start, such as skorch's ``Unfreezer``, still takes
        effect), whenever the mode asked for changes, and whenever a module's own flag
        disagrees with it (someone switched it in between)."""
        key = (bool(training), len(self.history))
        modules = [getattr(self, name + "_", None) for name in self._modules + self._criteria]
        modules = [m for m in modules if isinstance(m, torch.nn.Module)]
        if (getattr(self, "_modes_set", None) == key
                and all(m.training == key[0] for m in modules)):
            return
        super()._set_training(training)
        self._modes_set = key

    def forward_module(self):
        """The module that runs forward passes: ``module_``, or its compiled version
        (``compile=True``) kept aside after fit (:func:`_drop_training_state`)."""
        compiled = getattr(self, "compiled_module_", None)
        if compiled is not None and compiled._orig_mod is self.module_:
            return compiled
        return self.module_

    def inference_module(self):
        """The module predictions run on: :meth:`forward_module`; on CPU (uncompiled) a
        copy with its BatchNorm folded into the convolutions
        (:class:`_runtime.FoldedInference`)."""
        module = self.forward_module()
        if module is not self.module_ or torch.device(self.device).type != "cpu":
            return module
        folded = getattr(self, "_folded_inference", None)
        if folded is None:
            folded = self._folded_inference = _runtime.FoldedInference()
        return folded.module(module, channels_last=self.channels_last)

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        super().on_train_begin(net, X, y, **kwargs)
        self._folded_inference = None  # holds the previous weights and their copy

    def load_params(self, f_params=None, **kwargs):
        """skorch's, with the reason named when ``f_params`` holds only the head's weights
        (a checkpoint of a fit on cached features, ``cache=``)."""
        try:
            return super().load_params(f_params=f_params, **kwargs)
        except RuntimeError as exc:
            head = getattr(self.module_, "head", None)
            if f_params is None or head is None or "Missing key" not in str(exc):
                raise
            state = torch.load(f_params, map_location="cpu", weights_only=True)
            if set(state) != set(head.state_dict()):
                raise
            raise RuntimeError(
                f"{f_params!r} holds only the head's weights: it is a checkpoint of a fit on "
                "cached backbone features (cache=...), where only the head trains. Load it "
                "into the head: net.module_.head.load_state_dict(torch.load(f_params, "
                "weights_only=True))") from exc

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("compiled_module_", None)  # compiled code does not pickle
        return state

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # skorch's partial_fit swallows KeyboardInterrupt; mark a user's one so that
        # CXRClassifier.fit can re-raise it (see _callbacks.raise_if_interrupted)
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt:
            mark_interrupted(self)
            raise

    def get_iterator(self, dataset, training=False):
        ddp = getattr(self, "ddp_", None)
        if training and ddp is not None:  # skorch has opened this epoch's history row
            dataset = ddp.shard(dataset, epoch=len(self.history))
        return super().get_iterator(dataset, training)

    def infer(self, x, **fit_params):
        if isinstance(x, dict):  # {"X": images, "sample_weight": w}: weights are get_loss's
            x = x["X"]
        module, rng = self.forward_module(), None
        if module.training:
            ddp, rng = getattr(self, "ddp_", None), getattr(self, "fit_rng_", None)
            module = module if ddp is None else ddp.wrapped(module, self.device)
        with rng.global_stream() if rng is not None else contextlib.nullcontext():
            try:
                return self._forward(module, x, **fit_params)
            except ValueError as exc:
                if module.training and "Expected more than 1 value per channel" in str(exc):
                    raise ValueError(
                        "a BatchNorm layer (head_batch_norm=True, or a trainable block of "
                        "the trunk) cannot train on a batch of one image, and this "
                        "training batch holds one: the training images (after any "
                        "validation split) leave a last batch of 1 with "
                        f"batch_size={self.batch_size}; choose a batch_size that leaves at "
                        "least 2, or one image more or fewer") from exc
                raise

    def _forward(self, module, x, **fit_params):
        # After a GPU-trained model is loaded on a CPU-only machine, skorch moves it to the
        # CPU; autocast and channels_last are then skipped.
        kind = torch.device(self.device).type
        if not (kind == getattr(self, "amp_device", "cuda")
                and (self.amp or self.channels_last)):
            return module(to_tensor(x, device=self.device), **fit_params)
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=self.amp):
            return module(x, **fit_params).float()

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        """skorch's epoch, but the batch losses stay on the device until the epoch ends.

        skorch records ``loss.item()`` after every step, which makes the host wait for
        the GPU each batch. Here each batch's history entry holds the detached 0-d loss
        tensor while the epoch runs (a callback reading it mid-epoch still gets a number
        it can format or compare) and the floats are written in one transfer at the end,
        before the epoch's callbacks average them. On the CPU (where ``item()`` waits for
        nothing) and with a progress bar (which shows every batch's loss) skorch's loop
        runs unchanged."""
        if iterator is None:
            return
        if not self._defers_losses():
            return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        key = prefix + "_loss"
        losses = []
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            losses.append(step["loss"].detach())
            self.history.record_batch(key, losses[-1])
            self.history.record_batch(prefix + "_batch_size", get_len(
                batch[0] if isinstance(batch, (tuple, list)) else batch))
            self.notify("on_batch_end", batch=batch, training=training, **step)
        if losses:
            values = torch.stack(losses).float().cpu().tolist()
            for entry, value in zip(self.history[-1]["batches"][-len(losses):], values):
                entry[key] = value
        self.history.record(prefix + "_batch_count", len(losses))

    def _defers_losses(self):
        """Keep batch losses on the device until the epoch ends (see run_single_epoch)."""
        return (str(self.device).startswith("cuda")
                and not any(isinstance(cb, ProgressBar) for _, cb in self.callbacks_))

    def get_loss(self, y_pred, y_true, X=None, training=False):
        """Cross-entropy; with ``sample_weight`` the weighted mean over the batch,
        ``sum(w_i c_i l_i) / sum(w_i c_i)`` (``c_i``: the class weight of image i's label,
        as torch's own class-weighted mean), as sklearn's ``MLPClassifier`` weights its
        batches. A batch whose weights are all 0 has loss 0. Multilabel targets: the
        criterion's own masked, weighted mean (:class:`_targets.MaskedBCEWithLogitsLoss`).
        The validation loss leaves class weights out unless ``valid_class_weight``."""
        if getattr(self.criterion_, "masks_missing", False):
            weight = X.get("sample_weight") if isinstance(X, dict) else None
            return self.criterion_(y_pred, to_tensor(y_true, device=y_pred.device), weight)
        if not training and not getattr(self, "valid_class_weight_", True) and getattr(
                self.criterion_, "weight", None) is not None:
            return self._unweighted_loss(y_pred, y_true, X)
        per_image = super().get_loss(y_pred, y_true, X=X, training=training)
        if per_image.ndim == 0:  # trained without sample_weight: torch's own mean
            return per_image
        if isinstance(X, dict) and "sample_weight" in X:
            w = to_tensor(X["sample_weight"], device=per_image.device).to(per_image.dtype)
        else:  # an unweighted validation set (X_val) of a weighted fit
            w = torch.ones_like(per_image)
        class_weight = getattr(self.criterion_, "weight", None)
        norm = w if class_weight is None else w * class_weight[
            to_tensor(y_true, device=per_image.device)]
        return (w * per_image).sum() / norm.sum().clamp_min(torch.finfo(norm.dtype).tiny)

    def _unweighted_loss(self, y_pred, y_true, X):
        """The validation loss without class weights (``valid_class_weight=False``),
        sample-weighted where the validation data carries ``sample_weight``."""
        y_true = to_tensor(y_true, device=y_pred.device)
        per_image = nn.functional.cross_entropy(
            y_pred, y_true, reduction="none", label_smoothing=self.criterion_.label_smoothing)
        w = (to_tensor(X["sample_weight"], device=per_image.device).to(per_image.dtype)
             if isinstance(X, dict) and "sample_weight" in X else torch.ones_like(per_image))
        return (w * per_image).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


def _predict_batches(net, X, batch_size):
    """Batches of X as tensors: from an in-memory array, :func:`_feed.device_batches`
    (on CPU views of the array: no copy, no collate; on CUDA pinned and prefetched), or
    a DataLoader over a lazy dataset with the net's workers."""
    if not isinstance(X, torch.utils.data.Dataset):
        yield from _feed.device_batches(X, batch_size, net.device)
        return
    loader = torch.utils.data.DataLoader(
        X, batch_size=batch_size, num_workers=net.iterator_valid__num_workers,
        pin_memory=str(net.device).startswith("cuda"),
        generator=torch.Generator())  # else it draws from torch's global RNG
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def stream_proba(net, X, n_classes, batch_size, multilabel=False):
    """Softmax probabilities (n, n_classes), float64, of ``net`` on ``X``, written batch by
    batch into one array allocated up front; written by hand for two reasons.

    skorch's ``predict_proba`` collects a list of small per-batch arrays and concatenates
    them at the end: ``benchmarks/memory.py`` (modes ``lazy`` and ``lazy_skorch``, 224 px,
    up to 10,000 images; docs/benchmarks.md) measured the process growing with the number
    of images that way, and not this way (our reading, not verified further: the small
    arrays, allocated between the large per-batch buffers, keep glibc from reusing or
    returning the freed ones). And skorch batches an in-memory array image by image
    (``__getitem__`` + collate) under ``no_grad``; here a batch is a view of the array,
    run under ``inference_mode`` with its own batch size (``predict_batch_size``), and
    each batch's probabilities are copied once, into the float64 output. On CPU the
    batches run on a copy with BatchNorm folded (:meth:`_Net.inference_module`).
    ``multilabel``: a sigmoid per output (finding) instead of the softmax.
    """
    proba = np.empty((len(X), n_classes), dtype=np.float64)
    out = torch.from_numpy(proba)
    if any(m.training for m in net.module_.modules()):  # eval() costs more than the check
        net.module_.eval()
    module = net.inference_module()
    start = 0
    with torch.inference_mode():
        for xb in _predict_batches(net, X, batch_size):
            logits = net._forward(module, xb)
            out[start:start + len(logits)].copy_(
                torch.sigmoid(logits.float()) if multilabel
                else torch.softmax(logits.float(), dim=1))
            start += len(logits)
    return proba


class _Labelled(torch.utils.data.Dataset):
    """(image, label) pairs from an image dataset, as skorch's iterators expect; with
    ``sample_weight``, ``({"X": image, "sample_weight": w}, label)``."""

    def __init__(self, images, y=None, sample_weight=None):
        self.images = images
        self.y = y
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        label = self.y[i] if self.y is not None else 0
        if self.sample_weight is None:
            return self.images[i], label
        return {"X": self.images[i], "sample_weight": self.sample_weight[i]}, label


def _training_data(X, y, sample_weight):
    """What ``net.fit`` gets: X, a dict with the weights, or a labelled dataset."""
    if isinstance(X, torch.utils.data.Dataset):
        return _Labelled(X, y, sample_weight)
    return X if sample_weight is None else {"X": X, "sample_weight": sample_weight}


def _check_sample_weight(sample_weight, n):
    """float32 (n,) weights scaled to mean 1, or None when absent or all equal (the
    weighted mean is then the plain mean, so the unweighted path gives the same model)."""
    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_weight must be numbers; got {exc}") from None
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise ValueError(f"sample_weight has shape {w.shape} but y has {n} labels; "
                         f"expected shape ({n},)")
    for bad, what in ((~np.isfinite(w), "not finite"), (w < 0, "negative")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"sample_weight[{i}] = {w[i]!r} is {what}; sample weights "
                             "must be finite and >= 0")
    if not w.any():
        raise ValueError(f"sample_weight is zero for all {n} images; nothing to train on")
    if np.all(w == w[0]):
        return None
    # to mean 1: the weighted mean loss does not change, and huge weights (1e38) cannot
    # overflow float32 in its sums
    return (w / w.mean()).astype(np.float32)


class _GroupedValidSplit:
    """skorch ``train_split``: a validation part of about ``fraction`` of the images that
    shares no group (patient) with the training part, stratified as far as groups allow.

    skorch's ``ValidSplit`` cannot do this (it never passes y to a grouped splitter), so
    it is sklearn's ``StratifiedGroupKFold``'s first fold with ``round(1 / fraction)``
    folds."""

    def __init__(self, fraction, groups, random_state):
        self.fraction = fraction
        self.groups = np.asarray(groups)
        self.random_state = random_state

    def __call__(self, dataset, y, **fit_params):
        cv = StratifiedGroupKFold(max(2, round(1 / self.fraction)), shuffle=True,
                                  random_state=self.random_state)
        y = np.asarray(y)
        train, valid = next(cv.split(np.zeros(len(y)), y, self.groups))
        lost = sorted(set(np.unique(y).tolist()) - set(np.unique(y[train]).tolist()))
        if lost:
            warnings.warn(
                f"the grouped validation split (validation_fraction={self.fraction}) puts "
                f"every image of class index(es) {lost} (of classes_) in the validation part: the "
                "model trains without them. Use fewer patients per class in validation, "
                "more data, or pass X_val/y_val", UserWarning, stacklevel=2)
        return (torch.utils.data.Subset(dataset, train),
                torch.utils.data.Subset(dataset, valid))


def class_weights(class_weight, classes, y_enc):
    """Cross-entropy class weights (float32 tensor) or None, as sklearn's ``class_weight``."""
    if class_weight is None:
        return None
    if isinstance(class_weight, dict):
        unknown = set(class_weight) - set(classes.tolist())
        if unknown:
            raise ValueError(
                f"class_weight has labels {sorted(map(str, unknown))} not in y's classes "
                f"{classes.tolist()}"
            )
        flags = {k: v for k, v in class_weight.items() if isinstance(v, (bool, np.bool_))}
        if flags:
            raise ValueError(f"class_weight values must be numbers, not booleans; got "
                             f"{flags!r} (a bool is not taken as a weight)")
        try:
            weights = np.array([float(class_weight.get(c, 1.0)) for c in classes])
        except (TypeError, ValueError):
            raise ValueError(f"class_weight values must be numbers; got {class_weight!r}") \
                from None
    else:
        weights = compute_class_weight(class_weight, classes=np.arange(len(classes)), y=y_enc)
    check_class_weights(weights, classes)
    return torch.as_tensor(weights, dtype=torch.float32)


def warn_double_balancing(class_weight, sampling):
    """Warn at fit about ``class_weight="balanced"`` with ``sampling="balanced"``."""
    if isinstance(class_weight, str) and class_weight == "balanced" and sampling == "balanced":
        warnings.warn(
            "class_weight='balanced' with sampling='balanced' corrects the class imbalance "
            "twice: the sampler already shows each class equally often, and the weights "
            "then count the minority class's images more on top, so the model leans "
            "towards it. Use one of the two", UserWarning, stacklevel=3)


def train_split(validation_fraction, y_enc, groups=None, seed=None, valid=None):
    """skorch ``train_split``: ``valid`` (a dataset) as is, else a stratified (or, with
    ``groups``, patient-grouped) split of ``validation_fraction``; None without one."""
    if valid is not None:
        return predefined_split(valid)
    frac = validation_fraction
    if frac == 0:
        return None
    if y_enc.ndim == 2:  # multilabel: stratified on findings (_targets)
        return _targets.FindingsValidSplit(frac, groups, seed)
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
            UserWarning, stacklevel=4,
        )
        return None
    if groups is not None:
        return _GroupedValidSplit(frac, groups, seed)
    return ValidSplit(frac, stratified=True, random_state=seed)


def valid_dataset(X_val, y_val_enc):
    """The given validation set as a dataset skorch's ``predefined_split`` takes (an
    in-memory one batch-gathered by :mod:`cxr_estimators._feed`)."""
    if isinstance(X_val, torch.utils.data.Dataset):
        return _Labelled(X_val, y_val_enc)
    return _feed.ArrayDataset(X_val, y_val_enc)


def optimizer_kwargs(optimizer, kwargs):
    """``optimizer_kwargs`` checked against the torch optimizer's signature, as skorch
    ``optimizer__*`` parameters."""
    kwargs = dict(kwargs or {})
    cls = OPTIMIZERS[optimizer]
    known = [name for name in inspect.signature(cls).parameters
             if name not in ("self", "params", "lr", "weight_decay")]
    for key in kwargs:
        if key in ("lr", "weight_decay"):
            raise ValueError(f"optimizer_kwargs has {key!r}; set the {key}= parameter "
                             "instead")
        if key not in known:
            raise ValueError(
                f"optimizer_kwargs has {key!r}, not an argument of {cls.__name__} "
                f"(optimizer={optimizer!r}); known: {known}{did_you_mean(key, known)}")
    _check_kinds(cls, optimizer, kwargs)
    _try_optimizer(cls, optimizer, kwargs)
    return {f"optimizer__{key}": value for key, value in kwargs.items()}


def _check_kinds(cls, optimizer, kwargs):
    """Each value of the kind of its torch default: a flag must be a bool (torch reads
    ``amsgrad="no"`` as True), a number a number, a tuple a tuple of as many numbers
    (``betas=(0.9,)`` fails mid-step in torch)."""
    defaults = inspect.signature(cls).parameters
    for key, value in kwargs.items():
        default = defaults[key].default
        if isinstance(default, bool):
            ok = isinstance(value, (bool, np.bool_))
            kind = "True or False"
        elif isinstance(default, numbers.Real):
            ok = is_finite_number(value)
            kind = "a finite number"
        elif isinstance(default, tuple):
            ok = (isinstance(value, (tuple, list)) and len(value) == len(default)
                  and all(is_finite_number(v) for v in value))
            kind = f"a tuple of {len(default)} numbers"
        else:
            continue
        if not ok:
            raise ValueError(f"optimizer_kwargs={{{key!r}: {value!r}}} is not valid for "
                             f"{cls.__name__} (optimizer={optimizer!r}): {key} must be "
                             f"{kind}, like its default {default!r}")


def _try_optimizer(cls, optimizer, kwargs):
    """Build the torch optimizer on one parameter, so that a value it refuses (or cannot
    compare, such as ``betas=0.9``) is an error naming ``optimizer_kwargs`` before
    anything is trained."""
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=1e-3, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"optimizer_kwargs={kwargs!r} is not valid for {cls.__name__} "
                         f"(optimizer={optimizer!r}): {exc}") from exc


def _dataset_labels(dataset):
    """Encoded labels of a training dataset as skorch hands it to the iterator."""
    if isinstance(dataset, torch.utils.data.Subset):
        return _dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    return np.asarray(dataset.y)


def balanced_loader(dataset, *, shuffle=True, generator=None, **kwargs):
    """skorch ``iterator_train`` for ``sampling="balanced"``: a DataLoader whose
    ``WeightedRandomSampler`` draws ``len(dataset)`` images per epoch, each class equally
    often, with replacement. Built per epoch by skorch on the training part only (after
    any internal validation split); ``generator`` carries the seed across epochs."""
    y = _dataset_labels(dataset)
    weights = 1.0 / np.bincount(y)[y]
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), len(y), replacement=True,
        generator=generator)
    # in-memory data batch-gathered by the feed, datasets by a DataLoader (_feed)
    return _feed.make_iterator(dataset, sampler=sampler, generator=generator, **kwargs)


def make_net(est, module, classes, y_enc, *, device, runtime, split, es_spec, rng,
             weighted=False, predict_batch_size=None, writes_files=None, findings=None):
    """The skorch net for one fit of ``est`` (a :class:`CXRClassifier`) on labels
    ``classes[y_enc]``, drawing its randomness from ``rng`` (:class:`_rng.FitRandomness`),
    with the layout and precision of ``runtime`` (:class:`_runtime.Runtime`);
    ``weighted``: the data will carry ``sample_weight``; ``predict_batch_size``: of the
    validation pass (default ``batch_size``); ``writes_files``: whether its callbacks
    write checkpoints (default: on the main process; a net built to predict writes none);
    ``findings``: the names of a multilabel fit's outputs (a masked BCE per finding)."""
    n_classes = len(classes)
    kwargs = {}
    if findings is not None:
        kwargs.update(_multilabel_net_kwargs(est, findings, y_enc))
    else:
        weights = class_weights(est.class_weight, classes, y_enc)
        if weights is not None:
            kwargs["criterion__weight"] = weights
        kwargs.update(criterion=nn.CrossEntropyLoss,
                      criterion__label_smoothing=float(est.label_smoothing))
    if weighted:  # per-image losses, weighted in _Net.get_loss
        kwargs["criterion__reduction"] = "none"
    if not est.verbose:
        kwargs["callbacks__print_log"] = None
    kwargs.update(optimizer_kwargs(est.optimizer, est.optimizer_kwargs))
    groups = decay_param_groups(module, est.weight_decay_scope)
    if groups is not None:
        kwargs["optimizer__param_groups"] = groups
    callbacks = make_callbacks(es_spec, n_classes=n_classes, has_valid=split is not None,
                               max_epochs=est.max_epochs, lr_schedule=est.lr_schedule,
                               average_weights=est.average_weights,
                               checkpoint_dir=est.checkpoint_dir, verbose=est.verbose,
                               extra=est.callbacks, sync_ranks=distributed.is_active(),
                               findings=findings,
                               labels=None if findings is not None else (classes, y_enc),
                               writes_files=(distributed.is_main_process()
                                             if writes_files is None else writes_files))
    net = _Net(
        module=module,
        optimizer=OPTIMIZERS[est.optimizer],
        optimizer__weight_decay=est.weight_decay,
        lr=est.lr,
        batch_size=est.batch_size,
        max_epochs=est.max_epochs,
        train_split=split,
        callbacks=callbacks,
        classes=np.arange(n_classes),
        # in-memory arrays: batch-gathered (_feed); datasets: a DataLoader with workers
        dataset=_feed.ArrayDataset,
        iterator_train=balanced_loader if est.sampling == "balanced" else _feed.make_iterator,
        iterator_valid=_feed.make_iterator,
        iterator_train__device=device,
        iterator_valid__device=device,
        iterator_train__shuffle=True,
        iterator_train__generator=rng.generator(),
        # a DataLoader without a generator draws its base seed from torch's global RNG
        iterator_valid__generator=rng.generator(1),
        iterator_train__num_workers=est.num_workers,
        iterator_valid__num_workers=est.num_workers,
        iterator_train__pin_memory=device.startswith("cuda"),
        iterator_valid__pin_memory=device.startswith("cuda"),
        iterator_valid__batch_size=predict_batch_size or est.batch_size,
        device=device,
        amp=runtime.amp,
        channels_last=runtime.channels_last,
        amp_device=runtime.device_type,
        compile=bool(est.compile),
        verbose=int(bool(est.verbose)),
        **kwargs,
    )
    net.fit_rng_ = rng  # not a skorch parameter: training only (_drop_training_state)
    net.valid_class_weight_ = bool(est.valid_class_weight)
    distributed.begin_fit(net, rng.seed)
    return net


def _multilabel_net_kwargs(est, findings, Y):
    """skorch arguments of a multilabel net: the masked BCE with per-finding positive
    weights (``Y`` is None when the net is rebuilt to predict), no accuracy scoring."""
    kwargs = {"criterion": _targets.MaskedBCEWithLogitsLoss,
              "criterion__label_smoothing": float(est.label_smoothing),
              "callbacks__valid_acc": None}
    if Y is not None and np.ndim(Y) == 2:
        kwargs["criterion__pos_weight"] = _targets.positive_weights(est.class_weight,
                                                                    findings, Y)
    return kwargs


def warm_start_module(est, classes, image_shape, multilabel=False):
    """The fitted module ``est`` continues from (``warm_start=True``), or None; the classes
    (findings, when ``multilabel``) and image shape must be those it was fitted on."""
    if not (est.warm_start and hasattr(est, "net_")):
        return None
    fitted = getattr(est, "findings_", None)
    if multilabel or fitted is not None:
        _targets.check_warm_start(fitted, classes if multilabel else None)
        classes = est.classes_  # the findings' output indices, equal by the check
    if not np.array_equal(classes, est.classes_):
        raise ValueError(f"warm_start=True: y has classes {classes.tolist()} but the "
                         f"fitted model has {est.classes_.tolist()}; fit a new model "
                         "(warm_start=False) to change the classes")
    if tuple(image_shape) != tuple(est.image_shape_):
        raise ValueError(f"warm_start=True: X has images of shape {tuple(image_shape)} "
                         f"but the fitted model was trained on {est.image_shape_}")
    return est.net_.module_


def load_warm_start(est, module, previous):
    """Load the fitted ``previous`` module's weights into the newly built ``module``."""
    try:
        module.load_state_dict(previous.state_dict())
    except RuntimeError as exc:
        raise ValueError(
            "warm_start=True: the fitted model's weights do not fit the model these "
            f"parameters build (backbone={est.backbone!r}, neurons={est.neurons}); "
            f"{str(exc).splitlines()[0]}") from None


def _drop_training_state(net):
    """Free what only training needs: EarlyStopping's copy of the best weights (already
    restored into the module) and the LR scheduler. They would bloat the pickle and, for a
    CUDA model, hold CUDA tensors that plain pickle cannot load on a CPU-only machine.
    A compiled module (``compile=True``) is kept aside for prediction in this process
    (not pickled); ``module_`` becomes the plain module, which pickles."""
    orig = getattr(net.module_, "_orig_mod", None)
    if orig is not None:
        # not a skorch module (skorch refuses torch modules set outside initialize)
        object.__setattr__(net, "compiled_module_", net.module_)
        net.module_ = orig
    net.criterion_ = getattr(net.criterion_, "_orig_mod", net.criterion_)
    for _, callback in net.callbacks_:
        if hasattr(callback, "best_model_weights_"):
            callback.best_model_weights_ = None
        if hasattr(callback, "lr_scheduler_"):  # holds the optimizer and its state
            callback.lr_scheduler_ = None
    # The ``module`` *parameter* is the same instance as ``module_``; skorch maps only
    # ``module_`` to the CPU on load, so keep the class here, not the CUDA instance.
    net.module = type(net.module_)
    if isinstance(net.train_split, functools.partial):  # predefined_split holds X_val
        net.train_split = None  # the validation images must not travel with the model
    net.fit_rng_ = None  # the random stream and the DDP state only serve training
    net.ddp_ = None
