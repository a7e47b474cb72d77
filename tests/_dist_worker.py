"""One rank of the 2-process tests in tests/test_distributed.py (run as a script).

Arguments: rank, world size, rendezvous file, mode ("ok" or "fail"), output JSON path. Each
rank holds every other example of the shared data set (a strided shard, as a
DistributedSampler gives) and runs the same calls as one process would on all of it.
"""

import datetime
import json
import pickle
import sys

import torch
import torch.distributed as dist

# run as a script: its folder, tests/, is on sys.path
from _dist_data import built_on_the_operator, model_and_data, sweeps
from torch.utils.data import DataLoader, Subset

import quantlens as ql


def main() -> None:
    rank, size, init, mode, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                   sys.argv[4], sys.argv[5])
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                            world_size=size, timeout=datetime.timedelta(seconds=15))
    try:
        model, data = model_and_data()
        if mode == "sweeps":
            with open(out, "wb") as f:
                pickle.dump(sweeps(model, data), f)
            return
        shard = Subset(data, range(rank, len(data), size))
        op = ql.HessianOperator(model, DataLoader(shard, batch_size=7))
        if mode == "fail" and rank == 1:
            raise ValueError("rank 1 fails on purpose midway")
        eig = ql.lanczos(op, 2, tol=1e-9)
        trace = ql.hutchpp(op, 24, seed=3)
        built_on = built_on_the_operator(model, DataLoader(shard, batch_size=7))
        with open(out, "w") as f:
            json.dump({"eigenvalues": [float(e) for e in eig.eigenvalues],
                       "trace": trace.value, "loss": op.loss, "n_examples": op.n_examples,
                       "gradient_norm": float(op.gradient().norm()),
                       "n_hvp": eig.n_hvp, **built_on}, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
