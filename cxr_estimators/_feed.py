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
           "device_batches", "make_iterator", "match_normalization", "place"]

#: ``data_device="auto"`` keeps the training set on the GPU when it takes at most this
#: share of the GPU's free memory at the start of fit (the rest is for the model,
#: activations and the optimizer state).
RESIDENT_FRACTION = 0.5


class ArrayDataset(torch.utils.data.Dataset):
    """Images ``X`` (n, C, H, W) and labels ``y`` (n,) or None, indexed by batches.

    ``X`` is a numpy array (float32, or uint8/uint16 from
    :class:`~cxr_estimators.preprocessing.CompactImages`, whose ``normalization`` is kept)
    or a torch tensor (e.g. on the GPU). ``dataset[i]`` is one ``(image, label)`` pair;
    :class:`BatchFeed` reads whole batches. ``X`` and ``y`` are attributes, as in
    ``skorch.dataset.Dataset``.
    """

    def __init__(self, X, y=None):
        self.normalization = getattr(X, "normalization", None)
        self.X = X if isinstance(X, torch.Tensor) else np.asarray(X)
        self.y = y if y is None or isinstance(y, torch.Tensor) else np.asarray(y)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        x, y = self.batch(np.array([i]))
        return x[0], (0 if y is None else y[0])

    def batch(self, idx):
        """Rows ``idx`` (int64 array) of X and y as tensors, one gather each."""
        if isinstance(self.X, torch.Tensor):
            idx = torch.as_tensor(idx, device=self.X.device)
            return (_take_rows(self.X, idx),
                    None if self.y is None else self.y.index_select(0, idx.to(self.y.device)))
        return (torch.from_numpy(_gather(self.X, idx)),
                None if self.y is None else torch.from_numpy(self.y[idx]))


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
                  pin_memory=False, device="cpu", **kwargs):
    """skorch iterator: a :class:`BatchFeed` over an :class:`ArrayDataset` (or a Subset of
    one), else a ``torch.utils.data.DataLoader`` with the same arguments."""
    source = _array_source(dataset)
    if source is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                          generator=generator, num_workers=num_workers,
                          pin_memory=pin_memory, **kwargs)
    return BatchFeed(*source, batch_size=batch_size, shuffle=shuffle, generator=generator,
                     device=device)


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
    """

    def __init__(self, data, indices=None, batch_size=32, shuffle=False, generator=None,
                 device="cpu"):
        self.data = data
        self.indices = indices
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        rows = range(len(data) if indices is None else len(indices))
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
        """The host half of the CUDA path: batch k gathered into staging buffer k % 2
        (pinned with ``pin_memory``); yields ``(slot, x, y)``, views valid until the
        slot is filled again, two batches later."""
        if self._slots is None or self._slots[0].x.is_pinned() != pin_memory:
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
        for slot, x, y in self.staged():
            ready = slot.copy(x, y, self.device, stream)
            if pending is not None:
                yield _hand_over(*pending)
            pending = ready
        if pending is not None:
            yield _hand_over(*pending)


class _StagingSlot:
    """A staging buffer for one batch of images (and labels), and the event of the copy
    that last read it."""

    def __init__(self, data, batch_size, pin_memory=True):
        X, y = data.X, data.y
        self.x = torch.empty((batch_size, *X.shape[1:]), dtype=torch.from_numpy(X[:0]).dtype,
                             pin_memory=pin_memory)
        self.y = None if y is None else torch.empty(
            batch_size, dtype=torch.from_numpy(y[:0]).dtype, pin_memory=pin_memory)
        self.data = data
        self.copied = None

    def gather(self, idx):
        if self.copied is not None:
            self.copied.synchronize()  # the copy that last read this buffer is done
        m = len(idx)
        np.take(self.data.X, idx, axis=0, out=self.x.numpy()[:m], mode="clip")
        if self.y is None:
            return self.x[:m], None
        np.take(self.data.y, idx, out=self.y.numpy()[:m], mode="clip")
        return self.x[:m], self.y[:m]

    def copy(self, x, y, device, stream):
        with torch.cuda.stream(stream):
            x = x.to(device, non_blocking=True)
            y = None if y is None else y.to(device, non_blocking=True)
            self.copied = stream.record_event()
        return x, y, self.copied


def _hand_over(x, y, copied):
    """Make the current (compute) stream wait for the copy, and keep the allocator from
    reusing the batch's memory before the compute stream is done with it."""
    current = torch.cuda.current_stream(x.device)
    current.wait_event(copied)
    x.record_stream(current)
    if y is not None:
        y.record_stream(current)
    return x, y


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


def place(X, y, data_device, device, free_bytes=None):
    """The training set as an :class:`ArrayDataset` where :func:`choose_data_device`
    says, copied to the GPU once if there; returns ``(dataset, where, why)``. A torch
    ``Dataset`` (lazy images) is returned as it is: it is read from the host."""
    if isinstance(X, torch.utils.data.Dataset):
        if data_device == "cuda":
            raise ValueError("data_device='cuda' keeps an in-memory training set on the GPU, "
                             "but X is a lazy dataset (decoded batch by batch); use "
                             "data_device='auto' or 'cpu', or ImageLoader(lazy=False)")
        return X, "cpu", None
    dataset = ArrayDataset(X, y)
    X = dataset.X
    nbytes = X.nbytes if isinstance(X, np.ndarray) else X.numel() * X.element_size()
    where, why = choose_data_device(data_device, device, nbytes, free_bytes)
    if where == "cuda":
        dataset.X = torch.as_tensor(X).to(device)
        dataset.y = torch.as_tensor(dataset.y).to(device)
    return dataset, where, why


def match_normalization(X, kind, fitted, name="CXRClassifier"):
    """Predict-time input ``X`` (after validation) for a model fitted on images with
    normalisation ``fitted`` (None: float images); ``kind`` is the dtype kind X came with.

    Compact X for a model fitted on float images is normalised on the host; compact X
    normalised otherwise than in fit, or bare integers for a model fitted on compact
    images, are errors. Float X is taken as normalised, as always."""
    given = getattr(X, "normalization", None)
    if given is not None and fitted is None:
        return X.to_float32()
    if given is not None and tuple(map(tuple, given)) != tuple(map(tuple, fitted)):
        raise ValueError(
            f"X is compact images normalised with (mean, std) = {given}, but {name} was "
            f"fitted on images normalised with {fitted}; transform X with the ImageLoader "
            "used in fit")
    if given is None and fitted is not None and kind in ("u", "i"):
        raise ValueError(
            f"{name} was fitted on compact images (uint8/uint16 with normalisation "
            f"(mean, std) = {fitted}), but X is a plain integer array without its "
            "normalisation; transform X with the ImageLoader used in fit, or wrap it: "
            "CompactImages(X, *clf.input_normalization_)")
    return X

