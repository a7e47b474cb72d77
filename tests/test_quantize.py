"""quantlens.quantize against PyTorch's reference kernels, closed forms and properties."""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import quantlens as ql
from quantlens.testing import assert_model_unchanged

BITS = list(range(2, 17))


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- torch reference
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_equals_torch_bitwise(bits, symmetric):
    w = _randn(64, 33) * 0.1 + (0.0 if symmetric else 0.05)
    spec = ql.QuantSpec(bits, symmetric)
    scale, zp = ql.qparams(w, spec)
    ref = torch.fake_quantize_per_tensor_affine(w, float(scale[0]), int(zp[0]), spec.qmin,
                                                spec.qmax)
    assert torch.equal(ql.quantize_dequantize(w, spec), ref)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape,axis", [((48, 20), 0), ((48, 20), 1), ((8, 3, 3, 3), 0),
                                        ((8, 3, 3, 3), 1), ((6, 4, 5), -1)])
def test_per_channel_equals_torch_bitwise(bits, symmetric, shape, axis):
    w = _randn(*shape, seed=bits)
    spec = ql.QuantSpec(bits, symmetric, "channel", axis=axis)
    scale, zp = ql.qparams(w, spec)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp.to(torch.int32), axis % w.ndim,
                                                 spec.qmin, spec.qmax)
    assert torch.equal(ql.quantize_dequantize(w, spec), ref)


def test_ste_gradient_equals_torch_with_clipping():
    x = (_randn(200) * 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    spec = ql.QuantSpec(4, symmetric=False)
    y = ql.fake_quantize(x, spec, scale=torch.tensor([0.1]), zero_point=torch.tensor([7.0]))
    y_ref = torch.fake_quantize_per_tensor_affine(x_ref, 0.1, 7, spec.qmin, spec.qmax)
    g = _randn(200, seed=3)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, x_ref.grad)
    assert 0 < int((x.grad == 0).sum()) < 200  # some values were clipped, some not


def test_ste_is_identity_when_scale_from_tensor():
    w = _randn(10, 12).requires_grad_()
    ql.fake_quantize(w, ql.QuantSpec(3, granularity="channel")).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# --------------------------------------------------------------------------- closed forms
def test_seed_003_formula_closed_form():
    w = torch.tensor([-1.0, -0.4, 0.0, 0.3, 0.5, 0.9])
    for bits in (2, 4, 8):
        qmax = 2 ** (bits - 1) - 1
        scale = 1.0 / qmax
        expected = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
        torch.testing.assert_close(ql.quantize_dequantize(w, bits), expected, rtol=0, atol=1e-7)


def test_two_bit_has_three_levels_and_asym_has_four():
    w = torch.linspace(-1, 1, 101)
    assert torch.unique(ql.quantize_dequantize(w, 2)).tolist() == [-1.0, 0.0, 1.0]
    assert torch.unique(ql.quantize(w, ql.QuantSpec(2, False)).codes).numel() == 4


def test_group_padding_equals_ragged_groups():
    w = _randn(5, 70)
    spec = ql.QuantSpec(4, False, "group", group_size=32)
    got = ql.quantize_dequantize(w, spec)
    for lo in range(0, 70, 32):
        part = w[:, lo:lo + 32]
        ref = ql.quantize_dequantize(part, ql.QuantSpec(4, False, "channel"))
        assert torch.equal(got[:, lo:lo + 32], ref)


def test_group_of_full_fan_in_equals_per_channel():
    w = _randn(6, 4, 3, 3)
    a = ql.quantize_dequantize(w, ql.QuantSpec(5, granularity="group", group_size=36))
    b = ql.quantize_dequantize(w, ql.QuantSpec(5, granularity="channel"))
    assert torch.equal(a, b)


def test_uniform_noise_law_at_8_bits():
    w = _randn(512, 512)
    e = ql.quantization_error(w, ql.QuantSpec(8))
    assert abs(e.rmse_over_law - 1) < 0.01
    signal = float((w.double() ** 2).mean())
    assert e.snr_db == pytest.approx(10 * math.log10(signal / e.mse), rel=1e-9)


def test_memory_footprint():
    w = _randn(64, 256)
    assert ql.quantization_error(w, ql.QuantSpec(4)).memory_bits == 4 * 64 * 256 + 32
    e = ql.quantization_error(w, ql.QuantSpec(4, False, "group", group_size=64), scale_bits=16)
    assert e.n_scales == 64 * 4
    assert e.memory_bits == 4 * 64 * 256 + (16 + 4) * 256
    assert e.bits_per_element == pytest.approx(4 + 20 / 64)


def test_half_precision_input_keeps_dtype():
    w = _randn(16, 16).half()
    q = ql.quantize_dequantize(w, ql.QuantSpec(8, granularity="channel"))
    assert q.dtype == torch.float16
    ref = ql.quantize_dequantize(w.float(), ql.QuantSpec(8, granularity="channel")).half()
    assert torch.equal(q, ref)


def test_all_zero_tensor_gives_zeros():
    for spec in (ql.QuantSpec(4), ql.QuantSpec(3, False, "channel"),
                 ql.QuantSpec(2, True, "group", group_size=3)):
        z = torch.zeros(4, 6)
        q = ql.quantize_dequantize(z, spec)
        assert torch.equal(q, z)
        e = ql.quantization_error(z, spec)
        assert e.mse == 0 and e.snr_db == math.inf


# --------------------------------------------------------------------------- properties
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=finite)
specs = st.builds(ql.QuantSpec, bits=st.integers(2, 16), symmetric=st.booleans(),
                  granularity=st.sampled_from(ql.GRANULARITIES), axis=st.just(0),
                  group_size=st.integers(1, 12))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(arrays, specs)
# found by a random run: x/s = 511.5 exactly in real arithmetic, 511.49997 in float32
@example(np.array([5000.0, 10000.0], dtype=np.float32), ql.QuantSpec(10, symmetric=False))
def test_error_bound_idempotence_levels(a, spec):
    x = torch.from_numpy(a)
    qt = ql.quantize(x, spec)
    q = qt.dequantize()
    # |x - Q(x)| <= s/2 for every element, plus float32 rounding: x/s and (q - z)s each carry
    # a relative error of ~1 ulp, i.e. an absolute error of a few ulp(|x|)
    s_max = float(qt.scale.max())
    ulp = 4 * torch.finfo(torch.float32).eps * float(x.abs().max())
    assert float((q - x).abs().max()) <= s_max / 2 * (1 + 1e-5) + ulp + 1e-30
    # idempotence on the grid of x: Q_{s,z}(Q_{s,z}(x)) = Q_{s,z}(x), bitwise
    assert torch.equal(ql.fake_quantize(q, spec, qt.scale, qt.zero_point), q)
    # a symmetric grid keeps max|x|, so even recomputing it is (numerically) idempotent
    if spec.symmetric:
        torch.testing.assert_close(ql.quantize_dequantize(q, spec), q, rtol=1e-6, atol=0)
    # codes within range, at most 'levels' distinct codes
    assert int(qt.codes.min()) >= spec.qmin and int(qt.codes.max()) <= spec.qmax
    assert ql.quantization_error(x, spec).levels_used <= spec.levels
    assert torch.isfinite(q).all()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(arrays, st.integers(2, 8))
def test_ste_gradient_is_mask(a, bits):
    x = torch.from_numpy(a).requires_grad_()
    ql.fake_quantize(x, bits, scale=torch.tensor([0.5])).sum().backward()
    inside = (torch.round(x.detach() * 2.0).abs() <= 2 ** (bits - 1) - 1).float()
    assert torch.equal(x.grad, inside)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bits,err", [(1, ValueError), (17, ValueError), (4.0, TypeError),
                                      (True, TypeError), ("8", TypeError)])
def test_bad_bits(bits, err):
    with pytest.raises(err, match="bits"):
        ql.QuantSpec(bits)


def test_bad_spec_fields():
    with pytest.raises(ValueError, match="granularity"):
        ql.QuantSpec(4, granularity="row")
    with pytest.raises(ValueError, match="group_size"):
        ql.QuantSpec(4, granularity="group", group_size=0)
    with pytest.raises(TypeError, match="symmetric"):
        ql.QuantSpec(4, symmetric=1)
    with pytest.raises(ValueError, match="axis"):
        ql.quantize_dequantize(torch.ones(3, 3), ql.QuantSpec(4, granularity="channel", axis=2))
    with pytest.raises(TypeError, match="spec"):
        ql.quantize_dequantize(torch.ones(3), "int8")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_non_finite_values_named_in_every_granularity(bad, granularity, symmetric):
    x = torch.randn(4, 6, dtype=torch.float16)
    x[2, 3] = bad
    spec = ql.QuantSpec(4, symmetric, granularity, group_size=3)
    for fn in (ql.quantize_dequantize, ql.quantize):
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            fn(x, spec)


def test_bad_tensors():
    with pytest.raises(TypeError, match="floating-point"):
        ql.quantize_dequantize(torch.arange(6), 8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ql.quantize_dequantize(np.ones(3), 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ql.quantize_dequantize(torch.tensor([1.0, float("nan")]), 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ql.quantize_dequantize(torch.tensor([1.0, float("inf")]), 8)
    with pytest.raises(ValueError, match="empty"):
        ql.quantize_dequantize(torch.ones(0), 8)
    with pytest.raises(ValueError, match="scale"):
        ql.fake_quantize(torch.ones(3), 8, scale=torch.tensor([0.0]))


# --------------------------------------------------------------------------- model level
def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(24, 16), nn.ReLU(),
                         nn.Linear(16, 4))


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3)
        self.c2 = nn.Conv2d(1, 3, 3)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        return x


def test_quantize_model_returns_copy_and_leaves_model():
    model = _model().train()
    model[2].weight.requires_grad_(False)
    spec = ql.QuantSpec(4, granularity="channel")
    q = assert_model_unchanged(model, ql.quantize_model, model, spec)
    assert q is not model
    for name in ("0", "2", "4"):
        w, qw = dict(model.named_modules())[name].weight, dict(q.named_modules())[name].weight
        assert torch.equal(qw, ql.quantize_dequantize(w, ql.QuantSpec(4, granularity="channel")))
    assert torch.equal(q[2].bias, model[2].bias)  # biases stay float
    assert q.training and not q[2].weight.requires_grad


def test_quantize_model_conv_layers_and_bitmap():
    model = _Conv()
    q = ql.quantize_model(model, {"c1": 3, "c2": ql.QuantSpec(5, False, "group", group_size=4)})
    assert torch.equal(q.c1.weight, ql.quantize_dequantize(model.c1.weight, 3))
    assert torch.equal(q.c2.weight, ql.quantize_dequantize(
        model.c2.weight, ql.QuantSpec(5, False, "group", group_size=4)))
    partial = ql.quantize_model(model, {"c1": 3})
    assert torch.equal(partial.c2.weight, model.c2.weight)  # unlisted layers stay float


def test_quantize_model_bad_input():
    with pytest.raises(ValueError, match="no quantizable layer"):
        ql.quantize_model(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), 8)
    with pytest.raises(ValueError, match="not quantizable layers.*'nope'"):
        ql.quantize_model(_model(), {"nope": 4})
    with pytest.raises(TypeError, match="model"):
        ql.quantize_model("model", 8)
    model = _model()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '2'.*NaN"):
        assert_model_unchanged(model, ql.quantize_model, model, 8)
    int_model = _model()
    int_model[4].weight = nn.Parameter(torch.ones(4, 16, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="layer '4'.*floating-point"):
        ql.quantize_model(int_model, 8)


def test_error_report_per_layer():
    model = _model()
    rep = assert_model_unchanged(model, ql.error_report, model, 4, granularity="channel")
    assert list(rep.index) == ["0", "2", "4"]
    e = ql.quantization_error(model[2].weight, ql.QuantSpec(4, granularity="channel"))
    assert rep.loc["2", "mse"] == e.mse and rep.loc["2", "levels_used"] == e.levels_used
    assert rep.loc["2", "fp32_bits"] == 32 * 24 * 16


def test_prepare_qat_trains_latent_weights_and_converts():
    model = _model()
    x = torch.randint(0, 10, (32, 3))
    y = torch.randint(0, 4, (32,))
    qat = assert_model_unchanged(model, ql.prepare_qat, model, 3, activations=8)
    assert torch.equal(qat[2].weight, ql.quantize_dequantize(model[2].weight, 3))
    opt = torch.optim.SGD(qat.parameters(), lr=0.5)
    before = qat[2].parametrizations.weight.original.detach().clone()
    loss = nn.functional.cross_entropy(qat(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, qat[2].parametrizations.weight.original)
    assert float(qat[2].input_quant.running_max) > 0  # activation observer ran
    frozen = ql.convert_qat(qat)
    assert not hasattr(frozen[2], "parametrizations")
    assert torch.unique(frozen[2].weight).numel() <= 7
    assert torch.equal(frozen[2].weight, qat[2].weight)
    latent = assert_model_unchanged(qat, ql.convert_qat, qat, latent=True)
    assert not hasattr(latent[2], "parametrizations")
    assert torch.equal(latent[2].weight, qat[2].parametrizations.weight.original)
    assert torch.equal(ql.quantize_dequantize(latent[2].weight, 3), frozen[2].weight)


def test_activation_fake_quant_eval_uses_running_range():
    aq = ql.ActivationFakeQuant(ql.QuantSpec(8, symmetric=False))
    aq(torch.linspace(0, 1, 100))
    aq.eval()
    out = aq(torch.tensor([2.0, 0.5]))
    assert float(out[0]) == pytest.approx(1.0, abs=1e-6)  # clipped to running max
    with pytest.raises(ValueError, match="granularity"):
        ql.ActivationFakeQuant(ql.QuantSpec(8, granularity="channel"))


def test_calibrate_activations_is_seeded_and_restores_rng():
    model = _model()
    x = torch.randint(0, 10, (64, 3))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8,
                                         shuffle=True)
    a = ql.calibrate_activations(ql.prepare_qat(model, 4, activations=8), loader)
    state = torch.random.get_rng_state()
    b = ql.calibrate_activations(ql.prepare_qat(model, 4, activations=8), loader)
    assert torch.equal(state, torch.random.get_rng_state())
    assert not a.training
    assert float(a[2].input_quant.running_max) == float(b[2].input_quant.running_max) > 0
    with pytest.raises(ValueError, match="no activation quantizer"):
        ql.calibrate_activations(ql.prepare_qat(model, 4), loader)


def test_integer_linear_matches_simulation():
    w, x = _randn(12, 50), _randn(4, 50, seed=1)
    for spec in (ql.QuantSpec(8), ql.QuantSpec(4, False, "channel"),
                 ql.QuantSpec(3, False, "group", group_size=16)):
        y = ql.integer_linear(x, ql.quantize(w, spec), act_bits=8)
        ref = nn.functional.linear(ql.quantize_dequantize(x, 8), ql.quantize_dequantize(w, spec))
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="axis 0"):
        ql.integer_linear(x, ql.quantize(w, ql.QuantSpec(8, granularity="channel", axis=1)))
