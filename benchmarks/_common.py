"""Shared helpers of the benchmarks: result files, machine description, data, timing."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
PNEUMONIAMNIST = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"


def parser(description):
    """argparse parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="small sizes: finishes in well under a minute on a 2-core CPU")
    p.add_argument("--out-dir", default=str(RESULTS_DIR),
                   help="directory of the JSON result (default: benchmarks/results)")
    p.add_argument("--out", default=None, help="JSON file to write (overrides --out-dir)")
    p.add_argument("--seed", type=int, default=0)
    return p


def command_line():
    """The command that produced a result, as one would type it from the repository root."""
    module = Path(sys.argv[0]).stem
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"python -m benchmarks.{module} {args}".strip()


def machine_info(device="cpu"):
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": gpu,
        "device": device,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def package_version():
    import cxr_estimators

    return cxr_estimators.__version__


def write_result(name, payload, args, device="cpu", command=None):
    """Add the provenance keys to ``payload`` and write ``<out-dir>/<name>.json``."""
    path = Path(args.out) if args.out else Path(args.out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": command or command_line(),
        "quick": bool(args.quick),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "package_version": package_version(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}")
    return record


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported.

    ``ru_maxrss`` cannot be reset, so a phase's own peak is read from VmHWM after this
    (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_mb(field):
    """A memory field of /proc/self/status (e.g. "VmRSS") in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_peak_rss_mb():
    """VmHWM in MiB: the peak since :func:`reset_peak_rss`, or None."""
    return _proc_status_mb("VmHWM")


def current_rss_mb():
    """VmRSS in MiB, or None."""
    return _proc_status_mb("VmRSS")


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start


def load_pneumoniamnist(path=PNEUMONIAMNIST):
    """The official splits as ``{split: (uint8 images (n, 28, 28), int labels (n,))}``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"PneumoniaMNIST not found at {str(path)!r} (../shared/data)")
    with np.load(path) as d:
        return {s: (d[f"{s}_images"], d[f"{s}_labels"].ravel().astype(np.int64))
                for s in ("train", "val", "test")}


def stratified_subset(images, labels, n, seed=0):
    """``n`` images drawn without replacement, class proportions kept."""
    from sklearn.model_selection import train_test_split

    if n >= len(labels):
        return images, labels
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels,
                              random_state=seed)
    return images[np.sort(idx)], labels[np.sort(idx)]


def to_inputs(images, size, channels=1):
    """uint8 (n, H, W) → normalised float32 (n, C, size, size) through the package's loader."""
    from cxr_estimators import ImageLoader

    return ImageLoader(size=size, channels=channels, normalize="minus_one_one").fit_transform(
        images)


def predict_proba_in_chunks(clf, images, loader, chunk_size=512):
    """Stream ``images`` (paths or raw arrays) through ``loader`` and ``clf`` in chunks.

    Only one chunk of preprocessed images is alive at a time (the output, (n, n_classes), is
    the only thing that grows with n). Compared in ``benchmarks/memory.py`` with the
    package's own streaming path, ``ImageLoader(lazy=True)``.
    """
    out = []
    for start in range(0, len(images), chunk_size):
        X = loader.transform(images[start:start + chunk_size])
        out.append(clf.predict_proba(X))
        del X
    return np.concatenate(out)


def median(values):
    return float(np.median(values))
