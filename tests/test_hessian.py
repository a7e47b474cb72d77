"""quantlens.hessian against the exact Hessian of small models."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens.hessian import (
    METHODS,
    HessianOperator,
    _rademacher,
    hutchinson,
    hutchpp,
    lanczos,
    layer_sharpness,
    power_iteration,
    spectral_density,
)
from quantlens.testing import assert_model_unchanged


def _setup(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7)] + ([nn.BatchNorm1d(7)] if bn else []) + \
        [nn.Tanh(), nn.Dropout(0.2), nn.Linear(7, 3)]
    model = nn.Sequential(*layers).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    if bn:  # non-trivial running statistics
        model.train()
        model(x)
    return model, DataLoader(TensorDataset(x, y), batch_size=16), x, y


def _exact(model, x, y, names=None, loss_fn=nn.functional.cross_entropy):
    named = dict(model.named_parameters())
    names = names or list(named)
    shapes = [named[n].shape for n in names]
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def f(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            ps[n] = flat[i:i + k].reshape(s)
            i += k
        with ql.eval_mode(model):
            return loss_fn(torch.func.functional_call(model, ps, (x,)), y)

    return torch.autograd.functional.hessian(f, flat0)


@pytest.mark.parametrize("method", METHODS)
def test_hvp_equals_exact_hessian_over_loader(method):
    model, loader, x, y = _setup(bn=True)
    model.train()
    h = _exact(model, x, y)
    op = assert_model_unchanged(model, HessianOperator, model, loader, method=method)
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert model.training  # mode restored


@pytest.mark.parametrize("method", METHODS)
def test_lanczos_top_and_bottom_eigenvalues(method):
    model, loader, x, y = _setup()
    ev = torch.linalg.eigvalsh(_exact(model, x, y)).numpy()
    op = HessianOperator(model, loader, method=method)
    top = lanczos(op, 3, tol=1e-10)
    assert top.converged and top.n_hvp < op.n
    np.testing.assert_allclose(top.eigenvalues, ev[::-1][:3], rtol=1e-6)
    bottom = lanczos(op, 2, which="smallest", tol=1e-10)
    np.testing.assert_allclose(bottom.eigenvalues, ev[:2], rtol=1e-6)
    # eigenvectors satisfy H u = λ u
    u = top.eigenvectors[:, 0]
    torch.testing.assert_close(op.matvec(u), top.eigenvalues[0] * u, rtol=0, atol=1e-6)
    assert top.history.shape[1] == 3 and len(top.history) == top.n_hvp


def test_power_iteration_matches_and_needs_more_products():
    model, loader, x, y = _setup()
    ev = torch.linalg.eigvalsh(_exact(model, x, y)).numpy()
    op = HessianOperator(model, loader)
    p = power_iteration(op, 2, tol=1e-9, max_iter=1000)
    np.testing.assert_allclose(p.eigenvalues, ev[::-1][:2], rtol=1e-6)
    assert p.n_hvp > lanczos(op, 2, tol=1e-9).n_hvp


def test_trace_estimators_within_stated_error():
    model, loader, x, y = _setup()
    exact = float(torch.trace(_exact(model, x, y)))
    op = HessianOperator(model, loader)
    for est in (hutchinson(op, 200, seed=1), hutchpp(op, 60, seed=1)):
        assert abs(est.value - exact) <= 4 * est.stderr, est
    assert hutchinson(op, 50, seed=3).value == hutchinson(op, 50, seed=3).value  # seeded
    full = hutchpp(op, 3 * op.n, seed=0)  # Q spans everything: exact up to rounding
    assert full.value == pytest.approx(exact, rel=1e-8)


def test_spectral_density_integrates_to_one_and_locates_spectrum():
    model, loader, x, y = _setup()
    ev = torch.linalg.eigvalsh(_exact(model, x, y)).numpy()
    d = spectral_density(HessianOperator(model, loader), n_iter=40, n_runs=3)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-6)
    assert d.nodes.max() == pytest.approx(ev.max(), rel=1e-6)
    # first moment of the quadrature = trace / n in expectation
    assert float((d.nodes * d.weights).sum()) == pytest.approx(ev.mean(), abs=0.05)


def test_per_layer_blocks_equal_exact_blocks():
    model, loader, x, y = _setup()
    df = assert_model_unchanged(model, layer_sharpness, model, loader, trace_hvp=200,
                                tol=1e-10, progress=False)
    assert list(df.index) == ["0", "3"]
    for layer in df.index:
        names = [f"{layer}.weight", f"{layer}.bias"]
        block = _exact(model, x, y, names)
        assert df.loc[layer, "n_params"] == block.shape[0]
        assert df.loc[layer, "lambda_max"] == pytest.approx(
            float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)
        assert df.loc[layer, "trace"] == pytest.approx(float(torch.trace(block)), rel=1e-8)


def test_params_subset_and_custom_loss():
    model, loader, x, y = _setup()
    mse = lambda out, t: ((out - nn.functional.one_hot(t, 3).double()) ** 2).mean()  # noqa: E731
    block = _exact(model, x, y, ["3.weight"], loss_fn=mse)
    op = HessianOperator(model, loader, loss_fn=mse, params=["3.weight"])
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), block @ v)


def test_single_batch_and_quantized_models():
    model, loader, x, y = _setup()
    op = HessianOperator(model, batch=(x[:16], y[:16]))
    assert op.n_examples == 16
    # quantized point vs STE: with weight-only quantization nothing is clipped, so the
    # STE Hessian w.r.t. the latent weights equals the Hessian at the quantized point
    q = ql.quantize_model(model, 4)
    qat = ql.prepare_qat(model, 4)
    a = lanczos(HessianOperator(q, loader), 1, tol=1e-10).eigenvalues[0]
    b = lanczos(HessianOperator(qat, loader), 1, tol=1e-10).eigenvalues[0]
    assert a == pytest.approx(b, rel=1e-8)


def test_bad_input_and_model_unchanged_on_error():
    model, loader, x, y = _setup()
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        HessianOperator(frozen, loader)
    empty = DataLoader(TensorDataset(x[:0], y[:0]))
    with pytest.raises(ValueError, match="loader is empty"):
        assert_model_unchanged(model, HessianOperator, model, empty)
    with pytest.raises(ValueError, match="scalar"):
        assert_model_unchanged(model, HessianOperator, model, loader,
                               loss_fn=lambda o, t: nn.functional.cross_entropy(
                                   o, t, reduction="none"))
    op = HessianOperator(model, loader)
    with pytest.raises(ValueError, match="k=1000 is larger"):
        lanczos(op, 1000)
    with pytest.raises(ValueError, match="k=1000 is larger"):
        power_iteration(op, 1000)
    # A non-finite loss, whatever the BLAS: NaN or inf enter through an elementwise bias add
    # (a huge weight is no test: whether a dot product overflows depends on summation order).
    for value in (float("nan"), float("inf")):
        bad = _setup()[0]
        with torch.no_grad():
            bad[-1].bias[0] = value
        with pytest.raises(ValueError, match="not finite"):
            assert_model_unchanged(bad, HessianOperator, bad, loader)
    with pytest.raises(ValueError, match="params"):
        HessianOperator(model, loader, params="nope")
    with pytest.raises(ValueError, match="method"):
        HessianOperator(model, loader, method="exact")
    with pytest.raises(ValueError, match="exactly one"):
        HessianOperator(model)
    with pytest.raises(ValueError, match="n_samples"):
        hutchinson(op, 1)


def test_hessian_summary_rows_and_models_unchanged():
    model, loader, x, y = _setup()
    q = ql.quantize_model(model, 4)
    with ql.testing.model_unchanged(model), ql.testing.model_unchanged(q):
        df = ql.hessian_summary({"fp": model, "int4": q}, loader, trace_hvp=30, tol=1e-10,
                                progress=False)
    ev = torch.linalg.eigvalsh(_exact(model, x, y)).numpy()
    assert list(df.index) == ["fp", "int4"]
    assert df.loc["fp", "lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert df.loc["fp", "lambda_min"] == pytest.approx(ev[0], rel=1e-6)
    assert df.loc["fp", "grad_norm"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_rademacher_draws_the_int64_signs(dtype):
    # drawn straight in the parameter dtype, the signs are those of randint(0, 2) in int64,
    # and the generator ends in the same state: estimates are unchanged by the faster draw
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for n in (1, 1001, 4096):
        expected = (torch.randint(0, 2, (n,), generator=g1) * 2 - 1).to(dtype)
        got = _rademacher(n, g2, dtype, "cpu")
        assert got.dtype == dtype and torch.equal(got, expected)
    assert torch.equal(g1.get_state(), g2.get_state())
