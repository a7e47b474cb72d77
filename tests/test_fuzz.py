"""Bad and unusual inputs across the public API.

Every case gets either a clear error (ValueError/TypeError whose message names the argument)
or a correct result checked against an independent computation, and every case leaves the
model bitwise unchanged (weights, requires_grad, train/eval flags, device, dtype) — the model
is in *train* mode with dropout and BatchNorm, so a forgotten mode restore is caught.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import quantlens as ql
from quantlens.testing import model_unchanged


# --------------------------------------------------------------------------- fixtures
class Net(nn.Module):
    """Conv + BatchNorm + dropout + Linear; an int buffer-like parameter and a frozen bias."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 6 * 6, 10)
        self.fc.bias.requires_grad_(False)  # a frozen parameter
        self.steps = nn.Parameter(torch.tensor([3, 1], dtype=torch.int64), requires_grad=False)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _net() -> Net:
    return Net().train()  # train mode on purpose: every analysis must restore it


def _xy(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loader(n=32, bs=8, extra=None):
    x, y = _xy(n)
    tensors = (x, y) if extra is None else (x, y, extra)
    return DataLoader(TensorDataset(*tensors), batch_size=bs)


class _Endless(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.rand(1, 8, 8, generator=g), torch.tensor(1)


class _DictDataset(torch.utils.data.Dataset):
    def __init__(self, key="labels"):
        self.x, self.y, self.key = *_xy(), key

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], self.key: self.y[i]}


def _op(model, **kw):
    return ql.HessianOperator(model, _loader(16), params="fc", **kw)


def _dir(model, seed=0):
    return ql.random_direction(model, seed=seed)


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[nn.Module], object]
    error: type[Exception] | None = None  # None: a correct result, checked by `check`
    match: str = ""
    check: Callable[[nn.Module, object], None] | None = None


def _same_eval(model, result):
    ref = ql.evaluate(model, _loader())
    assert result.n == ref.n and result.loss == pytest.approx(ref.loss, rel=1e-6)


def _nan(x):
    return isinstance(x, float) and math.isnan(x)


CASES = [
    # ---- loaders and batches
    Case("loader-list", lambda m: ql.evaluate(m, list(_loader())), TypeError, "loader"),
    Case("loader-none", lambda m: ql.HessianOperator(m), ValueError, "loader and batch"),
    Case("loader-and-batch", lambda m: ql.HessianOperator(m, _loader(), batch=_xy()),
         ValueError, "loader and batch"),
    Case("loader-empty", lambda m: ql.evaluate(m, _loader(0)), ValueError, "empty"),
    Case("loader-empty-hessian", lambda m: ql.HessianOperator(m, _loader(0)), ValueError,
         "empty"),
    Case("loader-empty-landscape", lambda m: ql.loss_line(m, _loader(0), _dir(m), steps=3,
                                                         progress=False), ValueError, "empty"),
    Case("loader-endless-evaluate", lambda m: ql.evaluate(m, DataLoader(_Endless())),
         ValueError, "max_batches"),
    Case("loader-endless-hessian", lambda m: ql.HessianOperator(m, DataLoader(_Endless())),
         ValueError, "max_batches"),
    Case("loader-endless-plane", lambda m: ql.loss_plane(
        m, DataLoader(_Endless()), _dir(m), ql.orthogonalize(_dir(m, 1), _dir(m)), steps=3,
        progress=False), ValueError, "max_batches"),
    Case("loader-endless-sweep", lambda m: ql.quantization_sweep(
        m, DataLoader(_Endless()), bits=(4,), progress=False), ValueError, "max_batches"),
    Case("loader-endless-bounded", lambda m: ql.evaluate(m, DataLoader(_Endless(), batch_size=4),
                                                         max_batches=2),
         check=lambda m, r: r.n == 8),
    Case("max-batches-zero", lambda m: ql.evaluate(m, _loader(), max_batches=0), ValueError,
         "max_batches"),
    Case("max-batches-float", lambda m: ql.HessianOperator(m, _loader(), max_batches=1.5),
         ValueError, "max_batches"),
    Case("max-batches-bool", lambda m: ql.loss_line(m, _loader(), _dir(m), max_batches=True),
         ValueError, "max_batches"),
    Case("batch-3-tuple-ones", lambda m: ql.evaluate(m, _loader(extra=torch.ones(32))),
         check=_same_eval),
    Case("batch-4-tuple", lambda m: ql.evaluate(
        m, DataLoader(TensorDataset(*_xy(), torch.ones(32), torch.ones(32)), batch_size=8)),
        TypeError, "4-tuple"),
    Case("batch-inputs-only", lambda m: ql.evaluate(
        m, DataLoader(TensorDataset(_xy()[0]), batch_size=8)), ValueError, "no targets"),
    Case("batch-weights-negative", lambda m: ql.evaluate(m, _loader(extra=-torch.ones(32))),
         ValueError, "weights"),
    Case("batch-weights-nan", lambda m: ql.HessianOperator(
        m, _loader(extra=torch.full((32,), float("nan")))), ValueError, "weights"),
    Case("batch-weights-shape", lambda m: ql.evaluate(m, _loader(extra=torch.ones(32, 2))),
         ValueError, "weights must have shape"),
    Case("batch-weights-zero", lambda m: ql.HessianOperator(m, _loader(extra=torch.zeros(32))),
         ValueError, "positive weight"),
    Case("batch-dict-labels", lambda m: ql.evaluate(m, DataLoader(_DictDataset(), batch_size=8)),
         check=_same_eval),
    Case("batch-dict-label-key", lambda m: ql.evaluate(
        m, DataLoader(_DictDataset("label"), batch_size=8)), ValueError, "'label'"),
    Case("batch-dict-hessian", lambda m: ql.HessianOperator(
        m, DataLoader(_DictDataset(), batch_size=8), params="fc"),
        check=lambda m, r: np.isclose(r.loss, ql.HessianOperator(m, _loader(), params="fc").loss,
                                      rtol=1e-6)),
    Case("batch-strings", lambda m: ql.evaluate(m, DataLoader(["a", "b"], batch_size=1)),
         ValueError, "no targets"),
    Case("batch-object", lambda m: ql.evaluate(m, DataLoader([object()] * 2, batch_size=None)),
         TypeError, "BatchLoss"),
    # ---- losses
    Case("loss-fn-string", lambda m: ql.evaluate(m, _loader(), loss_fn="mse"), TypeError,
         "loss_fn"),
    Case("loss-fn-string-hessian", lambda m: ql.HessianOperator(m, _loader(), loss_fn="ce"),
         TypeError, "loss_fn"),
    Case("loss-fn-vector", lambda m: ql.evaluate(
        m, _loader(), loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="none")),
        ValueError, "scalar"),
    Case("loss-fn-nan", lambda m: _op(m, loss_fn=lambda o, y: o.sum() * float("nan")),
         ValueError, "not finite"),
    Case("batch-loss-not-callable", lambda m: ql.BatchLoss(5), TypeError, "callable"),
    Case("batch-loss-3-tuple", lambda m: ql.evaluate(m, _loader(), loss_fn=ql.BatchLoss(
        lambda mod, b: (F.cross_entropy(mod(b[0]), b[1]), 1.0, 2.0))), ValueError, "3-tuple"),
    Case("batch-loss-negative-weight", lambda m: ql.evaluate(m, _loader(), loss_fn=ql.BatchLoss(
        lambda mod, b: (F.cross_entropy(mod(b[0]), b[1]), -1.0))), ValueError, "weight"),
    Case("output-distance-reference-type", lambda m: ql.output_distance("fp32"), TypeError,
         "reference"),
    Case("output-distance-metric", lambda m: ql.output_distance(m, metric="l1"), ValueError,
         "metric"),
    Case("output-distance-self", lambda m: ql.evaluate(m, _loader(),
                                                       loss_fn=ql.output_distance(m)),
         ValueError, "separate copy"),
    Case("output-distance-copy", lambda m: ql.evaluate(
        m, _loader(), loss_fn=ql.output_distance(copy.deepcopy(m))),
        check=lambda m, r: r.loss == 0.0 and math.isnan(r.accuracy)),
    # ---- Hessian
    Case("hessian-model-type", lambda m: ql.HessianOperator("model", _loader()), TypeError,
         "model"),
    Case("hessian-method", lambda m: ql.HessianOperator(m, _loader(), method="fd"), ValueError,
         "method"),
    Case("hessian-params-unknown", lambda m: ql.HessianOperator(m, _loader(), params="nope"),
         ValueError, "params"),
    Case("hessian-all-frozen", lambda m: ql.HessianOperator(m, _loader(), params="fc.bias"),
         check=lambda m, r: r.n == 10),  # named explicitly: differentiated although frozen
    Case("hessian-frozen-skipped", lambda m: ql.HessianOperator(m, _loader()),
         check=lambda m, r: r.n == sum(p.numel() for p in m.parameters() if p.requires_grad)),
    Case("hessian-integer-param", lambda m: ql.HessianOperator(m, _loader(), params="steps"),
         TypeError, "floating point"),
    Case("lanczos-model", lambda m: ql.lanczos(m), TypeError, "HessianOperator"),
    Case("lanczos-tol-negative", lambda m: ql.lanczos(_op(m), tol=-1), ValueError, "tol"),
    Case("lanczos-tol-nan", lambda m: ql.lanczos(_op(m), tol=float("nan")), ValueError, "tol"),
    Case("lanczos-k-zero", lambda m: ql.lanczos(_op(m), k=0), ValueError, "k must"),
    Case("lanczos-k-too-big", lambda m: ql.lanczos(_op(m), k=10**6), ValueError, "k="),
    Case("lanczos-which", lambda m: ql.lanczos(_op(m), which="middle"), ValueError, "which"),
    Case("lanczos-max-iter", lambda m: ql.lanczos(_op(m), max_iter="many"), ValueError,
         "max_iter"),
    Case("power-tol", lambda m: ql.power_iteration(_op(m), tol=-0.5), ValueError, "tol"),
    Case("power-model", lambda m: ql.power_iteration(m), TypeError, "HessianOperator"),
    Case("hutchinson-samples", lambda m: ql.hutchinson(_op(m), n_samples=1), ValueError,
         "n_samples"),
    Case("hutchpp-hvp", lambda m: ql.hutchpp(_op(m), n_hvp=2), ValueError, "n_hvp"),
    Case("exact-trace-type", lambda m: ql.exact_trace("op"), TypeError, "HessianOperator"),
    Case("density-iter", lambda m: ql.spectral_density(_op(m), n_iter=1), ValueError, "n_iter"),
    Case("density-sigma", lambda m: ql.spectral_density(_op(m), n_iter=5, sigma=-1.0),
         ValueError, "sigma"),
    Case("sharpness-layers", lambda m: ql.layer_sharpness(m, _loader(), layers=["nope"],
                                                          progress=False), ValueError, "layers"),
    Case("summary-not-dict", lambda m: ql.hessian_summary(m, _loader(), progress=False),
         TypeError, "models"),
    Case("top-eigen-endless", lambda m: ql.top_eigenvalues(m, DataLoader(_Endless())),
         ValueError, "max_batches"),
    # ---- landscapes and directions
    Case("distance-inf", lambda m: ql.loss_line(m, _loader(), _dir(m), distance=float("inf")),
         ValueError, "distance"),
    Case("distance-nan", lambda m: ql.loss_line(m, _loader(), _dir(m), distance=float("nan")),
         ValueError, "distance"),
    Case("distance-negative", lambda m: ql.loss_line(m, _loader(), _dir(m), distance=-1.0),
         ValueError, "distance"),
    Case("distance-bool", lambda m: ql.loss_line(m, _loader(), _dir(m), distance=True),
         ValueError, "distance"),
    Case("distance-string", lambda m: ql.loss_line(m, _loader(), _dir(m), distance="1"),
         ValueError, "distance"),
    Case("distance-np-float32", lambda m: ql.loss_line(
        m, _loader(), _dir(m), distance=np.float32(0.5), steps=3, progress=False),
        check=lambda m, r: list(r.alphas) == [-0.5, 0.0, 0.5]
        and r.loss[1] == pytest.approx(ql.evaluate(m, _loader()).loss, rel=1e-6)),
    Case("steps-two", lambda m: ql.loss_line(m, _loader(), _dir(m), steps=2), ValueError,
         "steps"),
    Case("steps-float", lambda m: ql.loss_plane(m, _loader(), _dir(m), _dir(m, 1), steps=5.0),
         ValueError, "steps"),
    Case("mode-unknown", lambda m: ql.loss_line(m, _loader(), _dir(m), mode="int"), ValueError,
         "mode"),
    Case("mode-needs-spec", lambda m: ql.loss_line(m, _loader(), _dir(m), mode="requantize"),
         ValueError, "spec"),
    Case("direction-not-dict", lambda m: ql.loss_line(m, _loader(), [1, 2]), TypeError,
         "direction"),
    Case("direction-missing", lambda m: ql.loss_line(m, _loader(), {"fc.weight": torch.zeros(
        10, 108)}), ValueError, "direction"),
    Case("direction-shape", lambda m: ql.loss_line(
        m, _loader(), {k: v.reshape(-1) for k, v in _dir(m).items()}), ValueError, "shape"),
    Case("direction-nan", lambda m: ql.loss_line(
        m, _loader(), {k: v * float("nan") for k, v in _dir(m).items()}), ValueError,
        "non-finite"),
    Case("direction-list-values", lambda m: ql.loss_line(
        m, _loader(), {k: v.tolist() for k, v in _dir(m).items()}), TypeError, "tensor"),
    Case("orthogonalize-same", lambda m: ql.orthogonalize(_dir(m), _dir(m)), ValueError,
         "parallel"),
    Case("orthogonalize-scaled", lambda m: ql.orthogonalize(
        {k: 2 * v for k, v in _dir(m).items()}, _dir(m)), ValueError, "parallel"),
    Case("orthogonalize-zero-d1", lambda m: ql.orthogonalize(
        _dir(m), {k: torch.zeros_like(v) for k, v in _dir(m).items()}), ValueError, "d1"),
    Case("orthogonalize-zero-d2", lambda m: ql.orthogonalize(
        {k: torch.zeros_like(v) for k, v in _dir(m).items()}, _dir(m)), ValueError, "d2"),
    Case("direction-integer-param", lambda m: _dir(m),
         check=lambda m, r: bool((r["steps"] == 0).all())),
    Case("normalization-unknown", lambda m: ql.random_direction(m, normalization="row"),
         ValueError, "normalization"),
    Case("basin-widths-zero", lambda m: ql.basin_widths(m, _loader(), n_directions=0),
         ValueError, "n_directions"),
    Case("basin-width-threshold", lambda m: ql.basin_width(ql.loss_line(
        m, _loader(), _dir(m), steps=3, progress=False), threshold=-1.0), ValueError,
        "threshold"),
    Case("moved-copy-coefs", lambda m: ql.moved_copy(m, [_dir(m)], [1.0, 2.0]), ValueError,
         "coefs"),
    # ---- quantization
    Case("bits-one", lambda m: ql.QuantSpec(1), ValueError, "bits"),
    Case("bits-seventeen", lambda m: ql.quantize_model(m, 17), ValueError, "bits"),
    Case("bits-float", lambda m: ql.QuantSpec(4.0), TypeError, "bits"),
    Case("granularity-unknown", lambda m: ql.QuantSpec(4, granularity="row"), ValueError,
         "granularity"),
    Case("group-size-zero", lambda m: ql.QuantSpec(4, granularity="group", group_size=0),
         ValueError, "group_size"),
    Case("scale-bits-negative", lambda m: ql.quantization_error(m.fc.weight, 4, scale_bits=-5),
         ValueError, "scale_bits"),
    Case("scale-bits-float", lambda m: ql.quantization_error(m.fc.weight, 4, scale_bits=16.0),
         ValueError, "scale_bits"),
    Case("quantize-int-tensor", lambda m: ql.quantize_dequantize(m.steps, 4), TypeError,
         "floating"),
    Case("quantize-empty", lambda m: ql.quantize_dequantize(torch.empty(0), 4), ValueError,
         "empty"),
    Case("quantize-nan", lambda m: ql.quantize_dequantize(torch.tensor([1.0, float("nan")]), 4),
         ValueError, "NaN"),
    Case("quantize-model-unknown-layer", lambda m: ql.quantize_model(m, {"nope": 4}),
         ValueError, "nope"),
    Case("quantize-model-no-layers", lambda m: ql.quantize_model(nn.ReLU(), 4), ValueError,
         "quantizable"),
    Case("quantize-model-train-mode", lambda m: ql.quantize_model(m, 4),
         check=lambda m, r: torch.equal(r.fc.weight, ql.quantize_dequantize(m.fc.weight, 4))),
    Case("sweep-bits", lambda m: ql.quantization_sweep(m, _loader(), bits=(1,), progress=False),
         ValueError, "bits"),
    Case("calibrate-no-quantizer", lambda m: ql.calibrate_activations(m, _loader()), ValueError,
         "activation"),
    # ---- training (changes the model only when it runs)
    Case("fit-epochs", lambda m: ql.fit(m, _loader(), epochs=0), ValueError, "epochs"),
    Case("fit-lr-nan", lambda m: ql.fit(m, _loader(), lr=float("nan")), ValueError, "lr"),
    Case("fit-lr-negative", lambda m: ql.fit(m, _loader(), lr=-1e-3), ValueError, "lr"),
    Case("fit-endless", lambda m: ql.fit(m, DataLoader(_Endless())), ValueError, "max_batches"),
    Case("fit-test-loader", lambda m: ql.fit(m, _loader(), test_loader=[1]), TypeError,
         "test_loader"),
]


def test_the_suite_is_large():
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case):
    model = _net()
    with model_unchanged(model):
        if case.error is not None:
            with pytest.raises(case.error, match=case.match) as info:
                case.call(model)
            assert "Traceback" not in str(info.value)
            assert len(str(info.value)) > 10  # a sentence, not a bare key
        else:
            result = case.call(model)
            outcome = case.check(model, result)
            assert outcome is None or outcome
    assert model.training and model.bn.training and model.drop.training


def test_train_mode_model_is_evaluated_deterministically():
    model = _net()
    a, b = ql.evaluate(model, _loader()), ql.evaluate(model, _loader())
    assert a == b  # dropout off and BatchNorm running statistics during the evaluation
    assert model.training


def test_tied_weights_in_the_landscape_move_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    model = Tied()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, torch.randint(0, 4, (8,))), batch_size=4)
    d = ql.random_direction(model)
    assert list(d) == ["a.weight"]  # named_parameters lists a shared tensor once
    with model_unchanged(model):
        line = ql.loss_line(model, loader, d, steps=3, progress=False)
    moved = ql.moved_copy(model, [d], [1.0])
    assert moved.a.weight is moved.b.weight
    assert line.loss[2] == pytest.approx(ql.evaluate(moved, loader).loss, rel=1e-6)


# --------------------------------------------------------------------------- hypothesis
_MODEL = Net().eval()
_LOADER = _loader(8)
_DIRECTION = ql.random_direction(_MODEL)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.just(float("inf")), st.just(float("nan")),
                 st.just(-float("inf"))))
def test_any_non_positive_or_non_finite_distance_is_refused(distance):
    with model_unchanged(_MODEL), pytest.raises(ValueError, match="distance"):
        ql.loss_line(_MODEL, _LOADER, _DIRECTION, distance=distance, steps=3, progress=False)


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e3, allow_nan=False),
       st.sampled_from([float, np.float32, np.float64]))
def test_any_positive_distance_gives_its_grid(distance, kind):
    value = kind(distance)
    line = ql.loss_line(_MODEL, _LOADER, _DIRECTION, distance=value, steps=3, progress=False)
    assert line.alphas[0] == -float(value) and line.alphas[-1] == float(value)
    assert np.isfinite(line.loss).all()


@settings(max_examples=40, deadline=None)
@given(st.integers().filter(lambda b: not 2 <= b <= 16))
def test_any_bit_width_outside_2_16_is_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        ql.QuantSpec(bits)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 16), st.booleans(), st.sampled_from(["tensor", "channel", "group"]))
def test_any_valid_spec_uses_at_most_its_levels(bits, symmetric, granularity):
    w = _MODEL.fc.weight.detach()
    spec = ql.QuantSpec(bits, symmetric, granularity, group_size=16)
    err = ql.quantization_error(w, spec)
    assert err.levels_used <= spec.levels
    # s/2 in exact arithmetic; float32 rounding of (q - z)s adds up to one ulp of max|w|
    assert err.max_abs_error <= err.max_error_bound + 2**-23 * float(w.abs().max())


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.floats(max_value=-1e-300), st.just(float("nan")), st.just(float("inf")),
                 st.text(max_size=3), st.booleans()))
def test_any_bad_tolerance_is_refused(tol):
    op = ql.HessianOperator(_MODEL, _LOADER, params="fc")
    with pytest.raises(ValueError, match="tol"):
        ql.lanczos(op, tol=tol)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(),
                 st.text(max_size=2)))
def test_any_bad_max_batches_is_refused(max_batches):
    with pytest.raises(ValueError, match="max_batches"):
        ql.evaluate(_MODEL, _LOADER, max_batches=max_batches)
