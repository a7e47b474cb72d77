"""Measured outcomes of a quantized model against its reference, in one place.

What a quantized variant costs, measured (not predicted):

* :func:`sqnr`: signal-to-quantization-noise ratio ``20 log10(‖x‖ / ‖x − y‖)`` in dB, as
  ``torch.ao.ns.fx.utils.compute_sqnr`` defines it (computed here in float64);
* :func:`weight_sqnr`: that ratio for every quantizable layer's weight of a variant against
  the reference model;
* :func:`output_agreement`: over a loader, the SQNR of the variant's outputs (logits or
  sentence embeddings), the mean KL divergence ``KL(softmax(g) ‖ softmax(f))`` of its
  logits ``f`` from the reference's ``g``, the mean cosine similarity of the outputs, and the
  top-1 agreement of the two models' predictions;
* :func:`embedding_similarity`: for a pretrained sentence encoder, the cosine similarity of
  quantized to full-precision sentence embeddings at each bit width and granularity.

No function changes either model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .alpha import (
    DEFAULT_BITS,
    _as_pretrained,
    _check_positive_int,
    _settings,
    encoder_linear_layers,
)
from .batches import _call_inputs, _device, _embedding, iterate_batches, to_device
from .data import SENTENCES
from .guard import eval_mode, preserved
from .quantize import quantizable_layers, quantize_dequantize


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


@dataclass(frozen=True)
class EmbeddingSimilarity:
    """Cosine similarity of quantized to FP sentence embeddings, per setting.

    ``table``: ``granularity, bits, cos_mean, cos_min, similarity_drop`` (``1 - cos_mean``),
    baseline row first. ``layers``: the names of the Linear layers that were quantized.
    """

    table: pd.DataFrame
    layers: tuple[str, ...]

    def __repr__(self) -> str:
        return f"EmbeddingSimilarity({len(self.layers)} quantized layers)\n{self.table}"


def _mean_pooled(model: nn.Module, batch: dict, params: dict) -> torch.Tensor:
    """Mean of the last hidden states over the attention mask (sentence-transformers)."""
    out = torch.func.functional_call(model, params, args=(), kwargs=batch)
    tokens = out[0].double()
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embedding_similarity(
    source=None,
    bits: Sequence[int | None] = DEFAULT_BITS,
    granularities: Sequence[str] = ("tensor", "channel", "group"),
    group_size: int = 128,
    sentences: Sequence[str] = SENTENCES,
    max_length: int = 256,
    progress: bool = True,
) -> EmbeddingSimilarity:
    """Cosine similarity of quantized to unquantized sentence embeddings.

    Sentence embedding (as sentence-transformers computes it for all-MiniLM-L6-v2): the mean
    of the encoder's last hidden states over the attention mask, ``e = Σ_t m_t h_t / Σ_t m_t``
    (the final L2 normalization does not change cosines). For each setting the weights of
    all ``nn.Linear`` layers of the encoder (:func:`encoder_linear_layers`) are replaced by
    ``quantize_dequantize(W, QuantSpec(b, granularity=g))`` and, per sentence ``s``,
    ``cos(e_s^Q, e_s)`` is computed; the table reports its mean and min over sentences.
    Embedding tables (word, position, token type), LayerNorms, biases and the pooler stay in
    full precision, as in the seed study ("all Linear layer weights") and in weight-only
    LLM.int8 / NF4 (bitsandbytes), GPTQ and AWQ, which quantize the Linear layers of the
    transformer blocks only.

    The model is evaluated with ``torch.func.functional_call`` (its parameters are never
    written) in eval mode inside :func:`quantlens.guard.preserved`, so it comes back
    unchanged, also if an error is raised. The baseline row runs the same path with the
    original weights, so ``cos = 1`` there checks the pipeline.

    Parameters
    ----------
    source : Pretrained, str, Path or None
        A :class:`~quantlens.models.Pretrained` (model and tokenizer), a Hugging Face folder,
        or None for the embedded all-MiniLM-L6-v2.
    bits, granularities, group_size
        As in :func:`alpha_sweep`.
    sentences : sequence of str
        Default: :data:`quantlens.data.SENTENCES` (20 varied English sentences).
    max_length : int
        Tokens per sentence (256, the model's ``max_seq_length``).
    progress : bool
        Show a progress bar over settings.
    """
    settings = _settings(bits, granularities, group_size)
    _check_positive_int("max_length", max_length)
    if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences:
        raise TypeError("sentences must be a non-empty sequence of strings")
    if not all(isinstance(s, str) and s.strip() for s in sentences):
        raise ValueError("sentences must all be non-empty strings")
    pre = _as_pretrained(source)
    model, tokenizer = pre.model, pre.tokenizer
    if tokenizer is None:
        raise ValueError(f"source {pre.path} has no tokenizer")
    names = encoder_linear_layers(model)
    modules = dict(model.named_modules())
    batch = dict(tokenizer(list(sentences), padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
    rows = []
    with preserved(model), torch.no_grad():
        model.eval()
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        weights = {f"{n}.weight": modules[n].weight.detach() for n in names}
        ref = _mean_pooled(model, batch, {})
        runs = [(None, "none", None)] + settings
        for b, g, spec in tqdm(runs, desc="embeddings", disable=not progress, leave=False):
            params = (weights if spec is None else
                      {k: quantize_dequantize(w, spec) for k, w in weights.items()})
            cos = torch.nn.functional.cosine_similarity(
                _mean_pooled(model, batch, params), ref, dim=1)
            rows.append({"granularity": g, "bits": b, "cos_mean": float(cos.mean()),
                         "cos_min": float(cos.min())})
    table = pd.DataFrame(rows)
    table["bits"] = table["bits"].astype("Int64")
    table["similarity_drop"] = 1.0 - table["cos_mean"]
    return EmbeddingSimilarity(table=table, layers=tuple(names))
