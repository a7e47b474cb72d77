"""Mixed-precision bit allocation: which width for which layer, under a budget.

Every allocator solves (exactly or not) the same multiple-choice knapsack problem. Layers
``ℓ`` (or *groups* of layers that must share a width, e.g. tied weights) each take one width
``b_ℓ`` from a bit set ``B``; a cost table ``c_ℓ(b)`` predicts the damage of layer ``ℓ`` at
``b`` bits (any sensitivity measure of :mod:`quantlens.sensitivity`, or the seed's curvature
model ``κ_ℓ 2^{-b}``), and each layer uses ``w_ℓ`` units of a resource per bit (``w_ℓ`` =
parameter count for memory, or MACs × activation bits for bit-operations):

.. math:: \\min_{b} \\sum_ℓ c_ℓ(b_ℓ) \\quad \\text{s.t.} \\quad
          \\sum_ℓ w_ℓ b_ℓ \\le \\text{budget}, \\quad b_ℓ \\in B.

Methods:

* ``"exact"``: the optimum, by an integer program (``scipy.optimize.milp``, HiGHS) with one
  binary ``x_{ℓb}`` per layer and width.
* ``"monotone"``: the exact optimum among allocations whose widths never decrease along a
  given layer ``order`` (the rule of NNCF's HAWQ initialisation: layers sorted by Hessian
  trace, more sensitive layers never get fewer bits).
* ``"greedy"``: all layers at the lowest width, then repeatedly the upgrade to the next width
  with the largest cost reduction per unit of resource that still fits (the seed's greedy).
* ``"proportional"``: the seed's ``b_ℓ ∝ log2 s_ℓ`` (``s_ℓ`` a per-layer score, e.g. the
  condition number κ), scaled to the budget, rounded down to ``B`` and filled greedily.
* ``"relaxed"``: the seed's gradient method on the relaxed problem
  ``min Σ s_ℓ 2^{-b_ℓ} s.t. Σ w_ℓ b_ℓ ≤ budget`` over real ``b``, solved in closed form
  (KKT: ``b_ℓ = log2(s_ℓ ln2 / (λ w_ℓ))`` clipped to ``[min B, max B]``, λ by bisection; the
  point gradient descent converges to), then rounded down and filled greedily.

The result's ``bits`` is ``{layer name: width}``, which :func:`quantlens.quantize_model`
accepts.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

METHODS = ("exact", "monotone", "greedy", "proportional", "relaxed")


@dataclass(frozen=True)
class Allocation:
    """A bit allocation: ``bits`` per layer, its predicted ``cost``, the resource it uses
    (``used`` of ``budget``, in the units of the weights) and ``average_bits`` (weighted by
    the weights: for memory, bits per parameter)."""

    bits: dict
    cost: float
    used: float
    budget: float
    average_bits: float
    method: str

    def __repr__(self) -> str:
        return (f"Allocation({self.method}: {self.average_bits:.2f} bits on average, cost "
                f"{self.cost:.4g}, {self.used:.4g} of {self.budget:.4g})")


def _check_costs(costs) -> pd.DataFrame:
    if not isinstance(costs, pd.DataFrame) or costs.empty:
        raise TypeError("costs must be a non-empty DataFrame: one row per layer, one column "
                        "per bit width (e.g. sensitivity.cost_table(...))")
    bits = list(costs.columns)
    if not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and 1 <= b <= 32
               for b in bits):
        raise ValueError(f"costs' columns must be bit widths (ints in [1, 32]), got {bits!r}")
    if len(set(bits)) != len(bits):
        raise ValueError(f"costs' bit widths must be distinct, got {bits!r}")
    if costs.index.has_duplicates:
        raise ValueError("costs has duplicate layer names")
    values = costs.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("costs must be finite (no NaN or inf)")
    return costs[sorted(bits)].astype(float)


def _groups(layers: list[str], groups) -> list[list[str]]:
    """Partition of the layers: the given groups, every other layer alone."""
    if groups is None:
        return [[name] for name in layers]
    seen: set[str] = set()
    out = []
    for g in groups:
        g = [g] if isinstance(g, str) else list(g)
        unknown = [n for n in g if n not in layers]
        if unknown:
            raise ValueError(f"groups name layers not in costs: {unknown}")
        if seen & set(g):
            raise ValueError(f"groups overlap: {sorted(seen & set(g))}")
        seen |= set(g)
        out.append(g)
    return out + [[n] for n in layers if n not in seen]


def _problem(costs, weights, groups):
    costs = _check_costs(costs)
    layers = list(costs.index)
    if not isinstance(weights, Mapping):
        raise TypeError("weights must be a mapping {layer: resource per bit}, e.g. "
                        "parameter counts")
    missing = [n for n in layers if n not in weights]
    if missing:
        raise ValueError(f"weights has no entry for {missing}")
    for n in layers:
        w = weights[n]
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) \
                or w <= 0:
            raise ValueError(f"weights[{n!r}] must be a finite positive number, got {w!r}")
    parts = _groups(layers, groups)
    bits = np.array(costs.columns, dtype=float)
    c = np.stack([costs.loc[g].to_numpy().sum(0) for g in parts])  # (groups, widths)
    w = np.array([sum(float(weights[n]) for n in g) for g in parts])
    return parts, bits, c, w


def _result(parts, bits, c, w, choice, budget, method) -> Allocation:
    out = {n: int(bits[j]) for g, j in zip(parts, choice) for n in g}
    used = float(sum(w[i] * bits[j] for i, j in enumerate(choice)))
    cost = float(sum(c[i, j] for i, j in enumerate(choice)))
    return Allocation(bits=out, cost=cost, used=used, budget=float(budget),
                      average_bits=used / float(w.sum()), method=method)


def _milp(bits, c, w, budget, order_pairs=()):
    from scipy.optimize import Bounds, LinearConstraint, milp

    g, k = c.shape
    n = g * k
    rows, lo, hi = [], [], []
    for i in range(g):  # one width per group
        a = np.zeros(n)
        a[i * k:(i + 1) * k] = 1
        rows.append(a), lo.append(1), hi.append(1)
    a = np.concatenate([w[i] * bits for i in range(g)])  # the budget
    rows.append(a), lo.append(-np.inf), hi.append(budget)
    for i, j in order_pairs:  # b_i <= b_j
        a = np.zeros(n)
        a[i * k:(i + 1) * k] = bits
        a[j * k:(j + 1) * k] -= bits
        rows.append(a), lo.append(-np.inf), hi.append(0)
    res = milp(c.ravel(), constraints=LinearConstraint(np.array(rows), lo, hi),
               integrality=np.ones(n), bounds=Bounds(0, 1))
    if res.x is None:
        raise ValueError(f"no allocation satisfies the budget and constraints ({res.message})")
    return [int(np.argmax(res.x[i * k:(i + 1) * k])) for i in range(g)]


def _fill(bits, c, w, budget, choice):
    """Greedy upgrades: the best cost reduction per resource that fits, until none does."""
    choice = list(choice)
    used = sum(w[i] * bits[j] for i, j in enumerate(choice))
    while True:
        best, gain = None, 0.0
        for i, j in enumerate(choice):
            if j + 1 < len(bits):
                extra = w[i] * (bits[j + 1] - bits[j])
                if used + extra <= budget * (1 + 1e-12):
                    g = (c[i, j] - c[i, j + 1]) / extra
                    if g > gain:
                        best, gain = i, g
        if best is None:
            return choice
        used += w[best] * (bits[choice[best] + 1] - bits[choice[best]])
        choice[best] += 1


def _round_down(bits, b):
    return [int(np.searchsorted(bits, x, side="right") - 1) if x >= bits[0] else 0 for x in b]


def _scores(parts, bits, c, scores):
    if scores is None:  # the seed's model c = s 2^{-b}: s from the lowest width's cost
        return c[:, 0] * 2.0 ** bits[0]
    if not isinstance(scores, Mapping):
        raise TypeError("scores must be a mapping {layer: positive score}")
    s = []
    for g in parts:
        vals = [scores.get(n) for n in g]
        if any(v is None or not np.isfinite(v) or v <= 0 for v in vals):
            raise ValueError(f"scores must give a finite positive value for {g}")
        s.append(float(sum(vals)))
    return np.array(s)


def allocate(
    costs: pd.DataFrame,
    weights: Mapping[str, float],
    budget: float,
    method: str = "exact",
    groups: Sequence[Sequence[str]] | None = None,
    order: Sequence[str] | None = None,
    scores: Mapping[str, float] | None = None,
) -> Allocation:
    """Choose a width per layer under ``Σ_ℓ w_ℓ b_ℓ ≤ budget`` (module docstring).

    Parameters
    ----------
    costs : DataFrame
        One row per layer (index: layer names), one column per allowed width (the bit set,
        e.g. ``[2, 3, 4, 5, 6, 7, 8]`` or a hardware set ``[4, 8]``): predicted damage.
    weights : mapping
        Resource per bit of each layer: parameter counts for a memory budget in bits
        (:func:`memory_budget`), MACs × activation bits for bit-operations.
    budget : float
        In the units of ``weights`` × bits.
    method : {"exact", "monotone", "greedy", "proportional", "relaxed"}
    groups : sequence of sequences of layer names, optional
        Layers that must share one width (tied weights, fused kernels); their costs add.
    order : sequence of layer names
        For ``"monotone"``: widths never decrease along this order (e.g. ascending trace).
    scores : mapping, optional
        For ``"proportional"``/``"relaxed"``: the per-layer score ``s_ℓ`` (e.g. κ_ℓ); by
        default ``c_ℓ(min B) 2^{min B}`` (exact when ``costs`` is the seed's ``s 2^{-b}``).

    Raises ValueError for an infeasible budget (below every layer at the lowest width), an
    unknown method, bad costs, weights, groups or order.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    parts, bits, c, w = _problem(costs, weights, groups)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) \
            or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a finite positive number, got {budget!r}")
    lowest = float(w.sum() * bits[0])
    if budget < lowest * (1 - 1e-12):
        raise ValueError(f"budget {budget:.6g} is infeasible: every layer at {int(bits[0])} "
                         f"bits already needs {lowest:.6g}")
    if method == "exact":
        choice = _milp(bits, c, w, budget)
    elif method == "monotone":
        if order is None:
            raise ValueError("method='monotone' needs order (layer names, least sensitive "
                             "first)")
        where = {n: i for i, g in enumerate(parts) for n in g}
        order = list(order)
        if sorted(order) != sorted(where):
            raise ValueError("order must list every layer of costs exactly once")
        seq = list(dict.fromkeys(where[n] for n in order))
        choice = _milp(bits, c, w, budget, list(zip(seq[:-1], seq[1:])))
    elif method == "greedy":
        choice = _fill(bits, c, w, budget, [0] * len(parts))
    else:
        s = _scores(parts, bits, c, scores)
        if method == "proportional":
            logs = np.log2(np.maximum(s, 1.0 + 1e-12))
            mean = float((w * logs).sum() / w.sum())
            target = budget / w.sum()
            b = target * logs / mean if mean > 0 else np.full(len(s), target)
        else:
            b = _relaxed(s, w, budget, bits[0], bits[-1])
        choice = _fill(bits, c, w, budget, _round_down(bits, np.clip(b, bits[0], bits[-1])))
    return _result(parts, bits, c, w, choice, budget, method)


def _relaxed(s, w, budget, lo, hi) -> np.ndarray:
    """Closed-form optimum of ``min Σ s 2^{-b} s.t. Σ w b <= budget, lo <= b <= hi``."""
    def b_of(lam):
        return np.clip(np.log2(s * math.log(2) / (lam * w)), lo, hi)

    if float((w * hi).sum()) <= budget:
        return np.full(len(s), float(hi))
    a, z = 1e-300, 1e300  # Σ w b(λ) decreases in λ
    for _ in range(2000):
        m = math.sqrt(a * z)
        if float((w * b_of(m)).sum()) > budget:
            a = m
        else:
            z = m
        if z / a < 1 + 1e-12:
            break
    return b_of(z)


def brute_force(costs: pd.DataFrame, weights: Mapping[str, float], budget: float,
                groups=None, order=None) -> Allocation:
    """The optimum by enumerating every allocation (``|B|^layers``; small problems only, a
    reference for the tests). With ``order``, only monotone allocations count."""
    parts, bits, c, w = _problem(costs, weights, groups)
    if len(bits) ** len(parts) > 2_000_000:
        raise ValueError("too many allocations to enumerate")
    rank = None
    if order is not None:
        where = {n: i for i, g in enumerate(parts) for n in g}
        rank = list(dict.fromkeys(where[n] for n in order))
    best, best_cost = None, math.inf
    for choice in itertools.product(range(len(bits)), repeat=len(parts)):
        if float(sum(w[i] * bits[j] for i, j in enumerate(choice))) > budget * (1 + 1e-12):
            continue
        if rank and any(choice[a] > choice[b] for a, b in zip(rank[:-1], rank[1:])):
            continue
        cost = float(sum(c[i, j] for i, j in enumerate(choice)))
        if cost < best_cost:
            best, best_cost = choice, cost
    if best is None:
        raise ValueError("no allocation satisfies the budget")
    return _result(parts, bits, c, w, list(best), budget, "brute force")


def memory_budget(sizes: Mapping[str, int], average_bits: float | None = None,
                  bytes: float | None = None) -> float:
    """A memory budget in bits for :func:`allocate` with ``weights=sizes`` (parameter
    counts): ``average_bits × Σ sizes``, or ``8 × bytes``. Give exactly one."""
    if (average_bits is None) == (bytes is None):
        raise ValueError("give exactly one of average_bits and bytes")
    total = float(sum(sizes.values()))
    value = average_bits if bytes is None else bytes
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"the budget must be a positive number, got {value!r}")
    return float(value) * total if bytes is None else 8.0 * float(value)


def seed_costs(scores: Mapping[str, float], bits: Sequence[int]) -> pd.DataFrame:
    """The seed document's cost model ``s_ℓ 2^{-b}`` (``s_ℓ`` = κ_ℓ) as a cost table."""
    names = list(scores)
    s = np.array([float(scores[n]) for n in names])
    return pd.DataFrame(s[:, None] * 2.0 ** -np.array(bits, dtype=float)[None, :],
                        index=names, columns=list(bits))


def layer_macs(model, example_input) -> dict[str, int]:
    """Multiply-accumulates per example of every Linear and Conv layer, from one forward
    pass on ``example_input`` (a tensor batch, or a mapping of model keywords). For a
    bit-operation budget use ``weights = {ℓ: macs_ℓ × activation bits}`` (then
    ``Σ_ℓ w_ℓ b_ℓ`` counts BOPs per example)."""
    import torch
    from torch import nn

    from .guard import eval_mode
    from .quantize import quantizable_layers

    layers = {n: m for n, m in quantizable_layers(model).items()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    if not layers:
        raise ValueError("model has no Linear or Conv layer")
    macs: dict[str, int] = {}

    def hook(name, module, args, out):
        n = args[0].shape[0] if args[0].ndim > 1 else 1
        if isinstance(module, nn.Linear):
            count = out.numel() // n * module.in_features
        else:
            k = int(np.prod(module.kernel_size))
            count = out.numel() // n * (module.in_channels // module.groups) * k
        macs[name] = macs.get(name, 0) + int(count)

    handles = [m.register_forward_hook(lambda mod, a, o, name=n: hook(name, mod, a, o))
               for n, m in layers.items()]
    try:
        with eval_mode(model), torch.no_grad():
            if isinstance(example_input, Mapping):
                model(**example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {n: macs[n] for n in layers if n in macs}

