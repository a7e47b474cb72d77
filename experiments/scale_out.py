"""The same curvature calls, one process or data-parallel over several (torch.distributed).

    python experiments/scale_out.py                          # one process, all the data
    torchrun --nproc-per-node 2 experiments/scale_out.py     # 2 processes, half each

Under ``torchrun`` each rank joins a gloo process group (NCCL with ``--cuda`` on GPUs),
reads every ``world_size``-th training image of digits (a strided shard; torch's
``DistributedSampler`` would pad the shards to equal length by repeating images, which
changes the data) and
makes exactly the calls the single process makes; quantlens sums every Hessian-vector
product over the ranks (:mod:`quantlens.distributed`). Rank 0 prints λmax, the next
eigenvalue and the Hutch++ trace of the TinyTransformer, which agree with the
one-process numbers to float32 rounding, and the time the calls took.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

import quantlens as ql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="NCCL and one GPU per rank")
    args = parser.parse_args()
    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    device = "cpu"
    if distributed:
        backend = "nccl" if args.cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
        if args.cuda:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    elif args.cuda:
        device = "cuda"
    rank, size = ql.distributed.rank_and_size()
    train, _ = ql.digits_loaders(batch_size=128, shuffle_train=False)
    data = train.dataset
    shard = Subset(data, range(rank, len(data), size))
    loader = DataLoader(shard, batch_size=128)
    model = ql.make_model("transformer", dim=256, depth=2, heads=8).to(device)

    t0 = time.perf_counter()
    op = ql.HessianOperator(model, loader)
    eig = ql.lanczos(op, 2, tol=1e-4)
    trace = ql.hutchpp(op, 30, seed=0)
    seconds = time.perf_counter() - t0
    if rank == 0:
        print(f"{size} process(es), {device}, {op.n_examples:.0f} examples "
              f"({len(shard)} on rank 0)")
        print(f"lambda_max {eig.eigenvalues[0]:.6f}, lambda_2 {eig.eigenvalues[1]:.6f} "
              f"({eig.n_hvp} products), Hutch++ trace {trace.value:.4f} ± {trace.stderr:.4f} "
              f"({trace.n_hvp} products); {seconds:.1f} s")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
