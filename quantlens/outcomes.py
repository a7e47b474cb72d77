"""Measured outcomes of a quantized model against its reference, in one place.

What a quantized variant costs, measured (not predicted):

* :func:`sqnr`: signal-to-quantization-noise ratio ``20 log10(‖x‖ / ‖x − y‖)`` in dB, as
  ``torch.ao.ns.fx.utils.compute_sqnr`` defines it (computed here in float64);
* :func:`weight_sqnr`: that ratio for every quantizable layer's weight of a variant against
  the reference model;
* :func:`output_agreement`: over a loader, the SQNR of the variant's outputs (logits or
  sentence embeddings), the mean KL divergence ``KL(softmax(g) ‖ softmax(f))`` of its
  logits ``f`` from the reference's ``g``, the mean cosine similarity of the outputs, and the
  top-1 agreement of the two models' predictions.

No function changes either model.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .batches import _call_inputs, _device, _embedding, iterate_batches, to_device
from .guard import eval_mode
from .quantize import quantizable_layers


def sqnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """``20 log10(‖x‖ / ‖x − y‖)`` in dB (``inf`` when ``y == x``), ``x`` the reference."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be tensors")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x, y = x.detach().double(), y.detach().double()
    noise = float((x - y).norm())
    signal = float(x.norm())
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def weight_sqnr(reference: nn.Module, variant: nn.Module) -> pd.DataFrame:
    """Weight SQNR (dB) of every quantizable layer of ``variant`` against ``reference``
    (same architecture, e.g. ``quantize_model(reference, spec)``), indexed by layer."""
    ref, var = quantizable_layers(reference), quantizable_layers(variant)
    if set(ref) != set(var):
        raise ValueError("reference and variant must have the same quantizable layers")
    rows = [{"layer": n, "n_params": m.weight.numel(),
             "weight_sqnr_db": sqnr(m.weight, var[n].weight)} for n, m in ref.items()]
    return pd.DataFrame(rows).set_index("layer")


@torch.no_grad()
def output_agreement(reference: nn.Module, variant: nn.Module, loader: DataLoader,
                     max_batches: int | None = None) -> dict[str, float]:
    """How closely ``variant``'s outputs follow ``reference``'s over ``loader``.

    Outputs are logits, or for an encoder the attention-masked mean of
    ``last_hidden_state``. Returns ``output_sqnr_db`` (over all outputs at once),
    ``cosine`` (mean over examples), and for 2-D logits ``kl`` (mean over examples of
    ``Σ_c p_c (log p_c − log q_c)``, ``p = softmax(reference)``, ``q = softmax(variant)``)
    and ``top1_agreement``; ``n`` examples.
    """
    if reference is variant:
        raise ValueError("reference and variant are the same model object")
    device = _device(reference)
    outs_f, outs_g = [], []
    with eval_mode(reference), eval_mode(variant):
        for batch in iterate_batches(loader, max_batches):
            batch = to_device(batch, device)
            outs_g.append(_embedding(_call_inputs(reference, batch), batch).double())
            outs_f.append(_embedding(_call_inputs(variant, batch), batch).double())
    if not outs_g:
        raise ValueError("loader is empty")
    g, f = torch.cat(outs_g), torch.cat(outs_f)
    g2, f2 = g.reshape(len(g), -1), f.reshape(len(f), -1)
    out = {"output_sqnr_db": sqnr(g, f),
           "cosine": float(nn.functional.cosine_similarity(f2, g2, dim=1).mean()),
           "n": len(g)}
    if g.ndim == 2:
        logp, logq = torch.log_softmax(g, 1), torch.log_softmax(f, 1)
        out["kl"] = float((logp.exp() * (logp - logq)).sum(1).mean())
        out["top1_agreement"] = float((g.argmax(1) == f.argmax(1)).double().mean())
    return out
