"""quantlens.outcomes: SQNR against torch.ao's numeric suite, KL and agreement by hand."""

import math

import pytest
import torch
from torch import nn
from torch.ao.ns.fx.utils import compute_sqnr
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import outcomes as oc
from quantlens.testing import model_unchanged


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    x, y = torch.randn(30, 1, 4, 4), torch.randint(0, 5, (30,))
    return model, DataLoader(TensorDataset(x, y), batch_size=8)


def test_sqnr_agrees_with_torch_ao():
    torch.manual_seed(1)
    w = torch.randn(64, 32)
    for bits in (2, 4, 8):
        q = ql.quantize_dequantize(w, bits)
        assert oc.sqnr(w, q) == pytest.approx(float(compute_sqnr(w, q)), rel=1e-5)
    assert oc.sqnr(w, w) == math.inf
    with pytest.raises(ValueError, match="shape"):
        oc.sqnr(w, w[:3])
    with pytest.raises(TypeError):
        oc.sqnr(w, [1.0])


def test_weight_sqnr_per_layer():
    model, _ = _setup()
    q = ql.quantize_model(model, 4)
    table = oc.weight_sqnr(model, q)
    assert list(table.index) == ["1", "3"]
    w = model[3].weight
    assert table.loc["3", "weight_sqnr_db"] == pytest.approx(
        float(compute_sqnr(w.detach(), q[3].weight.detach())), rel=1e-5)
    with pytest.raises(ValueError, match="same quantizable layers"):
        oc.weight_sqnr(model, nn.Sequential(nn.Linear(2, 2)))


def test_output_agreement_by_hand():
    model, loader = _setup()
    q = ql.quantize_model(model, 3)
    with model_unchanged(model), model_unchanged(q):
        out = oc.output_agreement(model, q, loader)
    x = torch.cat([b[0] for b in loader])
    with torch.no_grad():
        g, f = model(x).double(), q(x).double()
    p = torch.softmax(g, 1)
    kl = float((p * (torch.log_softmax(g, 1) - torch.log_softmax(f, 1))).sum(1).mean())
    assert out["kl"] == pytest.approx(kl, rel=1e-9)
    assert out["top1_agreement"] == pytest.approx(float((g.argmax(1) == f.argmax(1)).double()
                                                        .mean()))
    assert out["output_sqnr_db"] == pytest.approx(float(compute_sqnr(g.float(), f.float())),
                                                  rel=1e-5)
    assert out["n"] == 30 and 0 < out["cosine"] <= 1
    same = oc.output_agreement(model, ql.quantize_model(model, {}), loader)
    assert same["kl"] == 0 and same["output_sqnr_db"] == math.inf
    with pytest.raises(ValueError, match="same model"):
        oc.output_agreement(model, model, loader)
