"""Data-parallel analyses over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

When a process group is initialised (e.g. under ``torchrun``), the analyses built on
:class:`quantlens.HessianOperator` run data-parallel without any change to the call: each
rank gives its own shard of the data (e.g. a ``DistributedSampler``), computes every product
``H_r v`` on it, and the products are summed with ``all_reduce``. With shard weights
``W_r = Σ_{b ∈ r} w_b`` and ``W = Σ_r W_r`` (all-reduced once),

    H v = Σ_r Σ_{b ∈ r} (w_b / W) H_b v,

so every rank holds the full-data product (also when every rank passes all the data: each
then contributes ``1/size`` of it), and everything downstream (Lanczos, power
iteration, Hutchinson/Hutch++, SLQ, per-layer blocks, sensitivities) sees the same vectors
on every rank: probe and start vectors come from seeded CPU generators, drawn identically
everywhere. The result equals the single-process one up to float rounding (the sums are taken
in another order).

Landscapes and sweeps split their work instead of the data: every rank passes the *same*,
full data, and the grid points of :func:`~quantlens.loss_line`/:func:`~quantlens.loss_plane`,
the directions of :func:`~quantlens.basin_widths` and the layers of
:func:`~quantlens.alpha.alpha_sweep` are shared out (point ``i`` to rank ``i mod size``); the
results are gathered on every rank, each value computed exactly as one process computes it.
Passing the full data on every rank is therefore always right; a shard per rank is right
(and faster) for the Hessian-based calls only. Sweeps that also measure Hessian traces
(:func:`~quantlens.layer_sensitivity`) take the full data on every rank.
Inside :func:`local` quantlens ignores the process group (e.g. rank 0 alone computing a
single-process reference).

A rank that fails or stops while the others wait in a collective makes them raise a
:class:`RuntimeError` that says so once the process group's timeout passes (set it with
``init_process_group(timeout=...)``), instead of hanging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

_local_depth = 0


def active() -> bool:
    """Whether quantlens works data-parallel here: a ``torch.distributed`` process group is
    initialised and the call is not inside :func:`local`."""
    return _local_depth == 0 and dist.is_available() and dist.is_initialized()


@contextmanager
def local() -> Iterator[None]:
    """Within the block quantlens uses this process alone, as without a process group."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def share(items: list) -> list:
    """This rank's share of ``items``: those at positions ``rank, rank + size, ...``."""
    rank, size = rank_and_size()
    return items[rank::size]


def collect(pairs: list[tuple[int, Any]]) -> list:
    """The values of every rank's ``(position, value)`` pairs in position order: the list one
    process, doing all the work, would have built."""
    every = [pair for part in gather(pairs) for pair in part]
    return [value for _, value in sorted(every, key=lambda pair: pair[0])]


def gather(obj: Any) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    _collective(lambda: dist.all_gather_object(out, obj), "all_gather_object")
    return out


def rank_and_size() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``Σ_r t_r`` over the ranks (a new tensor; ``t`` itself without a process group)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if not active():
        return t
    out = t.detach().clone()
    _collective(lambda: dist.all_reduce(out, op=dist.ReduceOp.SUM), "all_reduce")
    return out


def all_sum_float(x: float) -> float:
    """``Σ_r x_r`` of a Python number, in float64."""
    if not active():
        return x
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return float(all_sum(torch.tensor([x], dtype=torch.float64, device=device))[0])


def _collective(fn, what: str) -> None:
    try:
        fn()
    except RuntimeError as err:  # gloo/NCCL time out when a peer failed or stopped
        rank, size = rank_and_size()
        raise RuntimeError(
            f"quantlens: {what} on rank {rank} of {size} failed: another rank raised, stopped "
            f"or is not calling the same analysis (the process group's timeout ended the "
            f"wait). Cause: {err}") from err
