"""quantlens.allocation: every allocator against brute force and closed forms; bad input."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import quantlens as ql
from quantlens import allocation as al


def _case(rng, n_layers=5, bits=(2, 3, 4, 6, 8)):
    layers = [f"l{i}" for i in range(n_layers)]
    # decreasing in b, as damage is
    c = np.sort(rng.random((n_layers, len(bits))) * 10, axis=1)[:, ::-1].copy()
    costs = pd.DataFrame(c, index=layers, columns=list(bits))
    weights = {n: int(rng.integers(1, 50)) for n in layers}
    return costs, weights


@pytest.mark.parametrize("seed", range(12))
def test_exact_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    costs, weights = _case(rng)
    total = sum(weights.values())
    budget = float(rng.uniform(2, 8) * total)
    exact = al.allocate(costs, weights, budget)
    ref = al.brute_force(costs, weights, budget)
    assert exact.cost == pytest.approx(ref.cost, rel=1e-12, abs=1e-12)
    assert exact.used <= budget
    # every heuristic is feasible and no better than the optimum
    for method in ("greedy", "proportional", "relaxed"):
        a = al.allocate(costs, weights, budget, method)
        assert a.used <= budget * (1 + 1e-12) and a.cost >= exact.cost - 1e-9
        assert set(a.bits.values()) <= set(costs.columns)


@pytest.mark.parametrize("seed", range(6))
def test_groups_and_monotone_against_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    costs, weights = _case(rng, 6, (2, 4, 8))
    budget = float(4.5 * sum(weights.values()))
    groups = [["l0", "l3"], ["l1", "l5"]]
    a = al.allocate(costs, weights, budget, groups=groups)
    assert a.bits["l0"] == a.bits["l3"] and a.bits["l1"] == a.bits["l5"]
    assert a.cost == pytest.approx(al.brute_force(costs, weights, budget, groups).cost)
    order = list(rng.permutation(costs.index))
    m = al.allocate(costs, weights, budget, "monotone", order=order)
    widths = [m.bits[n] for n in order]
    assert widths == sorted(widths)
    assert m.cost == pytest.approx(al.brute_force(costs, weights, budget, order=order).cost)
    assert m.cost >= al.allocate(costs, weights, budget).cost - 1e-9


def test_relaxed_is_the_kkt_point_and_proportional_follows_log_kappa():
    kappa = {"a": 100.0, "b": 10.0, "c": 1000.0}
    w = np.array([1.0, 2.0, 1.0])
    b = al._relaxed(np.array(list(kappa.values())), w, 20.0, 2, 16)
    assert float(w @ b) == pytest.approx(20.0)
    # KKT: the marginal value s ln2 2^{-b} / w is the same for every unclipped layer
    marg = np.array(list(kappa.values())) * math.log(2) * 2.0 ** -b / w
    assert np.allclose(marg, marg[0])
    costs = al.seed_costs(kappa, [2, 3, 4, 5, 6, 7, 8])
    sizes = {"a": 10, "b": 10, "c": 10}
    p = al.allocate(costs, sizes, al.memory_budget(sizes, average_bits=5), "proportional")
    assert p.bits["c"] >= p.bits["a"] >= p.bits["b"]
    assert p.average_bits <= 5


def test_output_is_a_quantize_model_spec_and_budget_helpers():
    model = ql.make_model("mlp")
    layers = ql.quantizable_layers(model)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    costs = al.seed_costs({n: 1.0 + i for i, n in enumerate(sizes)}, [4, 8])
    a = al.allocate(costs, sizes, al.memory_budget(sizes, bytes=sum(sizes.values()) * 0.75))
    assert a.average_bits <= 6
    q = ql.quantize_model(model, a.bits)
    for name, b in a.bits.items():
        assert len(torch.unique(ql.quantizable_layers(q)[name].weight)) <= 2 ** b
    assert al.memory_budget({"a": 10}, average_bits=4) == 40.0
    with pytest.raises(ValueError, match="exactly one"):
        al.memory_budget(sizes)


def test_bad_input():
    costs = al.seed_costs({"a": 2.0, "b": 3.0}, [4, 8])
    w = {"a": 10, "b": 10}
    with pytest.raises(ValueError, match="infeasible"):
        al.allocate(costs, w, 79.0)
    with pytest.raises(ValueError, match="method"):
        al.allocate(costs, w, 100.0, "optimal")
    with pytest.raises(ValueError, match="budget"):
        al.allocate(costs, w, float("nan"))
    with pytest.raises(ValueError, match="weights"):
        al.allocate(costs, {"a": 10}, 100.0)
    with pytest.raises(ValueError, match="weights"):
        al.allocate(costs, {"a": 10, "b": -1}, 100.0)
    with pytest.raises(TypeError, match="costs"):
        al.allocate({"a": 1}, w, 100.0)
    with pytest.raises(ValueError, match="bit widths"):
        al.allocate(costs.rename(columns={4: "4"}), w, 100.0)
    with pytest.raises(ValueError, match="finite"):
        al.allocate(costs.replace(costs.iloc[0, 0], np.nan), w, 100.0)
    with pytest.raises(ValueError, match="overlap"):
        al.allocate(costs, w, 100.0, groups=[["a"], ["a", "b"]])
    with pytest.raises(ValueError, match="not in costs"):
        al.allocate(costs, w, 100.0, groups=[["z"]])
    with pytest.raises(ValueError, match="order"):
        al.allocate(costs, w, 100.0, "monotone")
    with pytest.raises(ValueError, match="order"):
        al.allocate(costs, w, 100.0, "monotone", order=["a"])
