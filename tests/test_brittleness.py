"""quantlens.brittleness: each disturbance against a direct computation, and bad input."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import brittleness as br
from quantlens.testing import assert_model_unchanged


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    return model, DataLoader(TensorDataset(x, y), batch_size=16), x, y


def test_shift_is_exact_with_zero_fill():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5)
    s = br.shift_images(x, 1, -2)
    ref = np.zeros((2, 4, 5), np.float32)
    ref[:, 1:, :3] = x.numpy()[:, :3, 2:]
    assert np.array_equal(s.numpy(), ref)
    assert torch.equal(br.shift_images(x, 0, 0), x)
    assert torch.count_nonzero(br.shift_images(x, 4, 0)) == 0
    with pytest.raises(TypeError, match="dy"):
        br.shift_images(x, 1.5, 0)


def test_rotation_closed_forms():
    x = torch.rand(3, 1, 7, 7)
    assert torch.allclose(br.rotate_images(x, 0.0), x)
    # a quarter turn of a square image maps the pixel grid onto itself: bilinear is exact
    assert torch.allclose(br.rotate_images(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)),
                          atol=1e-6)
    assert br.rotate_images(x, 20.0).shape == x.shape
    with pytest.raises(ValueError, match="degrees"):
        br.rotate_images(x, float("nan"))


def test_fgsm_matches_the_closed_form_gradient_of_a_linear_model():
    torch.manual_seed(1)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    p = torch.softmax(lin(x), 1).detach()
    onehot = nn.functional.one_hot(y, 10).float()
    grad = ((p - onehot) @ lin[1].weight.detach()).reshape(x.shape)  # ∇_x of the summed CE
    adv = br.fgsm(lin, x, y, 0.1, clamp=None)
    assert torch.allclose(adv, x + 0.1 * grad.sign())
    assert torch.equal(br.fgsm(lin, x, y, 0.0), x)
    assert float(br.fgsm(lin, x, y, 5.0).max()) <= 1.0
    assert all(p.grad is None for p in lin.parameters())
    with pytest.raises(ValueError, match="epsilon"):
        br.fgsm(lin, x, y, -1.0)


def test_table_against_direct_evaluation_and_model_unchanged():
    model, loader, x, y = _setup()
    model.train()
    table = assert_model_unchanged(model, br.measure_brittleness, model, loader,
                                   weight_sigmas=(0.0, 0.5), input_sigmas=(0.0, 0.2),
                                   shifts=(1,), rotations=(10.0,), fgsm_epsilons=(0.05,),
                                   draws=2)
    assert model.training
    assert list(table.measure) == ["clean", "weight_noise", "weight_noise", "input_noise",
                                   "input_noise", "shift", "rotation", "fgsm"]
    clean = ql.evaluate(model, loader)
    row = table.set_index(["measure", "level"])
    for key in [("clean", 0.0), ("weight_noise", 0.0), ("input_noise", 0.0)]:
        assert row.loc[key, "accuracy"] == pytest.approx(clean.accuracy)
        assert row.loc[key, "loss"] == pytest.approx(clean.loss, rel=1e-6)
    model.eval()
    with torch.no_grad():
        moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
        acc = np.mean([(model(br.shift_images(x, a, b)).argmax(1) == y).float().mean()
                       for a, b in moves])
        assert row.loc[("shift", 1.0), "accuracy"] == pytest.approx(acc)
    adv = br.fgsm(model, x, y, 0.05)
    with torch.no_grad():
        acc = float((model(adv).argmax(1) == y).float().mean())
    assert row.loc[("fgsm", 0.05), "accuracy"] == pytest.approx(acc)


def test_weight_noise_is_relative_to_each_layer_and_seeded():
    model, loader, x, y = _setup()
    a = br.measure_brittleness(model, loader, weight_sigmas=(0.3,), input_sigmas=(), shifts=(),
                       rotations=(), fgsm_epsilons=(), draws=1, seed=5)
    b = br.measure_brittleness(model, loader, weight_sigmas=(0.3,), input_sigmas=(), shifts=(),
                       rotations=(), fgsm_epsilons=(), draws=1, seed=5)
    assert a.equals(b)
    # the same noise, drawn by hand: W + σ rms(W) ε, layers in module order
    gen = torch.Generator().manual_seed(5)
    noisy = ql.quantize_model(model, {})  # a plain copy
    with torch.no_grad():
        for layer in (noisy[1], noisy[3]):
            w = layer.weight
            e = torch.randn(w.shape, generator=gen, dtype=torch.float64).float()
            w.add_(0.3 * float(w.double().pow(2).mean().sqrt()) * e)
    assert a.loss.iloc[1] == pytest.approx(ql.evaluate(noisy, loader).loss, rel=1e-6)


def test_bad_input():
    model, loader, x, y = _setup()
    for kw, err in [({"weight_sigmas": 0.1}, TypeError), ({"weight_sigmas": (-1,)}, ValueError),
                    ({"input_sigmas": (float("nan"),)}, ValueError),
                    ({"shifts": (1.5,)}, ValueError), ({"draws": 0}, ValueError),
                    ({"seed": "1"}, TypeError), ({"fgsm_epsilons": (True,)}, ValueError)]:
        with pytest.raises(err):
            br.measure_brittleness(model, loader, **kw)
    with pytest.raises(TypeError, match="model"):
        br.measure_brittleness("model", loader)
    pairs = DataLoader(TensorDataset(x, torch.rand(40)), batch_size=8)
    with pytest.raises(TypeError, match=r"\(x, y\) classification"):
        br.measure_brittleness(model, pairs)
    with pytest.raises(TypeError, match="convert_qat"):
        br.measure_brittleness(ql.prepare_qat(model, 4), loader)
