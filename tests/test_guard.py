"""The model-unchanged helper must catch every kind of change, also when the call raises."""

import pytest
import torch
from torch import nn

import quantlens as ql
from quantlens.testing import assert_model_unchanged, model_unchanged


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.1), nn.Linear(4, 2))


def _bump(m):
    with torch.no_grad():
        m[0].weight[0, 0] = torch.nextafter(m[0].weight[0, 0], torch.tensor(10.0))


@pytest.mark.parametrize("change,what", [
    (_bump, "values changed"),
    (lambda m: m.eval(), "training True -> False"),
    (lambda m: m[3].bias.requires_grad_(False), "requires_grad"),
    (lambda m: m.double(), "placement"),
    (lambda m: m[1](torch.randn(8, 4)), "buffer:1.running_mean: values changed"),
])
def test_detects_changes(change, what):
    m = _model().train()
    with pytest.raises(AssertionError, match=what):
        assert_model_unchanged(m, change, m)
    fresh = _model().train()
    assert_model_unchanged(fresh, lambda: 1)  # an untouched model passes


def test_detects_change_when_function_raises():
    m = _model()

    def breaks_then_raises(model):
        model.eval()
        raise RuntimeError("midway")

    with pytest.raises(AssertionError, match="training") as info:
        assert_model_unchanged(m, breaks_then_raises, m)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_reraises_when_model_intact():
    m = _model()
    with pytest.raises(ValueError, match="boom"):
        with model_unchanged(m):
            raise ValueError("boom")


def test_preserved_restores_everything_after_exception():
    m = _model().train()
    snap = ql.ModelSnapshot.take(m)
    with pytest.raises(RuntimeError):
        with ql.preserved(m):
            _bump(m)
            m.eval()
            m[0].weight.requires_grad_(False)
            m.double()
            raise RuntimeError("midway")
    assert snap.differences(m) == []


def test_eval_mode_restores_mixed_flags():
    m = _model().train()
    m[2].eval()
    with ql.eval_mode(m):
        assert not any(x.training for x in m.modules())
    assert m.training and m[1].training and not m[2].training


def test_zero_dim_buffers_are_compared_bitwise():
    from quantlens.guard import _bitwise_equal

    a = torch.tensor(1.5)
    assert _bitwise_equal(a, torch.tensor(1.5))
    assert not _bitwise_equal(a, torch.tensor(-1.5))
    assert not _bitwise_equal(torch.tensor(0.0), torch.tensor(-0.0))
    m = torch.nn.Linear(2, 2)
    m.register_buffer("running_max", torch.tensor(3.0))
    with pytest.raises(AssertionError, match="running_max"):
        with model_unchanged(m):
            m.running_max.fill_(4.0)


def test_swapped_restores_one_tensor_bitwise_also_after_exception():
    m = _model()
    snap = ql.ModelSnapshot.take(m)
    w = m[0].weight
    new = torch.full_like(w, -0.0)
    with ql.swapped(w, new) as t:
        assert t is w and torch.equal(w, new) and w.requires_grad
    assert snap.differences(m) == []
    with pytest.raises(RuntimeError, match="midway"):
        with ql.swapped(w, new):
            raise RuntimeError("midway")
    assert snap.differences(m) == []


def test_swapped_bad_arguments_are_clear_errors():
    m = _model()
    w = m[0].weight
    with pytest.raises(TypeError, match="value"):
        with ql.swapped(w, [1.0]):
            pass
    with pytest.raises(ValueError, match="shape"):
        with ql.swapped(w, torch.zeros(1)):
            pass
    with pytest.raises(TypeError, match="tensor"):
        with ql.swapped("w", w):
            pass
