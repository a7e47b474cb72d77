"""One process against two (torch.distributed, gloo on CPU), side by side in one run.

λmax (Lanczos to 1e-4) of the digits TinyTransformer (dim 256, depth 2, seeded) on the 1,347
training images, and its 25x25 loss plane on the 450 test images. The single process uses
every core with torch's threads; each of the two processes gets ``cores / 2`` threads. The
2-process run gives each rank every other training image for the Hessian (its products are
all-reduced) and splits the plane's points (each rank evaluates every other point on all test
images). Each configuration runs in fresh processes started by this script (a ``file://``
rendezvous, no network service); it prints the wall time of each part on rank 0, the ratio,
and how far the 2-process results are from the single-process ones.

Run: ``python benchmarks/bench_distributed.py`` (or ``--cuda`` on a GPU machine: NCCL with a
GPU per rank where there are two; on one GPU both ranks share it and reduce through gloo).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

import quantlens as ql

STEPS = 25


def _work(rank: int, size: int, device: str) -> dict:
    train, test = ql.digits_loaders(batch_size=128, shuffle_train=False)
    # seeded and untrained: the same weights in every process, whatever its thread count
    model = ql.make_model("transformer", dim=256, depth=2, heads=8).to(device)
    shard = DataLoader(Subset(train.dataset, range(rank, len(train.dataset), size)),
                       batch_size=128)
    d1 = ql.random_direction(model, seed=0)
    d2 = ql.orthogonalize(ql.random_direction(model, seed=1), d1)
    out = {}
    t0 = time.perf_counter()
    op = ql.HessianOperator(model, shard)
    eig = ql.lanczos(op, 1, tol=1e-4, seed=0)
    out["lambda_seconds"] = time.perf_counter() - t0
    out["lambda_max"], out["n_hvp"] = float(eig.eigenvalues[0]), eig.n_hvp
    t0 = time.perf_counter()
    plane = ql.loss_plane(model, test, d1, d2, distance=1.0, steps=STEPS, progress=False)
    out["plane_seconds"] = time.perf_counter() - t0
    out["plane"] = plane.loss
    return out


def _rank(args) -> None:
    size, device = args.size, "cpu"
    if size > 1:
        # NCCL needs a GPU per rank; ranks sharing one GPU reduce through gloo
        backend = "nccl" if args.cuda and torch.cuda.device_count() >= size else "gloo"
        dist.init_process_group(backend, init_method=f"file://{args.init}", rank=args.rank,
                                world_size=size, timeout=datetime.timedelta(seconds=300))
    if args.cuda:
        device = f"cuda:{args.rank % max(torch.cuda.device_count(), 1)}"
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    out = _work(args.rank, size, device)
    if args.rank == 0:
        Path(args.out).write_bytes(pickle.dumps(out))
    if size > 1:
        dist.destroy_process_group()


def _launch(size: int, cuda: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.pkl"
        cmd = [sys.executable, __file__, "--size", str(size), "--init", str(Path(tmp) / "rv"),
               "--out", str(out)] + (["--cuda"] if cuda else [])
        procs = [subprocess.Popen(cmd + ["--rank", str(r)]) for r in range(size)]
        if any(p.wait(timeout=1200) for p in procs):
            raise SystemExit(f"a rank of the {size}-process run failed")
        return pickle.loads(out.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--init", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        return _rank(args)
    cores = os.cpu_count()
    where = (f"CUDA ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s))"
             if args.cuda else f"CPU, {cores} cores")
    backend = "nccl" if args.cuda and torch.cuda.device_count() >= 2 else "gloo"
    print(f"torch {torch.__version__}, {where}; TinyTransformer dim 256 (seeded, untrained) "
          f"on digits; 2 processes reduce through {backend}")
    one, two = _launch(1, args.cuda), _launch(2, args.cuda)
    print(f"{'':28s}{'1 process':>12s}{'2 processes':>14s}{'speed-up':>10s}")
    for key, label in (("lambda_seconds", "λmax (Lanczos, tol 1e-4)"),
                       ("plane_seconds", f"{STEPS}x{STEPS} plane, 450 images")):
        print(f"{label:28s}{one[key]:10.2f} s{two[key]:12.2f} s{one[key] / two[key]:9.2f}x")
    print(f"λmax: 1 process {one['lambda_max']:.6f} ({one['n_hvp']} HVPs), 2 processes "
          f"{two['lambda_max']:.6f} ({two['n_hvp']} HVPs), relative difference "
          f"{abs(one['lambda_max'] - two['lambda_max']) / abs(one['lambda_max']):.1e}")
    diff = float(np.max(np.abs(one["plane"] - two["plane"])))
    print(f"plane: max |difference| of the loss {diff:.1e} (each point is computed the same "
          f"way; only the thread count per process differs)")


if __name__ == "__main__":
    main()
