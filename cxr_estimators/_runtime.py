"""How the model runs on its device: memory layout, precision, threads, compilation.

Written here because neither torch nor skorch decides these for a model:

* **channels_last** (NHWC) for the model and every batch, per backbone family, where it
  was measured faster (:data:`CPU_POLICY`; docs/design.md has the numbers and the command);
  on CUDA whenever bf16 autocast is on, as before.
* **bf16 autocast** (``precision="auto"``): on a CUDA GPU with bf16, and on a CPU with
  native bf16 (AMX-BF16 or AVX512-BF16) for the families where it was measured faster.
* **threads**: fits running at the same time in one process (joblib's threading backend,
  a Dask worker's threads) share the cores instead of each starting ``torch``'s full pool.
  joblib's default (loky) backend already gives each worker process
  ``cpu_count // n_jobs`` threads, which torch obeys; nothing is changed there.
* **compile=True**: ``torch.compile`` (inductor), checked before the fit starts.
* **BatchNorm folding for CPU prediction** (:class:`FoldedInference`): prediction runs on
  a copy of the model whose BatchNorm layers are folded into the convolutions before
  them.
* **glibc malloc** (:func:`tune_cpu_malloc`, opt-in): keep freed memory for reuse instead
  of returning it to the kernel after every training step.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fnmatch
import os
import shutil
import threading
import weakref
from copy import deepcopy

import torch
from torch import nn

__all__ = ["FoldedInference", "Runtime", "check_compile", "cpu_has_native_bf16", "cpu_policy",
           "fold_batch_norm", "onednn_allows_bf16", "refresh_thread_share", "resolve_runtime", "thread_share",
           "tune_cpu_malloc"]

#: Per backbone family on CPU: (name patterns, channels_last, bf16 autocast under
#: precision="auto" on a CPU with native bf16). From ``python -m benchmarks.cpu_layout``
#: (docs/design.md, "CPU: layout, precision, threads, compile"). A backbone matching no
#: pattern keeps the old behaviour: contiguous float32.
CPU_POLICY = (
    (("simple_cnn", "deep_cnn"), True, True),
    (("resnet*", "resnext*", "wide_resnet*"), True, True),
    (("densenet*",), True, True),
    # depthwise convolutions: channels_last helps, their bf16 backward is slower than fp32
    (("mobilenet*", "efficientnet*", "mnasnet*"), True, False),
    # the dense layers (25088 x 4096) dominate training, whatever the layout or precision;
    # channels_last speeds up prediction, bf16 does not
    (("vgg*",), True, False),
)


class Runtime:
    """What :func:`resolve_runtime` decided: ``channels_last``, ``amp`` (bf16 autocast)
    and the autocast ``device_type``."""

    def __init__(self, device, channels_last=False, amp=False):
        self.device_type = torch.device(device).type
        self.channels_last = channels_last
        self.amp = amp

    def __repr__(self):
        return (f"Runtime(device_type={self.device_type!r}, "
                f"channels_last={self.channels_last}, amp={self.amp})")

    def autocast(self):
        """bf16 autocast context when ``amp``, else a no-op context."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def layout(self, x):
        """``x`` in channels_last when the model is (4-D tensors only)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, module):
        """The module converted to the chosen memory format (in place)."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module


#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` values, lowest first (oneDNN's "CPU dispatcher
#: control" page; the AVX10 names are aliases of the AVX512_CORE_* ones). Those from
#: AVX512_CORE_BF16 on let oneDNN use bf16 instructions.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
               "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
               "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
_ONEDNN_ALIASES = {"AVX10_1_512": "AVX512_CORE_FP16", "AVX10_1_512_AMX": "AVX512_CORE_AMX",
                   "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16"}


def onednn_allows_bf16(value=None):
    """Whether ``ONEDNN_MAX_CPU_ISA`` (``value``, default: the environment's) lets oneDNN
    run bf16 instructions: unset, ``ALL``/``DEFAULT``, or AVX512_CORE_BF16 and above.
    An unknown value counts as a cap (float32 then, the same on every CPU)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))\
        if value is None else value
    isa = value.strip().upper()
    if isa in ("", "ALL", "DEFAULT"):
        return True
    isa = _ONEDNN_ALIASES.get(isa, isa)
    return isa in ONEDNN_ISAS and (ONEDNN_ISAS.index(isa)
                                   >= ONEDNN_ISAS.index("AVX512_CORE_BF16"))


def cpu_has_native_bf16():
    """Whether torch computes bf16 in hardware on this CPU: the CPU has AMX-BF16 or
    AVX512-BF16 (``torch.cpu.get_capabilities()``, which reads the hardware), *and*
    neither of the standard switches that make torch run as a lesser CPU is set below
    it: torch's ``ATEN_CPU_CAPABILITY`` (as ``torch.backends.cpu.get_cpu_capability()``
    reports it: AVX512 needed) and oneDNN's ``ONEDNN_MAX_CPU_ISA``
    (:func:`onednn_allows_bf16`). So ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``
    runs the package as an AVX2-only CPU would: float32 under ``precision="auto"``."""
    caps = torch.cpu.get_capabilities()
    if not (caps.get("amx_bf16") or caps.get("avx512_bf16")):
        return False
    return (torch.backends.cpu.get_cpu_capability() == "AVX512"
            and onednn_allows_bf16())


def cpu_policy(backbone):
    """``(channels_last, bf16)`` of :data:`CPU_POLICY` for ``backbone``."""
    for patterns, channels_last, bf16 in CPU_POLICY:
        if any(fnmatch.fnmatchcase(backbone, p) for p in patterns):
            return channels_last, bf16
    return False, False


def resolve_runtime(backbone, device, precision="auto"):
    """Layout and precision of ``backbone`` on ``device`` ("cpu", "cuda", "mps").

    ``precision``: "auto" (bf16 autocast where the hardware has it and, on CPU, where it
    was measured faster for the family), "float32" (never), "bfloat16" (always; on a CPU
    without native bf16 it is emulated and slow)."""
    kind = torch.device(device).type
    if kind == "cuda":
        with torch.cuda.device(torch.device(device)):
            supported = torch.cuda.is_bf16_supported()
        if precision == "bfloat16" and not supported:
            raise ValueError(f"precision='bfloat16' but the GPU "
                             f"{torch.cuda.get_device_name()!r} has no bf16 support; use "
                             "precision='auto' or 'float32'")
        amp = precision == "bfloat16" or (precision == "auto" and supported)
        # unchanged GPU path: channels_last goes with bf16 autocast
        return Runtime(device, channels_last=amp, amp=amp)
    if kind == "cpu":
        channels_last, bf16 = cpu_policy(backbone)
        amp = precision == "bfloat16" or (precision == "auto" and bf16
                                          and cpu_has_native_bf16())
        return Runtime(device, channels_last=channels_last, amp=amp)
    if precision == "bfloat16":
        raise ValueError(f"precision='bfloat16' is supported on 'cpu' and 'cuda', not on "
                         f"device {device!r}; use precision='auto' or 'float32'")
    return Runtime(device)


#: Default prediction batch on CPU: images per torch thread, and the cap.
CPU_PREDICT_IMAGES_PER_THREAD = 32
CPU_PREDICT_BATCH_CAP = 256
#: Small CNNs on CPU: the batch's largest activation at most this many bytes, and the
#: batch between these bounds (``python -m benchmarks.cpu_predict_batch``).
CPU_PREDICT_ACTIVATION_BYTES = 8 * 2**20
CPU_PREDICT_SMALL_CNN_BATCH = (4, 64)
#: Every other model on CPU: the batch's largest activation at most this many bytes, and
#: the batch at least this many images (at most the per-thread default).
CPU_PREDICT_LARGE_MODEL_ACTIVATION_BYTES = 64 * 2**20
CPU_PREDICT_LARGE_MODEL_MIN_BATCH = 4


def cpu_predict_batch_size(module=None, image_shape=None, amp=False):
    """The default ``predict_batch_size`` on CPU for ``module`` on images of
    ``image_shape`` ((C, H, W); ``amp``: bf16 activations, else float32).

    Both rules take the largest power of two whose batch keeps the model's largest
    activation (:func:`largest_activation_elements`, at 2 bytes a value under bf16, else
    4) within a byte budget. Past it, glibc returned the freed activations to the kernel
    after each batch and faulted them back in at the next, and prediction ran slower:

    * A small CNN (its trunk has ``activation_elements``: ``simple_cnn``, ``deep_cnn``):
      :data:`CPU_PREDICT_ACTIVATION_BYTES` (8 MiB), between 4 and 64 images: 64 at 28 px,
      32 at 64 px, 8 at 128 px, 4 from 160 px, with 32 channels in the first block and
      bf16. They move much memory for little arithmetic, and a larger batch ran at about
      half to three quarters of the best speed (at one torch thread too, so this rule
      ignores the thread count).
    * Any other model: :data:`CPU_PREDICT_LARGE_MODEL_ACTIVATION_BYTES` (64 MiB), at
      least 4 images and at most 32 per torch thread of the caller (at most 256): under
      bf16 with 2 threads, 32 images for resnet18, resnet50 or densenet121 at 224 px,
      64 at 128 px. Measured at 2 threads only.
    * Without a model or an image shape: 32 images per torch thread (at most 256).

    Measured by ``python -m benchmarks.cpu_predict_batch`` (docs/design.md)."""
    threads = max(1, torch.get_num_threads())
    default = min(CPU_PREDICT_IMAGES_PER_THREAD * threads, CPU_PREDICT_BATCH_CAP)
    if module is None or image_shape is None:
        return default
    if hasattr(getattr(module, "trunk", None), "activation_elements"):
        budget, (lo, hi) = CPU_PREDICT_ACTIVATION_BYTES, CPU_PREDICT_SMALL_CNN_BATCH
    else:
        budget, lo, hi = (CPU_PREDICT_LARGE_MODEL_ACTIVATION_BYTES,
                          CPU_PREDICT_LARGE_MODEL_MIN_BATCH, default)
    elements = largest_activation_elements(module, image_shape)
    if not elements:
        return default
    fits = max(1, budget // (elements * (2 if amp else 4)))
    return min(max(1 << (fits.bit_length() - 1), lo), hi)


def run_probe(module, x, on_output):
    """Run ``module`` once on ``x`` in eval mode without gradients, calling
    ``on_output(output)`` with each leaf module's output; the hooks are removed and every
    submodule's train/eval mode is restored afterwards, also when the forward fails."""
    modules = list(module.modules())
    modes = [m.training for m in modules]
    hooks = [m.register_forward_hook(lambda _, __, output: on_output(output))
             for m in modules if not any(m.children())]
    try:
        module.eval()
        with torch.no_grad():
            module(x)
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in zip(modules, modes):
            m.training = mode


_largest_activations = weakref.WeakKeyDictionary()  # module -> {image_shape: elements}
_largest_activations_lock = threading.Lock()


def largest_activation_elements(module, image_shape):
    """Elements per image of the largest activation of ``module`` on ``(C, H, W)``
    images, or None where it cannot be known without side effects.

    A small CNN's trunk computes it (``activation_elements``). Any other model is run
    once on one zero image, in eval mode and without gradients (every submodule's mode is
    restored after), while forward hooks on its leaf modules record the largest output;
    the result is kept per model and shape. A model with forward hooks of its own (e.g.
    Grad-CAM's, or the user's) is not run, because those hooks would see the zero image:
    None. Written here because torch has no shape inference that works for every
    torchvision model without running it (``torch.fx`` shape propagation traces and runs
    the model too, and not every model traces)."""
    image_shape = tuple(int(v) for v in image_shape)
    trunk = getattr(module, "trunk", None)
    if hasattr(trunk, "activation_elements"):
        return int(trunk.activation_elements(*image_shape[-2:]))
    with _largest_activations_lock:
        known = _largest_activations.get(module, {}).get(image_shape)
    if known is not None:
        return known
    modules = list(module.modules())
    if any(m._forward_hooks or m._forward_pre_hooks for m in modules):
        return None
    largest = [0]

    def record(output):
        if torch.is_tensor(output):
            largest[0] = max(largest[0], output[0].numel())

    parameter = next(module.parameters(), None)
    run_probe(module, torch.zeros(
        (1, *image_shape), dtype=torch.float32 if parameter is None else parameter.dtype,
        device="cpu" if parameter is None else parameter.device), record)
    with _largest_activations_lock:
        _largest_activations.setdefault(module, {})[image_shape] = largest[0]
    return largest[0]


# ------------------------------------------------------------------------------ threads
_lock = threading.Lock()
_active = {"n": 0, "budget": None}
_local = threading.local()


@contextlib.contextmanager
def thread_share():
    """Run the body with ``1 / k`` of the process's torch threads while ``k`` fits or
    predictions run at once in this process (k = 1: nothing changes).

    Under OpenMP, torch's intra-op thread count belongs to the calling thread: two fits
    in two threads of one process (joblib's threading backend, a Dask worker's threads)
    would each start the full pool, 4 threads on 2 cores. The first entrant records the
    budget, ``torch.get_num_threads()`` (which already honours ``OMP_NUM_THREADS`` and
    joblib's per-process limit in loky workers); each entrant takes its share, and
    restores its own count on leaving. A fit cannot shrink another thread's pool, so
    each fit calls :func:`refresh_thread_share` once per epoch to follow arrivals and
    departures. Nested use in one thread (predict inside a fit) counts once.
    """
    if getattr(_local, "depth", 0):
        _local.depth += 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    before = torch.get_num_threads()
    with _lock:
        if _active["n"] == 0:
            _active["budget"] = before
        _active["n"] += 1
    _local.depth, _local.threads = 1, before
    try:
        refresh_thread_share()
        yield
    finally:
        _local.depth = 0
        with _lock:
            _active["n"] -= 1
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def refresh_thread_share():
    """Apply this thread's current share inside :func:`thread_share` (else do nothing);
    returns the thread count in use."""
    if not getattr(_local, "depth", 0):
        return torch.get_num_threads()
    with _lock:
        threads = max(1, _active["budget"] // max(_active["n"], 1))
    if threads != _local.threads:
        torch.set_num_threads(threads)
        _local.threads = threads
    return threads


# ------------------------------------------------------------------------------ compile
def _cxx_compiler():
    """The C++ compiler inductor would use (``$CXX``, else its candidates), or None."""
    candidates = [os.environ.get("CXX")]
    try:
        from torch._inductor import config

        cxx = config.cpp.cxx
        candidates += list(cxx) if isinstance(cxx, (list, tuple)) else [cxx]
    except Exception:  # pragma: no cover - inductor missing from this torch build
        candidates.append("g++")
    for name in filter(None, candidates):
        if shutil.which(name):
            return name
    return None


def check_compile(device):
    """Raise a ValueError naming ``compile=True`` when torch.compile cannot run here."""
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except Exception as exc:
        raise ValueError(f"compile=True: torch.compile cannot run in this Python: {exc}; "
                         "use compile=False") from exc
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"compile=True is supported on 'cpu' and 'cuda', not on device "
                         f"{device!r}; use compile=False")
    # inductor compiles C++ kernels on CPU, and its CUDA (triton) launchers with a C compiler
    if _cxx_compiler() is None:
        raise ValueError(
            "compile=True needs a C++ compiler for torch.compile's inductor backend, and "
            "none was found (looked for $CXX, g++, clang++ on PATH); install one (e.g. "
            "apt-get install g++) or use compile=False")


# ------------------------------------------------------------- BatchNorm folding (CPU)
def _tensors(module):
    """Every parameter and buffer of ``module`` (cheaper to list than ``state_dict``)."""
    return [*module.parameters(), *module.buffers()]


def fold_batch_norm(module, channels_last=False):
    """An eval-mode copy of ``module`` in which each BatchNorm of its ``trunk`` that
    directly follows a convolution is folded into that convolution's weights and bias
    (``torch.fx.experimental.optimization.fuse``, which traces the trunk and folds only
    conv -> BN pairs whose convolution output feeds nothing else); None when the trunk
    has no BatchNorm or cannot be traced. ``module`` itself is not changed: the copy has
    its own modules and folded convolutions and shares every other tensor with it."""
    trunk = getattr(module, "trunk", None)
    if trunk is None or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                for m in trunk.modules()):
        return None
    from torch.fx.experimental.optimization import fuse

    shared = {id(t): t for t in _tensors(module)}
    copy = deepcopy(module, shared).eval()  # new modules, the same tensors
    try:
        copy.trunk = fuse(copy.trunk, inplace=True)  # new tensors for the folded convs
    except Exception:  # not traceable by torch.fx: predictions use the module as it is
        return None
    if channels_last:
        copy.to(memory_format=torch.channels_last)
    return copy


def _has_forward_hooks(module):
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class FoldedInference:
    """The module CPU predictions run on: :func:`fold_batch_norm`'s copy of ``module``
    (or ``module`` itself when nothing folds), made at the first prediction and kept
    while the weights stay the same.

    Written here because torch folds BatchNorm only for a traced graph and keeps no such
    copy in step with a model. Every prediction of given weights uses the same copy, so
    results do not depend on what was predicted before, and a saved and loaded model
    predicts exactly as the original. "The same weights": the same module object, the
    same parameter and buffer tensor objects and the same in-place version counters
    (``Tensor._version``, which ``optimizer.step``, ``load_state_dict`` and any in-place
    edit increase). Results equal the module's own within float tolerance (under bf16
    autocast the folded weights round differently: up to about 1e-3 in probability). A
    module with forward hooks runs itself, so that the hooks see every batch. The first
    prediction after a fit or a load pays for the fold; what it costs and saves per
    backbone is measured by ``python -m benchmarks.cpu_speed`` (``fold_s``, the
    ``loop_folded`` column; docs/benchmarks.md)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._folded = None

    @staticmethod
    def _same(key, module):
        if key is None or key[0] is not module:
            return False
        tensors = _tensors(module)
        return len(tensors) == len(key[1]) and all(
            t is k and t._version == v for t, (k, v) in zip(tensors, key[1]))

    def module(self, module, channels_last=False):
        """What to run a prediction with."""
        if getattr(module, "trunk", None) is None or _has_forward_hooks(module):
            return module  # nothing to fold (e.g. the TTA wrapper), or hooks to honour
        with self._lock:
            if not self._same(self._key, module):
                folded = fold_batch_norm(module, channels_last)
                self._key = (module, [(t, t._version) for t in _tensors(module)])
                self._folded = folded
            return self._folded or module

    def __getstate__(self):  # neither the lock nor the copy is pickled
        return {"fresh": True}

    def __setstate__(self, state):
        self.__init__()


# ------------------------------------------------------------------------ glibc malloc
#: glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit systems (``mallopt`` refuses more).
MMAP_THRESHOLD_MAX = 32 << 20
#: :func:`tune_cpu_malloc`'s default trim threshold: the freed memory the heap may keep.
TRIM_THRESHOLD = 1 << 30
_INT_MAX = 2**31 - 1  # mallopt takes a C int
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def tune_cpu_malloc(mmap_threshold=MMAP_THRESHOLD_MAX, trim_threshold=TRIM_THRESHOLD):
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the
    kernel after every training step; for CPU training and prediction on Linux.

    A CPU step allocates its activations and frees them at the end; with glibc's
    defaults, freed blocks above a (self-adjusting) size are unmapped and the top of
    the heap is trimmed once more than twice that size is free, so the next step
    page-faults the same memory back in: ``benchmarks/cpu_speed.py`` counts up to
    hundreds of thousands of page faults per one-epoch fit, in the estimator and in a
    plain torch loop alike. This sets ``M_MMAP_THRESHOLD`` (blocks up to this many
    bytes come from the heap; at most 32 MiB, glibc's ceiling) and ``M_TRIM_THRESHOLD``
    (free memory the heap keeps) with ``mallopt``, process-wide and for the rest of the
    process (glibc cannot go back to its self-adjusting thresholds). The cost: the
    process keeps up to ``trim_threshold`` bytes of freed memory. Setting the
    environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
    before Python starts does the same. Preloading jemalloc or tcmalloc (PyTorch's CPU
    tuning guide) is the other remedy. What it changes is measured by
    ``python -m benchmarks.cpu_malloc`` (docs/design.md, "glibc malloc").

    Written here because neither torch nor the standard library exposes ``mallopt``.
    Returns True once applied, False (and changes nothing) where the C library is not
    glibc (macOS, Windows, musl)."""
    for name, value, top, why in (
            ("mmap_threshold", mmap_threshold, MMAP_THRESHOLD_MAX, "glibc's ceiling"),
            ("trim_threshold", trim_threshold, _INT_MAX, "mallopt takes a C int")):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError(f"{name} must be an int >= 0 and at most {top} ({why}), in "
                             f"bytes; got {value!r}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    for option, value in ((_M_MMAP_THRESHOLD, mmap_threshold),
                          (_M_TRIM_THRESHOLD, trim_threshold)):
        if libc.mallopt(ctypes.c_int(option), ctypes.c_int(value)) != 1:
            raise RuntimeError(f"mallopt({option}, {value}) was refused by the C library")
    return True
