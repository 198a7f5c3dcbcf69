"""Images/s the host side delivers to the device boundary, per input path (no model).

What is timed is the iterator ``CXRClassifier`` trains from (its skorch
``iterator_train``, :func:`cxr_estimators._feed.make_iterator`, shuffled with a seeded
generator, ``device="cpu"``), run over whole epochs; the batches it yields are what would
be copied to a GPU. Paths:

* ``uint8_staged``: in-memory ``CompactImages`` (``ImageLoader(dtype="uint8")``), the
  host half of the CUDA path of :mod:`cxr_estimators._feed`: each batch gathered in one
  step into one of two reused staging buffers (pinned on a GPU machine; here plain
  memory, which takes the same writes), ready for the asynchronous copy;
* ``uint8``: the same, as the feed serves a CPU model: each batch a new array;
* ``float32``: the same feed over today's normalised float32 array (4 bytes per pixel);
* ``float32_per_item``: the path before the feed: skorch's default ``Dataset`` and
  ``DataLoader`` (``__getitem__`` per image, then ``default_collate``);
* ``lazy``: ``ImageLoader(lazy=True, dtype="uint8")`` over PNG files, decoded and resized
  batch by batch by a ``DataLoader`` with 0 or 2 worker processes (decode cache cleared
  before each epoch).

Images are synthetic (uniform noise, one gray channel in the source; with 3 channels
the gray image is stored three times, as colour sources are). Reported per row: the
median images/s over the epochs. ``headline_img_per_s``: ``uint8_staged``, 224 px,
1 channel, batch 256 (goal: at least 25,000 img/s, an H100's resnet18 predict rate).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import skorch.dataset
import torch

from benchmarks import _common
from cxr_estimators import _feed
from cxr_estimators import io as cxr_io
from cxr_estimators.preprocessing import NORMALIZATION_PRESETS, CompactImages

GOAL_IMG_PER_S = 25_000


def _iterator(dataset, batch_size, seed, workers=0):
    """The training iterator ``CXRClassifier`` gets from skorch for ``dataset``: its
    ``iterator_train`` with the arguments the classifier passes (seeded shuffling)."""
    return _feed.make_iterator(dataset, batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(seed),
                               num_workers=workers, device="cpu")


class _Staged:
    """A feed's staging path (what runs on the host for a CUDA fit) as (x, y) batches."""

    def __init__(self, feed):
        self.feed = feed

    def __iter__(self):
        return ((x, y) for _, x, y, _ in self.feed.staged(pin_memory=False))


def time_epochs(iterator, n, epochs):
    """Median images/s of ``epochs`` passes over ``iterator`` (all batches consumed)."""
    rates = []
    for _ in range(epochs):
        cxr_io.clear_cache()
        count = 0
        with _common.Timer() as t:
            for xb, _ in iterator:
                count += len(xb)
        assert count == n, (count, n)
        rates.append(n / t.seconds)
    return _common.median(rates)


def in_memory_rows(n, size, channels, batch_sizes, epochs, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    mean, std = (m[:channels] for m in NORMALIZATION_PRESETS["imagenet"])
    compact = CompactImages(images, mean, std)
    floats = compact.to_float32()
    y = np.arange(n) % 2
    rows = []
    for batch_size in batch_sizes:
        iterators = {
            "uint8_staged": _Staged(_iterator(_feed.ArrayDataset(compact, y), batch_size,
                                              seed)),
            "uint8": _iterator(_feed.ArrayDataset(compact, y), batch_size, seed),
            "float32": _iterator(_feed.ArrayDataset(floats, y), batch_size, seed),
            "float32_per_item": torch.utils.data.DataLoader(
                skorch.dataset.Dataset(floats, y), batch_size=batch_size, shuffle=True,
                generator=torch.Generator().manual_seed(seed)),
        }
        for path, iterator in iterators.items():
            rate = time_epochs(iterator, n, epochs)
            rows.append({"path": path, "size": size, "channels": channels,
                         "batch_size": batch_size, "workers": 0, "n": n,
                         "bytes_per_image": (1 if "uint8" in path else 4) * channels * size ** 2,
                         "images_per_s": rate})
            print(f"{path:17s} {size} px {channels} ch batch {batch_size:3d}: "
                  f"{rate:9.0f} img/s", flush=True)
    return rows


def lazy_rows(n, size, source_size, batch_size, workers, epochs, seed):
    from PIL import Image

    from cxr_estimators import ImageLoader

    rng = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            path = Path(tmp) / f"img_{i:05d}.png"
            Image.fromarray(rng.integers(0, 256, (source_size, source_size),
                                         dtype=np.uint8)).save(path)
            paths.append(str(path))
        dataset = ImageLoader(size=size, channels=1, dtype="uint8",
                              lazy=True).fit_transform(paths)
        y = np.arange(n) % 2
        from cxr_estimators._training import _Labelled

        for w in workers:
            iterator = _iterator(_Labelled(dataset, y), batch_size, seed, workers=w)
            rate = time_epochs(iterator, n, epochs)
            rows.append({"path": "lazy", "size": size, "channels": 1,
                         "batch_size": batch_size, "workers": w, "n": n,
                         "source": f"PNG {source_size}x{source_size}",
                         "bytes_per_image": size ** 2, "images_per_s": rate})
            print(f"lazy (PNG {source_size} px) {size} px 1 ch batch {batch_size:3d}, "
                  f"{w} workers: {rate:9.0f} img/s", flush=True)
    return rows


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="in-memory images (default 2048)")
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    size = 224
    n = args.n or (512 if args.quick else 2048)
    epochs = args.epochs or (2 if args.quick else 5)
    batch_sizes = [64, 256]
    rows = []
    for channels in (1, 3):
        rows += in_memory_rows(n, size, channels, batch_sizes, epochs, args.seed)
    n_lazy = 64 if args.quick else 512
    rows += lazy_rows(n_lazy, size, 256, 64, [0, 2], 1 if args.quick else 2, args.seed)

    def rate(path, channels=1, batch_size=256):
        return next(r["images_per_s"] for r in rows if r["path"] == path
                    and r["channels"] == channels and r["batch_size"] == batch_size)

    headline = rate("uint8_staged")
    payload = {
        "config": {"size": size, "n_in_memory": n, "n_lazy": n_lazy, "epochs": epochs,
                   "batch_sizes": batch_sizes, "shuffle": True, "device": "cpu",
                   "images": "synthetic uniform noise", "lazy_source": "PNG 256x256 gray",
                   "lazy_batch_size": 64},
        "rows": rows,
        "headline_img_per_s": headline,
        "speedup_vs_float32_per_item": {
            f"{c}ch/batch{b}": rate("uint8_staged", c, b) / rate("float32_per_item", c, b)
            for c in (1, 3) for b in batch_sizes},
        "goal": f"headline_img_per_s >= {GOAL_IMG_PER_S}",
        "goal_met": headline >= GOAL_IMG_PER_S,
    }
    _common.write_result("input_pipeline", payload, args)
    print(f"headline (uint8 staged, 224 px, 1 ch, batch 256): {headline:.0f} img/s "
          f"(goal >= {GOAL_IMG_PER_S})")
    return payload


if __name__ == "__main__":
    main()
