"""quantlens.sensitivity: each measure against a direct computation; rank agreement."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import allocation as al
from quantlens import sensitivity as se
from quantlens.testing import assert_model_unchanged


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x, y = torch.randn(24, 1, 4, 4), torch.randint(0, 4, (24,))
    return model, DataLoader(TensorDataset(x, y), batch_size=10)


def test_spectral_stats_match_numpy():
    model, _ = _setup()
    st = se.spectral_stats(model)
    s = np.linalg.svd(model[1].weight.detach().double().numpy(), compute_uv=False)
    assert st.loc["1", "spectral_norm"] == pytest.approx(s[0])
    assert st.loc["1", "kappa"] == pytest.approx(s[0] / s[-1])
    assert st.loc["3", "n_params"] == 48
    conv = nn.Conv2d(2, 3, 3)
    assert se.weight_matrix(conv).shape == (3, 18)


def test_fisher_matches_a_per_example_loop():
    model, loader = _setup()
    fisher = se.diagonal_fisher(model, loader)
    ref = {n: torch.zeros_like(model[int(n)].weight, dtype=torch.float64) for n in ("1", "3")}
    n = 0
    for x, y in loader:
        for i in range(len(y)):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            for k in ref:
                ref[k] += model[int(k)].weight.grad.double() ** 2
            n += 1
    model.zero_grad(set_to_none=True)
    for k in ref:
        torch.testing.assert_close(fisher[k], ref[k] / n, rtol=1e-5, atol=1e-9)
    with pytest.raises(TypeError, match="criterion"):
        se.diagonal_fisher(model, loader, ql.BatchLoss(lambda m, b: m(b[0]).sum()))


def test_sensitivity_table_against_direct_computation():
    model, loader = _setup()
    table = assert_model_unchanged(model, se.layer_sensitivity, model, loader, bits=(2, 4),
                                   trace_hvp=12)
    assert list(table.columns) == ["layer", "bits", "n_params", "kappa", "spectral_norm",
                                   "kappa_cost", "delta_sq", "hawq", "fisher", "oracle_loss",
                                   "oracle_accuracy"]
    row = table.set_index(["layer", "bits"]).loc[("3", 2)]
    w = model[3].weight.detach()
    delta = (ql.quantize_dequantize(w, 2) - w).double()
    assert row.delta_sq == pytest.approx(float((delta ** 2).sum()))
    assert row.kappa_cost == pytest.approx(row.kappa / 4)
    tr = se.block_traces(model, loader, n_hvp=12)
    assert row.hawq == pytest.approx(tr.loc["3", "trace_per_param"] * row.delta_sq)
    fisher = se.diagonal_fisher(model, loader)["3"]
    assert row.fisher == pytest.approx(float((fisher * delta ** 2).sum()))
    base = ql.evaluate(model, loader)
    q = ql.evaluate(ql.quantize_model(model, {"3": 2}), loader)
    assert row.oracle_loss == pytest.approx(q.loss - base.loss)
    assert row.oracle_accuracy == pytest.approx(base.accuracy - q.accuracy)
    costs = se.cost_table(table, "hawq")
    assert list(costs.index) == ["1", "3"] and list(costs.columns) == [2, 4]
    sizes = {"1": 192, "3": 48}
    a = al.allocate(costs, sizes, al.memory_budget(sizes, average_bits=3))
    assert set(a.bits) == {"1", "3"}


def test_block_traces_against_exact_block_traces():
    model, loader = _setup()
    est = se.block_traces(model, loader, n_hvp=400, seed=3)
    for name in ("1", "3"):
        exact = ql.exact_trace(ql.HessianOperator(model, loader, params=[f"{name}.weight"]))
        row = est.loc[name]
        assert abs(row.trace - exact.value) < 4 * row.trace_se
        assert row.trace_per_param == pytest.approx(row.trace / row.n_params)
    with pytest.raises(ValueError, match="n_hvp"):
        se.block_traces(model, loader, n_hvp=1)


def test_rank_agreement_against_scipy():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"layer": list("abcd") * 2, "bits": [2] * 4 + [4] * 4,
                      "hawq": rng.random(8), "kappa": [1.0, 2.0, 3.0, 4.0] * 2,
                      "oracle_loss": rng.random(8)})
    r = se.rank_agreement(t).set_index("measure")
    assert list(r.index) == ["kappa", "hawq"]
    assert r.loc["hawq", "spearman"] == pytest.approx(spearmanr(t.hawq, t.oracle_loss)[0])
    within = np.mean([spearmanr(g.kappa, g.oracle_loss)[0] for _, g in t.groupby("bits")])
    assert r.loc["kappa", "spearman_within_bits"] == pytest.approx(within)
    with pytest.raises(ValueError, match="no column"):
        se.rank_agreement(t, measures=["fisher"])
    with pytest.raises(TypeError):
        se.rank_agreement([1])


def test_bad_input():
    model, loader = _setup()
    with pytest.raises(TypeError, match="bits"):
        se.layer_sensitivity(model, loader, bits=4)
    with pytest.raises(ValueError, match="bits"):
        se.layer_sensitivity(model, loader, bits=(1,))
    with pytest.raises(ValueError, match="no column"):
        se.cost_table(pd.DataFrame({"layer": ["a"], "bits": [2]}), "hawq")
