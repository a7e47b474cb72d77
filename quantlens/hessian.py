"""The Hessian of the loss with respect to the parameters, through Hessian-vector products.

For a data set of ``N`` examples and parameters ``θ`` (all trainable ones, or a chosen subset)

.. math:: L(θ) = \\frac{1}{N} \\sum_b n_b\\, \\ell_b(θ), \\qquad H = \\nabla^2_θ L(θ),

where ``ℓ_b`` is the mean loss of batch ``b`` (``n_b`` examples). ``H`` is never formed: every
algorithm here only needs products ``Hv``. :class:`HessianOperator` computes them exactly over
a whole DataLoader (or one batch) by

* ``"double_backward"``: ``Hv = ∇_θ (∇_θ L · v)``. The graph of the first backward pass is
  built once and kept, so each product costs one backward pass (work reused across
  products); memory grows with the data set's activations.
* ``"forward_over_reverse"``: ``Hv = jvp(∇_θ L, θ, v)`` with :mod:`torch.func`, recomputing
  forward and backward for every product; constant memory in the number of products.

On top of it: :func:`lanczos` (top/bottom eigenpairs, full reorthogonalization),
:func:`power_iteration` (with deflation, as PyHessian), :func:`hutchinson` and
:func:`hutchpp` (trace with standard errors), :func:`spectral_density` (stochastic Lanczos
quadrature) and :func:`layer_sharpness` (per-layer ``λ_max`` and trace). The model is never
modified: the operator evaluates it with :func:`torch.func.functional_call` on detached
copies of the parameters, in eval mode, and restores every module's mode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import (
    BatchLoss,
    batch_weights,
    check_loader,
    check_max_batches,
    functional_term,
    read_batches,
    resolve_loss,
    to_device,
)
from .distributed import all_sum, all_sum_float
from .guard import eval_mode
from .quantize import quantizable_layers

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("double_backward", "forward_over_reverse")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of ``H`` and how they were obtained.

    ``eigenvalues`` are sorted from the requested end (descending for ``"largest"``,
    ascending for ``"smallest"``); ``eigenvectors`` has shape ``(n_params, k)``; ``history``
    has one row per iteration with the current estimates; ``residuals`` are the final
    ``||H u - λ u||`` bounds; ``n_hvp`` counts Hessian-vector products.
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor = field(repr=False)
    n_hvp: int
    history: np.ndarray = field(repr=False)
    residuals: np.ndarray
    converged: bool
    method: str


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate ``tr(H) ≈ value ± stderr`` from ``n_hvp`` products."""

    value: float
    stderr: float
    n_hvp: int
    method: str
    samples: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SpectralDensity:
    """Smoothed eigenvalue density ``φ(t) = Σ_i τ_i N(t; θ_i, σ²)`` averaged over runs.

    ``nodes``/``weights`` are the Gauss quadrature nodes ``θ_i`` and weights ``τ_i`` of every
    run (each run's weights sum to 1), ``grid``/``density`` the smoothed curve.
    """

    grid: np.ndarray = field(repr=False)
    density: np.ndarray = field(repr=False)
    nodes: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    sigma: float
    n_hvp: int


# ---------------------------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------------------------
def _select_params(model: nn.Module, params) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = {k: p for k, p in named.items() if p.requires_grad}
    else:
        names = [params] if isinstance(params, str) else list(params)
        modules = dict(model.named_modules())
        chosen = {}
        for name in names:
            if name in named:
                chosen[name] = named[name]
            elif name in modules:
                prefix = f"{name}." if name else ""
                for k, p in modules[name].named_parameters():
                    if p.requires_grad:
                        chosen[prefix + k] = p
            else:
                raise ValueError(f"params: {name!r} is neither a parameter nor a module name")
    if not chosen:
        raise ValueError("model has no trainable parameter to differentiate (params selection)")
    return chosen


class HessianOperator:
    """Exact Hessian-vector products of a model's loss over a data set.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode (BatchNorm uses running statistics, dropout is off); never
        modified.
    loader : DataLoader, optional
        Any batches :mod:`quantlens.batches` reads: ``(inputs, targets)``,
        ``(inputs, targets, weights)``, Hugging Face dicts with ``labels``, or anything through
        a :class:`~quantlens.BatchLoss`. ``H`` is the exact weighted average over all batches
        read (all of them, or the first ``max_batches``), which are kept in memory.
    batch : optional
        A single batch instead of ``loader``.
    loss_fn : callable or BatchLoss
        A criterion ``loss_fn(outputs, targets)`` returning the scalar batch mean, or a
        :class:`~quantlens.BatchLoss` (e.g. :func:`~quantlens.output_distance`, no labels).
    params : str or list of str, optional
        Parameter or module names to differentiate (default: every trainable parameter).
    method : {"double_backward", "forward_over_reverse"}
        How products are computed (see the module docstring).
    max_batches : int, optional
        Read at most this many batches (required for a loader without a length).
    """

    def __init__(
        self,
        model: nn.Module,
        loader: DataLoader | None = None,
        batch: Any = None,
        loss_fn: LossFn | BatchLoss = nn.functional.cross_entropy,
        params: str | Iterable[str] | None = None,
        method: str = "double_backward",
        max_batches: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if (loader is None) == (batch is None):
            raise ValueError("give exactly one of loader and batch")
        if loader is not None:
            check_loader(loader)
        check_max_batches(max_batches)
        resolve_loss(loss_fn)  # TypeError for a loss_fn that is not callable
        self.model, self.loss_fn, self.method = model, loss_fn, method
        chosen = _select_params(model, params)
        self.names = list(chosen)
        self.shapes = [p.shape for p in chosen.values()]
        self.sizes = [p.numel() for p in chosen.values()]
        self.n = sum(self.sizes)
        self.device = next(iter(chosen.values())).device
        self.dtype = next(iter(chosen.values())).dtype
        if not self.dtype.is_floating_point:
            raise TypeError(f"params must be floating point to differentiate, got {self.dtype}")
        self._theta = [p.detach().clone().requires_grad_(True) for p in chosen.values()]
        self._term = functional_term(model, loss_fn)
        if loader is not None:
            batches = read_batches(loader, self.device, max_batches)
        else:
            batches = [to_device(batch, self.device)]
        with eval_mode(self.model):
            weights = batch_weights(self.model, batches, loss_fn)
        # under torch.distributed this rank's batches are its shard of the data: weights are
        # normalized by the total over all ranks and every product is summed over the ranks
        total = all_sum_float(float(sum(weights)))
        if total == 0:
            raise ValueError("loader has no example of positive weight to compute the "
                             "Hessian on")
        self.n_examples = total
        self._batches = [(b, w / total) for b, w in zip(batches, weights) if w > 0]
        self.n_hvp = 0
        self._flat_grad = None
        self.loss = self._init_loss()

    # -- evaluation ----------------------------------------------------------------------
    def _batch_loss(self, theta: list[torch.Tensor], batch: Any) -> torch.Tensor:
        return self._term(dict(zip(self.names, theta)), batch).loss

    def _init_loss(self) -> float:
        total = 0.0
        grads = None
        with eval_mode(self.model), _differentiable_twice():
            for batch, w in self._batches:
                loss = self._batch_loss(self._theta, batch)
                if not bool(torch.isfinite(loss)):
                    value = float(loss.detach())
                    raise ValueError(f"loss is not finite ({value}) at these weights")
                total += w * float(loss.detach())
                if self.method == "double_backward":
                    g = torch.autograd.grad(loss, self._theta, create_graph=True,
                                            allow_unused=True)
                    flat = torch.cat([_grad_or_zero(t, p) for t, p in zip(g, self._theta)]) * w
                    grads = flat if grads is None else grads + flat
        self._flat_grad = grads
        return all_sum_float(total)

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped like the parameters."""
        return [t.reshape(s) for t, s in zip(torch.split(v, self.sizes), self.shapes)]

    def gradient(self) -> torch.Tensor:
        """The flat gradient ``∇_θ L``."""
        if self._flat_grad is not None:
            return all_sum(self._flat_grad.detach().clone())
        with eval_mode(self.model), _differentiable_twice():
            total = torch.zeros(self.n, dtype=self.dtype, device=self.device)
            for batch, w in self._batches:
                g = torch.autograd.grad(self._batch_loss(self._theta, batch), self._theta,
                                        allow_unused=True)
                total += w * torch.cat([_grad_or_zero(t, p) for t, p in zip(g, self._theta)])
        return all_sum(total)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length :attr:`n`."""
        v = v.to(device=self.device, dtype=self.dtype)
        self.n_hvp += 1
        if self.method == "double_backward":
            hv = torch.autograd.grad(self._flat_grad, self._theta, grad_outputs=v,
                                     retain_graph=True, allow_unused=True)
            return all_sum(torch.cat([_grad_or_zero(t, p)
                                      for t, p in zip(hv, self._theta)]).detach())
        tangents = tuple(self.split(v))
        total = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        with eval_mode(self.model), _differentiable_twice():
            for batch, w in self._batches:
                def grad_fn(*theta, batch=batch):
                    return torch.func.grad(
                        lambda th: self._batch_loss(list(th), batch))(theta)
                with warnings.catch_warnings():
                    # torch.func.jvp registers decompositions with torch.jit.script, which
                    # torch itself deprecates; the warning is about torch's internals
                    warnings.filterwarnings("ignore", message=".*torch.jit.script.*",
                                            category=DeprecationWarning)
                    _, hv = torch.func.jvp(grad_fn, tuple(t.detach() for t in self._theta),
                                           tangents)
                total += w * torch.cat([t.reshape(-1) for t in hv])
        return all_sum(total)

    __matmul__ = matvec


def _differentiable_twice():
    """Attention through ``scaled_dot_product_attention`` (Hugging Face models' default) uses
    fused kernels whose backward has no derivative in torch; its "math" form is made of
    ordinary differentiable operations, so second-order products go through it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _grad_or_zero(g: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    """A flat gradient, zeros for a parameter the loss does not use."""
    return torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(-1)


def _check_op(op: Any) -> None:
    if not isinstance(op, HessianOperator):
        hint = (" (a model: build the operator with HessianOperator(model, loader))"
                if isinstance(op, nn.Module) else "")
        raise TypeError(f"op must be a HessianOperator, got {type(op).__name__}{hint}")


def _check_tol(tol: Any) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) \
            or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


def _check_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _rademacher(n: int, gen: torch.Generator, dtype, device) -> torch.Tensor:
    """``n`` signs ±1 from ``gen``. Drawn straight in ``dtype``: ATen draws one 32-bit number
    per element for any dtype when the range is below 2**32, so these are the values of
    ``randint(0, 2) * 2 - 1`` in int64 (tested) without two passes over 8-byte integers
    (0.09 s instead of 0.27 s for MiniLM's 22.7M parameters)."""
    z = torch.randint(0, 2, (n,), generator=gen, dtype=dtype)
    return z.mul_(2).sub_(1).to(device)


# ---------------------------------------------------------------------------------------------
# eigenvalues
# ---------------------------------------------------------------------------------------------
def lanczos(
    op: HessianOperator,
    k: int = 1,
    which: str = "largest",
    max_iter: int | None = None,
    tol: float = 1e-5,
    seed: int = 0,
) -> EigenResult:
    """Extreme eigenpairs of ``H`` by the Lanczos method with full reorthogonalization.

    The Krylov basis ``q_1, ..., q_m`` of ``H`` from a seeded Gaussian start gives the
    tridiagonal ``T_m = Q_m^T H Q_m``; its eigenvalues (Ritz values) converge to the extreme
    eigenvalues of ``H``. With ``r_i = |β_m s_{m,i}|`` the residual norm of Ritz pair ``i``,
    the eigenvalue error is at most ``r_i`` and, for an isolated eigenvalue, about
    ``r_i^2 / gap_i`` (``gap_i`` to the nearest other Ritz value). Iteration stops (after at
    least 3 products) when ``min(r_i, r_i^2/gap_i) <= tol · |θ_i|`` for each of the ``k``
    wanted pairs, when the Krylov space becomes invariant, or after ``max_iter`` products.
    ``residuals`` in the result are the ``r_i`` (``||H u - θ u||``). Each Lanczos vector is
    orthogonalized twice against all previous ones, so no spurious copies of converged
    eigenvalues appear.

    Memory: the basis holds at most ``2 (products + 1) · n`` numbers of the parameter dtype
    (it doubles as needed, up to ``(max_iter + 1) · n``).

    Parameters
    ----------
    op : HessianOperator
    k : int
        Number of eigenpairs, ``1 <= k <= n``.
    which : {"largest", "smallest"}
        Algebraically largest or smallest eigenvalues.
    max_iter : int, optional
        Maximum number of products (default ``min(n, max(4k, 30) + 50)``).
    tol : float
        Relative residual tolerance.
    seed : int
        Seed of the start vector.
    """
    _check_op(op)
    _check_int("k", k)
    _check_tol(tol)
    if k > op.n:
        raise ValueError(f"k={k} is larger than the number of parameters ({op.n})")
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    if max_iter is not None:
        _check_int("max_iter", max_iter, k)
    m = min(op.n, max_iter if max_iter is not None else max(4 * k, 30) + 50)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(op.n, generator=gen, dtype=torch.float64).to(op.dtype).to(op.device)
    history: list[np.ndarray] = []
    state: dict = {}
    start = op.n_hvp

    def stop(alphas: list[float], betas: list[float], beta: float) -> bool:
        theta, s = _ritz(alphas, betas)
        idx = np.argsort(-theta if which == "largest" else theta)[: min(k, len(alphas))]
        res = np.abs(beta * s[-1, idx])
        history.append(np.pad(theta[idx], (0, k - len(idx)), constant_values=np.nan))
        invariant = beta <= 1e-10 * max(abs(theta).max(), 1e-30)
        err = _eigenvalue_error(theta, idx, res)
        converged = len(idx) == k and len(alphas) >= 3 and (
            invariant or bool(np.all(err <= tol * np.maximum(np.abs(theta[idx]), 1e-30)))
        )
        state.update(theta=theta, s=s, idx=idx, res=res, converged=converged)
        # an invariant space also ends the run: H has fewer than k eigenvalues reachable
        return converged or invariant

    alphas, _, basis = _krylov(op, q, m, stop)
    theta, s, idx = state["theta"], state["s"], state["idx"]
    vecs = basis[: len(alphas)].T @ torch.as_tensor(s[:, idx], dtype=op.dtype, device=op.device)
    return EigenResult(
        eigenvalues=theta[idx], eigenvectors=vecs, n_hvp=op.n_hvp - start,
        history=np.array(history), residuals=state["res"], converged=state["converged"],
        method="lanczos",
    )


def _krylov(op: HessianOperator, q0: torch.Tensor, m: int,
            stop: Callable[[list[float], list[float], float], bool]):
    """Up to ``m`` Lanczos steps from ``q0`` with full reorthogonalization.

    Each new vector is orthogonalized twice against the whole basis ("twice is enough"), so
    no spurious copies of converged eigenvalues appear. After each step ``stop(alphas, betas,
    beta)`` may end the run. Returns the diagonal ``alphas``, off-diagonal ``betas`` of
    ``T = Q^T H Q`` and the basis (``m + 1`` rows, the first ``len(alphas)`` in use).
    """
    # The basis grows by doubling: a run that converges in a few steps on a large model
    # (22.7M parameters for MiniLM) must not allocate m + 1 = 81 vectors (7 GB). Rows are
    # written before they are read, so new storage is left uninitialized (zeroing 32 rows of
    # MiniLM's 10.8M layer parameters took 0.8 s, an eighth of a 16-step run).
    basis = torch.empty(min(m + 1, 8), op.n, dtype=op.dtype, device=op.device)
    basis[0] = q0 / q0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(m):
        if j + 1 >= len(basis):
            grown = torch.empty(min(m + 1, 2 * len(basis)), op.n, dtype=op.dtype,
                                device=op.device)
            grown[: len(basis)] = basis
            basis = grown
        w = op.matvec(basis[j])
        alphas.append(float(w @ basis[j]))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if stop(alphas, betas, beta) or j + 1 == m:
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    return alphas, betas, basis


def _eigenvalue_error(theta: np.ndarray, idx: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Estimated error of each wanted Ritz value: ``min(r, r^2 / gap)``.

    ``r`` is the residual norm (a rigorous bound) and ``r^2/gap`` the quadratic estimate of
    Saad (2011, Thm. 4.6/Kato-Temple) with the gap to the nearest other Ritz value.
    """
    if len(theta) < 2:
        return res
    gaps = np.array([np.min(np.abs(np.delete(theta, i) - theta[i])) for i in idx])
    return np.minimum(res, res**2 / np.maximum(gaps, 1e-300))


def _ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.diag(alphas)
    if betas:
        off = np.array(betas[: len(alphas) - 1])
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)


def power_iteration(
    op: HessianOperator,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> EigenResult:
    """Top-``k`` eigenpairs by power iteration with deflation, as PyHessian does.

    For each ``i``: start from a seeded Gaussian vector, orthogonalize against the
    eigenvectors already found, ``v ← Hv/||Hv||``, ``λ = v^T H v``; stop when
    ``|λ_t - λ_{t-1}| < tol · |λ_{t-1}|``. Converges to the eigenvalue of largest *magnitude*
    at rate ``|λ_2/λ_1|`` per product, which is why Lanczos needs far fewer products.
    """
    _check_op(op)
    _check_int("k", k)
    _check_int("max_iter", max_iter)
    _check_tol(tol)
    if k > op.n:
        raise ValueError(f"k={k} is larger than the number of parameters ({op.n})")
    gen = torch.Generator().manual_seed(seed)
    found: list[torch.Tensor] = []
    values, history, residuals = [], [], []
    start = op.n_hvp
    converged = True
    for _ in range(k):
        v = torch.randn(op.n, generator=gen, dtype=torch.float64).to(op.dtype).to(op.device)
        lam_old, trace = None, []
        ok = False
        for _ in range(max_iter):
            for u in found:
                v = v - (u @ v) * u
            v = v / v.norm()
            hv = op.matvec(v)
            lam = float(v @ hv)
            trace.append(lam)
            if lam_old is not None and abs(lam - lam_old) < tol * abs(lam_old) + 1e-30:
                ok = True
                break
            lam_old = lam
            v = hv
        converged &= ok
        residuals.append(float((hv - lam * v).norm()))
        found.append(v)
        values.append(lam)
        history.extend(trace)
    return EigenResult(
        eigenvalues=np.array(values), eigenvectors=torch.stack(found, 1), n_hvp=op.n_hvp - start,
        history=np.array(history)[:, None], residuals=np.array(residuals), converged=converged,
        method="power",
    )


# ---------------------------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------------------------
def hutchinson(op: HessianOperator, n_samples: int = 100, seed: int = 0) -> TraceEstimate:
    """Hutchinson's estimator ``tr(H) ≈ (1/m) Σ_j z_j^T H z_j`` with Rademacher ``z_j``.

    The standard error is the sample standard deviation over ``sqrt(m)``.
    """
    _check_op(op)
    _check_int("n_samples", n_samples, 2)
    gen = torch.Generator().manual_seed(seed)
    start = op.n_hvp
    samples = np.array([
        float(z @ op.matvec(z))
        for z in (_rademacher(op.n, gen, op.dtype, op.device) for _ in range(n_samples))
    ])
    return TraceEstimate(
        value=float(samples.mean()), stderr=float(samples.std(ddof=1) / np.sqrt(n_samples)),
        n_hvp=op.n_hvp - start, method="hutchinson", samples=samples,
    )


def exact_trace(op: HessianOperator) -> TraceEstimate:
    """``tr(H) = Σ_i e_i^T H e_i`` with ``n`` products on the unit vectors (standard error 0)."""
    _check_op(op)
    start = op.n_hvp
    diag = np.empty(op.n)
    for i in range(op.n):
        e = torch.zeros(op.n, dtype=op.dtype, device=op.device)
        e[i] = 1
        diag[i] = float(op.matvec(e)[i])
    return TraceEstimate(value=float(diag.sum()), stderr=0.0, n_hvp=op.n_hvp - start,
                         method="exact", samples=diag)


def hutchpp(op: HessianOperator, n_hvp: int = 99, seed: int = 0) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): variance-reduced trace estimation.

    With a budget of ``m`` products: ``Q = orth(H S)`` for ``m/3`` Rademacher columns ``S``
    captures the dominant eigenspace; its trace ``tr(Q^T H Q)`` is computed exactly
    (``m/3`` products) and Hutchinson is applied only to the deflated remainder
    ``(I - QQ^T) H (I - QQ^T)`` with the last ``m/3`` products. The standard error is that of
    the remainder's samples. Needs ``m >= 6``.
    """
    _check_op(op)
    _check_int("n_hvp", n_hvp, 6)
    gen = torch.Generator().manual_seed(seed)
    k = n_hvp // 3
    r = n_hvp - 2 * k
    start = op.n_hvp
    # H S is built row by row and handed to the QR transposed: column-major, the layout
    # LAPACK works in, so it is not copied again (same values, same factorization)
    hs = torch.empty(k, op.n, dtype=op.dtype, device=op.device)
    for i in range(k):
        hs[i] = op.matvec(_rademacher(op.n, gen, op.dtype, op.device))
    q, _ = torch.linalg.qr(hs.T)
    exact = sum(float(q[:, i] @ op.matvec(q[:, i])) for i in range(q.shape[1]))
    samples = []
    for _ in range(r):
        z = _rademacher(op.n, gen, op.dtype, op.device)
        z = z - q @ (q.T @ z)
        samples.append(float(z @ op.matvec(z)))
    samples = np.array(samples)
    stderr = float(samples.std(ddof=1) / np.sqrt(r)) if r > 1 else float("nan")
    return TraceEstimate(
        value=exact + float(samples.mean()), stderr=stderr, n_hvp=op.n_hvp - start,
        method="hutch++", samples=samples,
    )


# ---------------------------------------------------------------------------------------------
# density
# ---------------------------------------------------------------------------------------------
def spectral_density(
    op: HessianOperator,
    n_iter: int = 60,
    n_runs: int = 4,
    sigma: float | None = None,
    grid_size: int = 1000,
    seed: int = 0,
) -> SpectralDensity:
    """Eigenvalue density of ``H`` by stochastic Lanczos quadrature (Ghorbani et al., 2019).

    For each of ``n_runs`` normalized Rademacher vectors ``v``, ``m = n_iter`` Lanczos steps
    give ``T_m = S Θ S^T``; the nodes ``θ_i`` with weights ``τ_i = S_{1i}^2`` form a Gauss
    quadrature of ``v^T f(H) v``, so ``φ(t) = (1/runs) Σ Σ_i τ_i N(t; θ_i, σ^2)`` estimates
    the density ``(1/n) Σ_j δ(t - λ_j)`` smoothed by a Gaussian of width ``σ``
    (default: 1% of the spectral range). ``φ`` integrates to 1.
    """
    _check_op(op)
    _check_int("n_iter", n_iter, 2)
    _check_int("n_runs", n_runs)
    gen = torch.Generator().manual_seed(seed)
    m = min(n_iter, op.n)
    nodes, weights = [], []
    start = op.n_hvp
    for _ in range(n_runs):
        v = _rademacher(op.n, gen, op.dtype, op.device)
        alphas, betas, _ = _krylov(
            op, v, m, lambda a, b, beta: beta <= 1e-10 * max(abs(x) for x in a))
        theta, s = _ritz(alphas, betas)
        nodes.append(theta)
        weights.append(s[0] ** 2)
    all_nodes = np.concatenate(nodes)
    span = float(all_nodes.max() - all_nodes.min()) or 1.0
    sig = sigma if sigma is not None else 0.01 * span
    if not sig > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    grid = np.linspace(all_nodes.min() - 5 * sig, all_nodes.max() + 5 * sig, grid_size)
    dens = np.zeros_like(grid)
    for th, tau in zip(nodes, weights):
        dens += (tau[None, :] * np.exp(-((grid[:, None] - th[None, :]) ** 2) / (2 * sig**2))
                 ).sum(1) / (np.sqrt(2 * np.pi) * sig)
    return SpectralDensity(
        grid=grid, density=dens / n_runs, nodes=all_nodes, weights=np.concatenate(weights) / n_runs,
        sigma=sig, n_hvp=op.n_hvp - start,
    )


# ---------------------------------------------------------------------------------------------
# convenience and per-layer
# ---------------------------------------------------------------------------------------------
def top_eigenvalues(model: nn.Module, loader: DataLoader, k: int = 1,
                    loss_fn: LossFn | BatchLoss = nn.functional.cross_entropy,
                    max_batches: int | None = None, **kwargs) -> EigenResult:
    """``lanczos(HessianOperator(model, loader, loss_fn=loss_fn, max_batches=max_batches),
    k, **kwargs)``."""
    op = HessianOperator(model, loader, loss_fn=loss_fn, max_batches=max_batches)
    return lanczos(op, k, **kwargs)


def layer_sharpness(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn = nn.functional.cross_entropy,
    layers: Iterable[str] | None = None,
    trace_hvp: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    max_batches: int | None = None,
) -> pd.DataFrame:
    """Per-layer ``λ_max`` and trace of the diagonal Hessian block of each layer.

    For every quantizable layer (or the named ``layers``) the block ``H_ℓℓ`` of the loss
    Hessian with respect to that layer's parameters (weight and bias; for a fake-quant model
    the latent weight) gives ``λ_max`` by :func:`lanczos` and ``tr(H_ℓℓ)`` by :func:`hutchpp`
    with ``trace_hvp`` products — or exactly (:func:`exact_trace`) when the layer has at most
    ``trace_hvp`` parameters.

    Returns
    -------
    pandas.DataFrame
        Indexed by layer name: ``type, n_params, lambda_max, trace, trace_se, trace_method,
        trace_per_param, n_hvp``.
    """
    names = list(quantizable_layers(model)) if layers is None else list(layers)
    if not names:
        raise ValueError("model has no quantizable layer; pass layers=[...] explicitly")
    modules = dict(model.named_modules())
    rows = []
    for name in tqdm(names, desc="layers", disable=not progress, leave=False):
        if name not in modules:
            raise ValueError(f"layers: {name!r} is not a module of the model")
        op = HessianOperator(model, loader, loss_fn=loss_fn, params=name,
                             max_batches=max_batches)
        eig = lanczos(op, 1, tol=tol, seed=seed)
        tr = exact_trace(op) if op.n <= trace_hvp else hutchpp(op, trace_hvp, seed=seed)
        rows.append({"layer": name, "type": type(modules[name]).__name__, "n_params": op.n,
                     "lambda_max": float(eig.eigenvalues[0]), "trace": tr.value,
                     "trace_se": tr.stderr, "trace_method": tr.method,
                     "trace_per_param": tr.value / op.n,
                     "n_hvp": op.n_hvp})
    return pd.DataFrame(rows).set_index("layer")


def hessian_summary(
    models: dict[str, nn.Module],
    loader: DataLoader,
    loss_fn: LossFn = nn.functional.cross_entropy,
    trace_hvp: int = 60,
    tol: float = 1e-5,
    seed: int = 0,
    progress: bool = True,
    max_batches: int | None = None,
) -> pd.DataFrame:
    """Loss, gradient norm, ``λ_max``, ``λ_min`` and ``tr(H)`` for several models.

    One row per entry of ``models`` (e.g. an FP32 model and its quantized copies):
    ``loss`` (mean over ``loader``), ``grad_norm = ||∇L||`` (0 at an exact minimum),
    ``lambda_max``/``lambda_min`` by :func:`lanczos`, ``trace ± trace_se`` by :func:`hutchpp`
    with ``trace_hvp`` products, and ``n_hvp`` in total. No model is modified.
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError("models must be a non-empty dict {name: nn.Module}")
    rows = []
    for name, model in tqdm(models.items(), desc="models", disable=not progress, leave=False):
        op = HessianOperator(model, loader, loss_fn=loss_fn, max_batches=max_batches)
        top = lanczos(op, 1, tol=tol, seed=seed)
        bottom = lanczos(op, 1, which="smallest", tol=tol, seed=seed)
        tr = hutchpp(op, trace_hvp, seed=seed)
        rows.append({"model": name, "loss": op.loss, "grad_norm": float(op.gradient().norm()),
                     "lambda_max": float(top.eigenvalues[0]),
                     "lambda_min": float(bottom.eigenvalues[0]), "trace": tr.value,
                     "trace_se": tr.stderr, "n_hvp": op.n_hvp})
    return pd.DataFrame(rows).set_index("model")
