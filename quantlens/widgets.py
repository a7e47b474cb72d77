"""Interactive explorers (ipywidgets).

Each has a static counterpart in :mod:`quantlens.plotting` for the rendered book.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from .plotting import plot_weight_histogram
from .quantize import QuantSpec, quantization_error


def quantization_explorer(
    weight: torch.Tensor, name: str = "weight", group_size: int = 32
) -> widgets.VBox:
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

    for control in (bits, gran, sym):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([bits, gran, sym]), readout, out])
