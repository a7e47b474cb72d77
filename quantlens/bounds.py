"""The seed document's two precision theorems, stated and tested on real layers.

**Theorem 4.7** (as the seed applies it): to compute a layer to accuracy ``ε`` on inputs of
diameter ``D`` needs

.. math:: p \\ge \\log_2 \\frac{c\\, κ\\, D^2}{ε}

bits, with ``κ`` the layer's curvature, taken by the seed as the condition number of its
weight matrix (a linear map has zero curvature in the HNF sense; the seed's substitution is
what is tested here), and ``c = 1``. :func:`theorem_4_7` compares that prediction with the
*measured* minimum width: the smallest ``b`` for which ``max_x ‖(Q_b(W) − W) x‖ ≤ ε`` over
the layer's real inputs ``x``.

**Theorem 3.4** (composition): for ``f = f_n ∘ … ∘ f_1`` with per-layer errors ``Φ_i`` and
Lipschitz constants ``L_j``,

.. math:: Φ_{total} \\le \\sum_i \\Big(\\prod_{j > i} L_j\\Big) Φ_i .

:func:`theorem_3_4` evaluates it on a chain of Linear layers with 1-Lipschitz activations in
between (ReLU, Flatten): ``Φ_i = max_x ‖(Q(W_i) − W_i) h_{i−1}(x)‖`` on the float network's
activations, ``L_j = max(‖W_j‖₂, ‖Q(W_j)‖₂)`` (so the bound is rigorous for every input),
against the measured ``max_x ‖f_Q(x) − f(x)‖`` of the logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .batches import _call_inputs, _device, iterate_batches, to_device
from .guard import eval_mode
from .quantize import QuantSpec, _layer_spec, quantizable_layers, quantize_dequantize
from .sensitivity import spectral_stats, weight_matrix

LIPSCHITZ_1 = (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)


def layer_inputs(model: nn.Module, loader: DataLoader, max_batches: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """The inputs every quantizable Linear layer receives over ``loader`` (rows: examples,
    flattened to the layer's fan-in), recorded with forward hooks in eval mode."""
    layers = {n: m for n, m in quantizable_layers(model).items() if isinstance(m, nn.Linear)}
    if not layers:
        raise ValueError("model has no Linear layer")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=n: seen[name].append(args[0].detach().reshape(
            -1, args[0].shape[-1]).double().cpu())) for n, m in layers.items()]
    device = _device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for batch in iterate_batches(loader, max_batches):
                _call_inputs(model, to_device(batch, device))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _max_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return float(((q - w) @ x.T).norm(dim=0).max())


def theorem_4_7(model: nn.Module, loader: DataLoader, eps: float,
                bits: Sequence[int] = tuple(range(2, 17)), c: float = 1.0,
                max_batches: int | None = None, **defaults) -> pd.DataFrame:
    """Predicted (``log2(c κ D²/ε)``) against measured minimum bits, per Linear layer.

    ``D`` is the diameter of the layer's recorded inputs (the largest distance between two
    of them, bounded above by twice the largest norm, which is used). Returns one row per
    layer: ``kappa, diameter, predicted_bits`` (real-valued), ``measured_bits`` (smallest
    width in ``bits`` meeting ``ε``; ``nan`` if none does), ``error_at_measured``, and
    ``holds`` (the prediction is a lower bound: ``predicted ≤ measured``).
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 \
            or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite positive number, got {eps!r}")
    inputs = layer_inputs(model, loader, max_batches)
    stats = spectral_stats(model)
    layers = quantizable_layers(model)
    rows = []
    for name, x in inputs.items():
        w = weight_matrix(layers[name])
        diameter = 2.0 * float(x.norm(dim=1).max())
        kappa = float(stats.loc[name, "kappa"])
        predicted = math.log2(c * kappa * diameter ** 2 / eps) if kappa < np.inf else np.inf
        measured, err = np.nan, np.nan
        for b in sorted(bits):
            spec = _layer_spec(layers[name], QuantSpec(b, **defaults))
            e = _max_error(w, quantize_dequantize(w, spec), x)
            if e <= eps:
                measured, err = b, e
                break
        rows.append({"layer": name, "kappa": kappa, "diameter": diameter,
                     "predicted_bits": predicted, "measured_bits": measured,
                     "error_at_measured": err,
                     "holds": bool(np.isfinite(measured) and predicted <= measured)})
    return pd.DataFrame(rows).set_index("layer")


def _chain(model: nn.Module) -> list[nn.Module]:
    """The model's leaf modules in call order, if it is a plain chain of Linear layers and
    1-Lipschitz activations (a Sequential, possibly nested)."""
    seq = model
    while isinstance(seq, nn.Module) and not isinstance(seq, nn.Sequential):
        children = list(seq.children())
        if len(children) != 1:
            raise ValueError("theorem_3_4 needs a chain of Linear layers and 1-Lipschitz "
                             "activations (an nn.Sequential, or a module holding one)")
        seq = children[0]
    leaves = [m for m in seq.modules() if not list(m.children())]
    bad = [type(m).__name__ for m in leaves if not isinstance(m, (nn.Linear, *LIPSCHITZ_1))]
    if bad:
        raise ValueError(f"theorem_3_4 needs Linear layers and 1-Lipschitz activations "
                         f"only, found {sorted(set(bad))}")
    return leaves


def theorem_3_4(model: nn.Module, loader: DataLoader, allocation: Mapping[str, int],
                max_batches: int | None = None, **defaults) -> dict:
    """Theorem 3.4's bound against the measured end-to-end error for one allocation
    ``{layer: bits}`` (layers absent stay in full precision).

    Returns ``bound``, ``measured`` (max over the examples of ``‖f_Q(x) − f(x)‖₂``),
    ``ratio = bound / measured``, ``holds`` and the per-layer ``terms`` (DataFrame: ``phi``,
    ``lipschitz_after``, ``term``).
    """
    from .quantize import quantize_model

    chain = _chain(model)
    names = {id(m): n for n, m in model.named_modules()}
    linears = [m for m in chain if isinstance(m, nn.Linear)]
    unknown = sorted(set(allocation) - {names[id(m)] for m in linears})
    if unknown:
        raise ValueError(f"allocation names layers that are not Linear layers of the chain: "
                         f"{unknown}")
    inputs = layer_inputs(model, loader, max_batches)
    q_model = quantize_model(model, {n: QuantSpec(b, **defaults) for n, b in allocation.items()})
    q_layers = quantizable_layers(q_model)
    rows = []
    for m in linears:
        name = names[id(m)]
        w, q = weight_matrix(m), weight_matrix(q_layers[name])
        phi = _max_error(w, q, inputs[name]) if name in allocation else 0.0
        lip = max(float(torch.linalg.matrix_norm(w, 2)), float(torch.linalg.matrix_norm(q, 2)))
        rows.append({"layer": name, "phi": phi, "lipschitz": lip})
    terms = pd.DataFrame(rows).set_index("layer")
    after = np.concatenate([np.cumprod(terms.lipschitz.to_numpy()[::-1])[::-1][1:], [1.0]])
    terms["lipschitz_after"] = after
    terms["term"] = terms.phi * terms.lipschitz_after
    measured = 0.0
    device = _device(model)
    with eval_mode(model), eval_mode(q_model), torch.no_grad():
        for batch in iterate_batches(loader, max_batches):
            batch = to_device(batch, device)
            a = _call_inputs(model, batch).double()
            b = _call_inputs(q_model, batch).double()
            measured = max(measured, float((b - a).reshape(len(a), -1).norm(dim=1).max()))
    bound = float(terms.term.sum())
    return {"bound": bound, "measured": measured,
            "ratio": bound / measured if measured > 0 else np.inf,
            "holds": bound >= measured * (1 - 1e-5), "terms": terms}  # float32 logits
