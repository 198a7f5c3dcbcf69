"""CPU memory layout and precision per backbone family.

The measurements behind ``cxr_estimators._runtime.CPU_POLICY`` (docs/design.md, "CPU
layout and precision"). The prediction batch size has its own benchmark,
``benchmarks/cpu_predict_batch.py``.

Layouts: for each backbone@size, one training step (forward, backward, Adam step) and one
prediction batch (``inference_mode``) on the same batch of synthetic single-channel
images, in four variants: contiguous float32, channels_last float32, channels_last with
bf16 autocast, contiguous with bf16 autocast (the bf16 variants only on a CPU with native
bf16). The variants alternate step by step, ``--reps`` times; reported are images/s from
the fastest step of each (the least disturbed by other load on a shared machine) and the
ratio to contiguous float32 from the fastest and from the median steps.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from benchmarks import _common
from cxr_estimators import _runtime
from cxr_estimators.backbones import build_model

FAMILIES = (("simple_cnn", 64), ("deep_cnn", 64), ("resnet18", 128), ("resnet50", 64),
            ("densenet121", 64), ("mobilenet_v2", 64), ("efficientnet_b0", 64),
            ("vgg11", 64))


def _variants():
    out = [("contiguous_fp32", False, False), ("channels_last_fp32", True, False)]
    if _runtime.cpu_has_native_bf16():
        out += [("channels_last_bf16", True, True), ("contiguous_bf16", False, True)]
    return out


def _layout(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def measure_family(backbone, size, batch_size, reps, seed):
    torch.manual_seed(seed)
    x = torch.randn(batch_size, 1, size, size)
    y = torch.randint(0, 2, (batch_size,))
    models = {}
    for name, cl, _ in _variants():
        torch.manual_seed(seed)
        model = build_model(backbone, 2, in_channels=1)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        models[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))

    def fit_step(name, cl, bf16):
        model, optimizer = models[name]
        model.train()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(_layout(x, cl))
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    def predict_step(name, cl, bf16):
        model = models[name][0].eval()
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                    enabled=bf16):
            torch.softmax(model(_layout(x, cl)).float(), 1)
        return time.perf_counter() - start

    times = {(v[0], mode): [] for v in _variants() for mode in ("fit", "predict")}
    for rep in range(reps + 1):  # rep 0 warms up
        for mode, step in (("fit", fit_step), ("predict", predict_step)):
            for variant in _variants():
                seconds = step(*variant)
                if rep:
                    times[variant[0], mode].append(seconds)
    rows = []
    for mode in ("fit", "predict"):
        ref = times["contiguous_fp32", mode]
        for name, _, _ in _variants():
            t = times[name, mode]
            rows.append({"backbone": backbone, "size": size, "mode": mode, "variant": name,
                         "images_per_s": batch_size / min(t),
                         "ratio_min": min(ref) / min(t),
                         "ratio_median": float(np.median(ref) / np.median(t))})
    return rows


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--backbones", nargs="+", default=None, help="backbone@size entries")
    args = p.parse_args(argv)
    quick = args.quick
    families = ([("simple_cnn", 32)] if quick else
                [(b.split("@")[0], int(b.split("@")[1])) for b in args.backbones]
                if args.backbones else FAMILIES)
    reps = args.reps or (2 if quick else 7)
    batch_size = args.batch_size or (8 if quick else 16)
    rows = []
    for backbone, size in families:
        for row in measure_family(backbone, size, batch_size, reps, args.seed):
            rows.append(row)
            print(f"{backbone:16s} {size:4d} {row['mode']:8s} {row['variant']:20s} "
                  f"{row['images_per_s']:8.1f} img/s  x{row['ratio_min']:.2f} (fastest) "
                  f"x{row['ratio_median']:.2f} (median)", flush=True)
    payload = {"config": {"families": [list(f) for f in families], "reps": reps,
                          "batch_size": batch_size, "native_bf16":
                              _runtime.cpu_has_native_bf16(),
                          "torch_threads": torch.get_num_threads(),
                          "images": "synthetic N(0, 1), 1 channel"},
               "rows": rows}
    _common.write_result("cpu_layout", payload, args)
    return payload


if __name__ == "__main__":
    main()
