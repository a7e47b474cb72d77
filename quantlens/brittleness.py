"""Brittleness: how much accuracy a model keeps when its weights or its inputs are disturbed.

A quantized network can score well on clean test data and still be brittle. Each measure
here is the top-1 accuracy (and mean loss) of a classifier on a loader of ``(x, y)`` batches
after one kind of disturbance, at one strength ``level``:

==================  ============================================================  =========
measure             disturbance                                                   level
==================  ============================================================  =========
``clean``           none                                                          0
``weight_noise``    ``W_ℓ + σ·rms(W_ℓ)·ε`` for every quantizable layer's weight,   σ
                    ``ε ~ N(0, I)`` (noise relative to each layer's own scale)
``input_noise``     ``x + σ ε``, ``ε ~ N(0, I)``                                   σ
``shift``           images moved by ``k`` pixels up, down, left and right (the     k
                    four averaged), zero fill
``rotation``        images rotated by ``±θ`` degrees about their centre (the two   θ
                    averaged), bilinear, zero fill
``fgsm``            ``clip(x + ε sign ∇_x L(f(x), y))`` (Goodfellow et al., 2015),  ε
                    the fast gradient-sign attack on the model as evaluated
==================  ============================================================  =========

Noise uses common random numbers: draw ``d`` of ``ε`` is the same for every σ and for every
model of the same shapes, so curves over σ are smooth and two models are compared on the
same disturbances. Every function leaves the model unchanged (weights bitwise, modes,
``requires_grad``); the model is evaluated in eval mode.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from .batches import _device, read_batches, totals
from .guard import eval_mode, preserved
from .quantize import QUANTIZABLE_LAYERS, quantizable_layers

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MEASURES = ("clean", "weight_noise", "input_noise", "shift", "rotation", "fgsm")


def _levels(values, name: str, integer: bool = False) -> tuple:
    if isinstance(values, (numbers.Real, str)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    out = []
    for v in values:
        bad = isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) \
            or not math.isfinite(float(v)) or v < 0 or (integer and v != int(v))
        if bad:
            kind = "non-negative ints" if integer else "finite non-negative numbers"
            raise ValueError(f"{name} must hold {kind}, got {v!r}")
        out.append(int(v) if integer else float(v))
    return tuple(out)


def _images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise TypeError(f"{name} must be a float tensor of images (..., H, W), got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.shape}")
    return x


def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images moved by ``dy`` rows (down if positive) and ``dx`` columns (right if positive);
    pixels that enter are 0. Exact (no interpolation); ``x`` has shape ``(..., H, W)``."""
    _images(x)
    for name, v in (("dy", dy), ("dx", dx)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src = x[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[..., max(0, dy):max(0, dy) + src.shape[-2], max(0, dx):max(0, dx) + src.shape[-1]] = src
    return out


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images rotated by ``degrees`` (counter-clockwise) about their centre, bilinear
    (``scipy.ndimage.rotate``, order 1, in float64), zero outside; same shape as ``x``."""
    from scipy import ndimage

    _images(x)
    if isinstance(degrees, bool) or not isinstance(degrees, numbers.Real) \
            or not math.isfinite(float(degrees)):
        raise ValueError(f"degrees must be a finite number, got {degrees!r}")
    a = x.detach().cpu().double().numpy()
    r = ndimage.rotate(a, float(degrees), axes=(-1, -2), reshape=False, order=1, mode="constant")
    return torch.from_numpy(r).to(dtype=x.dtype, device=x.device)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
         loss_fn: Criterion = nn.functional.cross_entropy,
         clamp: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Fast gradient-sign adversarial inputs ``clip(x + ε sign ∇_x L(f(x), y))``.

    Only the input is differentiated (no parameter gradient is accumulated); the model runs
    in whatever mode it is in (callers use eval mode). ``clamp=None`` skips the clipping.
    """
    _images(x)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) \
            or not math.isfinite(float(epsilon)) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(model(xa), y), xa)
    out = x.detach() + float(epsilon) * g.sign()
    return out if clamp is None else out.clamp(*clamp)


def _xy_batches(loader: DataLoader, device, max_batches) -> list[tuple[torch.Tensor, ...]]:
    batches = read_batches(loader, device, max_batches)
    for b in batches:
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[1], torch.Tensor)
                and b[1].ndim == 1 and not b[1].is_floating_point()):
            raise TypeError("brittleness measures need (x, y) classification batches "
                            "(x images, y integer labels)")
        _images(b[0], "a batch's x")
    return [tuple(b) for b in batches]


def _score(model, batches, loss_fn) -> tuple[float, float]:
    total, correct, n = totals(model, batches, loss_fn)
    if n == 0:
        raise ValueError("loader is empty")
    return correct / n, total / n


def measure_brittleness(
    model: nn.Module,
    loader: DataLoader,
    weight_sigmas: Sequence[float] = (0.1, 0.25, 0.5),
    input_sigmas: Sequence[float] = (0.1, 0.2, 0.3),
    shifts: Sequence[int] = (1,),
    rotations: Sequence[float] = (10.0, 20.0),
    fgsm_epsilons: Sequence[float] = (0.02, 0.05, 0.1),
    draws: int = 4,
    seed: int = 0,
    loss_fn: Criterion = nn.functional.cross_entropy,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS,
    max_batches: int | None = None,
) -> pd.DataFrame:
    """Accuracy and loss of ``model`` under every disturbance of the module table.

    Parameters
    ----------
    weight_sigmas, input_sigmas : sequence of float
        Noise strengths σ (``()`` skips the measure); ``draws`` draws each, averaged.
    shifts : sequence of int
        Pixel shifts ``k``; rotations: angles θ in degrees.
    fgsm_epsilons : sequence of float
        Attack strengths ε, in the units of ``x`` (pixels in [0, 1] for the digits).
    seed : int
        Seed of the noise draws (weights: ``seed``; inputs: ``seed + 1``).
    clamp : (low, high) or None
        Valid input range for the FGSM inputs.

    Returns
    -------
    pandas.DataFrame
        One row per ``(measure, level)``: ``measure, level, accuracy, loss``, the first row
        the clean model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    w_sig = _levels(weight_sigmas, "weight_sigmas")
    x_sig = _levels(input_sigmas, "input_sigmas")
    shifts = _levels(shifts, "shifts", integer=True)
    rotations = _levels(rotations, "rotations")
    eps = _levels(fgsm_epsilons, "fgsm_epsilons")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    batches = _xy_batches(loader, _device(model), max_batches)
    rows = []

    def add(measure, level, scores):
        acc, loss = np.mean([s[0] for s in scores]), np.mean([s[1] for s in scores])
        rows.append({"measure": measure, "level": float(level), "accuracy": float(acc),
                     "loss": float(loss)})

    with preserved(model), eval_mode(model), torch.no_grad():
        add("clean", 0, [_score(model, batches, loss_fn)])
        if w_sig:
            _weight_noise(model, batches, w_sig, draws, seed, loss_fn, layer_types, add)
        gen = torch.Generator().manual_seed(seed + 1)
        noise = [[torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
                  for x, _ in batches] for _ in range(draws if x_sig else 0)]
        for s in x_sig:
            add("input_noise", s, [_score(model, [(x + s * e, y) for (x, y), e in
                                                 zip(batches, ns)], loss_fn) for ns in noise])
        for k in shifts:
            moves = [(-k, 0), (k, 0), (0, -k), (0, k)]
            add("shift", k, [_score(model, [(shift_images(x, dy, dx), y) for x, y in batches],
                                    loss_fn) for dy, dx in moves])
        for t in rotations:
            add("rotation", t, [_score(model, [(rotate_images(x, a), y) for x, y in batches],
                                       loss_fn) for a in (t, -t)])
        for e in eps:
            adv = [(fgsm(model, x, y, e, loss_fn, clamp), y) for x, y in batches]
            add("fgsm", e, [_score(model, adv, loss_fn)])
    return pd.DataFrame(rows)


def _weight_noise(model, batches, sigmas, draws, seed, loss_fn, layer_types, add) -> None:
    """The ``weight_noise`` rows: ``W + σ·rms(W)·ε_d`` in a copy of ``model``."""
    noisy = copy.deepcopy(model)
    layers = quantizable_layers(noisy, layer_types)
    if not layers:
        raise ValueError("model has no quantizable layer to add weight noise to")
    if any(parametrize.is_parametrized(m, "weight") for m in layers.values()):
        raise TypeError("model has parametrized (QAT) weights: measure the deployed model, "
                        "quantlens.convert_qat(model)")
    base = {n: m.weight.detach().clone() for n, m in layers.items()}
    gen = torch.Generator().manual_seed(seed)
    eps = [{n: torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w)
            for n, w in base.items()} for _ in range(draws)]
    rms = {n: w.double().pow(2).mean().sqrt().item() for n, w in base.items()}
    for s in sigmas:
        scores = []
        for e in eps:
            for n, m in layers.items():
                m.weight.copy_(base[n] + (s * rms[n]) * e[n])
            scores.append(_score(noisy, batches, loss_fn))
        add("weight_noise", s, scores)
