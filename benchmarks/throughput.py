"""Training and prediction throughput (images/s) per backbone and image size.

For each backbone and size, ``CXRClassifier`` is fitted for one epoch on ``n`` synthetic
single-channel images (``validation_fraction=0``, no early stopping) and then predicts
them; images/s = n / wall time. A warm-up fit on one batch precedes the timed runs.
Weights are random (``weights=None``): throughput does not depend on them.

On CUDA (``--device cuda``) the classifier runs with its defaults there (bf16 autocast,
channels_last), and a plain torch loop with bf16 autocast and channels_last on the same
model is timed as the ceiling (``implementation = "plain_torch_amp_channels_last"``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks import _common
from cxr_estimators import CXRClassifier
from cxr_estimators.backbones import build_model

BACKBONES = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_classifier(X, y, backbone, device, batch_size, seed):
    def make():
        return CXRClassifier(backbone=backbone, max_epochs=1, batch_size=batch_size,
                             validation_fraction=0, early_stopping=None, device=device,
                             random_state=seed)

    make().fit(X[:batch_size], y[:batch_size])  # warm-up: allocator, kernels, cuDNN
    _sync(device)
    with _common.Timer() as t_fit:
        clf = make().fit(X, y)
        _sync(device)
    with _common.Timer() as t_pred:
        clf.predict_proba(X)
        _sync(device)
    return t_fit.seconds, t_pred.seconds


def time_plain_amp(X, y, backbone, batch_size, seed):
    """The CUDA ceiling: hand-written loop, bf16 autocast, channels_last, data on the GPU."""
    torch.manual_seed(seed)
    model = build_model(backbone, 2, in_channels=X.shape[1]).cuda()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    Xt = torch.from_numpy(X).cuda().expand(-1, 3, -1, -1)
    yt = torch.from_numpy(y).cuda()

    def epoch(n):
        model.train()
        for start in range(0, n, batch_size):
            xb = Xt[start:start + batch_size].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(xb).float(), yt[start:start + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def predict():
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for start in range(0, len(Xt), batch_size):
                model(Xt[start:start + batch_size].contiguous(
                    memory_format=torch.channels_last)).float().softmax(1).cpu()

    epoch(batch_size)
    torch.cuda.synchronize()
    with _common.Timer() as t_fit:
        epoch(len(Xt))
        torch.cuda.synchronize()
    with _common.Timer() as t_pred:
        predict()
        torch.cuda.synchronize()
    return t_fit.seconds, t_pred.seconds


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backbones", nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    on_cuda = args.device == "cuda"
    backbones = args.backbones or (["resnet18"] if args.quick else BACKBONES)
    sizes = args.sizes or ([128] if args.quick else [128, 224])
    n = args.n or (16 if args.quick else (2048 if on_cuda else 32))
    batch_size = args.batch_size or (64 if on_cuda else 16)
    if on_cuda:
        torch.backends.cudnn.benchmark = True

    rng = np.random.default_rng(args.seed)
    y = np.arange(n) % 2
    rows = []
    for size in sizes:
        X = rng.standard_normal((n, 1, size, size), dtype=np.float32)
        for backbone in backbones:
            timings = {"CXRClassifier": time_classifier(X, y, backbone, args.device,
                                                        batch_size, args.seed)}
            if on_cuda:
                timings["plain_torch_amp_channels_last"] = time_plain_amp(
                    X, y, backbone, batch_size, args.seed)
            for impl, (t_fit, t_pred) in timings.items():
                for mode, seconds in (("fit", t_fit), ("predict", t_pred)):
                    row = {"backbone": backbone, "size": size, "device": args.device,
                           "mode": mode, "images_per_s": n / seconds, "seconds": seconds,
                           "n": n, "batch_size": batch_size, "implementation": impl}
                    rows.append(row)
                    print(f"{backbone:16s} {size:4d} {impl:30s} {mode:8s} "
                          f"{row['images_per_s']:8.1f} img/s", flush=True)
    payload = {"config": {"backbones": backbones, "sizes": sizes, "n": n,
                          "batch_size": batch_size, "epochs": 1, "weights": None,
                          "channels": 1, "images": "synthetic N(0, 1)"},
               "rows": rows}
    name = "throughput_cuda" if on_cuda else "throughput"
    _common.write_result(name, payload, args, device=args.device)
    return payload


if __name__ == "__main__":
    main()
