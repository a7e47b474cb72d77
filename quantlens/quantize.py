"""Simulated (fake) quantization: quantize-dequantize of tensors and models.

Uniform affine quantization with ``b`` bits maps a real value ``x`` to an integer code

.. math::

    q = \\operatorname{clamp}(\\operatorname{round}(x / s) + z, q_{\\min}, q_{\\max}),
    \\qquad \\hat x = (q - z)\\, s ,

with scale ``s > 0`` and zero point ``z``. ``\\hat x`` is the *dequantized* (simulated) value:
a float that sits exactly on the integer grid, so every analysis of the weights sees the same
numbers an integer kernel would multiply by (see the chapter "Simulated quantization").

* **Symmetric** (seed 003): ``z = 0``, codes ``-(2^{b-1}-1) ... 2^{b-1}-1`` (``2^b - 1`` levels,
  the most negative code is unused so the grid is symmetric), ``s = max|x| / (2^{b-1}-1)``.
* **Asymmetric**: codes ``0 ... 2^b - 1`` (``2^b`` levels), ``s = (max x - min x) / (2^b - 1)``
  and ``z = round(-min x / s)``. As in ``torch.ao.quantization.MinMaxObserver`` the range is
  first widened to contain 0, so zero is exactly representable.

The statistics (``max|x|`` or ``min``/``max``) are taken per tensor, per channel (one scale
for each index along ``axis``) or per group (each channel's fan-in split into contiguous groups
of ``group_size`` values). Rounding is round-half-to-even, and ``x / s`` is computed as
``x * (1/s)`` exactly as PyTorch's ``fake_quantize_per_*_affine`` kernels do, so results agree
with them bitwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, Union

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")

#: Layer types whose ``weight`` is quantized by :func:`quantize_model` and :func:`prepare_qat`.
QUANTIZABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Embedding,
)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor.

    Parameters
    ----------
    bits : int
        Bit width ``b``, an integer in ``[2, 16]``.
    symmetric : bool
        Symmetric (zero point 0, ``2^b - 1`` levels) or asymmetric (``2^b`` levels).
    granularity : {"tensor", "channel", "group"}
        Which elements share one scale: the whole tensor, each index along ``axis``, or each
        contiguous group of ``group_size`` elements of a channel's flattened fan-in.
    axis : int
        Channel axis for ``"channel"`` and ``"group"`` (0 = output channels of Linear/Conv,
        rows of Embedding). Negative values count from the end.
    group_size : int
        Elements per group for ``"group"``. When it does not divide the fan-in, the last group
        of each channel is shorter (implemented by zero padding, which is exact because every
        range already contains 0).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = "tensor"
    axis: int = 0
    group_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits must be an int in [2, 16], got {self.bits!r}")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {self.bits}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {self.symmetric!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def levels(self) -> int:
        """Number of representable levels, ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    def label(self) -> str:
        """Short human-readable name, e.g. ``"int4 sym per-group(32)"``."""
        gran = {"tensor": "per-tensor", "channel": "per-channel"}.get(
            self.granularity, f"per-group({self.group_size})"
        )
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {gran}"


SpecLike = Union[QuantSpec, int]


def as_spec(spec: SpecLike, **defaults) -> QuantSpec:
    """Turn an int bit width (plus keyword defaults) or a :class:`QuantSpec` into a spec."""
    if isinstance(spec, QuantSpec):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        return QuantSpec(bits=spec, **defaults)
    raise TypeError(f"spec must be a QuantSpec or an int bit width, got {type(spec).__name__}")


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes and the parameters that dequantize them.

    ``codes`` has the shape of the original tensor (int32); ``scale`` and ``zero_point`` have
    one entry per scale group (shape ``(n_groups,)``). :meth:`dequantize` returns
    ``(codes - zero_point) * scale`` in the original dtype.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: QuantSpec
    dtype: torch.dtype

    def dequantize(self) -> torch.Tensor:
        """Return the dequantized float tensor ``(q - z) * s``."""
        rows, shape = _group_view(self.codes.to(self.scale.dtype), self.spec)
        deq = (rows - self.zero_point[:, None]) * self.scale[:, None]
        return _ungroup(deq, shape, self.spec).to(self.dtype)


# ---------------------------------------------------------------------------------------------
# grouping: every granularity becomes a 2-D "rows" view, one scale per row
# ---------------------------------------------------------------------------------------------
def _group_view(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple]:
    """Reshape ``x`` to ``(n_groups, group_len)`` so that each row shares one scale."""
    if spec.granularity == "tensor":
        return x.reshape(1, -1), (tuple(x.shape), None)
    if x.ndim == 0:
        raise ValueError(f"granularity {spec.granularity!r} needs a tensor with at least 1 dim")
    if not -x.ndim <= spec.axis < x.ndim:
        raise ValueError(f"axis {spec.axis} is out of range for a tensor of shape {tuple(x.shape)}")
    moved = x.movedim(spec.axis, 0)
    channels = moved.reshape(moved.shape[0], -1)
    if spec.granularity == "channel":
        return channels, (tuple(moved.shape), None)
    fan_in = channels.shape[1]
    pad = (-fan_in) % spec.group_size
    if pad:
        channels = torch.nn.functional.pad(channels, (0, pad))
    return channels.reshape(-1, spec.group_size), (tuple(moved.shape), fan_in)


def _ungroup(rows: torch.Tensor, shape: tuple, spec: QuantSpec) -> torch.Tensor:
    """Inverse of :func:`_group_view`."""
    full_shape, fan_in = shape
    if spec.granularity == "tensor":
        return rows.reshape(full_shape)
    channels = rows.reshape(full_shape[0], -1)
    if fan_in is not None:
        channels = channels[:, :fan_in]
    return channels.reshape(full_shape).movedim(0, spec.axis)


def _check_tensor(x: torch.Tensor, name: str, finite: bool = True) -> None:
    """Type, dtype and size checks; ``finite=False`` leaves the NaN/Inf scan to
    :func:`_rows_qparams`, which sees every value's group extreme anyway (a full scan costs
    as much as the quantization itself on large matrices)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (0 elements): nothing to quantize")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(_NOT_FINITE.format(name=name))


_NOT_FINITE = "{name} contains NaN or Inf values; quantization needs finite values"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision inputs are quantized in float32 and the result cast back.
    return torch.float64 if dtype == torch.float64 else torch.float32


def qparams(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each scale group of ``x``.

    Returns ``(scale, zero_point)``, both of shape ``(n_groups,)``, ``scale`` in float32
    (float64 for float64 input) and ``zero_point`` as integral values in the same dtype.
    Symmetric: ``s = max|x| / q_max``; asymmetric: ``s = (max(x,0) - min(x,0)) / (2^b - 1)``,
    ``z = clamp(round(-min(x,0) / s), 0, 2^b - 1)``. A group of zeros gets ``s = 1`` (it
    quantizes to exact zeros); ``s`` is floored at the dtype's smallest normal number so that
    ``1/s`` stays finite.
    """
    return _rows_qparams(_rows(x, spec)[0], spec)


def _rows(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple]:
    """``x`` in its compute dtype, one row per scale group (see :func:`_group_view`)."""
    return _group_view(x.detach().to(_compute_dtype(x.dtype)), spec)


def _rows_qparams(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`qparams` of an already grouped tensor (one row per scale group)."""
    tiny = torch.finfo(rows.dtype).tiny
    if spec.symmetric:
        amax = rows.abs().amax(dim=1)
        scale = amax / spec.qmax
        zero_point = torch.zeros_like(scale)
    else:
        lo = rows.amin(dim=1).clamp(max=0)
        hi = rows.amax(dim=1).clamp(min=0)
        amax = hi - lo
        scale = amax / (spec.qmax - spec.qmin)
    if not bool(torch.isfinite(scale).all()):  # NaN and ±Inf reach the group extremes
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(_NOT_FINITE.format(name="x"))
        raise ValueError("the range of the tensor overflows its dtype; cannot compute a scale")
    scale = torch.where(amax == 0, torch.ones_like(scale), scale.clamp(min=tiny))
    if not spec.symmetric:
        zero_point = torch.round(-lo / scale).clamp(spec.qmin, spec.qmax)
    return scale, zero_point


def quantize(x: torch.Tensor, spec: SpecLike) -> QuantizedTensor:
    """Quantize ``x`` to integer codes ``q = clamp(round(x/s) + z, q_min, q_max)``.

    Parameters
    ----------
    x : torch.Tensor
        A finite floating-point tensor.
    spec : QuantSpec or int
        The quantization; an int means symmetric per-tensor at that many bits.

    Returns
    -------
    QuantizedTensor
        Codes (int32, shape of ``x``), per-group scale and zero point.
    """
    spec = as_spec(spec)
    _check_tensor(x, "x", finite=False)
    rows, shape = _rows(x, spec)
    scale, zero_point = _rows_qparams(rows, spec)
    codes = _codes(rows, scale[:, None], zero_point[:, None], spec)
    return QuantizedTensor(
        codes=_ungroup(codes, shape, spec).to(torch.int32),
        scale=scale,
        zero_point=zero_point,
        spec=spec,
        dtype=x.dtype,
    )


def _codes(rows, scale, zero_point, spec) -> torch.Tensor:
    # x * (1/s), not x / s: bitwise agreement with torch.fake_quantize_per_*_affine.
    return (torch.round(rows * (1.0 / scale)) + zero_point).clamp(spec.qmin, spec.qmax)


def quantize_dequantize(x: torch.Tensor, spec: SpecLike) -> torch.Tensor:
    """Simulated quantization ``Q(x) = (clamp(round(x/s) + z, q_min, q_max) - z) * s``.

    Returns a new tensor of the dtype and shape of ``x`` whose values lie on the quantization
    grid, so quantizing it again on the same grid (same scale and zero point) returns it
    unchanged. Recomputing the grid from ``Q(x)`` may give another one: an asymmetric grid's
    rounded zero point can clip the extremes by up to ``s/2``, which narrows the range.
    No gradient flows; use :func:`fake_quantize` for training.
    """
    spec = as_spec(spec)
    _check_tensor(x, "x", finite=False)
    rows, shape = _rows(x, spec)  # grouped once, for the scales and the rounding
    scale, zero_point = _rows_qparams(rows, spec)
    s, z = scale[:, None], zero_point[:, None]
    # same arithmetic as quantize() + dequantize(), fused in place (one temporary)
    out = rows.mul(1.0 / s).round_().add_(z).clamp_(spec.qmin, spec.qmax).sub_(z).mul_(s)
    return _ungroup(out, shape, spec).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# straight-through estimator
# ---------------------------------------------------------------------------------------------
class _FakeQuantSTE(torch.autograd.Function):
    """Forward: ``Q(x)``. Backward: clipped straight-through estimator.

    ``dQ/dx`` is taken as 1 where ``round(x/s) + z`` lies inside ``[q_min, q_max]`` and 0 where
    it was clipped, which is the gradient of ``torch.fake_quantize_per_*_affine``.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, spec):  # noqa: D401
        rows, shape = _group_view(x.to(scale.dtype), spec)
        unclipped = torch.round(rows * (1.0 / scale[:, None])) + zero_point[:, None]
        mask = (unclipped >= spec.qmin) & (unclipped <= spec.qmax)
        codes = unclipped.clamp(spec.qmin, spec.qmax)
        out = (codes - zero_point[:, None]) * scale[:, None]
        ctx.save_for_backward(_ungroup(mask, shape, spec))
        return _ungroup(out, shape, spec).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        return grad_out * mask.to(grad_out.dtype), None, None, None


def fake_quantize(
    x: torch.Tensor,
    spec: SpecLike,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable fake quantization with the straight-through estimator (STE).

    Forward it equals :func:`quantize_dequantize`; backward it passes the incoming gradient
    unchanged for elements inside the clipping range and zeroes it for clipped elements
    (the "clipped STE" of Bengio et al., 2013, also used by PyTorch). With ``scale`` computed
    from ``x`` itself (the default, right for weights) nothing is clipped and the STE is the
    identity; activations use a fixed or running ``scale`` where clipping does happen.

    Parameters
    ----------
    x : torch.Tensor
        Floating-point tensor (weights or activations).
    spec : QuantSpec or int
        The quantization.
    scale, zero_point : torch.Tensor, optional
        Per-group parameters of shape ``(n_groups,)`` (or scalars for per-tensor). Computed
        from ``x`` (detached) when omitted.
    """
    spec = as_spec(spec)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if scale is None:
        _check_tensor(x, "x")
        scale, zero_point = qparams(x, spec)
    else:
        scale = torch.as_tensor(scale, dtype=_compute_dtype(x.dtype), device=x.device).reshape(-1)
        if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError("scale must be positive and finite")
        zero_point = (
            torch.zeros_like(scale)
            if zero_point is None
            else torch.as_tensor(zero_point, dtype=scale.dtype, device=x.device).reshape(-1)
        )
    return _FakeQuantSTE.apply(x, scale, zero_point, spec)


class WeightFakeQuant(nn.Module):
    """Parametrization that fake-quantizes a weight on every access (for QAT).

    Registered with :func:`torch.nn.utils.parametrize.register_parametrization`, so the latent
    float weight is trained and the layer computes with ``Q(W)``.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.spec)

    def extra_repr(self) -> str:
        return self.spec.label()


class ActivationFakeQuant(nn.Module):
    """Fake-quantize activations with a running min/max range (per tensor).

    In training mode the range is an exponential moving average of each batch's min and max
    (``momentum``); in eval mode the stored range is used. Gradients use the clipped STE, so
    values outside the running range get zero gradient.
    """

    def __init__(self, spec: QuantSpec, momentum: float = 0.1) -> None:
        super().__init__()
        if spec.granularity != "tensor":
            raise ValueError("activation quantization supports granularity='tensor' only")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.spec = spec
        self.momentum = momentum
        self.register_buffer("running_min", torch.tensor(0.0))
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if not bool(self.initialized):
                    self.running_min.copy_(lo)
                    self.running_max.copy_(hi)
                    self.initialized.fill_(True)
                else:
                    self.running_min.lerp_(lo, self.momentum)
                    self.running_max.lerp_(hi, self.momentum)
        ref = torch.stack([self.running_min, self.running_max]).to(x.dtype)
        scale, zero_point = qparams(ref, self.spec)
        return fake_quantize(x, self.spec, scale, zero_point)

    def extra_repr(self) -> str:
        return self.spec.label()


# ---------------------------------------------------------------------------------------------
# model level
# ---------------------------------------------------------------------------------------------
BitMap = Union[SpecLike, Mapping[str, SpecLike]]


def quantizable_layers(
    model: nn.Module, layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS
) -> dict[str, nn.Module]:
    """Named modules of ``model`` whose weight is quantized (Linear, Conv1d/2d, Embedding)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, layer_types) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }


def resolve_specs(
    model: nn.Module,
    spec: BitMap,
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS,
    **defaults,
) -> dict[str, QuantSpec]:
    """Map each layer to be quantized to its :class:`QuantSpec`.

    ``spec`` is one spec/int for every quantizable layer, or a mapping ``layer name -> spec``
    (mixed precision); layers absent from a mapping stay in full precision. ``defaults``
    (e.g. ``granularity="channel"``) complete int entries.
    """
    layers = quantizable_layers(model, layer_types)
    if not layers:
        raise ValueError(
            "model has no quantizable layer (Linear, Conv1d, Conv2d or Embedding with a weight)"
        )
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(layers))
        if unknown:
            raise ValueError(
                f"spec names layers that are not quantizable layers of the model: {unknown}"
            )
        return {name: as_spec(s, **defaults) for name, s in spec.items()}
    s = as_spec(spec, **defaults)
    return {name: s for name in layers}


def _layer_spec(module: nn.Module, spec: QuantSpec) -> QuantSpec:
    """Per-layer spec adjustments: ``axis`` must exist in the weight."""
    ndim = module.weight.ndim
    if spec.granularity != "tensor" and not -ndim <= spec.axis < ndim:
        return replace(spec, axis=0)
    return spec


def quantize_model(
    model: nn.Module,
    spec: BitMap,
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS,
    **defaults,
) -> nn.Module:
    """Return a copy of ``model`` whose layer weights are replaced by ``Q(W)``.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    spec : QuantSpec, int or mapping
        One spec for all Linear/Conv1d/Conv2d/Embedding weights, or a per-layer mapping
        ``{module name: spec or bits}`` (mixed precision; unlisted layers stay float).
    layer_types : tuple of module types
        Which layers count as quantizable.
    **defaults
        Fields completing int specs (e.g. ``granularity="channel"``).

    Returns
    -------
    nn.Module
        A deep copy with dequantized weights (same dtype/device), biases unquantized.
    """
    specs = resolve_specs(model, spec, layer_types, **defaults)
    layers = quantizable_layers(model, layer_types)
    for name in specs:
        _check_layer_weight(name, layers[name].weight)
    qmodel = copy.deepcopy(model)
    qlayers = quantizable_layers(qmodel, layer_types)
    with torch.no_grad():
        for names in tied_groups(qmodel, specs, layer_types).values():
            layer = qlayers[names[0]]
            w = layer.weight
            w.copy_(quantize_dequantize(w, _layer_spec(layer, specs[names[0]])))
    return qmodel


def tied_groups(
    model: nn.Module,
    specs: Mapping[str, QuantSpec],
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS,
) -> dict[int, list[str]]:
    """Group the layers of ``specs`` by the weight tensor they share (tied weights, e.g. an
    embedding tied to the output projection), so a shared weight is quantized once, ``Q(W)``
    rather than ``Q(Q(W))``. Raises ValueError when tied layers are given different specs
    (one tensor cannot hold two quantization grids)."""
    layers = quantizable_layers(model, layer_types)
    groups: dict[int, list[str]] = {}
    for name in specs:
        groups.setdefault(id(layers[name].weight), []).append(name)
    for names in groups.values():
        first = _layer_spec(layers[names[0]], specs[names[0]])
        for other in names[1:]:
            if _layer_spec(layers[other], specs[other]) != first:
                raise ValueError(
                    f"spec: layers {names[0]!r} and {other!r} share one weight tensor (tied) "
                    f"but are given different specs ({specs[names[0]].label()} vs "
                    f"{specs[other].label()}); give tied layers the same spec"
                )
    return groups


def _check_layer_weight(name: str, w: torch.Tensor) -> None:
    try:
        _check_tensor(w, "weight")
    except (TypeError, ValueError) as err:
        raise type(err)(f"layer {name!r}: {err}") from None


def prepare_qat(
    model: nn.Module,
    spec: BitMap,
    activations: QuantSpec | int | None = None,
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS,
    **defaults,
) -> nn.Module:
    """Return a copy of ``model`` ready for quantization-aware training.

    Each selected layer's ``weight`` becomes a parametrization ``W -> fake_quantize(W)``
    (:class:`WeightFakeQuant`), so the optimizer updates the latent float weights while the
    forward pass uses ``Q(W)`` and gradients use the STE. With ``activations``, the input of
    every selected Linear/Conv layer is fake-quantized by an :class:`ActivationFakeQuant`
    stored as ``layer.input_quant``. :func:`convert_qat` freezes the result.
    """
    specs = resolve_specs(model, spec, layer_types, **defaults)
    act_spec = None if activations is None else as_spec(activations)
    qat = copy.deepcopy(model)
    tied_groups(qat, specs, layer_types)  # a shared latent weight: one spec for its layers
    layers = quantizable_layers(qat, layer_types)
    for name, s in specs.items():
        layer = layers[name]
        _check_layer_weight(name, layer.weight)
        quantizer = WeightFakeQuant(_layer_spec(layer, s))
        parametrize.register_parametrization(layer, "weight", quantizer)
        if act_spec is not None and not isinstance(layer, nn.Embedding):
            layer.input_quant = ActivationFakeQuant(act_spec)
            layer.register_forward_pre_hook(_quantize_input)
    return qat


def calibrate_activations(model: nn.Module, loader, seed: int = 0,
                          max_batches: int | None = None) -> nn.Module:
    """Set the ranges of a :func:`prepare_qat` model's activation quantizers from data.

    Runs ``model`` over ``loader`` in training mode without gradients (so every
    :class:`ActivationFakeQuant` updates its running min/max), then puts it in eval mode.
    Only the observers' buffers change (and BatchNorm statistics, if the model has any). The
    torch RNG is seeded for the pass (a shuffling loader then gives the same ranges every
    time) and restored afterwards. The model is called on each batch's inputs (the first
    element of a tuple, the model's keywords of a mapping, as :mod:`quantlens.batches`); at
    most ``max_batches`` batches are read. Returns ``model``.
    """
    from .batches import _call_inputs, _device, iterate_batches, to_device

    batches = iterate_batches(loader, max_batches)
    if not any(isinstance(m, ActivationFakeQuant) for m in model.modules()):
        raise ValueError("model has no activation quantizer: use prepare_qat(..., activations=)")
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    device = _device(model)
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                _call_inputs(model, to_device(batch, device))
    finally:
        torch.random.set_rng_state(rng)
        model.eval()
    return model


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quant(args[0]),) + tuple(args[1:])


def convert_qat(model: nn.Module, latent: bool = False) -> nn.Module:
    """Return a copy of a :func:`prepare_qat` model with weights frozen to ``Q(W)``.

    Parametrizations are removed (keeping the quantized values) so the result is a plain
    model whose weights lie on the quantization grid. Activation quantizers stay in place.
    With ``latent=True`` the copy keeps the latent float weights ``W`` instead (the point the
    optimizer moved; ``Q`` of it is the deployed model), e.g. for a line FP32 -> QAT with
    :func:`quantlens.landscape.model_difference` in ``mode="requantize"``.
    """
    out = copy.deepcopy(model)
    for module in out.modules():
        if parametrize.is_parametrized(module, "weight"):
            # A deep copy shares torch's dynamically created "Parametrized<Layer>" class with
            # the original, and removal deletes the property from that class: give the copy
            # its own class first so the caller's QAT model keeps working.
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=not latent)
    return out


# ---------------------------------------------------------------------------------------------
# error report
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantError:
    """Error of ``Q(x)`` against ``x``.

    Attributes
    ----------
    mse : float
        ``mean((Q(x) - x)^2)``.
    rmse : float
        ``sqrt(mse)``.
    rms_law : float
        Uniform-noise prediction ``sqrt(mean_i s_i^2 / 12)`` (``s_i`` the scale of element i);
        for a single scale it is ``s / sqrt(12)``.
    max_abs_error : float
        ``max |Q(x) - x|``; at most ``max s / 2`` because every range contains the tensor.
    max_error_bound : float
        ``max_i s_i / 2``.
    snr_db : float
        ``10 log10(sum x^2 / sum (Q(x)-x)^2)`` (``inf`` for an exact result).
    levels_used, levels_available : int
        Distinct integer codes present, and ``2^b - 1`` (symmetric) or ``2^b``.
    n_scales : int
        Number of scale groups.
    memory_bits : int
        Storage at this bit width: ``b * numel + scale_bits * n_scales``
        ``(+ b * n_scales`` zero points when asymmetric).
    numel : int
        Number of elements.
    """

    mse: float
    rmse: float
    rms_law: float
    max_abs_error: float
    max_error_bound: float
    snr_db: float
    levels_used: int
    levels_available: int
    n_scales: int
    memory_bits: int
    numel: int

    @property
    def rmse_over_law(self) -> float:
        """``rmse / rms_law`` (1 when the uniform-noise model holds)."""
        return self.rmse / self.rms_law

    @property
    def bits_per_element(self) -> float:
        """Effective storage bits per element including scales and zero points."""
        return self.memory_bits / self.numel


def quantization_error(x: torch.Tensor, spec: SpecLike, scale_bits: int = 32) -> QuantError:
    """Measure the error of quantizing ``x`` with ``spec`` (see :class:`QuantError`).

    ``scale_bits`` is the storage width of each scale (32 for FP32, 16 for FP16 scales).
    """
    if isinstance(scale_bits, bool) or not isinstance(scale_bits, int) or \
            not 1 <= scale_bits <= 64:
        raise ValueError(f"scale_bits must be an int in [1, 64], got {scale_bits!r}")
    spec = as_spec(spec)
    qt = quantize(x, spec)
    ref = x.detach().to(qt.scale.dtype)
    err = qt.dequantize().to(qt.scale.dtype) - ref
    rows, _ = _group_view(torch.ones_like(ref), spec)
    # element-wise scale^2 (padding of the last group excluded via the ones mask)
    s2 = (rows * qt.scale[:, None] ** 2).sum() / ref.numel()
    sq = float((err.double() ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    n = ref.numel()
    zp_bits = 0 if spec.symmetric else spec.bits * qt.scale.numel()
    return QuantError(
        mse=sq / n,
        rmse=math.sqrt(sq / n),
        rms_law=math.sqrt(float(s2) / 12),
        max_abs_error=float(err.abs().max()),
        max_error_bound=float(qt.scale.max()) / 2,
        snr_db=math.inf if sq == 0 else (10 * math.log10(signal / sq) if signal > 0 else -math.inf),
        levels_used=int(torch.unique(qt.codes).numel()),
        levels_available=spec.levels,
        n_scales=qt.scale.numel(),
        memory_bits=spec.bits * n + scale_bits * qt.scale.numel() + zp_bits,
        numel=n,
    )


def error_report(
    model: nn.Module,
    spec: BitMap,
    layer_types: tuple[type[nn.Module], ...] = QUANTIZABLE_LAYERS,
    scale_bits: int = 32,
    **defaults,
) -> pd.DataFrame:
    """Per-layer quantization error of a model's weights (the model is not modified).

    Returns a DataFrame indexed by layer name with columns ``type, shape, numel, spec`` and the
    fields of :class:`QuantError` (plus ``rmse_over_law``, ``bits_per_element`` and
    ``fp32_bits``, the FP32 storage of the same weights).
    """
    specs = resolve_specs(model, spec, layer_types, **defaults)
    tied_groups(model, specs, layer_types)  # tied layers: one spec, reported as Q(W) each
    layers = quantizable_layers(model, layer_types)
    rows = []
    for name, s in specs.items():
        layer = layers[name]
        _check_layer_weight(name, layer.weight)
        e = quantization_error(layer.weight, _layer_spec(layer, s), scale_bits=scale_bits)
        row = {
            "layer": name,
            "type": type(layer).__name__,
            "shape": tuple(layer.weight.shape),
            "spec": s.label(),
            "bits": s.bits,
        }
        row.update(e.__dict__)
        row["rmse_over_law"] = e.rmse_over_law
        row["bits_per_element"] = e.bits_per_element
        row["fp32_bits"] = 32 * e.numel
        rows.append(row)
    return pd.DataFrame(rows).set_index("layer")


# ---------------------------------------------------------------------------------------------
# integer arithmetic: what simulated quantization stands in for
# ---------------------------------------------------------------------------------------------
def integer_linear(x: torch.Tensor, weight: QuantizedTensor, act_bits: int = 8) -> torch.Tensor:
    """A Linear layer (no bias) computed the way an integer kernel does.

    The input is quantized symmetric per tensor to ``act_bits`` (codes ``q_x``, scale
    ``s_x``); products of integer codes are accumulated in int64 per scale group ``g``:

    .. math:: y_{n,o} = s_x \\sum_g s_{o,g} \\sum_{i \\in g} (q_{w,oi} - z_{o,g})\\, q_{x,ni}

    ``weight`` must be a 2-D weight quantized per tensor, per channel along axis 0, or per
    group along axis 0. The result equals ``F.linear(Q(x), Q(W))`` up to float rounding.
    """
    spec = weight.spec
    if weight.codes.ndim != 2 or (spec.granularity != "tensor" and spec.axis not in (0, -2)):
        raise ValueError("integer_linear needs a 2-D weight quantized along axis 0")
    qx = quantize(x, QuantSpec(act_bits))
    out_f, in_f = weight.codes.shape
    g = in_f if spec.granularity != "group" else spec.group_size
    n_g = -(-in_f // g)
    pad = n_g * g - in_f
    wq = torch.nn.functional.pad(weight.codes.long(), (0, pad))
    xq = torch.nn.functional.pad(qx.codes.long(), (0, pad)).reshape(-1, n_g, g)
    scale = weight.scale.double().reshape(-1, 1).expand(-1, n_g) if spec.granularity == "tensor" \
        else weight.scale.double().reshape(out_f, -1).expand(out_f, n_g)
    zp = weight.zero_point.double().reshape(-1, 1).expand(-1, n_g) if spec.granularity == "tensor" \
        else weight.zero_point.double().reshape(out_f, -1).expand(out_f, n_g)
    wq = wq.reshape(out_f, n_g, g)
    # integer accumulation per group: sum_i q_w q_x and sum_i q_x (for the zero point)
    acc = torch.einsum("ogi,ngi->nog", wq, xq)
    xsum = xq.sum(dim=2)[:, None, :]
    y = ((acc.double() - zp[None] * xsum.double()) * scale[None]).sum(dim=2)
    return (y * qx.scale.double()).to(x.dtype)
