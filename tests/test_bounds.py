"""quantlens.bounds: the two theorems' quantities against direct computation."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import bounds as bd
from quantlens.testing import assert_model_unchanged


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8),
                          nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(30, 1, 4, 4), torch.randint(0, 4, (30,))
    return model, DataLoader(TensorDataset(x, y), batch_size=16)


def test_layer_inputs_are_the_activations():
    model, loader = _setup()
    inputs = bd.layer_inputs(model, loader)
    x = torch.cat([b[0] for b in loader]).flatten(1).double()
    torch.testing.assert_close(inputs["1"], x)
    h = torch.relu(model[1](x.float())).double()
    torch.testing.assert_close(inputs["3"], h)


def test_theorem_4_7_prediction_and_measured_minimum():
    model, loader = _setup()
    eps = 0.05
    t = assert_model_unchanged(model, bd.theorem_4_7, model, loader, eps)
    inputs = bd.layer_inputs(model, loader)
    for name in ("1", "3", "5"):
        row = t.loc[name]
        x = inputs[name]
        assert row.diameter == pytest.approx(2 * float(x.norm(dim=1).max()))
        assert row.predicted_bits == pytest.approx(
            math.log2(row.kappa * row.diameter ** 2 / eps))
        w = model[int(name)].weight.detach().double()
        b = int(row.measured_bits)

        def err(bits, w=w, x=x):
            q = ql.quantize_dequantize(w, bits)
            return float(((q - w) @ x.T).norm(dim=0).max())

        assert err(b) <= eps and (b == 2 or err(b - 1) > eps)
        assert row.holds == (row.predicted_bits <= b)
    with pytest.raises(ValueError, match="eps"):
        bd.theorem_4_7(model, loader, 0.0)


@pytest.mark.parametrize("allocation", [{"1": 4, "3": 4, "5": 4}, {"1": 2, "5": 8},
                                        {"3": 3}])
def test_theorem_3_4_bound_holds_and_terms(allocation):
    model, loader = _setup()
    r = assert_model_unchanged(model, bd.theorem_3_4, model, loader, allocation)
    assert r["holds"] and r["ratio"] >= 1 - 1e-5
    x = torch.cat([b[0] for b in loader])
    q = ql.quantize_model(model, allocation)
    with torch.no_grad():
        measured = float((q(x) - model(x)).double().norm(dim=1).max())
    assert r["measured"] == pytest.approx(measured, rel=1e-6)
    terms = r["terms"]
    assert terms.loc["5", "lipschitz_after"] == 1.0
    assert terms.loc["1", "lipschitz_after"] == pytest.approx(
        terms.loc["3", "lipschitz"] * terms.loc["5", "lipschitz"])
    assert r["bound"] == pytest.approx(float(terms.term.sum()))


def test_single_last_layer_bound_is_tight():
    model, loader = _setup()
    r = bd.theorem_3_4(model, loader, {"5": 2})
    assert r["ratio"] == pytest.approx(1.0, rel=1e-5)


def test_bad_input():
    model, loader = _setup()
    with pytest.raises(ValueError, match="not Linear layers"):
        bd.theorem_3_4(model, loader, {"2": 4})
    cnn = ql.make_model("cnn")
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="chain"):
        bd.theorem_3_4(cnn, DataLoader(TensorDataset(x, y)), {"fc2": 4})
