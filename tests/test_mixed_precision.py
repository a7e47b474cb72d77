"""quantlens.mixed_precision: measured allocations, brute-force optimum, configuration-level
agreement, each against a direct computation."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import mixed_precision as mp
from quantlens import sensitivity as se
from quantlens.testing import assert_model_unchanged


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    return model, loader, se.layer_sensitivity(model, loader, bits=(2, 4, 8), trace_hvp=6)


def test_allocations_are_measured_directly():
    model, loader, table = _setup()
    out = assert_model_unchanged(model, mp.evaluate_allocations, model, loader, table,
                                 (4, 5), measures=("kappa_cost", "hawq"))
    assert list(out[out.average_bits == 4].method[:1]) == ["uniform"]
    assert "uniform" not in set(out[out.average_bits == 5].method)  # 5 is not a width
    for _, row in out.iterrows():
        q = ql.quantize_model(model, row.bits)
        ev = ql.evaluate(q, loader)
        assert row.loss == pytest.approx(ev.loss) and row.accuracy == ev.accuracy
        assert row.used_bits <= row.average_bits + 1e-9
    assert set(out.query("measure == 'hawq'").method) == {"exact", "monotone", "greedy"}
    costs = se.cost_table(table, "hawq")
    order = list(costs.mean(axis=1).sort_values(kind="stable").index)
    for bits in out.query("method == 'monotone'").bits:
        widths = [bits[n] for n in order]
        assert widths == sorted(widths)


def test_measured_optimum_is_the_brute_force_minimum():
    model, loader, table = _setup()
    sizes = {"1": 192, "3": 48}
    opt = mp.measured_optimum(model, loader, sizes, (2, 4, 8), (3.0, 8.0))
    losses = {}
    for b1 in (2, 4, 8):
        for b3 in (2, 4, 8):
            used = (192 * b1 + 48 * b3) / 240
            losses[(b1, b3)] = (ql.evaluate(ql.quantize_model(model, {"1": b1, "3": b3}),
                                            loader).loss, used)
    for _, row in opt.iterrows():
        feasible = [v[0] for v in losses.values() if v[1] <= row.average_bits]
        assert row.loss == pytest.approx(min(feasible))
    assert opt.n_configurations.iloc[0] == 9
    with pytest.raises(ValueError, match="max_configurations"):
        mp.measured_optimum(model, loader, sizes, (2, 4, 8), (3.0,), max_configurations=5)
    with pytest.raises(ValueError, match="no configuration"):
        mp.measured_optimum(model, loader, sizes, (2, 4, 8), (1.0,))
    r = mp.regret(pd.DataFrame({"average_bits": [3.0], "loss": [2 * opt.loss.iloc[0]]}), opt)
    assert r.regret_pct.iloc[0] == pytest.approx(100.0)


def test_configuration_agreement_against_scipy():
    model, loader, table = _setup()
    agree, configs = mp.configuration_agreement(model, loader, table, 12, ("kappa_cost", "hawq"),
                                                seed=4)
    again, _ = mp.configuration_agreement(model, loader, table, 12, ("kappa_cost", "hawq"), seed=4)
    pd.testing.assert_frame_equal(agree, again)
    base = ql.evaluate(model, loader).loss
    costs = se.cost_table(table, "hawq")
    for _, row in configs.head(3).iterrows():
        assert row.hawq == pytest.approx(sum(costs.loc[n, b] for n, b in row.bits.items()))
        q = ql.quantize_model(model, row.bits)
        assert row.loss_increase == pytest.approx(ql.evaluate(q, loader).loss - base)
    tau = kendalltau(configs.hawq, configs.loss_increase)[0]
    assert agree.set_index("measure").loc["hawq", "kendall"] == pytest.approx(tau)
    assert np.isfinite(agree.kendall).all()
    with pytest.raises(ValueError, match="n_configurations"):
        mp.configuration_agreement(model, loader, table, 2)


def test_digits_study_tables():
    out = mp.digits_study("mlp", seeds=[0], widths=(2, 4, 8), average_bits=(4,),
                          n_configurations=5)
    assert set(out) == {"sensitivity", "agreement", "allocations", "optimum",
                        "configurations", "reference"}
    assert (out["allocations"].seed == 0).all() and "regret_pct" in out["allocations"]
    # the measured damage is taken on the test split, not on the curvature sample
    net, _ = ql.trained_digits_model("mlp", seed=0)
    _, test = ql.digits_loaders(seed=0)
    row = out["sensitivity"].query("layer == 'net.5' and bits == 2").iloc[0]
    base = ql.evaluate(net, test).loss
    q = ql.evaluate(ql.quantize_model(net, {"net.5": 2}), test).loss
    assert row.oracle_loss == pytest.approx(q - base)


def test_sentence_loader_pads_per_batch():
    pre = ql.load_pretrained()
    loader = ql.data.sentence_loader(pre.tokenizer, ql.SENTENCES[:5], batch_size=2)
    batches = list(loader)
    assert len(batches) == 3 and set(batches[0]) >= {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="sentences"):
        ql.data.sentence_loader(pre.tokenizer, "one sentence")
