"""Figures. Every function takes computed results and an optional Axes, and returns the Axes.

The book's figure conventions live here, once: :func:`book_style` (font sizes that stay at
least 9 pt when the figure fills the book's content column, a colour-blind-safe palette) and
:func:`panels` (multi-panel figures wrapped into rows of at most two panels at the column's
width, instead of one wide row the page would shrink). A figure :data:`COLUMN_INCHES` wide is
shown at about its natural size in the rendered book, so its text keeps the size set here.
"""

from __future__ import annotations

import math

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .quantize import QuantSpec, qparams, quantization_error, quantize_dequantize

COLUMN_INCHES = 6.8
"""Width of a figure that fits the book's content column (about 690 px at 1280 px) at 100 dpi
without being scaled down, so text is shown at the size set in :data:`BOOK_RC`."""

# Okabe-Ito: distinguishable with every common colour-vision deficiency, and in grey print
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
MARKERS = "osD^vP*X"

BOOK_RC = {
    "figure.figsize": (COLUMN_INCHES, 3.8),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
    "image.cmap": "viridis",
    "lines.linewidth": 1.5,
    "legend.frameon": False,
}


def book_style() -> None:
    """Apply the book's figure conventions (:data:`BOOK_RC`) to matplotlib's defaults."""
    mpl.rcParams.update(BOOK_RC)


def panels(n: int, ncols: int | None = None, height: float = 3.4, **kwargs):
    """A figure of ``n`` panels at the column's width, at most two panels per row.

    Returns ``(fig, axes)`` with ``axes`` a flat list of ``n`` Axes (unused grid cells are
    removed). ``height`` is per row; ``kwargs`` go to :func:`matplotlib.pyplot.subplots`
    (e.g. ``sharey=True``). The figure uses constrained layout, so titles, labels and
    colorbars never overlap.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    ncols = min(n, 2) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, int) or not 1 <= ncols <= n:
        raise ValueError(f"ncols must be an int in [1, {n}], got {ncols!r}")
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(COLUMN_INCHES, height * nrows),
                             squeeze=False, layout="constrained", **kwargs)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def setting_colors(names) -> dict:
    """One distinct palette colour per name, in order (FP32 / baseline names get black)."""
    out, i = {}, 0
    for name in names:
        if str(name).upper().startswith(("FP32", "FP16", "BASELINE")):
            out[name] = "#000000"
        else:
            out[name] = PALETTE[i % (len(PALETTE) - 1)]
            i += 1
    return out


def _axes(ax):
    return plt.subplots(figsize=(COLUMN_INCHES, 3.8), layout="constrained")[1] \
        if ax is None else ax


def plot_weight_histogram(
    weight: torch.Tensor,
    spec: QuantSpec,
    ax: plt.Axes | None = None,
    bins: int = 200,
    title: str | None = None,
) -> plt.Axes:
    """Histogram of ``weight`` (filled) and of ``Q(weight)`` (spikes) with the error readout.

    For per-tensor specs the quantization grid (every level ``(q - z) s``) is drawn as
    vertical lines; per-channel / per-group grids differ per row and are visible only
    through the spikes of ``Q(weight)``.
    """
    ax = _axes(ax)
    w = weight.detach().float().flatten().cpu().numpy()
    q = quantize_dequantize(weight.detach().float(), spec).flatten().cpu().numpy()
    edges = np.linspace(w.min(), w.max(), bins + 1)
    ax.hist(w, bins=edges, color="0.75", label="FP32 weights")
    ax.hist(q, bins=edges, histtype="step", color="C3", lw=1.0, label="quantized $Q(W)$")
    if spec.granularity == "tensor" and spec.levels <= 64:
        scale, zp = qparams(weight, spec)
        grid = (np.arange(spec.qmin, spec.qmax + 1) - float(zp[0])) * float(scale[0])
        for g in grid:
            ax.axvline(g, color="C0", lw=0.4, alpha=0.6)
        ax.plot([], [], color="C0", lw=0.6, label=f"grid ({spec.levels} levels)")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log scale)")
    e = quantization_error(weight, spec)
    ax.set_title(f"{title or spec.label()}\nRMSE {e.rmse:.1e} (law {e.rms_law:.1e})\n"
                 f"SNR {e.snr_db:.1f} dB, {e.levels_used} levels used")
    ax.legend(loc="upper left")
    return ax


def plot_error_vs_bits(table: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Axes:
    """Measured RMSE and the ``s/sqrt(12)`` law against bit width (log y).

    ``table`` needs columns ``bits, rmse, rms_law`` and optionally ``label`` (one line each).
    """
    ax = _axes(ax)
    groups = table.groupby("label", sort=False) if "label" in table else [("", table)]
    for i, (label, df) in enumerate(groups):
        ax.semilogy(df["bits"], df["rmse"], "o-", color=f"C{i}", label=f"measured {label}")
        ax.semilogy(df["bits"], df["rms_law"], "--", color=f"C{i}", alpha=0.6,
                    label=f"$s/\\sqrt{{12}}$ {label}")
    ax.set_xlabel("bits $b$")
    ax.set_ylabel("RMS error (weight units, log)")
    ax.legend()
    return ax


def plot_accuracy_table(table: pd.DataFrame, ax: plt.Axes | None = None,
                        baseline: float | None = None) -> plt.Axes:
    """Accuracy (%) against bits, one line per column of a ``bits x granularity`` table."""
    ax = _axes(ax)
    for col in table.columns:
        ax.plot(table.index, table[col], "o-", label=str(col))
    if baseline is not None:
        ax.axhline(baseline, color="k", ls=":", label="FP32")
    ax.set_xlabel("weight bits $b$")
    ax.set_ylabel("test accuracy (%)")
    ax.invert_xaxis()
    ax.legend()
    return ax


def plot_convergence(results: dict, reference: float, ax: plt.Axes | None = None) -> plt.Axes:
    """Relative error ``|λ_t - λ_ref| / |λ_ref|`` of the top-eigenvalue estimate per product.

    ``results`` maps a label to an :class:`~quantlens.hessian.EigenResult` whose ``history``
    first column holds the estimate after each Hessian-vector product.
    """
    ax = _axes(ax)
    for label, res in results.items():
        est = np.asarray(res.history)[:, 0]
        err = np.abs(est - reference) / abs(reference)
        ax.semilogy(np.arange(1, len(err) + 1), np.maximum(err, 1e-16), "o-", ms=3, label=label)
    ax.set_xlabel("Hessian-vector products")
    ax.set_ylabel(r"relative error of $\lambda_{\max}$")
    ax.legend()
    return ax


def plot_density(densities: dict, ax: plt.Axes | None = None, floor: float = 1e-6,
                 kind: str = "nodes") -> plt.Axes:
    """The Hessian eigenvalue distribution from stochastic Lanczos quadrature, one per label.

    ``kind="nodes"`` (default) draws the quadrature itself: every Ritz value ``θ_i`` as a
    stem of height ``τ_i`` (its share of the ``n`` eigenvalues, log scale), so the bulk near
    0 (weights close to 1) and the few outliers far right (weights ~1/n) are both visible
    and can be compared between models; the largest node of each model is marked.
    ``kind="smoothed"`` draws the Gaussian-smoothed density ``φ`` instead.
    """
    if kind not in ("nodes", "smoothed"):
        raise ValueError(f"kind must be 'nodes' or 'smoothed', got {kind!r}")
    ax = _axes(ax)
    colors = setting_colors(densities)
    if kind == "smoothed":
        for label, d in densities.items():
            ax.semilogy(d.grid, np.maximum(d.density, floor), label=label, lw=1.2,
                        color=colors[label])
        ax.set_ylim(bottom=floor)
        ax.set_ylabel(r"density $\phi(\lambda)$ (log)")
    else:
        n = len(densities)
        for i, (label, d) in enumerate(densities.items()):
            shift = 0.0 if n == 1 else 0.012 * (i - (n - 1) / 2) * (d.nodes.max() - d.nodes.min())
            w = np.maximum(d.weights, floor)
            ax.vlines(d.nodes + shift, floor, w, color=colors[label], lw=1.0, alpha=0.8)
            ax.plot(d.nodes + shift, w, MARKERS[i % len(MARKERS)], color=colors[label], ms=4,
                    label=label)
            top = int(np.argmax(d.nodes))
            ax.annotate(f"{d.nodes[top]:.3g}", (d.nodes[top] + shift, w[top]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9,
                        color=colors[label])
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_ylabel(r"weight $\tau_i$ of the Ritz value (log)")
    ax.set_xlabel(r"eigenvalue $\lambda$ of the loss Hessian")
    ax.legend()
    return ax


def plot_layer_sharpness(table: pd.DataFrame, column: str = "lambda_max",
                         ax: plt.Axes | None = None) -> plt.Axes:
    """Grouped bars of a per-layer quantity; ``table`` has columns ``model, layer, column``."""
    import seaborn as sns

    ax = _axes(ax)
    sns.barplot(data=table, x="layer", y=column, hue="model", ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel({"lambda_max": r"$\lambda_{\max}$ of the layer block (log)",
                   "trace": "trace of the layer block (log)"}.get(column, column))
    ax.legend()
    return ax


def plot_lines(lines: dict, ax: plt.Axes | None = None, metric: str = "loss",
               log: bool = True, xlabel: str = r"step $\alpha$ along the direction") -> plt.Axes:
    """1-D landscapes (:class:`~quantlens.landscape.Landscape`), one curve per label.

    ``metric`` is ``"loss"`` (log scale by default) or ``"accuracy"`` (in %).
    """
    ax = _axes(ax)
    for i, (label, line) in enumerate(lines.items()):
        y = line.loss if metric == "loss" else 100 * line.accuracy
        ax.plot(line.alphas, y, "-", color=f"C{i}", lw=1.3, label=label)
    if metric == "loss" and log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (cross-entropy" + (", log)" if log else ")") if metric == "loss"
                  else "accuracy (%)")
    ax.legend()
    return ax


def plot_contour(plane, ax: plt.Axes | None = None, levels: int | list = 12, log: bool = True,
                 marks: dict | None = None, title: str | None = None,
                 colorbar: bool = True, norm=None) -> plt.Axes:
    """Filled contour plot of a 2-D landscape with a colorbar and labelled level lines.

    ``log`` contours ``log10(loss)`` (colorbar and labels show the loss itself); ``marks``
    maps a label to an ``(α, β)`` point drawn on the plane (the origin is always marked).
    Pass the same ``norm`` (e.g. ``matplotlib.colors.Normalize(vmin, vmax)`` of log10 loss)
    to several planes so that one colour means one loss in all of them.
    """
    ax = _axes(ax)
    a, b = np.meshgrid(plane.alphas, plane.betas, indexing="ij")
    z = np.log10(plane.loss) if log else plane.loss
    filled = ax.contourf(a, b, z, levels=levels, cmap="viridis", norm=norm)
    lines = ax.contour(a, b, z, levels=filled.levels, colors="white", linewidths=0.5,
                       alpha=0.7)
    fmt = (lambda v: f"{10 ** v:.2g}") if log else (lambda v: f"{v:.2g}")
    ax.clabel(lines, lines.levels[::3], fmt=fmt, fontsize=9)
    ax.plot(0, 0, "w+", ms=11, mew=2)
    for i, (label, (x, y)) in enumerate((marks or {}).items()):
        ax.plot(x, y, MARKERS[i % len(MARKERS)], color=PALETTE[(i + 1) % len(PALETTE)],
                mec="white", ms=8, label=label)
    if marks:
        ax.legend(loc="lower right", frameon=True)
    if colorbar:
        cb = ax.figure.colorbar(filled, ax=ax, shrink=0.9)
        if log:
            ticks = cb.get_ticks()
            cb.set_ticks(ticks, labels=[f"{10 ** t:.2g}" for t in ticks])
            cb.set_label("loss (log scale)")
        else:
            cb.set_label("loss")
    ax.set_xlabel(r"$\alpha$ (along $d_1$)")
    ax.set_ylabel(r"$\beta$ (along $d_2$)")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def plot_surface(plane, ax=None, log: bool = True, title: str | None = None):
    """3-D surface of a 2-D landscape (``ax`` must be a 3-D Axes or None)."""
    if ax is None:
        ax = plt.figure(figsize=(5.5, 4.2)).add_subplot(projection="3d")
    a, b = np.meshgrid(plane.alphas, plane.betas, indexing="ij")
    z = np.log10(plane.loss) if log else plane.loss
    ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.9)
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(r"$\beta$")
    ax.set_zlabel(r"$\log_{10}$ loss" if log else "loss")
    if title:
        ax.set_title(title)
    return ax


def plot_basin_widths(table: pd.DataFrame, ax: plt.Axes | None = None,
                      x: str = "model", hue: str | None = None) -> plt.Axes:
    """Basin width per direction (points) and their spread (box), grouped by ``x``."""
    import seaborn as sns

    ax = _axes(ax)
    sns.boxplot(data=table, x=x, y="width", hue=hue, ax=ax, fill=False, showfliers=False)
    sns.stripplot(data=table, x=x, y="width", hue=hue, ax=ax, dodge=hue is not None,
                  size=4, alpha=0.7, legend=False)
    ax.set_xlabel("")
    ax.set_ylabel(r"basin width (units of $\alpha$)")
    return ax


def _alpha_band(ax, vertical: bool = True) -> None:
    span = ax.axvspan if vertical else ax.axhspan
    span(2.0, 6.0, color="0.9", zorder=0, label=r"$2 \leq \alpha \leq 6$")


def _settings_of(layers: pd.DataFrame, granularity: str, bits) -> pd.DataFrame:
    base = layers[layers["bits"].isna()].assign(setting="FP32")
    q = layers[(layers["granularity"] == granularity) & layers["bits"].isin(list(bits))]
    q = q.assign(setting=[f"int{b}" for b in q["bits"]])
    return pd.concat([base, q], ignore_index=True)


def plot_alpha_histograms(layers: pd.DataFrame, granularity: str = "tensor",
                          bits=(8, 4, 3, 2), ax: plt.Axes | None = None) -> plt.Axes:
    """Histogram of per-layer ``α`` for the baseline and each bit width, with the [2, 6] band.

    ``layers`` is :attr:`quantlens.alpha.AlphaSweep.layers`.
    """
    import seaborn as sns

    ax = _axes(ax)
    df = _settings_of(layers, granularity, bits).dropna(subset=["alpha"])
    _alpha_band(ax)
    edges = np.linspace(min(1.0, df["alpha"].min()), max(8.0, df["alpha"].max()), 36)
    sns.histplot(data=df, x="alpha", hue="setting", bins=edges, element="step", fill=False,
                 ax=ax, palette=setting_colors(dict.fromkeys(df["setting"])), lw=1.6)
    ax.set_xlabel(r"WeightWatcher $\alpha$ of a layer")
    ax.set_ylabel("layers")
    ax.set_title(f"per-{granularity}" if granularity != "none" else "")
    return ax


def plot_alpha_scatter(layers: pd.DataFrame, granularity: str = "tensor", bits=(8, 4, 3, 2),
                       ax: plt.Axes | None = None) -> plt.Axes:
    """Per-layer ``α`` of each quantized setting against the same layer's baseline ``α``."""
    ax = _axes(ax)
    base = layers[layers["bits"].isna()].set_index("layer")["alpha"]
    for i, b in enumerate(bits):
        q = layers[(layers["granularity"] == granularity) & (layers["bits"] == b)]
        q = q.set_index("layer")["alpha"]
        ax.plot(base.reindex(q.index), q, MARKERS[i % len(MARKERS)], ms=5, alpha=0.8,
                color=PALETTE[i % len(PALETTE)], mfc="none" if i % 2 else None,
                label=f"int{b}")
    lo, hi = np.nanmin(base), np.nanmax(base)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="unchanged")
    _alpha_band(ax, vertical=False)
    ax.set_xlabel(r"baseline $\alpha$ (FP32)")
    ax.set_ylabel(r"quantized $\alpha$")
    ax.set_title(f"per-{granularity}")
    ax.legend()
    return ax


def plot_alpha_by_layer(layers: pd.DataFrame, granularity: str = "tensor", bits=(4, 2),
                        hue: str = "kind", ax: plt.Axes | None = None) -> plt.Axes:
    """``α`` against layer position (``layer_id``), one marker per layer kind (column ``hue``),
    for the baseline (filled) and each bit width (lines through the same layers)."""
    ax = _axes(ax)
    df = _settings_of(layers, granularity, bits).sort_values("layer_id")
    kinds = list(dict.fromkeys(df[hue])) if hue in df else [None]
    markers = "osD^v<>ph*"
    for s_i, (setting, g) in enumerate(df.groupby("setting", sort=False)):
        color = "k" if setting == "FP32" else PALETTE[(s_i - 1) % len(PALETTE)]
        ax.plot(g["layer_id"], g["alpha"], "-", color=color, lw=0.6, alpha=0.6)
        for k_i, kind in enumerate(kinds):
            gk = g if kind is None else g[g[hue] == kind]
            ax.plot(gk["layer_id"], gk["alpha"], markers[k_i % len(markers)], color=color,
                    ms=4, label=f"{kind}" if s_i == 0 and kind is not None else None)
        ax.plot([], [], "-", color=color, label=setting)
    _alpha_band(ax, vertical=False)
    ax.set_xlabel("layer position (WeightWatcher layer id)")
    ax.set_ylabel(r"$\alpha$")
    ax.legend(ncol=2)
    return ax


def plot_over_seeds(table: pd.DataFrame, x: str, y: str, hue: str | None = None,
                    ax: plt.Axes | None = None, ylabel: str | None = None,
                    log: bool = False) -> plt.Axes:
    """Every seed as a dot, with the mean and ±1 std over seeds.

    ``table`` is tidy (e.g. from :func:`quantlens.over_seeds`): columns ``seed``, ``x``, ``y``
    and optionally ``hue`` (one colour per setting, colour-blind-safe palette). Rows of one
    seed and setting are averaged first, so the spread shown is the seed-to-seed spread.
    A numeric ``x`` (e.g. bits) gets a mean line with a ±1 std band; a categorical ``x``
    (settings) gets a mean marker with a ±1 std bar, and each seed's dots are joined by a
    faint line, since the settings of one seed form a paired experiment.
    """

    ax = _axes(ax)
    keys = [hue] if hue else []
    per_seed = table.groupby([*keys, x, "seed"], sort=False)[y].mean().reset_index()
    groups = per_seed.groupby(hue, sort=False) if hue else [(None, per_seed)]
    n_colors = max(1, per_seed[hue].nunique() if hue else 1)
    colors = [PALETTE[i % len(PALETTE)] for i in range(n_colors)]
    xs = list(dict.fromkeys(per_seed[x]))
    numeric = pd.api.types.is_numeric_dtype(per_seed[x])
    pos = (lambda v: v) if numeric else {v: i for i, v in enumerate(xs)}.get
    n_groups = len(colors)
    for i, (name, g) in enumerate(groups):
        shift = 0.0 if numeric else 0.08 * (i - (n_groups - 1) / 2)
        px = np.array([pos(v) for v in g[x]], dtype=float) + shift
        ax.scatter(px, g[y], s=12, color=colors[i], alpha=0.6, lw=0)
        stats = g.groupby(x, sort=False)[y].agg(["mean", "std"])
        sx = np.array([pos(v) for v in stats.index], dtype=float) + shift
        mean, std = stats["mean"].to_numpy(), stats["std"].fillna(0).to_numpy()
        label = None if name is None else str(name)
        if numeric:
            order = np.argsort(sx)
            ax.plot(sx[order], mean[order], color=colors[i], marker="_", label=label)
            ax.fill_between(sx[order], (mean - std)[order], (mean + std)[order],
                            color=colors[i], alpha=0.15, lw=0)
        else:
            for _, one in g.groupby("seed", sort=False):
                ax.plot([pos(v) + shift for v in one[x]], one[y], color=colors[i], lw=0.5,
                        alpha=0.3)
            ax.errorbar(sx, mean, yerr=std, fmt="D", color=colors[i], ms=5, capsize=4,
                        label=label)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    if hue:
        ax.legend(title=hue)
    n = table["seed"].nunique()
    what = "line and band" if numeric else "diamond and bar"
    ax.text(0.99, 0.02, f"{n} seeds: dots (one per seed); {what}: mean ± std", ha="right",
            va="bottom", transform=ax.transAxes, fontsize=9, color="0.3")
    return ax


def plot_line_bands(curves: pd.DataFrame, groups: dict, ax: plt.Axes | None = None,
                    metric: str = "loss", log: bool = True,
                    xlabel: str = r"step $\alpha$ along a filter-normalized direction"
                    ) -> plt.Axes:
    """Many 1-D lines per model as a median curve with its interquartile band.

    ``curves`` is tidy (``alpha`` and ``metric`` columns, e.g.
    :attr:`quantlens.bitcollapse.BitCollapse.curves`); ``groups`` maps a label to a boolean
    mask (or query string) selecting that label's rows, whose lines (all seeds and
    directions) are pooled at each ``alpha``.
    """
    ax = _axes(ax)
    colors = setting_colors(groups)
    for label, sel in groups.items():
        rows = curves.query(sel) if isinstance(sel, str) else curves[sel]
        if rows.empty:
            raise ValueError(f"groups[{label!r}] selects no rows")
        stats = rows.groupby("alpha")[metric].quantile([0.25, 0.5, 0.75]).unstack()
        scale = 100 if metric == "accuracy" else 1
        n = len(rows) // max(1, rows["alpha"].nunique())
        ax.plot(stats.index, scale * stats[0.5], color=colors[label], label=f"{label} ({n})")
        ax.fill_between(stats.index, scale * stats[0.25], scale * stats[0.75],
                        color=colors[label], alpha=0.2, lw=0)
    if metric == "loss" and log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(("training loss (cross-entropy" + (", log)" if log else ")"))
                  if metric == "loss" else "accuracy (%)")
    ax.legend(title="median, quartile band (lines)")
    return ax


def plot_correlations(table: pd.DataFrame, ax: plt.Axes | None = None,
                      value: str = "spearman", title: str | None = None) -> plt.Axes:
    """Annotated heat map of a tidy ``geometry × brittleness`` correlation table (e.g.
    :func:`quantlens.bitcollapse.geometry_vs_brittleness`), diverging colours in [-1, 1]."""
    ax = _axes(ax)
    grid = table.pivot(index="geometry", columns="brittleness", values=value)
    grid = grid.loc[list(dict.fromkeys(table.geometry)), list(dict.fromkeys(table.brittleness))]
    im = ax.imshow(grid.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid.to_numpy()):
        ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=9,
                color="white" if abs(v) > 0.6 else "black")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.figure.colorbar(im, ax=ax, label=f"{value} rank correlation")
    if title:
        ax.set_title(title)
    return ax


def plot_diagnostic(result) -> plt.Figure:
    """The figure of a :class:`quantlens.diagnose.DiagnosticResult`: six panels at the book's
    column width — the measured outcome per variant, ``λ_max`` and trace ratios to FP32 (the
    seed's 1.5 line), basin width, per-layer weight SQNR, per-layer damage (enable one), and
    how well each per-layer metric ranked that damage (Spearman)."""
    v = result.variants
    names = list(v["variant"])
    y = np.arange(len(names))[::-1]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    fig, axes = panels(6, height=2.6 + 0.12 * len(names))
    ax = axes[0]
    if result.label_free:
        vals, label = v["cosine"].fillna(1.0), "embedding cosine to FP32"
    else:
        vals, label = 100 * v["accuracy"], "accuracy (%)"
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y, names)
    ax.set_xlabel(label)
    ax.set_title("measured outcome")
    if not result.label_free:
        ax.axvline(100 * v["accuracy"].iloc[0], color="0.3", lw=0.8, ls="--")
    ax = axes[1]
    if "lambda_max_ratio" in v:
        ax.barh(y + 0.2, v["lambda_max_ratio"], height=0.4, color=PALETTE[0], label="λmax")
        ax.barh(y - 0.2, v["trace_ratio"], height=0.4, color=PALETTE[1], label="trace")
        ax.axvline(1.5, color=PALETTE[3], lw=1, ls="--", label="seed's 1.5 rule")
        ax.set_xscale("log")
        top = np.nanmax(np.r_[v["lambda_max_ratio"], v["trace_ratio"], 1.5])
        ax.set_xlim(right=top * 40)  # room for the legend
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel("curvature ratio to FP32 (log)")
    ax.set_title("Hessian")
    ax = axes[2]
    if "basin_width" in v:
        ax.barh(y, v["basin_width"], color=colors)
    ax.set_yticks(y, names)
    ax.set_xlabel("mean basin width (filter-normalized units)")
    ax.set_title("loss basin")
    lay = result.layers
    for ax, col, title, ylabel in ((axes[3], "weight_sqnr_db", "per-layer weight error",
                                    "weight SQNR (dB)"),
                                   (axes[4], "enable_one_loss", "per-layer damage (enable one)",
                                    "loss increase (nats)")):
        if not lay.empty:
            order = list(dict.fromkeys(lay["layer"]))
            for i, (name, g) in enumerate(lay.groupby("variant", sort=False)):
                g = g.set_index("layer").loc[order]
                ax.plot(range(len(order)), g[col], marker=MARKERS[i % len(MARKERS)], ms=4,
                        color=colors[names.index(name)], label=name)
            step = max(1, len(order) // 8)
            ax.set_xticks(range(0, len(order), step),
                          [order[i] for i in range(0, len(order), step)], rotation=45,
                          ha="right", fontsize=8)
            if col == "enable_one_loss":
                ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    if not lay.empty:
        axes[3].legend(fontsize=8)
    ax = axes[5]
    g = result.grading
    if not g.empty:
        yy = np.arange(len(g))[::-1]
        ax.barh(yy, g["spearman"], color=PALETTE[2], label="all rows")
        ax.scatter(g["spearman_within"], yy, color="k", zorder=3, s=14,
                   label="mean within a variant")
        ax.set_yticks(yy, g["label"])
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlim(-1, 1)
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("Spearman ρ with measured damage")
    ax.set_title("which metric ranks layers")
    return fig


def plot_rule(table: pd.DataFrame, metric: str, damage: str, threshold: float | None = None,
              damage_threshold: float | None = None, hue: str = "model",
              ax: plt.Axes | None = None, xlabel: str | None = None,
              ylabel: str | None = None, logx: bool = True) -> plt.Axes:
    """One dot per variant: a diagnostic ``metric`` (x) against its measured ``damage`` (y),
    coloured by ``hue``, with the rule's ``threshold`` (vertical) and the damage definition
    (horizontal) as dashed lines, so the four quadrants are the rule's hits and misses."""
    ax = _axes(ax)
    for i, (name, g) in enumerate(table.groupby(hue, sort=False)):
        ax.scatter(g[metric], g[damage], s=14, alpha=0.7, lw=0,
                   color=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)],
                   label=str(name))
    if threshold is not None:
        ax.axvline(threshold, color="0.2", ls="--", lw=1)
    if damage_threshold is not None:
        ax.axhline(damage_threshold, color="0.5", ls=":", lw=1)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or metric)
    ax.set_ylabel(ylabel or damage)
    ax.legend(fontsize=8)
    return ax
