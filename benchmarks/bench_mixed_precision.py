"""Mixed-precision timings: sensitivities of every all-MiniLM-L6-v2 weight matrix, and the
exact allocation, side by side with the per-layer way.

* Hessian traces of the 36 encoder Linear layers: ``sensitivity.block_traces`` (one set of
  whole-model Hutchinson products serves every layer) against one Hutchinson estimate per
  layer with the same number of products each (the HAWQ-V2 / PyHessian per-block way).
* The measured single-layer damage (oracle, 36 layers x 7 widths) and the SVDs.
* The exact allocation (MILP, HiGHS) for 36 layers x 7 widths, against the greedy one.

Prints wall-clock seconds (torch's default threads) and ratios. Run:
``python benchmarks/bench_mixed_precision.py``.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

import quantlens as ql
from quantlens import allocation as al
from quantlens import sensitivity as se
from quantlens.hessian import HessianOperator, hutchinson

N_HVP = 10
WIDTHS = (2, 3, 4, 5, 6, 7, 8)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    pre = ql.load_pretrained()
    loader = ql.sentence_loader(pre.tokenizer)
    loss = ql.output_distance(copy.deepcopy(pre.model), "cosine")
    layers = ql.encoder_linear_layers(pre.model)

    t = time.perf_counter()
    block = se.block_traces(pre.model, loader, loss, n_hvp=N_HVP, layers=layers)
    t_block = time.perf_counter() - t
    t = time.perf_counter()
    per_layer = {}
    for name in layers:
        op = HessianOperator(pre.model, loader, loss_fn=loss, params=[f"{name}.weight"])
        per_layer[name] = hutchinson(op, N_HVP, seed=0).value
    t_layer = time.perf_counter() - t
    rel = np.median([abs(block.loc[n, "trace"] - v) / abs(v) for n, v in per_layer.items()])
    print(f"traces of {len(layers)} layers, {N_HVP} products each: block_traces "
          f"{t_block:.1f} s, per layer {t_layer:.1f} s -> {t_layer / t_block:.1f}x "
          f"(median relative difference of the two estimates {rel:.2f})")

    t = time.perf_counter()
    se.spectral_stats(pre.model, layers)
    t_svd = time.perf_counter() - t
    t = time.perf_counter()
    table = se.oracle(pre.model, loader, WIDTHS, loss, layers=layers)
    t_oracle = time.perf_counter() - t
    print(f"SVDs {t_svd:.1f} s; oracle ({len(table)} single-layer evaluations) "
          f"{t_oracle:.1f} s; all sensitivities {t_block + t_svd + t_oracle:.1f} s "
          f"(target <= 60 s on 2 cores)")

    sizes = {n: pre.model.get_submodule(n).weight.numel() for n in layers}
    costs = se.cost_table(table.assign(n_params=table.layer.map(sizes)), "oracle_loss")
    costs = costs.clip(lower=0) + 1e-9
    budget = al.memory_budget(sizes, average_bits=5)
    for method in ("exact", "greedy"):
        t = time.perf_counter()
        a = al.allocate(costs, sizes, budget, method)
        print(f"allocation {method:6s} {time.perf_counter() - t:.3f} s  cost {a.cost:.4g}")


if __name__ == "__main__":
    main()
