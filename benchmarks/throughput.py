"""Training and prediction throughput (images/s) per backbone and image size.

For each backbone and size, ``CXRClassifier`` is fitted for one epoch on ``n`` synthetic
single-channel images (``validation_fraction=0``, no early stopping) and then predicts
them; images/s = n / wall time. A warm-up fit on one batch precedes the timed runs.
Weights are random (``weights=None``): throughput does not depend on them.

On CUDA (``--device cuda``) the classifier runs with its defaults there (bf16 autocast,
channels_last) on uint8 images (``CompactImages``, normalised inside the model), with the
training set in host memory (``data_device="cpu"``: pinned, prefetched batches;
implementation ``"CXRClassifier_uint8_host"``) and kept on the GPU
(``data_device="cuda"``; ``"CXRClassifier_uint8_device"``); ``--inputs`` adds
``float32_host`` (the float32 array of the earlier runs). A plain torch loop with bf16
autocast and channels_last on the same model, data on the GPU, is timed as the ceiling
(``"plain_torch_amp_channels_last"``). ``ratio_to_plain["<backbone>@<size>/<fit|predict>"]``
is the device-resident estimator's img/s ÷ the plain loop's (what ``data_device="auto"``
gives when the data fit on the GPU); ``ratio_to_plain_host`` the same for host-resident
data. Predict always streams from host memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks import _common
from cxr_estimators import CXRClassifier
from cxr_estimators.backbones import build_model
from cxr_estimators.preprocessing import CompactImages

BACKBONES = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_classifier(X, y, backbone, device, batch_size, seed, **params):
    def make():
        return CXRClassifier(backbone=backbone, max_epochs=1, batch_size=batch_size,
                             validation_fraction=0, early_stopping=None, device=device,
                             random_state=seed, **params)

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


#: CUDA input modes of the estimator → its ``data_device``.
CUDA_INPUTS = {"uint8_host": "cpu", "uint8_device": "cuda", "float32_host": "cpu"}


def ratios_to_plain(rows, implementation):
    """``{"<backbone>@<size>/<mode>": img/s of implementation ÷ img/s of the plain loop}``."""
    speed = {(r["backbone"], r["size"], r["mode"], r["implementation"]): r["images_per_s"]
             for r in rows}
    return {f"{b}@{s}/{m}": v / speed[(b, s, m, "plain_torch_amp_channels_last")]
            for (b, s, m, impl), v in speed.items() if impl == implementation}


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backbones", nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--inputs", nargs="+", choices=list(CUDA_INPUTS),
                   default=["uint8_host", "uint8_device"],
                   help="estimator input modes timed on CUDA")
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
        # the same images in uint8, carrying the normalisation that maps them back to X's
        # range (mean 0.5, std 1/6 on [0, 1] ~ N(0, 1) clipped to +-3)
        compact = CompactImages(np.clip(np.rint((X / 6 + 0.5) * 255), 0, 255)
                                .astype(np.uint8), [0.5], [1 / 6])
        for backbone in backbones:
            if not on_cuda:
                timings = {"CXRClassifier": time_classifier(X, y, backbone, args.device,
                                                            batch_size, args.seed)}
            else:
                timings = {}
                for name in args.inputs:
                    data = X if name.startswith("float32") else compact
                    timings[f"CXRClassifier_{name}"] = time_classifier(
                        data, y, backbone, args.device, batch_size, args.seed,
                        data_device=CUDA_INPUTS[name])
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
                          "channels": 1, "images": "synthetic N(0, 1)",
                          **({"inputs": args.inputs} if on_cuda else {})},
               "rows": rows}
    if on_cuda:
        for key, impl in (("ratio_to_plain", "CXRClassifier_uint8_device"),
                          ("ratio_to_plain_host", "CXRClassifier_uint8_host")):
            if impl[len("CXRClassifier_"):] in args.inputs:
                payload[key] = ratios_to_plain(rows, impl)
    name = "throughput_cuda" if on_cuda else "throughput"
    _common.write_result(name, payload, args, device=args.device)
    return payload


if __name__ == "__main__":
    main()
