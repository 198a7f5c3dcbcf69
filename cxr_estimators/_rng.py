"""Per-fit random streams: ``random_state`` without touching torch's global RNG.

Shuffling takes a ``torch.Generator`` (:meth:`FitRandomness.generator`). Weight
initialisation (``nn.Module`` constructors), dropout and torchvision's random transforms
draw from torch's *global* RNG and take no generator, so each fit keeps its own RNG state
(CPU, and the fit's CUDA device), seeded from ``random_state``, and
:meth:`FitRandomness.global_stream` swaps it into the global RNG for the duration of a
block, under one process-wide lock, then swaps the caller's state back. Written here
because torch has no such scope (``torch.random.fork_rng`` restores the caller's state,
but neither keeps a stream across blocks nor excludes other threads).

What the lock costs: it serialises the *training forward passes* of fits that run in
threads of one process (backward passes, validation and prediction run concurrently);
``benchmarks/scale_out.py`` measures it (``rng_lock`` in its JSON). Fits in separate
processes (loky, Dask, torchrun) never wait on it.

Anything else that sets or draws from the global RNG while fits may run in other threads
must do it inside :meth:`FitRandomness.global_stream` too (test-time augmentation and the
SWA BatchNorm pass do), and every DataLoader gets a generator: one without draws its base
seed from the global RNG.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
from sklearn.utils import check_random_state

#: Held while torch's global RNG serves one fit's stream.
GLOBAL_RNG_LOCK = threading.RLock()


def fit_seed(random_state):
    """The int seed of one fit: ``random_state`` itself, or drawn from it (a
    ``RandomState``, or numpy's global one for None, as sklearn estimators do)."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


class FitRandomness:
    """The random stream of one fit (see the module docstring).

    Parameters
    ----------
    seed : int
    device : str
        The fit's device; on CUDA its generator's state is kept as well.
    """

    def __init__(self, seed, device="cpu"):
        self.seed = int(seed)
        self.device = str(device)
        self.cuda_index = (torch.device(device).index or 0
                           if self.device.startswith("cuda") else None)
        self.cpu_state = torch.Generator().manual_seed(self.seed).get_state()
        self.cuda_state = None
        if self.cuda_index is not None:
            cuda = torch.Generator(device=f"cuda:{self.cuda_index}").manual_seed(self.seed)
            self.cuda_state = cuda.get_state()

    def generator(self, offset=0):
        """A fresh CPU ``torch.Generator`` seeded from this fit's seed (+ ``offset``)."""
        return torch.Generator().manual_seed(self.seed + offset)

    def reseed(self, offset):
        """Restart the global-RNG stream from ``seed + offset`` (one per DDP rank: own
        dropout and augmentation draws); :meth:`generator` keeps using ``seed``."""
        other = FitRandomness(self.seed + offset, self.device)
        self.cpu_state, self.cuda_state = other.cpu_state, other.cuda_state

    @contextlib.contextmanager
    def global_stream(self):
        """Run the block with torch's global RNG set to this fit's stream."""
        with GLOBAL_RNG_LOCK:
            saved_cpu = torch.get_rng_state()
            saved_cuda = (torch.cuda.get_rng_state(self.cuda_index)
                          if self.cuda_index is not None else None)
            torch.set_rng_state(self.cpu_state)
            if saved_cuda is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_index)
            try:
                yield
            finally:
                self.cpu_state = torch.get_rng_state()
                torch.set_rng_state(saved_cpu)
                if saved_cuda is not None:
                    self.cuda_state = torch.cuda.get_rng_state(self.cuda_index)
                    torch.cuda.set_rng_state(saved_cuda, self.cuda_index)
