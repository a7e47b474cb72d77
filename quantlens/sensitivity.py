"""Per-layer sensitivity to quantization, measured several ways, and which way predicts damage.

For each quantizable layer ``ℓ`` (weight ``W_ℓ``, ``n_ℓ`` entries) and width ``b`` with
``ΔW = Q_b(W_ℓ) − W_ℓ``:

===================  =====================================================================
column               measure
===================  =====================================================================
``kappa``            condition number ``σ_max / σ_min`` of ``W_ℓ`` (as a matrix: output
                     channels × fan-in), the seed document's curvature ``κ_ℓ``
``spectral_norm``    ``σ_max(W_ℓ)``, the layer's Lipschitz constant (Linear layers)
``kappa_cost``       the seed document's cost ``κ_ℓ 2^{-b}``
``delta_sq``         ``‖ΔW‖²``: the quantization error alone
``hawq``             HAWQ-V2: ``tr(H_ℓℓ)/n_ℓ · ‖ΔW‖²`` (mean Hessian trace of the layer's
                     weight block, :func:`block_traces`)
``fisher``           ``Σ_i F_ii ΔW_i²`` with the diagonal empirical Fisher
                     ``F_ii = (1/N) Σ_n (∂ℓ_n/∂W_i)²`` (per-example gradients)
``oracle_loss``      measured: loss increase when only layer ``ℓ`` is quantized at ``b``
``oracle_accuracy``  measured: accuracy drop in that case (``nan`` without labels)
===================  =====================================================================

:func:`rank_agreement` gives each measure's Spearman (and Kendall) rank correlation with the
measured damage, across all (layer, width) rows and within each width. No function changes
the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import BatchLoss, _device, iterate_batches, to_device
from .distributed import collect, share
from .guard import eval_mode, preserved, swapped
from .quantize import (
    QuantSpec,
    _layer_spec,
    quantizable_layers,
    quantize_dequantize,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | BatchLoss
MEASURES = ("kappa", "spectral_norm", "kappa_cost", "delta_sq", "hawq", "fisher")


def _layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    """The quantizable layers of ``model``, or the named subset of them, in model order."""
    found = quantizable_layers(model)
    if not found:
        raise ValueError("model has no quantizable layer")
    if layers is None:
        return found
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of layer names, not a string")
    unknown = sorted(set(layers) - set(found))
    if unknown:
        raise ValueError(f"layers names modules that are not quantizable layers: {unknown}")
    return {n: m for n, m in found.items() if n in set(layers)}


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """A layer's weight as a float64 matrix: output channels (rows) × fan-in."""
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim < 2:
        raise TypeError(f"{type(layer).__name__} has no weight matrix")
    return w.detach().double().reshape(w.shape[0], -1).cpu()


def spectral_stats(model: nn.Module, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """``n_params``, ``spectral_norm``, ``sigma_min`` and ``kappa`` of every quantizable
    layer's weight matrix (singular values by ``torch.linalg.svdvals`` in float64)."""
    rows = []
    for name, layer in _layers(model, layers).items():
        s = torch.linalg.svdvals(weight_matrix(layer))
        smax, smin = float(s[0]), float(s[-1])
        rows.append({"layer": name, "n_params": layer.weight.numel(), "spectral_norm": smax,
                     "sigma_min": smin, "kappa": smax / smin if smin > 0 else np.inf})
    return pd.DataFrame(rows).set_index("layer")


def diagonal_fisher(model: nn.Module, loader: DataLoader,
                    loss_fn: Callable = nn.functional.cross_entropy,
                    max_batches: int | None = None, layers: Sequence[str] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher ``F_ii = (1/N) Σ_n (∂ℓ_n/∂θ_i)²`` of every quantizable
    layer's weight, from per-example gradients (``torch.func.vmap`` of ``grad``).

    Needs ``(x, y)`` batches and a criterion ``loss_fn(outputs, targets)``. (For a label-free
    distance to a reference model the empirical Fisher at the reference is zero: use the
    Hessian-based ``hawq`` instead.)
    """
    from torch.func import functional_call, grad, vmap

    if isinstance(loss_fn, BatchLoss) or not callable(loss_fn):
        raise TypeError("diagonal_fisher needs a criterion loss_fn(outputs, targets)")
    names = [f"{n}.weight" for n in _layers(model, layers)]
    device = _device(model)
    with eval_mode(model):
        params = {k: v.detach() for k, v in model.named_parameters() if k in names}
        out = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}

        def one(p, x, y):
            return loss_fn(functional_call(model, p, (x[None],)), y[None])

        per_example = vmap(grad(one), in_dims=(None, 0, 0))
        n = 0
        for batch in iterate_batches(loader, max_batches):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError("diagonal_fisher needs (x, y) batches")
            x, y = to_device(tuple(batch), device)
            g = per_example(params, x, y)
            for k in out:
                out[k] += (g[k].detach().double() ** 2).sum(0)
            n += len(y)
    if n == 0:
        raise ValueError("loader is empty")
    return {k[: -len(".weight")]: v / n for k, v in out.items()}


def block_traces(model: nn.Module, loader: DataLoader,
                 loss_fn: LossFn = nn.functional.cross_entropy, n_hvp: int = 30, seed: int = 0,
                 max_batches: int | None = None, layers: Sequence[str] | None = None
                 ) -> pd.DataFrame:
    """Trace of every quantizable layer's weight block ``H_ℓℓ`` of the loss Hessian, all at
    once, by Hutchinson on the whole model.

    For a Rademacher vector ``z`` over all layers' weights, ``z_ℓ^T (H z)_ℓ`` is an unbiased
    estimate of ``tr(H_ℓℓ)`` for every layer ``ℓ`` (the cross terms ``z_ℓ^T H_ℓm z_m`` have
    mean zero), so ``n_hvp`` products serve every layer instead of ``n_hvp`` per layer (as
    HAWQ-V2 and PyHessian do). Returns, indexed by layer: ``n_params, trace, trace_se``
    (sample standard error) and ``trace_per_param``.
    """
    from .hessian import HessianOperator, _check_int, _rademacher

    _check_int("n_hvp", n_hvp, 2)
    op = HessianOperator(model, loader, loss_fn=loss_fn,
                         params=[f"{n}.weight" for n in _layers(model, layers)],
                         max_batches=max_batches)
    gen = torch.Generator().manual_seed(seed)
    samples = np.zeros((n_hvp, len(op.names)))
    for j in range(n_hvp):
        z = _rademacher(op.n, gen, op.dtype, op.device)
        for i, (zl, hl) in enumerate(zip(op.split(z), op.split(op.matvec(z)))):
            samples[j, i] = float((zl.double() * hl.double()).sum())
    rows = []
    for i, name in enumerate(op.names):
        layer = name[: -len(".weight")]
        mean = float(samples[:, i].mean())
        rows.append({"layer": layer, "n_params": op.sizes[i], "trace": mean,
                     "trace_se": float(samples[:, i].std(ddof=1) / np.sqrt(n_hvp)),
                     "trace_per_param": mean / op.sizes[i]})
    return pd.DataFrame(rows).set_index("layer")


def oracle(model: nn.Module, loader: DataLoader, bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
           loss_fn: LossFn = nn.functional.cross_entropy, progress: bool = False,
           max_batches: int | None = None, layers: Sequence[str] | None = None,
           **defaults) -> pd.DataFrame:
    """Measured damage: each layer alone quantized at each width (as ``quantize_model`` with
    ``{layer: b}``; the weight is swapped in place and restored bitwise, so nothing is
    copied), other layers in full precision, against the unquantized model.

    Rows ``layer, bits, loss, accuracy, oracle_loss`` (loss increase) and
    ``oracle_accuracy`` (accuracy drop). ``defaults`` complete the spec (e.g.
    ``granularity="channel"``).
    """
    from .train import evaluate

    chosen = _layers(model, layers)
    specs = {b: QuantSpec(b, **defaults) for b in bits}
    rows = []
    with preserved(model):  # one layer's weight swapped in place at a time, then restored
        base = evaluate(model, loader, loss_fn, max_batches=max_batches)
        runs = [(name, b) for name in chosen for b in bits]
        # under torch.distributed each rank measures its share of the runs
        for i, (name, b) in tqdm(share(list(enumerate(runs))), desc="oracle",
                                 disable=not progress, leave=False):
            w = chosen[name].weight
            q = quantize_dequantize(w.detach(), _layer_spec(chosen[name], specs[b]))
            with swapped(w, q):
                ev = evaluate(model, loader, loss_fn, max_batches=max_batches)
            rows.append((i, {"layer": name, "bits": b, "loss": ev.loss,
                             "accuracy": ev.accuracy, "oracle_loss": ev.loss - base.loss,
                             "oracle_accuracy": base.accuracy - ev.accuracy}))
    return pd.DataFrame(collect(rows))


def layer_sensitivity(
    model: nn.Module,
    loader: DataLoader,
    bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
    loss_fn: LossFn = nn.functional.cross_entropy,
    fisher: bool = True,
    hawq: bool = True,
    trace_hvp: int = 30,
    seed: int = 0,
    progress: bool = False,
    max_batches: int | None = None,
    layers: Sequence[str] | None = None,
    oracle_loader: DataLoader | None = None,
    **defaults,
) -> pd.DataFrame:
    """Every measure of the module table for every quantizable layer and width.

    ``layers`` restricts the analysis to those quantizable layers (default: all). The
    measured damage is taken on ``oracle_loader`` (e.g. held-out data; default ``loader``,
    on which the predictive measures are computed).
    ``defaults`` complete the quantization spec of every layer (``symmetric``,
    ``granularity``, ``group_size``). ``fisher=False`` skips the Fisher (needs a criterion
    and ``(x, y)`` batches); ``hawq=False`` skips the Hessian traces (``trace_hvp``
    Hessian-vector products in all, :func:`block_traces`).

    Returns
    -------
    pandas.DataFrame
        One row per ``(layer, bits)``: ``layer, bits, n_params`` and the columns of the
        module table.
    """
    if isinstance(bits, (int, str)) or not bits:
        raise TypeError(f"bits must be a non-empty sequence of widths, got {bits!r}")
    specs = {b: QuantSpec(b, **defaults) for b in bits}  # validates bits and defaults
    chosen = _layers(model, layers)
    stats = spectral_stats(model, layers)
    traces = (block_traces(model, loader, loss_fn, trace_hvp, seed, max_batches, layers)
              if hawq else None)
    fish = diagonal_fisher(model, loader, loss_fn, max_batches, layers) if fisher else None
    rows = []
    for name, layer in chosen.items():
        w = layer.weight.detach()
        for b, spec in specs.items():
            delta = (quantize_dequantize(w, _layer_spec(layer, spec)) - w).double()
            st = stats.loc[name]
            row = {"layer": name, "bits": b, "n_params": int(st.n_params),
                   "kappa": st.kappa, "spectral_norm": st.spectral_norm,
                   "kappa_cost": st.kappa * 2.0 ** -b, "delta_sq": float((delta ** 2).sum())}
            if traces is not None:
                row["hawq"] = float(traces.loc[name, "trace_per_param"]) * row["delta_sq"]
            if fish is not None:
                row["fisher"] = float((fish[name].to(delta.device) * delta ** 2).sum())
            rows.append(row)
    table = pd.DataFrame(rows)
    measured = oracle(model, loader if oracle_loader is None else oracle_loader, bits,
                      loss_fn, progress, max_batches, layers, **defaults)
    return table.merge(measured[["layer", "bits", "oracle_loss", "oracle_accuracy"]],
                       on=["layer", "bits"])


def rank_agreement(table: pd.DataFrame, target: str = "oracle_loss",
                   measures: Sequence[str] | None = None) -> pd.DataFrame:
    """Rank correlation of each measure with the measured damage ``target``.

    ``spearman``/``kendall`` across all ``(layer, bits)`` rows; ``spearman_within_bits``:
    the mean over widths of the Spearman correlation across layers at that width (what a
    measure that ignores the width, such as ``kappa``, can at best achieve).
    """
    from scipy.stats import kendalltau, spearmanr

    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a DataFrame, got {type(table).__name__}")
    measures = [m for m in MEASURES if m in table.columns] if measures is None else list(measures)
    missing = [c for c in [target, *measures] if c not in table.columns]
    if missing:
        raise ValueError(f"no column {missing} in the table")
    rows = []
    for m in measures:
        within = [spearmanr(g[m], g[target]).statistic for _, g in table.groupby("bits")
                  if g[m].nunique() > 1 and g[target].nunique() > 1]
        rows.append({"measure": m,
                     "spearman": float(spearmanr(table[m], table[target]).statistic),
                     "kendall": float(kendalltau(table[m], table[target]).statistic),
                     "spearman_within_bits": float(np.mean(within)) if within else np.nan,
                     "n": len(table)})
    return pd.DataFrame(rows)


def cost_table(table: pd.DataFrame, measure: str) -> pd.DataFrame:
    """A :func:`quantlens.allocation.allocate` cost table (layers × widths) from a
    :func:`layer_sensitivity` table."""
    if measure not in table.columns:
        raise ValueError(f"no column {measure!r} in the table")
    out = table.pivot(index="layer", columns="bits", values=measure)
    return out.loc[list(dict.fromkeys(table.layer))]
