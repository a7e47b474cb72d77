"""SAM and ASAM: closed forms on a quadratic, exact reduction to the base optimizer at ρ = 0,
BatchNorm statistics from the first pass only, QAT on latent weights, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql


def _quadratic(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = m @ m.T + n * torch.eye(n, dtype=torch.float64)
    w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
    return a, w


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_equals_the_closed_form_on_a_quadratic(adaptive):
    a, w = _quadratic()
    w0 = w.detach().clone()
    rho, lr, eta = 0.3, 0.05, 0.01
    opt = ql.SAM(torch.optim.SGD([w], lr=lr), rho=rho, adaptive=adaptive, eta=eta)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss

    loss = opt.step(closure)
    g = a @ w0
    if adaptive:
        t = w0.abs() + eta
        e = rho * t**2 * g / torch.linalg.norm(t * g)
    else:
        e = rho * g / torch.linalg.norm(g)
    expected = w0 - lr * (a @ (w0 + e))
    torch.testing.assert_close(w.detach(), expected, rtol=1e-13, atol=1e-14)
    assert float(loss) == pytest.approx(float(0.5 * w0 @ a @ w0), rel=1e-15)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _closure(opt, model, x, y):
    """The closure SAM.step calls: zero the gradients, loss, backward, return the loss."""
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2),
])
def test_rho_zero_is_the_base_optimizer_bitwise(make):
    a, b = _mlp(), _mlp()
    opt_a = make(a.parameters())
    sam = ql.SAM(make(b.parameters()), rho=0.0, model=b)
    for x, y in _batches():
        _closure(opt_a, a, x, y)()
        opt_a.step()
        sam.step(_closure(sam, b, x, y))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_second_pass_leaves_batchnorm_statistics_alone_and_weights_are_restored():
    model = _mlp()
    ref = copy.deepcopy(model)
    x, y = _batches(1)[0]
    sam = ql.SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5, model=model)
    sam.step(_closure(sam, model, x, y))
    ref(x)  # one forward pass in train mode at w: the statistics SAM must end with
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(model.state_dict()[k], ref.state_dict()[k]), k
    for k, v in ref.state_dict().items():  # lr = 0: every weight back bitwise
        assert torch.equal(model.state_dict()[k], v), k


def test_sam_perturbs_the_latent_weights_of_a_qat_model():
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    qat = ql.prepare_qat(fp32, 3)
    latent = qat[0].parametrizations.weight.original
    x, y = _batches(1)[0]
    seen = []
    qat[0].register_forward_pre_hook(lambda m, args: seen.append(m.weight.detach().clone()))
    sam = ql.SAM(torch.optim.SGD(qat.parameters(), lr=0.0), rho=0.2)
    before = latent.detach().clone()
    sam.step(_closure(sam, qat, x, y))
    assert torch.equal(latent, before)  # restored
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])  # Q(w) then Q(w + e)
    assert torch.equal(seen[0], ql.quantize_dequantize(before, 3))


def test_fit_with_sam_trains_and_rho_zero_matches_plain_sgd():
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(2))
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    plain, zero, sam = _mlp(), _mlp(), _mlp()
    h_plain = ql.fit(plain, loader, epochs=3, lr=0.05, optimizer="sgd")
    h_zero = ql.fit(zero, loader, epochs=3, lr=0.05, optimizer="sgd", rho=0.0)
    h_sam = ql.fit(sam, loader, epochs=3, lr=0.05, optimizer="sgd", rho=0.1, adaptive=True)
    assert h_plain.equals(h_zero)
    assert h_sam.train_loss.iloc[-1] < h_sam.train_loss.iloc[0]
    assert not h_sam.equals(h_plain)


def test_bad_sam_arguments_get_clear_errors():
    w = nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="base"):
        ql.SAM(torch.optim.SGD, rho=0.1)
    for rho in (-0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="rho"):
            ql.SAM(torch.optim.SGD([w], lr=0.1), rho=rho)
    with pytest.raises(ValueError, match="eta"):
        ql.SAM(torch.optim.SGD([w], lr=0.1), eta=-1.0)
    with pytest.raises(TypeError, match="closure"):
        ql.SAM(torch.optim.SGD([w], lr=0.1)).step(None)
    with pytest.raises(ValueError, match="optimizer"):
        ql.fit(_mlp(), DataLoader(TensorDataset(torch.randn(4, 5), torch.zeros(4).long())),
               optimizer="lbfgs")
