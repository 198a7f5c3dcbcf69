"""
One fit on several processes with torch DDP, launched by torchrun
=================================================================

``CXRClassifier.fit`` trains data-parallel whenever a torch.distributed process group of
more than one process is open (:mod:`cxr_estimators.distributed`): every rank loads the
same images, takes its share of each epoch's batches, and the gradients are averaged.
At the end every rank holds the same fitted estimator; rank 0 saves it
(``cxr_estimators.save``).

On two CPU processes (gloo), from the repository root::

    torchrun --standalone --nproc_per_node 2 examples/ddp_fit.py --out ddp_output

On a machine with 4 GPUs (NCCL; rank r trains on cuda:r, chosen by ``device="auto"``
from ``LOCAL_RANK``)::

    torchrun --standalone --nproc_per_node 4 examples/ddp_fit.py --backbone resnet18 \\
        --size 64 --out ddp_output

Across 2 nodes with 8 GPUs each, run on every node (node 0's address as endpoint)::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint NODE0:29500 examples/ddp_fit.py --out ddp_output

``batch_size`` is per rank (the effective batch is ``batch_size × ranks``). Each rank
writes ``rank<r>.npz`` (its predicted probabilities and a digest of its weights) so the
ranks can be compared; ``tests/test_distributed.py`` runs this script on 2 CPU processes
and checks that they agree and that the saved model predicts the same.
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch

import cxr_estimators
from cxr_estimators import CXRClassifier, ImageLoader, distributed
from cxr_estimators.datasets import load_sample


def weights_digest(module):
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", default="ddp_output")
    p.add_argument("--backbone", default="simple_cnn")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--sampling", default=None, choices=["balanced"])
    p.add_argument("--augment", action="store_true")
    p.add_argument("--quick", action="store_true", help="120 images, 2 epochs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per process on a CPU run

    data = load_sample()
    files, y = np.asarray(data.filenames), np.asarray(data.target)
    if args.quick:
        keep = np.r_[0:60, 200:260]
        files, y = files[keep], y[keep]
    X = ImageLoader(size=args.size, channels=1, normalize="minus_one_one").fit_transform(files)
    clf = CXRClassifier(backbone=args.backbone, neurons=32, batch_size=16, lr=1e-3,
                        max_epochs=2 if args.quick else args.epochs, early_stopping=3,
                        sampling=args.sampling, augment=args.augment or None,
                        random_state=0)

    with distributed.process_group():  # gloo on CPU, NCCL on GPUs
        rank, world = distributed.rank(), distributed.world_size()
        clf.fit(X, y)
        proba = clf.predict_proba(X)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / f"rank{rank}.npz", proba=proba, digest=weights_digest(clf.module_),
                 train_batches=np.array(clf.history_[:, "train_batch_count"]),
                 train_loss=np.array(clf.history_[:, "train_loss"]),
                 valid_loss=np.array(clf.history_[:, "valid_loss"]))
        if distributed.is_main_process():
            cxr_estimators.save(clf, out / "model.safetensors")
            print(f"{world} ranks, device {clf.device_}, {len(clf.history_)} epochs, "
                  f"train batches per rank per epoch {clf.history_[-1, 'train_batch_count']}"
                  f", valid_loss {clf.history_[-1, 'valid_loss']:.4f}; saved "
                  f"{out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
