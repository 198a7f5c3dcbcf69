"""One fit on several processes (GPUs) with torch DDP, and device placement per rank or
worker (:func:`resolve_device`).

Launch a script with ``torchrun --nproc_per_node N script.py``; in the script, open the
process group with :func:`process_group` and call ``fit`` as usual::

    from cxr_estimators import CXRClassifier, distributed

    with distributed.process_group():          # NCCL on GPUs, gloo on CPUs
        clf = CXRClassifier(backbone="resnet50", random_state=0).fit(X, y)
        if distributed.is_main_process():
            joblib.dump(clf, "model.joblib")  # or cxr_estimators.save

While a process group of more than one process is open, ``CXRClassifier.fit`` trains one
model data-parallel: torch's :class:`~torch.nn.parallel.DistributedDataParallel` averages
the gradients, each rank trains on its share of the training images every epoch (the
indices of a :class:`~torch.utils.data.DistributedSampler`; ``batch_size`` is per rank), and ``device="auto"``
puts rank ``LOCAL_RANK`` on ``cuda:<LOCAL_RANK>``. Every rank must pass the same X and y.
Written here, because neither torch nor skorch does it for a skorch net: the epoch's
losses and accuracies are averaged over the ranks before early stopping and LR scheduling
read them (so every rank stops at the same epoch), and at the end rank 0's parameters
and buffers (BatchNorm statistics) are broadcast, so the fitted estimator is the same on
every rank and usable (and saveable) as a plain one. Checkpoints are written by rank 0
only. docs/scale_out.md says why this uses torch DDP directly rather than skorch's
``accelerate`` integration.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re

import torch
import torch.distributed as dist
from skorch.callbacks import Callback

__all__ = [
    "is_active",
    "is_main_process",
    "local_rank",
    "process_group",
    "rank",
    "resolve_device",
    "world_size",
]


def local_rank():
    """``LOCAL_RANK`` set by torchrun (the process's index on its node), or None."""
    value = os.environ.get("LOCAL_RANK")
    if value is None or value == "":
        return None
    try:
        index = int(value)
    except ValueError:
        index = -1
    if index < 0:
        raise ValueError(f"LOCAL_RANK={value!r} is not a process index (an int >= 0)")
    return index


# ------------------------------------------------------------------ device placement
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _mps_available():
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device):
    """``CXRClassifier(device=...)`` → the torch device string fit uses.

    "auto": CUDA, then MPS, then CPU. On CUDA it is "cuda" — the first GPU that
    ``CUDA_VISIBLE_DEVICES`` shows this process, which is how dask-cuda's
    ``LocalCUDACluster`` and ``CUDA_VISIBLE_DEVICES=N dask worker ...`` give each worker
    its own GPU — or ``"cuda:<LOCAL_RANK>"`` under a launcher that sets ``LOCAL_RANK``
    (torchrun), so one rank per GPU needs no user code. "cuda:N" must name a visible GPU.
    """
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        close = difflib.get_close_matches(str(device), ["auto", "cpu", "cuda", "mps"], n=1)
        raise ValueError(
            f"device={device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU "
            f"index) or 'mps'" + (f"; did you mean {close[0]!r}?" if close else ""))
    if device == "auto":
        if torch.cuda.is_available():
            return _cuda_for_local_rank()
        return "mps" if _mps_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but no CUDA GPU is available; use "
                             "device='auto'")
        if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but {_visible_gpus()}")
    if device == "mps" and not _mps_available():
        raise ValueError("device='mps' but no Apple GPU (MPS) is available; use "
                         "device='auto'")
    return device


def _visible_gpus():
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"this process sees {n} CUDA GPU{'s' if n != 1 else ''} (cuda:0 to "
            f"cuda:{n - 1})" + ("" if visible is None else
                                f" with CUDA_VISIBLE_DEVICES={visible!r}"))


def _cuda_for_local_rank():
    index = local_rank()
    if index is None:
        return "cuda"
    n = torch.cuda.device_count()
    if index < n:
        return f"cuda:{index}"
    if n == 1:  # the launcher gave each rank its own GPU through CUDA_VISIBLE_DEVICES
        return "cuda:0"
    raise ValueError(f"device='auto' with LOCAL_RANK={index}, but {_visible_gpus()}; give "
                     "each rank its GPU (one GPU per rank, or CUDA_VISIBLE_DEVICES per "
                     "rank) or pass device='cuda:N'")


def bf16_supported(device):
    """Whether fit trains in bf16 autocast on ``device`` (a CUDA GPU that supports it)."""
    if not str(device).startswith("cuda"):
        return False
    with torch.cuda.device(torch.device(device)):
        return torch.cuda.is_bf16_supported()


# ------------------------------------------------------------------- process groups
def is_active():
    """Whether a torch.distributed process group of more than one process is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size():
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process():
    """True on rank 0, and in a process that is not part of a process group."""
    return rank() == 0


@contextlib.contextmanager
def process_group(backend=None, **kwargs):
    """Open torch's default process group from torchrun's environment, close it at exit.

    ``backend`` defaults to "nccl" when CUDA is available, else "gloo". On CUDA, the
    process's current device becomes ``cuda:<LOCAL_RANK>``. Other keyword arguments go to
    :func:`torch.distributed.init_process_group`. Inside an already open group this is a
    no-op.
    """
    if dist.is_initialized():
        yield
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing and "init_method" not in kwargs:
        raise RuntimeError(f"process_group() needs the environment that torchrun sets; "
                           f"{missing} are not set. Launch with: torchrun "
                           "--nproc_per_node N script.py")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and local_rank() is not None:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, **kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------- used by fit
def same_on_all_ranks(value):
    """Rank 0's ``value`` (any picklable object), on every rank."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_data(n_images, classes):
    """Raise on every rank if the ranks were given different training sets."""
    if not is_active():
        return
    seen = [None] * world_size()
    dist.all_gather_object(seen, (int(n_images), [str(c) for c in classes]))
    if any(s != seen[0] for s in seen):
        detail = "; ".join(f"rank {r}: {s[0]} images, classes {s[1]}"
                           for r, s in enumerate(seen))
        raise ValueError("distributed fit: every rank must pass the same X and y; got "
                         + detail)


class DDPState:
    """What one data-parallel fit needs on its skorch net (attribute ``ddp_``): the DDP
    wrapper of the module (built at the first training batch, by every rank at once) and
    the shuffling seed shared by the ranks."""

    def __init__(self, seed):
        self.seed = int(seed)
        self._wrapped = None

    def wrapped(self, module, device):
        if self._wrapped is None or self._wrapped.module is not module:
            device = torch.device(device)
            ids = [device.index or 0] if device.type == "cuda" else None
            self._wrapped = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=ids)
        return self._wrapped

    def shard(self, dataset, epoch):
        """This rank's share of the training set for ``epoch``: the indices torch's
        ``DistributedSampler`` gives it (one permutation seeded by seed + epoch, padded
        to a multiple of the ranks, split by rank), as a ``Subset``. Sharding the dataset
        rather than replacing the sampler keeps whatever iterator the net uses
        (shuffling, ``sampling="balanced"``) working on the share, and gives every rank
        the same number of batches."""
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return torch.utils.data.Subset(dataset, list(sampler))


def begin_fit(net, seed):
    """Make ``net`` train data-parallel if a process group is open; returns whether."""
    net.ddp_ = DDPState(seed) if is_active() else None
    return net.ddp_ is not None


def finish_fit(net):
    """Broadcast rank 0's weights and buffers; drop the DDP wrapper."""
    if getattr(net, "ddp_", None) is None:
        return
    with torch.no_grad():
        for tensor in net.module_.state_dict().values():
            dist.broadcast(tensor, src=0)
    net.ddp_ = None


#: History keys averaged over the ranks at the end of each epoch.
_SYNCED = ("train_loss", "train_acc", "valid_loss", "valid_acc")


class SyncEpochScores(Callback):
    """Average this epoch's losses and accuracies over the ranks, and recompute their
    ``*_best`` flags, so early stopping, LR scheduling and the history agree on every
    rank. It must come after the scoring callbacks and before the ones that read them."""

    def on_epoch_end(self, net, **kwargs):
        if not is_active():
            return
        row = net.history[-1]
        keys = [k for k in _SYNCED if k in row]
        device = net.device if dist.get_backend() == "nccl" else "cpu"
        values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64,
                              device=device)
        dist.all_reduce(values)
        values = values.cpu() / world_size()
        for key, value in zip(keys, values.tolist()):
            net.history.record(key, value)
            if f"{key}_best" in row:
                previous = [h[key] for h in net.history[:-1] if key in h]
                lower = key.endswith("loss")
                best = min(previous, default=math.inf) if lower else max(
                    previous, default=-math.inf)
                net.history.record(f"{key}_best",
                                   bool(value < best if lower else value > best))
