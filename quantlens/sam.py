"""Sharpness-aware minimization: SAM (Foret et al., 2021) and ASAM (Kwon et al., 2021).

SAM minimizes the worst loss in a neighbourhood, ``min_w max_{||e|| <= ρ} L(w + e)``. One
step takes two gradients: at ``w`` it takes ``g = ∇L(w)`` and the first-order worst
perturbation

.. math:: e = ρ \\frac{g}{\\lVert g \\rVert} \\quad \\text{(SAM)}, \\qquad
          e = ρ \\frac{T^2 g}{\\lVert T g \\rVert},\\; T = |w| + η \\quad \\text{(ASAM)},

then the gradient ``g' = ∇L(w + e)``, and the base optimizer steps from ``w`` (not from
``w + e``) with ``g'``. ASAM's elementwise scaling ``T`` makes the neighbourhood
scale-invariant, so rescaling a layer does not change its sharpness.

:class:`SAM` wraps any ``torch.optim.Optimizer``. With quantization-aware training
(:func:`quantlens.prepare_qat`) the optimizer's parameters are the latent float weights, so
the perturbation is applied to them and the forward pass quantizes ``w + e`` (as SAQ does).

Exactness: the weights are restored by copying the saved values back (never ``w + e - e``),
so ``rho=0`` reproduces the base optimizer bitwise, and, given the model, BatchNorm running
statistics are saved before the second forward pass and restored after it, so only the first
pass at ``w`` updates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _frozen_norm_statistics(model: nn.Module | None):
    """Restore every BatchNorm running statistic (and batch counter) on exit."""
    if model is None:
        yield
        return
    saved = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, value in buffers.items():
                    getattr(m, k).copy_(value)


class SAM:
    """Sharpness-aware minimization around a base optimizer.

    Parameters
    ----------
    base : torch.optim.Optimizer
        The optimizer that takes the step (e.g. ``torch.optim.SGD(model.parameters(),
        lr=0.05, momentum=0.9)``); its parameters are perturbed.
    rho : float
        Radius ``ρ >= 0`` of the neighbourhood. ``0`` is the base optimizer itself.
    adaptive : bool
        ASAM: perturbation scaled elementwise by ``T = |w| + eta``.
    eta : float
        ASAM's offset ``η >= 0`` (so that zero weights are perturbed too).
    model : nn.Module, optional
        If given, BatchNorm running statistics are not updated by the second forward pass.

    Examples
    --------
    >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.05), rho=0.05, model=model)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = loss_fn(model(x), y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)   # calls closure twice; returns the loss at w
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.01, model: nn.Module | None = None) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer instance, got "
                            f"{type(base).__name__} (e.g. torch.optim.SGD(params, lr=0.1))")
        for name, value in (("rho", rho), ("eta", eta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {adaptive!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got "
                            f"{type(model).__name__}")
        self.base, self.rho, self.adaptive, self.eta, self.model = (base, float(rho), adaptive,
                                                                    float(eta), model)

    @property
    def param_groups(self):
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.base.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def perturbation(self) -> list[torch.Tensor]:
        """``e`` for the current gradients (one tensor per parameter with a gradient)."""
        params = self._params()
        if self.adaptive:
            scaled = [(p.abs() + self.eta) * p.grad for p in params]
        else:
            scaled = [p.grad for p in params]
        norm = torch.sqrt(sum((s.double() ** 2).sum() for s in scaled)) if scaled else 0.0
        if not scaled or float(norm) == 0.0:
            return [torch.zeros_like(p) for p in params]
        factor = self.rho / float(norm)
        if self.adaptive:
            return [(p.abs() + self.eta) * s * factor for p, s in zip(params, scaled)]
        return [s * factor for s in scaled]

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One SAM step; ``closure`` zeroes the gradients, computes the loss, calls
        ``backward()`` and returns the loss. Returns the (detached) loss at ``w``."""
        if not callable(closure):
            raise TypeError("SAM.step needs a closure that recomputes the loss and its "
                            "gradients (it is called twice per step)")
        with torch.enable_grad():
            loss = closure()
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        if self.rho == 0.0:  # the base optimizer, exactly
            self.base.step()
            return loss
        params = self._params()
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, e in zip(params, self.perturbation()):
                p.add_(e)
        try:
            with torch.enable_grad(), _frozen_norm_statistics(self.model):
                closure()
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved):
                    p.copy_(w)
        self.base.step()
        return loss
