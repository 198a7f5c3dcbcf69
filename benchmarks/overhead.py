"""Overhead of ``CXRClassifier.fit`` over a plain hand-written torch training loop.

Both train the same architecture (``backbones.build_model``) on the same PneumoniaMNIST
images, with the same batch size, epochs, optimizer (Adam), loss and seed, in the same
process; the runs alternate (classifier, loop, classifier, loop, ...) so that drifts in
machine load hit both. ``validation_fraction=0`` and ``early_stopping=None``: the
classifier does no more work per epoch than the loop. The loop runs in the memory layout
and precision the classifier picks for the backbone on this CPU
(:func:`cxr_estimators._runtime.resolve_runtime`: channels_last, and bf16 autocast on a
CPU with native bf16), so the ratio is the wrapper's overhead, not a layout or precision
difference. Each timed run includes building the model. Reported: median seconds of
each and ``ratio`` = classifier / loop.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks import _common
from cxr_estimators import CXRClassifier, _runtime
from cxr_estimators.backbones import build_model


def plain_loop(X, y, backbone, epochs, batch_size, lr, seed):
    """The loop one writes by hand: shuffle, forward, cross-entropy, backward, Adam step."""
    runtime = _runtime.resolve_runtime(backbone, "cpu")
    torch.manual_seed(seed)
    model = runtime.prepare(build_model(backbone, 2, in_channels=X.shape[1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            with runtime.autocast():
                logits = model(runtime.layout(xb))
            loss = loss_fn(logits.float(), yb)
            loss.backward()
            optimizer.step()
    return model


def classifier_fit(X, y, backbone, epochs, batch_size, lr, seed):
    return CXRClassifier(backbone=backbone, max_epochs=epochs, batch_size=batch_size, lr=lr,
                         validation_fraction=0, early_stopping=None, device="cpu",
                         random_state=seed).fit(X, y)


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pairs", type=int, default=None)
    args = p.parse_args(argv)
    cfg = dict(backbone="simple_cnn", size=32, n=128, epochs=1, pairs=2) if args.quick else \
        dict(backbone="resnet18", size=64, n=256, epochs=2, pairs=9)
    cfg.update({k: getattr(args, k) for k in cfg if getattr(args, k) is not None})
    batch_size, lr = 32, 1e-3

    data = _common.load_pneumoniamnist()
    images, y = _common.stratified_subset(*data["train"], cfg["n"], seed=args.seed)
    X = _common.to_inputs(images, cfg["size"])
    run = dict(backbone=cfg["backbone"], epochs=cfg["epochs"], batch_size=batch_size, lr=lr,
               seed=args.seed)

    classifier_fit(X[:batch_size], y[:batch_size], **{**run, "epochs": 1})  # warm-ups
    plain_loop(X[:batch_size], y[:batch_size], **{**run, "epochs": 1})
    times = {"classifier": [], "plain_loop": []}
    for pair in range(cfg["pairs"]):
        for name, fn in (("classifier", classifier_fit), ("plain_loop", plain_loop)):
            with _common.Timer() as t:
                fn(X, y, **run)
            times[name].append(t.seconds)
            print(f"pair {pair} {name}: {t.seconds:.2f} s", flush=True)
    med = {k: _common.median(v) for k, v in times.items()}
    payload = {
        "config": {**cfg, "batch_size": batch_size, "lr": lr, "optimizer": "adam",
                   "images": "PneumoniaMNIST train subset", "validation_fraction": 0,
                   "early_stopping": None, "device": "cpu",
                   "loop_runtime": repr(_runtime.resolve_runtime(cfg["backbone"], "cpu"))},
        "times_s": times,
        "median_s": med,
        "images_per_s": {k: cfg["n"] * cfg["epochs"] / v for k, v in med.items()},
        "ratio": med["classifier"] / med["plain_loop"],
        "median_pair_ratio": _common.median(
            [a / b for a, b in zip(times["classifier"], times["plain_loop"])]),
        "goal": "ratio <= 1.05",
    }
    _common.write_result("overhead", payload, args)
    print(f"ratio {payload['ratio']:.3f}")
    return payload


if __name__ == "__main__":
    main()
