"""Batches of in-memory images for skorch: gathered in one step, staged, prefetched, or
kept on the GPU.

skorch's default input path wraps an array in ``skorch.dataset.Dataset`` and lets a
``DataLoader`` fetch it image by image (``__getitem__`` per item, then
``default_collate`` stacks them): Python work per image, and on CUDA a second copy of
every batch into freshly pinned memory. Here:

* :class:`ArrayDataset` holds the images (float32 or uint8/uint16 numpy arrays, or a
  tensor already on the GPU) and the labels; a batch is one fancy-indexing operation.
* :func:`make_iterator` is the net's ``iterator_train`` / ``iterator_valid``. The batch
  order comes from torch's own samplers (``RandomSampler`` with the fit's generator
  inside a ``DataLoader`` of index batches), which draw exactly the random numbers the
  per-item ``DataLoader`` draws: same seed, same batches, same model. Anything else (the
  lazy :class:`~cxr_estimators.ImageDataset`) gets a plain ``DataLoader`` with workers.
* On CUDA, :class:`BatchFeed` gathers each batch straight into one of two pinned staging
  buffers, copies it with ``non_blocking=True`` on a side stream, and prepares batch
  k + 1 before handing batch k over: the host gather and the copy overlap the GPU's work.
* :func:`place` copies the training set to the GPU once (``data_device``) when it fits
  in a fraction of the free GPU memory; batches are then gathered on the GPU.

Written by hand: neither skorch nor torch has a batch-indexed array dataset with pinned
double buffering (a ``DataLoader`` with ``pin_memory=True`` pins a copy of each collated
batch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

__all__ = ["ArrayDataset", "BatchFeed", "RESIDENT_FRACTION", "choose_data_device",
           "device_batches", "make_iterator", "match_normalization", "pack", "place"]

#: ``data_device="auto"`` keeps the training set on the GPU when it takes at most this
#: share of the GPU's free memory at the start of fit (the rest is for the model,
#: activations and the optimizer state).
RESIDENT_FRACTION = 0.5


class ArrayDataset(torch.utils.data.Dataset):
    """Images ``X`` (n, C, H, W), labels ``y`` (n,) or None and per-image loss weights
    ``sample_weight`` (n,) or None, indexed by batches.

    ``X`` is a numpy array (float32, or uint8/uint16 from
    :class:`~cxr_estimators.preprocessing.CompactImages`, whose ``normalization`` is kept)
    or a torch tensor (e.g. on the GPU), or skorch's form of weighted data,
    ``{"X": images, "sample_weight": w}``. A batch is ``(images, labels)``, with images
    ``{"X": images, "sample_weight": w}`` when weighted (what the net's ``infer`` and
    ``get_loss`` read). ``dataset[i]`` is one such pair; :class:`BatchFeed` reads whole
    batches. ``X`` and ``y`` are attributes, as in ``skorch.dataset.Dataset``.
    """

    def __init__(self, X, y=None, sample_weight=None):
        if isinstance(X, dict):
            X, sample_weight = X["X"], X.get("sample_weight", sample_weight)
        self.normalization = getattr(X, "normalization", None)
        self.X, self.y, self.sample_weight = (
            a if a is None or isinstance(a, torch.Tensor) else np.asarray(a)
            for a in (X, y, sample_weight))

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        x, y = self.batch(np.array([i]))
        x = {k: v[0] for k, v in x.items()} if isinstance(x, dict) else x[0]
        return x, (0 if y is None else y[0])

    def columns(self):
        """``(X, y, sample_weight)``, the arrays a batch is gathered from (None: absent)."""
        return self.X, self.y, self.sample_weight

    def batch(self, idx):
        """Rows ``idx`` (an int64 array, or a tensor on the data's device), one gather
        per column."""
        if isinstance(self.X, torch.Tensor):
            idx = torch.as_tensor(idx, device=self.X.device)
            return pack(*(None if a is None else _take_rows(a, idx) for a in self.columns()))
        return pack(*(None if a is None else torch.from_numpy(_gather(a, idx))
                      for a in self.columns()))


def pack(x, y, w=None):
    """A batch as the net takes it: ``(x, y)``, or ``({"X": x, "sample_weight": w}, y)``."""
    return ({"X": x, "sample_weight": w} if w is not None else x), y


def _gather(X, idx):
    """``X[idx]``; a slice (no copy) when ``idx`` is a run of consecutive rows, e.g. the
    batches of a prediction."""
    if len(idx) and X.flags.writeable and idx[-1] - idx[0] == len(idx) - 1 and (
            len(idx) < 2 or np.all(np.diff(idx) == 1)):
        return X[idx[0]:idx[-1] + 1]
    return X[idx]


def _take_rows(t, idx):
    """``t[idx]`` for a tensor; uint16 is gathered as int16 bits (same bytes), which
    every device supports."""
    if t.dtype == torch.uint16:
        return t.view(torch.int16).index_select(0, idx).view(torch.uint16)
    return t.index_select(0, idx)


def _array_source(dataset):
    """``(ArrayDataset, row indices or None)`` behind ``dataset`` (through the ``Subset``
    of a validation split), or None for any other dataset."""
    idx = None
    while isinstance(dataset, torch.utils.data.Subset):
        sub = np.asarray(dataset.indices, dtype=np.int64)
        idx = sub if idx is None else sub[idx]
        dataset = dataset.dataset
    return (dataset, idx) if isinstance(dataset, ArrayDataset) else None


class _Positions(torch.utils.data.Dataset):
    """Index batches as int64 arrays: what the order ``DataLoader`` yields."""

    def __getitem__(self, batch):
        return np.asarray(batch, dtype=np.int64)


def _identity(batch):
    return batch


def make_iterator(dataset, batch_size, shuffle=False, generator=None, num_workers=0,
                  pin_memory=False, device="cpu", sampler=None, **kwargs):
    """skorch iterator: a :class:`BatchFeed` over an :class:`ArrayDataset` (or a Subset of
    one), else a ``torch.utils.data.DataLoader`` with the same arguments. ``sampler``
    (e.g. DDP's ``DistributedSampler``) replaces shuffling on both."""
    source = _array_source(dataset)
    if source is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                          generator=generator, num_workers=num_workers,
                          pin_memory=pin_memory, sampler=sampler, **kwargs)
    return BatchFeed(*source, batch_size=batch_size, shuffle=shuffle, generator=generator,
                     device=device, sampler=sampler)


class BatchFeed:
    """Iterable of ``(X, y)`` batches of an :class:`ArrayDataset`, in a sampler's order.

    Parameters
    ----------
    data : ArrayDataset
    indices : int64 array or None
        The rows of ``data`` to go through (a validation split's part), None for all.
    batch_size : int
    shuffle : bool, default=False
    generator : torch.Generator or None, default=None
        Shuffling (and the order ``DataLoader``'s base seed) draw from it; None draws from
        torch's global generator, as a ``DataLoader`` does.
    device : str or torch.device, default="cpu"
        Where the batches are needed. On CUDA host arrays go through pinned staging
        buffers and a copy stream; tensors already on the GPU are gathered there. Else the
        batches are the gathered host tensors.
    sampler : torch Sampler or None, default=None
        Positions to visit (e.g. a ``DistributedSampler``: this rank's share), instead of
        ``shuffle``.
    """

    def __init__(self, data, indices=None, batch_size=32, shuffle=False, generator=None,
                 device="cpu", sampler=None):
        self.data = data
        self.indices = indices
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        rows = range(len(data) if indices is None else len(indices))
        if sampler is None:
            sampler = (RandomSampler(rows, generator=generator) if shuffle
                       else SequentialSampler(rows))
        self._order = DataLoader(_Positions(), batch_size=None, generator=generator,
                                 sampler=BatchSampler(sampler, self.batch_size, False),
                                 collate_fn=_identity)
        self._slots = None

    def __len__(self):
        return len(self._order)

    def _rows(self):
        for positions in self._order:
            yield positions if self.indices is None else self.indices[positions]

    def __iter__(self):
        if isinstance(self.data.X, torch.Tensor):
            return self._resident()
        if self.device.type == "cuda":
            return self._staged()
        return (self.data.batch(idx) for idx in self._rows())

    def _resident(self):
        """Data already on its device: one copy of the epoch's order, gathers there."""
        batches = list(self._rows())
        if not batches:
            return
        order = torch.from_numpy(np.concatenate(batches)).to(self.data.X.device)
        start = 0
        for idx in batches:
            yield self.data.batch(order[start:start + len(idx)])
            start += len(idx)

    def staged(self, pin_memory=True):
        """The host half of the CUDA path: batch k gathered into staging buffers k % 2
        (pinned with ``pin_memory``); yields ``(slot, x, y, w)``, views valid until the
        slot is filled again, two batches later (``y``, ``w``: None when absent)."""
        if self._slots is None or self._slots[0].pinned != pin_memory:
            self._slots = [_StagingSlot(self.data, self.batch_size, pin_memory)
                           for _ in range(2)]
        for k, idx in enumerate(self._rows()):
            slot = self._slots[k % 2]
            yield (slot, *slot.gather(idx))

    def _staged(self):
        """Host data to CUDA: staged, copied on a side stream, batch k handed over (the
        compute stream waits for its copy) once batch k + 1 is on its way."""
        stream = torch.cuda.Stream(self.device)
        pending = None
        for slot, *views in self.staged():
            ready = slot.copy(views, self.device, stream)
            if pending is not None:
                yield _hand_over(*pending, self.device)
            pending = ready
        if pending is not None:
            yield _hand_over(*pending, self.device)


class _StagingSlot:
    """Staging buffers for one batch of each column (images, labels, weights) and the
    event of the copy that last read them."""

    def __init__(self, data, batch_size, pin_memory=True):
        self.pinned = pin_memory
        self.columns = list(data.columns())
        self.buffers = [None if a is None else torch.empty(
            (batch_size, *a.shape[1:]), dtype=torch.from_numpy(a[:0]).dtype,
            pin_memory=pin_memory) for a in self.columns]
        self.copied = None

    def gather(self, idx):
        if self.copied is not None:
            self.copied.synchronize()  # the copy that last read these buffers is done
        m = len(idx)
        views = []
        for a, buffer in zip(self.columns, self.buffers):
            if a is None:
                views.append(None)
                continue
            np.take(a, idx, axis=0, out=buffer.numpy()[:m], mode="clip")
            views.append(buffer[:m])
        return views

    def copy(self, views, device, stream):
        with torch.cuda.stream(stream):
            moved = [None if v is None else v.to(device, non_blocking=True) for v in views]
            self.copied = stream.record_event()
        return moved, self.copied


def _hand_over(tensors, copied, device):
    """Make the current (compute) stream wait for the copy, and keep the allocator from
    reusing the batch's memory before the compute stream is done with it."""
    current = torch.cuda.current_stream(device)
    current.wait_event(copied)
    for t in tensors:
        if t is not None:
            t.record_stream(current)
    return pack(*tensors)


def device_batches(X, batch_size, device):
    """The images of ``X`` in order, batch by batch, as tensors on ``device``.

    The inference feed (used by the frozen-feature cache); its order ``DataLoader`` draws
    from a private generator, so torch's global one is left alone."""
    feed = BatchFeed(ArrayDataset(X), batch_size=batch_size, generator=torch.Generator(),
                     device=device)
    for xb, _ in feed:
        yield xb.to(device)


def choose_data_device(data_device, device, nbytes, free_bytes=None,
                       fraction=RESIDENT_FRACTION):
    """Where the training set lives: ``("cpu" | "cuda", why or None)``.

    ``why`` says why ``data_device="auto"`` keeps a CUDA fit's data in host memory;
    ``"cuda"`` where it cannot be is a ``ValueError``. ``free_bytes``: free GPU memory
    (read from the GPU when None)."""
    on_cuda = torch.device(device).type == "cuda"
    if data_device == "cpu" or (data_device == "auto" and not on_cuda):
        return "cpu", None
    if not on_cuda:
        reason = ("no CUDA GPU is available" if not torch.cuda.is_available()
                  else f"the model is on device {str(device)!r}")
        raise ValueError(f"data_device='cuda' keeps the training set on the GPU, but "
                         f"{reason}; use data_device='auto' or 'cpu'")
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(torch.device(device))[0]
    if nbytes <= fraction * free_bytes:
        return "cuda", None
    why = (f"the training set ({nbytes / 2**30:.2f} GiB) does not fit in "
           f"{fraction:.0%} of the GPU's free memory ({free_bytes / 2**30:.2f} GiB)")
    if data_device == "cuda":
        raise ValueError(f"data_device='cuda': {why}; use data_device='auto' or 'cpu'")
    return "cpu", f"data_device='auto': {why}; it stays in host memory"


def place(X, y, data_device, device, sample_weight=None, free_bytes=None):
    """The training set as an :class:`ArrayDataset` where :func:`choose_data_device`
    says, copied to the GPU once if there; returns ``(dataset, where, why)``. A torch
    ``Dataset`` (lazy images) is returned as it is: it is read from the host."""
    if isinstance(X, torch.utils.data.Dataset):
        if data_device == "cuda":
            raise ValueError("data_device='cuda' keeps an in-memory training set on the GPU, "
                             "but X is a lazy dataset (decoded batch by batch); use "
                             "data_device='auto' or 'cpu', or ImageLoader(lazy=False)")
        return X, "cpu", None
    dataset = ArrayDataset(X, y, sample_weight)
    nbytes = sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size()
                 for a in dataset.columns() if a is not None)
    where, why = choose_data_device(data_device, device, nbytes, free_bytes)
    if where == "cuda":
        dataset.X, dataset.y, dataset.sample_weight = (
            None if a is None else torch.as_tensor(a).to(device) for a in dataset.columns())
    return dataset, where, why


def match_normalization(X, kind, fitted, name="CXRClassifier", input_name="X"):
    """Input ``X`` (after validation) for a model fitted on images with normalisation
    ``fitted`` (None: float images); ``kind`` is the dtype kind X came with.

    Compact X for a model fitted on float images is normalised on the host; compact X
    normalised otherwise than in fit, or bare integers for a model fitted on compact
    images, are errors. Float X is taken as normalised, as always."""
    given = getattr(X, "normalization", None)
    if given is not None and fitted is None:
        return X.to_float32()
    if given is not None and tuple(map(tuple, given)) != tuple(map(tuple, fitted)):
        raise ValueError(
            f"{input_name} is compact images normalised with (mean, std) = {given}, but "
            f"{name} was fitted on images normalised with {fitted}; transform "
            f"{input_name} with the ImageLoader used in fit")
    if given is None and fitted is not None and kind in ("u", "i"):
        raise ValueError(
            f"{name} was fitted on compact images (uint8/uint16 with normalisation "
            f"(mean, std) = {fitted}), but {input_name} is a plain integer array without "
            f"its normalisation; transform {input_name} with the ImageLoader used in "
            "fit, or wrap it: CompactImages(X, *clf.input_normalization_)")
    return X

