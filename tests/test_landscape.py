"""quantlens.landscape: directions, lines/planes against direct evaluation, basin width."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import landscape as ls
from quantlens.testing import assert_model_unchanged


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    x, y = torch.rand(30, 1, 8, 8), torch.randint(0, 10, (30,))
    return model, DataLoader(TensorDataset(x, y), batch_size=8)


def _perturbed(model, dirs, coefs):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in m.named_parameters():
            for d, c in zip(dirs, coefs):
                p.add_(d[k], alpha=c)
    return m


def test_filter_normalization_and_seed():
    model, _ = _setup()
    d = ls.random_direction(model, seed=3)
    for k, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.count_nonzero(d[k]) == 0
        else:
            torch.testing.assert_close(d[k].reshape(len(p), -1).norm(dim=1),
                                       p.detach().reshape(len(p), -1).norm(dim=1))
    assert all(torch.equal(d[k], v) for k, v in ls.random_direction(model, seed=3).items())
    assert not torch.equal(d["3.weight"], ls.random_direction(model, seed=4)["3.weight"])
    layer = ls.random_direction(model, normalization="layer")
    assert float(layer["3.weight"].norm()) == pytest.approx(float(model[3].weight.detach().norm()))
    whole = ls.random_direction(model, normalization="model", ignore_1d=False)
    norm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    assert float(torch.sqrt(sum((v**2).sum() for v in whole.values()))) == pytest.approx(norm)
    with pytest.raises(ValueError, match="normalization"):
        ls.random_direction(model, normalization="row")


def test_orthogonalize():
    model, _ = _setup()
    d1, d2 = ls.random_direction(model, seed=0), ls.random_direction(model, seed=1)
    o = ls.orthogonalize(d2, d1)
    assert abs(sum(float((o[k] * d1[k]).sum()) for k in o)) < 1e-4
    assert ls._norm(o) == pytest.approx(ls._norm(d2), rel=1e-6)


def test_line_matches_direct_evaluation_and_leaves_model():
    model, loader = _setup()
    model.train()
    d = ls.random_direction(model, seed=0)
    line = assert_model_unchanged(model, ls.loss_line, model, loader, d, distance=0.5, steps=5,
                                  progress=False)
    assert line.alphas.tolist() == [-0.5, -0.25, 0.0, 0.25, 0.5]
    for a, loss, acc in zip(line.alphas, line.loss, line.accuracy):
        ev = ql.evaluate(_perturbed(model, [d], [a]), loader)
        assert loss == pytest.approx(ev.loss, rel=1e-5) and acc == ev.accuracy


def test_plane_matches_direct_evaluation():
    model, loader = _setup()
    d1 = ls.random_direction(model, seed=0)
    d2 = ls.orthogonalize(ls.random_direction(model, seed=1), d1)
    plane = ls.loss_plane(model, loader, d1, d2, distance=0.4, steps=3, progress=False)
    assert plane.loss.shape == (3, 3) and len(plane.to_frame()) == 9
    ev = ql.evaluate(_perturbed(model, [d1, d2], [0.4, -0.4]), loader)
    assert plane.loss[2, 0] == pytest.approx(ev.loss, rel=1e-5)


def test_quantized_modes_and_special_directions():
    model, loader = _setup()
    spec = ql.QuantSpec(3)
    qloss = ql.evaluate(ql.quantize_model(model, spec), loader).loss
    d = ls.random_direction(model, seed=0)
    for mode in ("dequantized", "requantize"):
        line = ls.loss_line(model, loader, d, 0.5, 5, spec=spec, mode=mode, progress=False)
        assert line.loss[2] == pytest.approx(qloss, rel=1e-6)
    # requantized points lie on the grid: Q(θ + αd) evaluated directly
    line = ls.loss_line(model, loader, d, 0.5, 5, spec=spec, mode="requantize", progress=False)
    direct = ql.evaluate(ql.quantize_model(_perturbed(model, [d], [0.5]), spec), loader).loss
    assert line.loss[-1] == pytest.approx(direct, rel=1e-6)
    # ΔW direction: α = 1 is the PTQ model; model_difference agrees
    dq = ls.quantization_direction(model, spec)
    line = ls.loss_line(model, loader, dq, 1.0, 3, progress=False)
    assert line.loss[-1] == pytest.approx(qloss, rel=1e-5)
    diff = ls.model_difference(model, ql.quantize_model(model, spec))
    assert all(torch.allclose(diff[k], dq[k]) for k in dq)
    h = ls.hessian_direction(model, loader)
    assert ls._norm(h) == pytest.approx(1.0, rel=1e-5)


def test_per_layer_spec_quantizes_only_the_named_layers():
    model, loader = _setup()
    spec = {"3": ql.QuantSpec(2)}  # only the Linear layer, as quantize_model
    d = ls.random_direction(model, seed=1)
    for mode in ("dequantized", "requantize"):
        line = ls.loss_line(model, loader, d, 0.5, 5, spec=spec, mode=mode, progress=False)
        base = ql.quantize_model(model, spec)
        assert line.loss[2] == pytest.approx(ql.evaluate(base, loader).loss, rel=1e-6)
    direct = ql.quantize_model(_perturbed(model, [d], [0.5]), spec)
    assert line.loss[-1] == pytest.approx(ql.evaluate(direct, loader).loss, rel=1e-6)
    every = ls.loss_line(model, loader, d, 0.5, 5, spec=2, mode="requantize", progress=False)
    assert every.loss[-1] != pytest.approx(line.loss[-1], rel=1e-6)
    with pytest.raises(ValueError, match="not quantizable layers"):
        ls.loss_line(model, loader, d, spec={"nope": 4}, mode="requantize", progress=False)


def test_exception_mid_grid_restores_model():
    model, loader = _setup()
    d = ls.random_direction(model)

    def boom(i):
        if i == 3:
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        assert_model_unchanged(model, ls._surface, model, loader, [d], [np.linspace(-1, 1, 7)],
                               nn.functional.cross_entropy, None, "float", False, boom)


def test_conv_weights_keep_their_tensors_and_layout():
    """The channels-last working copies never replace or write the caller's tensors."""
    model, loader = _setup()
    d = ls.random_direction(model)
    before = {k: (p.data.data_ptr(), p.data.stride()) for k, p in model.named_parameters()}

    def boom(i):
        if i == 2:
            raise RuntimeError("injected")

    for hook in (None, boom):
        try:
            ls._surface(model, loader, [d], [np.linspace(-1, 1, 5)],
                        nn.functional.cross_entropy, None, "float", False, hook)
        except RuntimeError:
            assert hook is boom
        after = {k: (p.data.data_ptr(), p.data.stride()) for k, p in model.named_parameters()}
        assert after == before
        assert all(p.is_contiguous() for p in model.parameters())


def test_basin_width_closed_form():
    alphas = np.linspace(-1, 1, 201)
    line = ls.Landscape(alphas=alphas, loss=alphas**2 + 0.5, accuracy=np.ones_like(alphas))
    b = ls.basin_width(line, threshold=0.09)
    assert b.left == pytest.approx(0.3, abs=1e-4) and b.right == pytest.approx(0.3, abs=1e-4)
    r = ls.basin_width(line, threshold=0.5, relative=True)  # level 0.75 -> |α| = 0.5
    assert r.width == pytest.approx(1.0, abs=1e-4)
    wide = ls.basin_width(line, threshold=10)
    assert np.isnan(wide.left) and np.isnan(wide.right)


def test_basin_widths_table():
    model, loader = _setup()
    df = ls.basin_widths(model, loader, n_directions=2, distance=2.0, steps=9, progress=False)
    assert list(df.seed) == [0, 1] and (df.width.dropna() > 0).all()


def test_basin_widths_of_several_models_equal_separate_calls():
    # one Gaussian draw per seed serves every model of the architecture (normalized to each
    # model's own weights); a model of another architecture gets its own draw
    model, loader = _setup()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.mul_(3)
    torch.manual_seed(1)
    wider = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 10))
    models = [model, other, wider, model]
    args = (loader, 2, 2.0, 9, 0.1, False, nn.functional.cross_entropy, None, "float", 4,
            False, None)
    together = ls._basin_widths(models, *args)
    for m, table in zip(models, together):
        alone = ls.basin_widths(m, loader, n_directions=2, distance=2.0, steps=9, seed=4,
                                progress=False)
        pd.testing.assert_frame_equal(table, alone, check_exact=True)
    assert not together[0].equals(together[1])


def test_bad_input():
    model, loader = _setup()
    d = ls.random_direction(model)
    with pytest.raises(ValueError, match="distance"):
        ls.loss_line(model, loader, d, distance=0)
    with pytest.raises(ValueError, match="steps"):
        ls.loss_line(model, loader, d, steps=2)
    other = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="does not match"):
        ls.loss_line(model, loader, ls.random_direction(other))
    bad = dict(d)
    bad["3.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        ls.loss_line(model, loader, bad)
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="loader is empty"):
        assert_model_unchanged(model, ls.loss_line, model, empty, d, progress=False)
    with pytest.raises(ValueError, match="needs a quantization spec"):
        ls.loss_line(model, loader, d, mode="requantize")


@pytest.mark.parametrize("mode", ["float", "dequantized", "requantize"])
def test_vmap_path_equals_loop(mode):
    model, loader = _setup()
    d1 = ls.random_direction(model, seed=0)
    d2 = ls.orthogonalize(ls.random_direction(model, seed=1), d1)
    kw = dict(distance=0.6, steps=5, spec=ql.QuantSpec(4), mode=mode, progress=False)
    fast = assert_model_unchanged(model, ls.loss_plane, model, loader, d1, d2, vectorize=True,
                                  **kw)
    slow = ls.loss_plane(model, loader, d1, d2, vectorize=False, **kw)
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-5)
    np.testing.assert_array_equal(fast.accuracy, slow.accuracy)


def test_direction_builders_and_basin_widths_leave_model():
    model, loader = _setup()
    model.train()
    model[3].bias.requires_grad_(False)
    for fn, args in ((ls.random_direction, ()), (ls.quantization_direction, (4,)),
                     (ls.hessian_direction, (loader,)), (ls.model_difference, (model,)),
                     (ls.basin_widths, (loader, 1, 1.0, 5))):
        kwargs = {"progress": False} if fn is ls.basin_widths else {}
        assert_model_unchanged(model, fn, model, *args, **kwargs)
    with pytest.raises(ValueError, match="n_directions"):
        assert_model_unchanged(model, ls.basin_widths, model, loader, 0)


def test_convert_qat_leaves_qat_model():
    model, _ = _setup()
    qat = ql.prepare_qat(model, 3)
    assert_model_unchanged(qat, ql.convert_qat, qat)


def test_moved_copy():
    model, loader = _setup()
    d1, d2 = ls.random_direction(model, seed=0), ls.random_direction(model, seed=1)
    moved = assert_model_unchanged(model, ls.moved_copy, model, [d1, d2], [0.5, -0.25])
    ref = _perturbed(model, [d1, d2], [0.5, -0.25])
    for (k, a), b in zip(moved.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(ValueError, match="coefs"):
        ls.moved_copy(model, [d1], [1.0, 2.0])


def test_random_direction_with_reference_norms():
    model, _ = _setup()
    dw = ls.quantization_direction(model, 4)
    d = ls.random_direction(model, seed=5, reference=dw)
    for k, p in model.named_parameters():
        if p.ndim > 1:
            torch.testing.assert_close(d[k].reshape(len(p), -1).norm(dim=1),
                                       dw[k].reshape(len(p), -1).norm(dim=1))
    assert ls._norm(d) == pytest.approx(ls._norm(dw), rel=1e-6)
    assert abs(ls._dot(d, dw)) < 0.5 * ls._norm(dw) ** 2  # a different direction, same size
    with pytest.raises(ValueError, match="does not match"):
        ls.random_direction(model, reference={"x": torch.zeros(1)})


@pytest.mark.parametrize("mode", ["float", "dequantized", "requantize"])
def test_point_written_in_place_equals_the_copied_point(mode):
    # the loop writes each grid point straight into the parameters; the values must be
    # those of the out-of-place construction (the vmap path's), bit for bit
    model, _ = _setup()
    params = dict(model.named_parameters())
    specs = ls._weight_specs(model, 3)
    base = {k: p.detach().clone() for k, p in params.items()}
    dirs = [ls.random_direction(model, seed=s) for s in (0, 1)]
    coords = [np.linspace(-1, 1, 5), np.linspace(-0.3, 0.7, 4)]
    with ls.preserved(model), torch.no_grad():
        for idx in [(0, 0), (2, 1), (4, 3)]:
            expected = ls._point_params(base, dirs, coords, idx, mode, specs)
            ls._set_point(params, base, dirs, coords, idx, mode, specs)
            for k, p in params.items():
                assert torch.equal(p, expected[k]), (mode, idx, k)
