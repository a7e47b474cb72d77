"""Widgets build, react to their controls and leave the model alone."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import quantlens as ql  # noqa: E402
from quantlens.testing import model_unchanged  # noqa: E402


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    loader = DataLoader(TensorDataset(torch.randn(20, 4), torch.randint(0, 3, (20,))),
                        batch_size=8)
    return model, loader


def test_quantization_explorer_reacts():
    w = torch.randn(32, 64)
    box = ql.widgets.quantization_explorer(w, group_size=16)
    bits, gran, sym = box.children[0].children
    readout = box.children[1]
    assert "int4 sym per-tensor" in readout.value
    gran.value = "group"
    bits.value = 3
    sym.value = False
    assert "int3 asym per-group(16)" in readout.value
    with pytest.raises(TypeError, match="weight"):
        ql.widgets.quantization_explorer(torch.arange(4))


def test_hessian_explorer_reacts_and_leaves_model():
    model, loader = _tiny()
    with model_unchanged(model):
        box = ql.widgets.hessian_explorer(model, loader, k=2)
        bits, gran, layer = box.children[0].children
        bits.value = 4
        gran.value = "channel"
        layer.value = "2"


def test_landscape_explorer_reacts_and_leaves_model():
    model, loader = _tiny()
    with model_unchanged(model):
        box = ql.widgets.landscape_explorer(model, loader, bits=(8, 2), threshold=0.05)
        dist, steps = box.children[0].children
        seed, bits = box.children[1].children
        readout = box.children[2]
        assert "int8 sym per-tensor, requantize" in readout.value
        before = readout.value
        bits.value = 2
        seed.value = 3
        steps.value = 7
        dist.value = 0.5
        assert "int2 sym per-tensor, dequantized" in readout.value and readout.value != before


def test_alpha_explorer_reacts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 80))
    sweep = ql.alpha_sweep(model, bits=(None, 8, 2), granularities=("tensor", "channel"),
                           progress=False)
    layers = sweep.layers.assign(kind=sweep.layers["layer"].map({"0": "first", "2": "second"}))
    assert layers["kind"].notna().all()
    box = ql.widgets.alpha_explorer(layers, bits=(8, 2))
    bits, gran, kind = box.children[0].children
    readout = box.children[1]
    assert "2 layers" in readout.value
    kind.value = "first"
    gran.value = "channel"
    bits.value = 2
    assert "1 layers" in readout.value


def test_bit_collapse_explorer_reproduces_the_experiment():
    from quantlens import bitcollapse as bc

    fast = bc.CollapseConfig(pretrain_epochs=2, epochs=1, n_curvature=64, directions=2,
                             steps=5)
    box = ql.widgets.bit_collapse_explorer(rho={"sam": 0.1}, config=fast)
    setting, optimizer = box.children[0].children
    rho, seed = box.children[1].children
    direction, readout = box.children[2], box.children[3]
    assert "int8, sam" in readout.value and rho.value == pytest.approx(0.1)
    deployed, _, _ = bc.finetune("int8", "sam", 0, rho.value, fast)
    _, test, _ = bc.digits_data(fast)
    acc = ql.evaluate(deployed, test).accuracy
    assert f"test accuracy {100 * acc:.1f}%" in readout.value
    optimizer.value = "sgd"
    assert rho.disabled and "int8, sgd" in readout.value
    optimizer.value = "asam"
    assert rho.value == pytest.approx(4.0) and not rho.disabled
    setting.value = "fp32"
    direction.value = 1
    seed.value = 1
    assert "fp32, asam" in readout.value and "requantize" not in readout.value


def test_allocation_explorer_reacts_and_leaves_model():
    model, loader = _tiny()
    table = ql.layer_sensitivity(model, loader, bits=(2, 4, 8), trace_hvp=4)
    with model_unchanged(model):
        box = ql.widgets.allocation_explorer(model, loader, table)
        avg, measure, method = box.children[0].children
        readout = box.children[1]
        assert "exact on kappa_cost" in readout.value and "uniform int4" in readout.value
        measure.value = "hawq"
        method.value = "greedy"
        avg.value = 3.0
        assert "greedy on hawq" in readout.value and "uniform" not in readout.value


def test_explorer_text_form_is_one_helpful_line():
    import torch

    ex = ql.widgets.quantization_explorer(torch.randn(16, 8))
    text = ex._repr_mimebundle_()["text/plain"] if hasattr(ex, "_repr_mimebundle_") \
        else repr(ex)
    assert text == "[quantization explorer: run this cell in a live kernel to use the explorer]"
    assert isinstance(ex, ql.widgets.widgets.VBox)
