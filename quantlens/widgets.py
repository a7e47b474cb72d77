"""Interactive explorers (ipywidgets).

Each has a static counterpart in :mod:`quantlens.plotting` for the rendered book.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from .plotting import plot_weight_histogram
from .quantize import QuantSpec, quantization_error


class Explorer(widgets.VBox):
    """An explorer's controls and output. Its plain-text form, which a notebook shows where
    no widget can be drawn (a saved notebook before its cells run, a terminal), is one line
    saying what it is and how to use it instead of the widget tree."""

    def __init__(self, children, name: str) -> None:
        super().__init__(children)
        self._name = name

    def __repr__(self) -> str:
        return f"[{self._name}: run this cell in a live kernel to use the explorer]"


def _show_lines(out: widgets.Output, lines: dict, title: str) -> None:
    """Draw 1-D landscapes into an explorer's output area."""
    from .plotting import plot_lines

    with out:
        out.clear_output(wait=True)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        plot_lines(lines, ax=ax)
        ax.set_title(title, fontsize=9)
        plt.show()
        plt.close(fig)


def quantization_explorer(
    weight: torch.Tensor, name: str = "weight", group_size: int = 32
) -> Explorer:
    """Bits slider, granularity and symmetry choices that redraw the weight histogram.

    The readout under the figure gives RMSE, the uniform-noise law, max error, SNR, levels
    used and bits per weight for the current choice. ``weight`` is only read.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point torch.Tensor")
    w = weight.detach().float().cpu().clone()
    bits = widgets.IntSlider(value=4, min=2, max=8, description="bits")
    gran = widgets.Dropdown(options=["tensor", "channel", "group"], value="tensor",
                            description="granularity")
    sym = widgets.Checkbox(value=True, description="symmetric")
    out = widgets.Output()
    readout = widgets.HTML()

    def redraw(_=None):
        spec = QuantSpec(bits.value, sym.value, gran.value, group_size=group_size)
        e = quantization_error(w, spec)
        readout.value = (
            f"<b>{spec.label()}</b>: RMSE {e.rmse:.3e} vs law s/√12 {e.rms_law:.3e} "
            f"(ratio {e.rmse_over_law:.2f}); max |err| {e.max_abs_error:.3e} ≤ "
            f"{e.max_error_bound:.3e}; SNR {e.snr_db:.1f} dB; {e.levels_used}/"
            f"{e.levels_available} levels; {e.bits_per_element:.2f} bits/weight"
        )
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(7, 3.4))
            plot_weight_histogram(w, spec, ax=ax, title=f"{name}: {spec.label()}")
            plt.show()
            plt.close(fig)

    for control in (bits, gran, sym):
        control.observe(redraw, names="value")
    redraw()
    return Explorer([widgets.HBox([bits, gran, sym]), readout, out], "quantization explorer")


def hessian_explorer(model, loader, bits=(32, 8, 6, 4, 3, 2), group_size: int = 32,
                     k: int = 5) -> Explorer:
    """Pick bit width, granularity and layer; show the top-``k`` Hessian eigenvalues.

    For the chosen setting the model's weights are quantized (a copy;
    :func:`quantlens.quantize.quantize_model`) and the top ``k`` eigenvalues of the Hessian
    block of the chosen layer (or of all parameters) are computed by Lanczos and drawn as a
    stem plot against the FP32 ones. ``model`` is never modified.
    """
    from .hessian import HessianOperator, lanczos
    from .quantize import QuantSpec, quantizable_layers, quantize_model

    layer_names = ["(all parameters)"] + list(quantizable_layers(model))
    w_bits = widgets.Dropdown(options=list(bits), value=bits[0], description="bits")
    w_gran = widgets.Dropdown(options=["tensor", "channel", "group"], value="tensor",
                              description="granularity")
    w_layer = widgets.Dropdown(options=layer_names, value=layer_names[0], description="layer")
    out = widgets.Output()

    def eigs(m, layer):
        params = None if layer == layer_names[0] else layer
        return lanczos(HessianOperator(m, loader, params=params), k, tol=1e-4).eigenvalues

    def redraw(_=None):
        layer = w_layer.value
        base = eigs(model, layer)
        if w_bits.value >= 32:
            q, label = base, "FP32"
        else:
            spec = QuantSpec(w_bits.value, granularity=w_gran.value, group_size=group_size)
            q, label = eigs(quantize_model(model, spec), layer), spec.label()
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6.4, 3.4))
            ax.stem(np.arange(1, k + 1) - 0.1, base, linefmt="C0-", markerfmt="C0o",
                    basefmt=" ", label="FP32")
            ax.stem(np.arange(1, k + 1) + 0.1, q, linefmt="C3-", markerfmt="C3s",
                    basefmt=" ", label=label)
            ax.set_xlabel("eigenvalue index $i$")
            ax.set_ylabel(r"$\lambda_i$ of the Hessian block")
            ax.set_title(f"{layer}: " + ", ".join(f"{v:.3g}" for v in q[:3]))
            ax.legend(fontsize=8)
            plt.show()
            plt.close(fig)

    for control in (w_bits, w_gran, w_layer):
        control.observe(redraw, names="value")
    redraw()
    return Explorer([widgets.HBox([w_bits, w_gran, w_layer]), out], "Hessian explorer")


def landscape_explorer(model, loader, bits=(8, 6, 4, 3, 2), granularity: str = "tensor",
                       threshold: float = 0.1) -> Explorer:
    """Distance, steps, seed and bits; redraw 1-D slices of FP32 and the quantized model.

    Along one filter-normalized random direction (``seed``) three lines are drawn: the FP32
    model, the quantized model perturbed as floats (``mode="dequantized"``) and re-quantized
    at every point (``mode="requantize"``); the readout gives each line's basin width at
    ``L_min + threshold``. ``model`` is never modified. Static counterpart:
    :func:`quantlens.plotting.plot_lines`.
    """
    from .landscape import basin_width, loss_line, random_direction

    w_dist = widgets.FloatLogSlider(value=1.0, base=10, min=-2, max=0.5, step=0.1,
                                    description="distance")
    w_steps = widgets.IntSlider(value=31, min=5, max=81, step=2, description="steps")
    w_seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")
    w_bits = widgets.Dropdown(options=list(bits), value=bits[0], description="bits")
    out = widgets.Output()
    readout = widgets.HTML()

    def redraw(_=None):
        spec = QuantSpec(w_bits.value, granularity=granularity)
        d = random_direction(model, seed=w_seed.value)
        kw = dict(distance=w_dist.value, steps=w_steps.value, progress=False)
        lines = {"FP32": loss_line(model, loader, d, **kw),
                 f"{spec.label()}, dequantized": loss_line(model, loader, d, spec=spec,
                                                           mode="dequantized", **kw),
                 f"{spec.label()}, requantize": loss_line(model, loader, d, spec=spec,
                                                          mode="requantize", **kw)}
        widths = {k: basin_width(v, threshold).width for k, v in lines.items()}
        readout.value = f"basin width at L_min + {threshold}: " + "; ".join(
            f"{k} {v:.3f}" for k, v in widths.items())
        _show_lines(out, lines, f"direction seed {w_seed.value}")

    for control in (w_dist, w_steps, w_seed, w_bits):
        control.observe(redraw, names="value")
    redraw()
    return Explorer([widgets.HBox([w_dist, w_steps]), widgets.HBox([w_seed, w_bits]),
                     readout, out], "landscape explorer")


def alpha_explorer(layers, bits=(8, 6, 5, 4, 3, 2), kind_column: str = "kind") -> Explorer:
    """Pick bit width, granularity and layer kind; show per-layer ``α`` against the baseline.

    ``layers`` is :attr:`quantlens.alpha.AlphaSweep.layers`, optionally with a column
    ``kind_column`` (e.g. from :func:`quantlens.alpha.layer_kind`) to filter on. The readout
    gives the seed-style summary row (:func:`quantlens.alpha.alpha_summary`) of the selected
    layers. Static counterpart: :func:`quantlens.plotting.plot_alpha_scatter`.
    """
    from .alpha import alpha_summary
    from .plotting import plot_alpha_scatter

    grans = [g for g in dict.fromkeys(layers["granularity"]) if g != "none"]
    kinds = ["(all)"] + (sorted(set(layers[kind_column])) if kind_column in layers else [])
    w_bits = widgets.Dropdown(options=list(bits), value=bits[-3] if len(bits) > 2 else bits[0],
                              description="bits")
    w_gran = widgets.Dropdown(options=grans, value=grans[0], description="granularity")
    w_kind = widgets.Dropdown(options=kinds, value=kinds[0], description="layer kind")
    out = widgets.Output()
    readout = widgets.HTML()

    def redraw(_=None):
        df = layers if w_kind.value == "(all)" else layers[layers[kind_column] == w_kind.value]
        summary = alpha_summary(df)
        row = summary[(summary["granularity"] == w_gran.value) & (summary["bits"] == w_bits.value)]
        if len(row):
            r = row.iloc[0]
            readout.value = (f"{int(r.n_layers)} layers: mean α {r.alpha_mean:.3f} "
                             f"({r.alpha_change_pct:+.1f}% vs baseline), correlation with "
                             f"baseline {r.alpha_corr:.3f}, {r.pct_in_range:.0f}% in [2, 6]")
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6.4, 4))
            plot_alpha_scatter(df, w_gran.value, bits=(w_bits.value,), ax=ax)
            ax.set_title(f"{w_kind.value}, int{w_bits.value} per-{w_gran.value}", fontsize=9)
            plt.show()
            plt.close(fig)

    for control in (w_bits, w_gran, w_kind):
        control.observe(redraw, names="value")
    redraw()
    return Explorer([widgets.HBox([w_bits, w_gran, w_kind]), readout, out], "α explorer")


def bit_collapse_explorer(rho: dict | None = None, config=None, seed: int = 0) -> Explorer:
    """Setting (bits), optimizer, ρ, training seed and direction: fine-tune live and redraw.

    Each choice fine-tunes the FP32 start exactly as :func:`quantlens.bitcollapse.bit_collapse`
    does (so a choice in the experiment's grid reproduces its row) and draws the training
    loss along one filter-normalized direction, dequantized and requantize, next to the FP32
    SGD model; the readout gives test accuracy, λ_max and basin widths. ``rho`` sets the
    slider's start per optimizer (default ``{"sam": 0.5, "asam": 4.0}``); the slider offers
    the values :func:`quantlens.bitcollapse.rho_search` tries. Static
    counterpart: :func:`quantlens.plotting.plot_line_bands`.
    """
    from . import bitcollapse as bc
    from .hessian import HessianOperator, lanczos
    from .landscape import loss_line, random_direction
    from .train import evaluate

    config = bc.CollapseConfig() if config is None else config
    start = dict({"sam": 0.5, "asam": 4.0}, **(rho or {}))
    w_set = widgets.Dropdown(options=list(bc.SETTINGS), value="int8", description="setting")
    w_opt = widgets.Dropdown(options=list(bc.OPTIMIZERS), value="sam", description="optimizer")
    grid = sorted({0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, *start.values()})
    w_rho = widgets.SelectionSlider(options=grid, value=start["sam"], description="ρ")
    w_seed = widgets.IntSlider(value=seed, min=0, max=9, description="seed")
    w_dir = widgets.IntSlider(value=0, min=0, max=config.directions - 1, description="direction")
    out = widgets.Output()
    readout = widgets.HTML()
    cache: dict = {}

    def trained(setting, opt, s, r):
        key = (setting, opt, s, None if opt == "sgd" else round(r, 6))
        if key not in cache:
            cache[key] = bc.finetune(setting, opt, s, key[3], config)[:2]
        return cache[key]

    def redraw(_=None):
        w_rho.disabled = w_opt.value == "sgd"
        _, test, curvature = bc.digits_data(config)
        deployed, latent = trained(w_set.value, w_opt.value, w_seed.value, w_rho.value)
        fp32, _ = trained("fp32", "sgd", w_seed.value, 0.0)
        spec = bc.Setting.parse(w_set.value).spec(latent, config)
        kw = dict(distance=config.distance, steps=config.steps, progress=False)
        lines = {"FP32, SGD": loss_line(fp32, curvature, random_direction(fp32, w_dir.value),
                                        **kw)}
        d = random_direction(latent, w_dir.value)
        name = f"{w_set.value}, {w_opt.value}"
        if spec is None:
            lines[name] = loss_line(latent, curvature, d, **kw)
        else:
            for mode in bc.MODES:
                lines[f"{name}, {mode}"] = loss_line(latent, curvature, d, spec=spec, mode=mode,
                                                     **kw)
        acc = evaluate(deployed, test).accuracy
        lam = lanczos(HessianOperator(deployed, curvature), 1, tol=config.lanczos_tol)
        widths = "; ".join(f"{k} {w:.3f}" + ("+" if c else "") for k, (w, c) in (
            (k, bc.line_width(v, config.threshold)) for k, v in lines.items()))
        readout.value = (f"<b>{name}</b>: test accuracy {100 * acc:.1f}%, "
                         f"λ<sub>max</sub> {lam.eigenvalues[0]:.2f}; basin width at "
                         f"L<sub>min</sub> + {config.threshold}: {widths} (+: wider than the grid)")
        _show_lines(out, lines, f"seed {w_seed.value}, direction {w_dir.value}")

    def new_optimizer(_=None):
        if w_opt.value in start and w_rho.value != start[w_opt.value]:
            w_rho.value = start[w_opt.value]  # the slider's observer redraws
        else:
            redraw()

    w_opt.observe(new_optimizer, names="value")
    for control in (w_set, w_rho, w_seed, w_dir):
        control.observe(redraw, names="value")
    redraw()
    return Explorer([widgets.HBox([w_set, w_opt]), widgets.HBox([w_rho, w_seed]), w_dir,
                     readout, out], "bit-collapse explorer")


def allocation_explorer(model, loader, table, methods=("exact", "greedy", "proportional",
                                                       "relaxed")) -> Explorer:
    """Budget slider, measure and allocator: redraw the per-layer widths and measure them.

    ``table`` is a :func:`quantlens.layer_sensitivity` table of ``model``; each change
    allocates (:func:`quantlens.allocate`) and evaluates the quantized copy on ``loader``
    (readout: measured accuracy and loss, against uniform widths at the same budget where
    one exists). ``model`` is never modified. Static counterpart: the chapter's Pareto figure.
    """
    from .allocation import allocate, memory_budget
    from .mixed_precision import _measure
    from .sensitivity import MEASURES, cost_table

    measures = [m for m in (*MEASURES, "oracle_loss") if m in table.columns and m not in (
        "kappa", "spectral_norm")]
    sizes = table.drop_duplicates("layer").set_index("layer").n_params.astype(int).to_dict()
    kappa = table.drop_duplicates("layer").set_index("layer").kappa.to_dict()
    widths = sorted(table.bits.unique())
    w_avg = widgets.FloatSlider(value=4.0, min=float(widths[0]), max=float(widths[-1]),
                                step=0.25, description="avg bits")
    w_measure = widgets.Dropdown(options=measures, value=measures[0], description="measure")
    w_method = widgets.Dropdown(options=list(methods), value=methods[0], description="method")
    out = widgets.Output()
    readout = widgets.HTML()

    def redraw(_=None):
        a = allocate(cost_table(table, w_measure.value), sizes,
                     memory_budget(sizes, average_bits=w_avg.value), w_method.value,
                     scores=kappa if w_method.value in ("proportional", "relaxed") else None)
        loss, acc = _measure(model, loader, a.bits, torch.nn.functional.cross_entropy, {})
        text = (f"<b>{w_method.value} on {w_measure.value}</b>: {a.average_bits:.2f} bits "
                f"per weight, accuracy {100 * acc:.1f}%, loss {loss:.3f}")
        if w_avg.value in widths:
            u_loss, u_acc = _measure(model, loader, {n: int(w_avg.value) for n in sizes},
                                     torch.nn.functional.cross_entropy, {})
            text += f"; uniform int{int(w_avg.value)}: {100 * u_acc:.1f}%, loss {u_loss:.3f}"
        readout.value = text
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(7, 3.2))
            names = list(a.bits)
            ax.bar(range(len(names)), [a.bits[n] for n in names], color="#0072B2")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_ylabel("bits")
            ax.axhline(w_avg.value, color="0.4", ls="--", lw=1, label="budget (average)")
            ax.legend()
            plt.show()
            plt.close(fig)

    for control in (w_avg, w_measure, w_method):
        control.observe(redraw, names="value")
    redraw()
    return Explorer([widgets.HBox([w_avg, w_measure, w_method]), readout, out],
                    "allocation explorer")

