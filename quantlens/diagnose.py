"""QuantDiagnostic: one model, its quantized variants, one table, one figure, one report.

Build it on a full-precision model and a DataLoader, add variants — simulated ones at any bit
width and granularity (:meth:`QuantDiagnostic.add_quantized`), an allocation from
:func:`quantlens.allocate`, or a model you already have (:meth:`QuantDiagnostic.add_model`: a
QAT result, a ``torch.ao`` dynamic-quantized model, a torchao-quantized model) — and
:meth:`~QuantDiagnostic.run` measures, for every variant ``v`` against the FP32 model ``f``:

===========================  ================================================================
column                       what
===========================  ================================================================
``loss``, ``accuracy``       on the evaluation loader, of the model as given (its own kernels)
``accuracy_drop``            ``acc(f) − acc(v)``
``output_sqnr_db``,          :func:`quantlens.outcomes.output_agreement`: outputs' SQNR,
``cosine``, ``kl``,          mean cosine, ``KL(softmax f ‖ softmax v)``, top-1 agreement
``top1_agreement``
``lambda_max``, ``trace``    of the loss Hessian with respect to the analysed layers'
                             parameters (the ones quantization moves), at the variant's
                             dequantized weights (Lanczos, Hutch++); ratios to FP32's
``basin_width``              mean width of the loss basin along filter-normalized random
                             directions (:func:`quantlens.basin_widths`), ratio to FP32's
``weight_sqnr_db_min``       the lowest per-layer weight SQNR
``alpha_mean``,              WeightWatcher's ``α`` (mean over the layers it can fit) and the
``alpha_change``             mean ``|Δα|`` against FP32
``size_mb``                  packed size: ``b`` bits per quantized weight plus its scales
                             (and zero points), 32 bits for everything else; serialized
                             size for a model whose format is not known
``weight_only_*``,           AIMET-style split: only the weights quantized, or only the
``activation_only_*``        Linear/Conv inputs (per tensor, asymmetric, calibrated ranges)
===========================  ================================================================

Per layer (:attr:`DiagnosticResult.layers`): weight SQNR, ``‖ΔW‖²``, HAWQ
(``tr(H_ℓℓ)/n_ℓ ‖ΔW‖²``), ``α`` and its change, and the measured damage: *enable one* (only
layer ``ℓ`` takes the variant's weights, the rest stay FP32: loss increase, accuracy drop)
and *disable one* (every layer quantized except ``ℓ``: the recovery), as AIMET's
QuantAnalyzer does. :attr:`DiagnosticResult.grading` grades each per-layer metric by its
Spearman rank correlation with the enable-one damage. Verdicts follow
:data:`quantlens.verdicts.CHOSEN_RULE` (output KL, validated on a sweep; for a model without
logits, :data:`~quantlens.verdicts.LABEL_FREE_RULE`: the measured embedding cosine) next to
the seed's ``λ_max`` ratio ``> 1.5`` rule.

Geometry (Hessian, basin, per-layer swaps) is taken on the variant's *dequantized view*: the
same architecture with float weights equal to the dequantized integer weights
(:func:`dequantized_view`). Outcomes are measured on the model as given, so a
``torch.ao`` dynamic model's accuracy includes its dynamic activation quantization.

Without labels (e.g. a sentence encoder), ``loss="distill"`` uses
:func:`quantlens.output_distance` with the cosine metric against a frozen copy of the FP32
model: ``L(θ) = mean_i (1 − cos(e_θ(x_i), e_f(x_i)))``; at FP32 it is 0 and its Hessian is the
Gauss-Newton matrix of the embedding map.

No step changes the caller's models: every analysis runs on copies or restores in place
(:func:`quantlens.guard.preserved`).
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import BatchLoss, _call_inputs, _device, iterate_batches, output_distance, to_device
from .guard import preserved, swapped
from .hessian import HessianOperator, _check_int, hutchpp, lanczos
from .landscape import _basin_widths
from .outcomes import output_agreement, sqnr
from .quantize import (
    ActivationFakeQuant,
    QuantSpec,
    WeightFakeQuant,
    _layer_spec,
    _quantize_input,
    as_spec,
    convert_qat,
    quantizable_layers,
    quantization_error,
    quantize_model,
)
from .train import evaluate
from .verdicts import CHOSEN_RULE, LABEL_FREE_RULE, SEED_RULE, Rule, degraded, verdict

SCHEMA = "quantlens.diagnostic/1"
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
GRADED = {"neg_weight_sqnr_db": "−weight SQNR", "delta_sq": "‖ΔW‖²", "hawq": "HAWQ",
          "alpha_change": "|Δα|"}


@dataclass(frozen=True)
class Variant:
    """One model under diagnosis: ``model`` as given (outcomes), ``view`` its float view with
    dequantized weights (geometry), ``specs`` the per-layer quantization when known."""

    name: str
    source: str
    model: nn.Module = field(repr=False)
    view: nn.Module = field(repr=False)
    specs: Mapping[str, QuantSpec] | None = field(default=None, repr=False)
    activations: QuantSpec | None = None
    size_bytes: float = math.nan
    size_method: str = ""


@dataclass(frozen=True)
class DiagnosticResult:
    """What :meth:`QuantDiagnostic.run` measured.

    ``variants``: one row per variant (FP32 first), the module table's columns plus
    ``degraded`` (measured, :func:`quantlens.verdicts.degraded`), ``verdict`` (the validated
    rule) and ``verdict_seed`` (``λ_max`` ratio ``> 1.5``). ``layers``: one row per (variant,
    layer). ``grading``: Spearman correlation of each per-layer metric with the measured
    enable-one damage, pooled and within each variant. ``settings``: the run's parameters.
    """

    variants: pd.DataFrame
    layers: pd.DataFrame
    grading: pd.DataFrame
    settings: dict
    label_free: bool
    rule: Rule = CHOSEN_RULE
    seconds: dict = field(default_factory=dict, compare=False)

    @property
    def table(self) -> pd.DataFrame:
        """Everything in one tidy table: ``variant, layer`` (empty for model-level rows),
        ``metric, value`` (numeric metrics only)."""
        parts = []
        v = self.variants.set_index("variant")
        num = v.select_dtypes("number")
        long = num.reset_index().melt(id_vars="variant", var_name="metric", value_name="value")
        long.insert(1, "layer", "")
        parts.append(long)
        if not self.layers.empty:
            lay = self.layers.drop(columns="bits", errors="ignore")
            num = lay.select_dtypes("number").columns
            parts.append(lay.melt(id_vars=["variant", "layer"], value_vars=list(num),
                                  var_name="metric", value_name="value"))
        return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# any model -> its float view
# ---------------------------------------------------------------------------------------------
def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _is_subclass_tensor(p: torch.Tensor) -> bool:
    return type(p) not in (torch.Tensor, nn.Parameter) and hasattr(p, "dequantize")


def dequantized_view(model: nn.Module) -> tuple[nn.Module, str, dict[str, QuantSpec] | None]:
    """A float copy of ``model`` whose weights are its dequantized quantized weights.

    Handles a :func:`quantlens.prepare_qat` model (weights frozen at ``Q(W)`` by
    :func:`quantlens.convert_qat`, activation quantizers removed), a ``torch.ao`` dynamic
    quantized model (each ``DynamicQuantizedLinear`` becomes an ``nn.Linear`` with
    ``weight().dequantize()``), a torchao-quantized model (every tensor-subclass parameter
    becomes its ``dequantize()``), and any float model (a copy). Returns ``(view, source,
    specs)`` with ``source`` one of ``"qat"``, ``"torch.ao dynamic"``, ``"torchao"``,
    ``"float"``; ``specs`` are the QAT layers' specs (else None). Static ``torch.ao``
    quantized models (QuantStub/DeQuantStub) raise TypeError.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    specs = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            q = m.parametrizations.weight[0]
            if isinstance(q, WeightFakeQuant):
                specs[name] = q.spec
    if specs:
        view = convert_qat(model)
        for m in view.modules():
            if isinstance(getattr(m, "input_quant", None), ActivationFakeQuant):
                m._forward_pre_hooks.clear()
                del m.input_quant
        return view, "qat", specs
    view, source = copy.deepcopy(model), "float"
    replaced: list[str] = []
    for name, m in list(view.named_modules()):
        if any(name.startswith(r + ".") for r in replaced):
            continue  # inside a module already replaced (its packed parameters)
        path = type(m).__module__
        if path.startswith("torch.ao.nn.quantized.dynamic") and hasattr(m, "in_features"):
            w, b = m.weight().dequantize(), m.bias()
            new = nn.Linear(m.in_features, m.out_features, bias=b is not None)
            with torch.no_grad():
                new.weight.copy_(w)
                if b is not None:
                    new.bias.copy_(b)
            _set_module(view, name, new)
            replaced.append(name)
            source = "torch.ao dynamic"
        elif path.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")):
            raise TypeError(f"model: layer {name!r} is a static torch.ao quantized module "
                            f"({type(m).__name__}); pass the float model to add_quantized, "
                            "or a dynamic-quantized, torchao or QAT model")
    for m in view.modules():
        for pname, p in list(m.named_parameters(recurse=False)):
            if _is_subclass_tensor(p):
                with torch.no_grad():
                    dense = p.dequantize().detach().clone()
                setattr(m, pname, nn.Parameter(dense, requires_grad=True))
                source = "torchao"
    return view, source, None


def _serialized_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def packed_bytes(model: nn.Module, specs: Mapping[str, QuantSpec]) -> float:
    """Bytes of ``model`` stored packed: every weight of ``specs`` at its bits plus 32-bit
    scales (and zero points when asymmetric, :func:`quantlens.quantization_error`), every
    other parameter and buffer at its own width."""
    layers = dict(model.named_modules())
    bits, seen = 0, set()
    for name, spec in specs.items():
        w = layers[name].weight
        seen.add(id(w))
        bits += quantization_error(w.detach(), _layer_spec(layers[name], spec)).memory_bits
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            bits += t.numel() * t.element_size() * 8
    return bits / 8


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _with_activation_quant(model: nn.Module, layers: Sequence[str], spec: QuantSpec,
                           loader: DataLoader, max_batches: int | None) -> nn.Module:
    """A copy of ``model`` whose named layers' inputs are fake-quantized with ``spec`` (per
    tensor), ranges calibrated as running min/max over ``loader`` with the rest of the model
    in eval mode (no dropout)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    quants = []
    for name in layers:
        layer = modules[name]
        if isinstance(layer, nn.Embedding):
            continue
        layer.input_quant = ActivationFakeQuant(spec)
        layer.register_forward_pre_hook(_quantize_input)
        quants.append(layer.input_quant)
    out.eval()
    for q in quants:
        q.train()
    device = _device(out)
    with torch.no_grad():
        for batch in iterate_batches(loader, max_batches):
            _call_inputs(out, to_device(batch, device))
    out.eval()
    return out


def _alpha_by_layer(model: nn.Module, names: Sequence[str]) -> dict[str, float]:
    """WeightWatcher's α per layer (NaN where WeightWatcher skips the layer)."""
    from .alpha import WW_MAX_EVALS, WW_MAX_N, WW_MIN_EVALS, _skip_reason, esd, esd_metrics

    modules = dict(model.named_modules())
    out = {}
    for name in names:
        m = modules[name]
        kind = "conv2d" if isinstance(m, nn.Conv2d) else "dense"
        w = m.weight.detach()
        if w.ndim == 3 or _skip_reason(kind, tuple(w.shape), WW_MIN_EVALS, WW_MAX_EVALS,
                                       WW_MAX_N):
            out[name] = math.nan
            continue
        out[name] = esd_metrics(esd(w, kind))["alpha"]
    return out


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x)[ok], np.asarray(y)[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


# ---------------------------------------------------------------------------------------------
# the diagnostic
# ---------------------------------------------------------------------------------------------
class QuantDiagnostic:
    """Diagnose what quantization does to ``model``.

    Parameters
    ----------
    model : nn.Module
        The full-precision model (never modified; the diagnostic works on copies made at
        :meth:`run`).
    loader : DataLoader
        Data for curvature, basins, calibration and (unless ``eval_loader``) evaluation:
        ``(inputs, labels)`` batches, or mappings of model keywords (e.g. tokenized text).
    loss : callable, BatchLoss, "distill" or None
        A criterion ``loss(outputs, labels)`` (default cross-entropy when batches carry
        labels), a :class:`quantlens.BatchLoss`, or ``"distill"`` (label-free: cosine distance
        to the FP32 model's outputs, the default when batches have no labels).
    eval_loader : DataLoader, optional
        Held-out data for the outcomes and the per-layer damage (default ``loader``).
    hessian_batches : int or None
        Batches of ``loader`` used by the Hessian and basin steps (default 4; None = all).
    layer_types : tuple of module types
        Which layers are quantized by :meth:`add_quantized` and analysed per layer (default
        Linear and Conv; embedding tables stay in full precision, as in weight-only LLM
        quantization and ``torch.ao`` dynamic quantization).
    """

    def __init__(self, model: nn.Module, loader: DataLoader, loss=None,
                 eval_loader: DataLoader | None = None, hessian_batches: int | None = 4,
                 layer_types: tuple[type[nn.Module], ...] = LAYER_TYPES) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, ld in (("loader", loader), ("eval_loader", eval_loader)):
            if ld is not None and not isinstance(ld, DataLoader):
                raise TypeError(f"{name} must be a torch DataLoader, got {type(ld).__name__}")
        if hessian_batches is not None:
            _check_int("hessian_batches", hessian_batches)
        if not isinstance(layer_types, tuple) or not layer_types or not all(
                isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types):
            raise TypeError("layer_types must be a non-empty tuple of nn.Module subclasses")
        self.layers = list(quantizable_layers(model, layer_types))
        if not self.layers:
            raise ValueError("model has no layer of layer_types to quantize "
                             f"({', '.join(t.__name__ for t in layer_types)})")
        rng = torch.random.get_rng_state()  # a shuffling loader draws from torch's RNG
        try:
            first = next(iter(iterate_batches(loader, 1)), None)
        finally:
            torch.random.set_rng_state(rng)
        if first is None:
            raise ValueError("loader is empty")
        has_labels = isinstance(first, (tuple, list)) and len(first) >= 2 or (
            isinstance(first, Mapping) and ("labels" in first or "label" in first))
        if loss is None:
            loss = nn.functional.cross_entropy if has_labels else "distill"
        if isinstance(loss, str) and loss != "distill":
            raise ValueError(f"loss must be a callable, a BatchLoss or 'distill', got {loss!r}")
        if not (isinstance(loss, (str, BatchLoss)) or callable(loss)):
            raise TypeError(f"loss must be a callable, a BatchLoss or 'distill', got "
                            f"{type(loss).__name__}")
        self.model, self.loader, self.loss = model, loader, loss
        self.eval_loader = loader if eval_loader is None else eval_loader
        self.hessian_batches = hessian_batches
        self.layer_types = layer_types
        self.variants: dict[str, dict] = {}
        self.result: DiagnosticResult | None = None

    @property
    def label_free(self) -> bool:
        return isinstance(self.loss, str) and self.loss == "distill"

    # -- adding variants ------------------------------------------------------------------
    def _name(self, name, default: str) -> str:
        name = default if name is None else name
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if name == "fp32" or name in self.variants:
            raise ValueError(f"name {name!r} is already taken")
        return name

    def add_quantized(self, bits=8, granularity: str = "channel", symmetric: bool = True,
                      group_size: int = 128, activations: int | QuantSpec | None = None,
                      name: str | None = None) -> QuantDiagnostic:
        """Add a simulated variant: every analysed layer's weight at ``bits`` (an int, a
        :class:`QuantSpec`, or a mapping ``{layer: bits or spec}`` for mixed precision, e.g.
        ``allocation.bits``), optionally with activations at ``activations`` bits (per
        tensor, asymmetric, ranges calibrated on ``loader``). Returns ``self``."""
        if isinstance(bits, Mapping):
            unknown = sorted(set(bits) - set(self.layers))
            if unknown:
                raise ValueError(f"bits: {unknown} are not analysed layers of the model")
            spec_map = {k: as_spec(v, granularity=granularity, symmetric=symmetric,
                                   group_size=group_size) for k, v in bits.items()}
        else:
            if isinstance(bits, bool) or not isinstance(bits, (int, QuantSpec)):
                raise TypeError(f"bits must be an int, a QuantSpec or a mapping {{layer: bits}}"
                                f", got {type(bits).__name__}")
            spec = as_spec(bits, granularity=granularity, symmetric=symmetric,
                           group_size=group_size)
            spec_map = dict.fromkeys(self.layers, spec)
        act = None
        if activations is not None:
            act = as_spec(activations, granularity="tensor", symmetric=False)
            if act.granularity != "tensor":
                raise ValueError("activations: only per-tensor activation quantization")
        if len({s for s in spec_map.values()}) == 1:
            s = next(iter(spec_map.values()))
            default = f"int{s.bits} {s.granularity}" + ("" if s.symmetric else " asym")
        else:
            n = sum(quantizable_layers(self.model)[k].weight.numel() for k in spec_map)
            avg = sum(quantizable_layers(self.model)[k].weight.numel() * s.bits
                      for k, s in spec_map.items()) / n
            default = f"mixed {avg:.2f}b"
        if act is not None:
            default += f" a{act.bits}"
        self.variants[self._name(name, default)] = {"kind": "simulated", "specs": spec_map,
                                                    "activations": act}
        return self

    def add_allocation(self, allocation, name: str | None = None, **defaults) -> QuantDiagnostic:
        """Add a mixed-precision allocation (:class:`quantlens.Allocation`): its per-layer
        bits, completed by ``defaults`` (``granularity``, ``symmetric``, ``group_size``)."""
        from .allocation import Allocation

        if not isinstance(allocation, Allocation):
            raise TypeError(f"allocation must be a quantlens.Allocation, got "
                            f"{type(allocation).__name__}")
        label = f"{allocation.method} {allocation.average_bits:.2f}b"
        return self.add_quantized(dict(allocation.bits), name=name or label, **defaults)

    def add_model(self, name: str, model: nn.Module) -> QuantDiagnostic:
        """Add a model you already have (same architecture and layer names as the FP32 model):
        a QAT model, a ``torch.ao`` dynamic-quantized or torchao-quantized model, or any float
        model (e.g. quantized by another tool and dequantized). It is analysed through
        :func:`dequantized_view`; outcomes use the model as given."""
        name = self._name(name, name)
        view, source, specs = dequantized_view(model)
        got = quantizable_layers(view, self.layer_types)
        missing = sorted(set(self.layers) - set(got))
        if missing:
            raise ValueError(f"model {name!r} lacks the layers {missing[:5]} of the FP32 model "
                             "(add_model needs the same architecture)")
        ref = quantizable_layers(self.model, self.layer_types)
        for k in self.layers:
            if got[k].weight.shape != ref[k].weight.shape:
                raise ValueError(f"model {name!r}: layer {k!r} has weight shape "
                                 f"{tuple(got[k].weight.shape)}, the FP32 model "
                                 f"{tuple(ref[k].weight.shape)}")
        self.variants[name] = {"kind": source, "model": model, "view": view, "specs": specs,
                               "activations": None}
        return self

    # -- building -------------------------------------------------------------------------
    def _build(self, fp32: nn.Module, loss_fn) -> list[Variant]:
        out = [Variant("fp32", "fp32", fp32, fp32, None, None,
                       float(packed_bytes(fp32, {})), "fp32")]
        for name, v in self.variants.items():
            if v["kind"] == "simulated":
                view = quantize_model(fp32, v["specs"], self.layer_types)
                model = view
                if v["activations"] is not None:
                    model = _with_activation_quant(view, list(v["specs"]), v["activations"],
                                                   self.loader, self.hessian_batches)
                out.append(Variant(name, "simulated", model, view, v["specs"], v["activations"],
                                   packed_bytes(fp32, v["specs"]), "packed"))
            else:
                specs = v["specs"]
                size, how = ((packed_bytes(v["view"], specs), "packed") if specs else
                             (float(_serialized_bytes(v["model"])), "serialized"))
                out.append(Variant(name, v["kind"], v["model"], v["view"], specs, None,
                                   size, how))
        return out

    # -- running --------------------------------------------------------------------------
    def run(self, hessian: bool = True, landscape: bool = True, per_layer: bool = True,
            alpha: bool = True, split: bool = True, n_directions: int = 4,
            distance: float = 0.5, steps: int = 15, threshold: float | None = None,
            trace_hvp: int = 30, tol: float = 1e-3, seed: int = 0,
            max_batches: int | None = None, progress: bool = True) -> pd.DataFrame:
        """Measure every variant; returns the tidy table (:attr:`DiagnosticResult.table`) and
        keeps the full :class:`DiagnosticResult` in :attr:`result`.

        ``hessian``: ``λ_max`` (Lanczos to relative tolerance ``tol``) and Hutch++ trace with
        ``trace_hvp`` products; ``landscape``: basin widths along ``n_directions`` directions
        (``steps`` points over ``±distance``; the basin edge is where the loss exceeds its
        minimum by ``threshold``: default 0.1 nats, or 0.01 for the distillation loss);
        ``per_layer``: per-layer metrics and enable-one / disable-one damage; ``alpha``:
        WeightWatcher's α; ``split``: weight-only and activation-only outcomes of simulated
        variants. ``max_batches`` bounds the evaluation loader.
        """
        if not self.variants:
            raise ValueError("no variant to diagnose: call add_quantized or add_model first")
        for k, v in (("n_directions", n_directions), ("steps", steps),
                     ("trace_hvp", trace_hvp)):
            _check_int(k, v, 3 if k == "steps" else 1)
        if not (isinstance(distance, (int, float)) and distance > 0):
            raise ValueError(f"distance must be a positive number, got {distance!r}")
        if not (isinstance(tol, float) and 0 < tol < 1):
            raise ValueError(f"tol must be a float in (0, 1), got {tol!r}")
        if threshold is None:
            threshold = 0.01 if self.label_free else 0.1
        if not (isinstance(threshold, (int, float)) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        settings = {"hessian": hessian, "landscape": landscape, "per_layer": per_layer,
                    "alpha": alpha, "split": split, "n_directions": n_directions,
                    "distance": float(distance), "steps": steps, "threshold": float(threshold),
                    "trace_hvp": trace_hvp, "tol": tol, "seed": seed,
                    "hessian_batches": self.hessian_batches, "max_batches": max_batches,
                    "layers": len(self.layers), "loss": "distill (1 - cosine)" if self.label_free
                    else getattr(self.loss, "__name__", type(self.loss).__name__)}
        with preserved(self.model):
            fp32 = copy.deepcopy(self.model).eval()
            for p in fp32.parameters():
                p.requires_grad_(True)
            loss_fn = (output_distance(copy.deepcopy(fp32), "cosine") if self.label_free
                       else self.loss)
            variants = self._build(fp32, loss_fn)
            self.result = self._measure(variants, fp32, loss_fn, settings, progress)
        return self.result.table

    def _measure(self, variants: list[Variant], fp32: nn.Module, loss_fn, settings: dict,
                 progress: bool) -> DiagnosticResult:
        s = settings
        seconds: dict[str, float] = {}
        hb, mb = self.hessian_batches, s["max_batches"]
        rows: list[dict] = []
        bar = tqdm(total=len(variants), desc="variants", disable=not progress, leave=False)
        ref_alpha = None
        for v in variants:
            t0 = time.perf_counter()
            ev = evaluate(v.model, self.eval_loader, loss_fn, max_batches=mb)
            row = {"variant": v.name, "source": v.source,
                   "bits": _bits_label(v.specs, v.activations),
                   "avg_bits": _avg_bits(fp32, v.specs), "size_mb": v.size_bytes / 2 ** 20,
                   "size_method": v.size_method, "loss": ev.loss, "accuracy": ev.accuracy}
            if v.name != "fp32":
                agree = output_agreement(fp32, v.model, self.eval_loader, mb)
                # KL and top-1 agreement need logits: meaningless on embeddings
                keys = ("output_sqnr_db", "cosine") if self.label_free else (
                    "output_sqnr_db", "cosine", "kl", "top1_agreement")
                row.update({k: agree.get(k, math.nan) for k in keys})
                f_mods, v_mods = dict(fp32.named_modules()), dict(v.view.named_modules())
                row["weight_sqnr_db_min"] = min(sqnr(f_mods[k].weight, v_mods[k].weight)
                                                for k in self.layers)
            seconds["outcomes"] = seconds.get("outcomes", 0) + time.perf_counter() - t0
            if s["hessian"]:
                t0 = time.perf_counter()
                op = HessianOperator(v.view, self.loader, loss_fn=loss_fn, max_batches=hb,
                                     params=self.layers)
                row["lambda_max"] = float(lanczos(op, 1, tol=s["tol"],
                                                  seed=s["seed"]).eigenvalues[0])
                row["trace"] = hutchpp(op, s["trace_hvp"], seed=s["seed"]).value
                seconds["hessian"] = seconds.get("hessian", 0) + time.perf_counter() - t0
            if s["landscape"]:  # measured below for all variants at once
                row["basin_width"], row["basin_censored"] = math.nan, 0
            if s["alpha"]:
                t0 = time.perf_counter()
                al = _alpha_by_layer(v.view, self.layers)
                if ref_alpha is None:
                    ref_alpha = al
                vals = np.array([al[k] for k in self.layers], dtype=float)
                change = np.array([abs(al[k] - ref_alpha[k]) for k in self.layers])
                row["alpha_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() \
                    else math.nan
                row["alpha_change"] = float(np.nanmean(change)) if np.isfinite(
                    change).any() else math.nan
                row["_alpha"] = al
                seconds["alpha"] = seconds.get("alpha", 0) + time.perf_counter() - t0
            if s["split"] and v.source == "simulated":
                t0 = time.perf_counter()
                w_only = evaluate(v.view, self.eval_loader, loss_fn, max_batches=mb)
                act = v.activations or QuantSpec(max(sp.bits for sp in v.specs.values()),
                                                 granularity="tensor", symmetric=False)
                a_model = _with_activation_quant(fp32, self.layers, act, self.loader, hb)
                a_only = evaluate(a_model, self.eval_loader, loss_fn, max_batches=mb)
                row.update(weight_only_loss=w_only.loss, weight_only_accuracy=w_only.accuracy,
                           activation_only_loss=a_only.loss,
                           activation_only_accuracy=a_only.accuracy,
                           activation_only_bits=act.bits)
                seconds["split"] = seconds.get("split", 0) + time.perf_counter() - t0
            rows.append(row)
            bar.update()
        bar.close()
        if s["landscape"]:
            # direction by direction over the variants: each seed's Gaussian is drawn once
            t0 = time.perf_counter()
            tables = _basin_widths([v.view for v in variants], self.loader,
                                   s["n_directions"], s["distance"], s["steps"],
                                   s["threshold"], False, loss_fn, None, "float", s["seed"],
                                   False, hb)
            for row, widths in zip(rows, tables):
                row["basin_width"] = float(widths["width"].mean())
                row["basin_censored"] = int(widths["width"].isna().sum())
            seconds["landscape"] = time.perf_counter() - t0
        table = pd.DataFrame(rows)
        alphas = table.pop("_alpha") if "_alpha" in table else None
        table = _derived(table, self.label_free)
        layers = pd.DataFrame()
        grading = pd.DataFrame()
        if s["per_layer"]:
            t0 = time.perf_counter()
            layers = self._per_layer(variants, fp32, loss_fn, table, alphas, s, progress)
            grading = grade(layers)
            seconds["per_layer"] = time.perf_counter() - t0
        return DiagnosticResult(variants=table, layers=layers, grading=grading,
                                settings=settings, label_free=self.label_free,
                                rule=LABEL_FREE_RULE if self.label_free else CHOSEN_RULE,
                                seconds=seconds)

    def _per_layer(self, variants, fp32, loss_fn, table, alphas, s, progress) -> pd.DataFrame:
        from .sensitivity import block_traces

        mb = s["max_batches"]
        traces = None
        if s["hessian"]:
            traces = block_traces(fp32, self.loader, loss_fn, s["trace_hvp"], s["seed"],
                                  self.hessian_batches, self.layers)
        base = table.set_index("variant")
        f_row = base.loc["fp32"]
        ref = dict(fp32.named_modules())
        rows = []
        bar = tqdm(total=(len(variants) - 1) * len(self.layers), desc="layers",
                   disable=not progress, leave=False)
        for i, v in enumerate(variants[1:], start=1):
            view = dict(v.view.named_modules())
            # every layer quantized
            whole = evaluate(v.view, self.eval_loader, loss_fn, max_batches=mb)
            for name in self.layers:
                w_f, w_q = ref[name].weight, view[name].weight
                delta = (w_q.detach() - w_f.detach()).double()
                row = {"variant": v.name, "layer": name, "n_params": w_f.numel(),
                       "bits": v.specs[name].bits if v.specs and name in v.specs else math.nan,
                       "weight_sqnr_db": sqnr(w_f, w_q), "delta_sq": float((delta ** 2).sum())}
                row["neg_weight_sqnr_db"] = -row["weight_sqnr_db"]
                if traces is not None:
                    row["hawq"] = float(traces.loc[name, "trace_per_param"]) * row["delta_sq"]
                if alphas is not None:
                    row["alpha"] = alphas.iloc[i][name]
                    row["alpha_change"] = abs(row["alpha"] - alphas.iloc[0][name])
                # enable one: FP32 with this layer's weight from the variant
                with swapped(w_f, w_q.detach()):
                    on = evaluate(fp32, self.eval_loader, loss_fn, max_batches=mb)
                # disable one: the variant's view with this layer back at FP32
                with swapped(w_q, w_f.detach()):
                    off = evaluate(v.view, self.eval_loader, loss_fn, max_batches=mb)
                row.update(enable_one_loss=on.loss - f_row["loss"],
                           enable_one_accuracy=f_row["accuracy"] - on.accuracy,
                           disable_one_loss=whole.loss - off.loss,
                           disable_one_accuracy=off.accuracy - whole.accuracy)
                rows.append(row)
                bar.update()
        bar.close()
        return pd.DataFrame(rows)

    # -- showing --------------------------------------------------------------------------
    def plot(self, save_path=None):
        """One multi-panel figure of the last :meth:`run` (:func:`quantlens.plotting.
        plot_diagnostic`); saved to ``save_path`` when given. Returns the figure."""
        from .plotting import plot_diagnostic

        fig = plot_diagnostic(self._result())
        if save_path is not None:
            fig.savefig(save_path, dpi=150)
        return fig

    def report(self, path) -> tuple:
        """Write ``path`` (self-contained HTML) and ``path`` with suffix ``.json``
        (:func:`quantlens.report.write_report`). Returns both paths."""
        from .report import write_report

        return write_report(self._result(), path)

    def _result(self) -> DiagnosticResult:
        if self.result is None:
            raise ValueError("nothing to show yet: call run() first")
        return self.result


def _bits_label(specs, activations) -> str:
    if not specs:
        return "fp32" if activations is None else f"a{activations.bits}"
    labels = sorted({s.label() for s in specs.values()})
    w = labels[0] if len(labels) == 1 else "mixed"
    return w if activations is None else f"{w}, a{activations.bits}"


def _avg_bits(fp32: nn.Module, specs) -> float:
    if not specs:
        return 32.0
    mods = dict(fp32.named_modules())
    n = sum(mods[k].weight.numel() for k in specs)
    return sum(mods[k].weight.numel() * s.bits for k, s in specs.items()) / n


def _derived(table: pd.DataFrame, label_free: bool) -> pd.DataFrame:
    """Ratios to FP32, drops, the measured damage and the verdicts."""
    t = table.copy()
    f = t.iloc[0]
    t["accuracy_drop"] = f["accuracy"] - t["accuracy"]
    t["loss_increase"] = t["loss"] - f["loss"]
    for col in ("lambda_max", "trace", "basin_width"):
        if col in t:
            t[f"{col}_ratio"] = t[col] / f[col] if f[col] != 0 else math.nan
    for col in ("output_sqnr_db", "cosine", "kl", "top1_agreement"):
        if col not in t:
            t[col] = math.nan
    t["top1_disagreement"] = 1.0 - t["top1_agreement"]
    t["embedding_drift"] = 1.0 - t["cosine"]
    if label_free:
        t["accuracy_drop"] = math.nan
    t["compression"] = f["size_mb"] / t["size_mb"]
    t["degraded"] = degraded(t)
    t.loc[0, "degraded"] = pd.NA
    rule = LABEL_FREE_RULE if label_free else CHOSEN_RULE
    t["verdict"] = [verdict(r, rule) for _, r in t.iterrows()]
    t["verdict_seed"] = [verdict(r, SEED_RULE) for _, r in t.iterrows()]
    t.loc[0, ["verdict", "verdict_seed"]] = "reference"
    return t


def grade(layers: pd.DataFrame, target: str = "enable_one_loss") -> pd.DataFrame:
    """Spearman rank correlation of each per-layer metric with the measured damage ``target``:
    ``spearman`` over all (variant, layer) rows, ``spearman_within`` the mean over variants of
    the correlation across that variant's layers (NaN with fewer than 3 layers), ``n``."""
    if target not in layers:
        raise ValueError(f"layers has no column {target!r}")
    rows = []
    for metric, label in GRADED.items():
        if metric not in layers or layers[metric].isna().all():
            continue
        x, y = layers[metric].to_numpy(float), layers[target].to_numpy(float)
        within = [_spearman(g[metric].to_numpy(float), g[target].to_numpy(float))
                  for _, g in layers.groupby("variant", sort=False)]
        within = [w for w in within if np.isfinite(w)]
        rows.append({"metric": metric, "label": label, "spearman": _spearman(x, y),
                     "spearman_within": float(np.mean(within)) if within else math.nan,
                     "n": int((np.isfinite(x) & np.isfinite(y)).sum())})
    return pd.DataFrame(rows)



# ---------------------------------------------------------------------------------------------
# many variants, for validating verdict rules
# ---------------------------------------------------------------------------------------------
def digits_variants(name: str = "cnn", seed: int = 0, bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
                    granularities: Sequence[str] = ("tensor", "channel"),
                    progress: bool = False, **run) -> pd.DataFrame:
    """The variants table of a digits model (:func:`quantlens.trained_digits_model` with
    ``seed``, its own split) quantized at every ``bits`` × ``granularities``, curvature on
    the first 256 training images, outcomes on the test split; columns ``model, seed`` added.
    ``run`` goes to :meth:`QuantDiagnostic.run` (default: no per-layer or α steps; the
    weight-only / activation-only split is kept, so it can be compared over seeds)."""
    from .data import digits_loaders
    from .train import trained_digits_model

    model, _ = trained_digits_model(name, seed=seed)
    train, test = digits_loaders(seed=seed, shuffle_train=False)
    diag = QuantDiagnostic(model, train, eval_loader=test)
    for g in granularities:
        for b in bits:
            diag.add_quantized(b, granularity=g)
    diag.run(**{"per_layer": False, "alpha": False, "progress": progress, **run})
    table = diag.result.variants
    table.insert(0, "seed", seed)
    table.insert(0, "model", f"digits-{name}")
    return table


def encoder_variants(source=None, bits: Sequence[int] = (2, 3, 4, 5, 6, 8),
                     granularities: Sequence[str] = ("tensor", "channel"),
                     progress: bool = False, **run) -> pd.DataFrame:
    """As :func:`digits_variants` for a pretrained sentence encoder (default the embedded
    all-MiniLM-L6-v2) on :data:`quantlens.data.SENTENCES`, label-free (``seed`` = -1: one
    pretrained network)."""
    from .data import sentence_loader
    from .models import Pretrained, load_pretrained

    pre = source if isinstance(source, Pretrained) else load_pretrained(source)
    diag = QuantDiagnostic(pre.model, sentence_loader(pre.tokenizer), hessian_batches=1)
    for g in granularities:
        for b in bits:
            diag.add_quantized(b, granularity=g)
    diag.run(**{"per_layer": False, "alpha": False, "split": False, "progress": progress,
                **run})
    table = diag.result.variants
    table.insert(0, "seed", -1)
    table.insert(0, "model", "all-MiniLM-L6-v2")
    return table
