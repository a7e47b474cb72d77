"""WeightWatcher's heavy-tailed metrics (``alpha``) of a model at every bit width.

For one weight matrix ``W`` (``N x M`` with ``N >= M`` after transposing) WeightWatcher
(0.7.7, ``WeightWatcher(model).analyze()`` with its defaults) looks at the *empirical spectral
density* (ESD), the ``M`` eigenvalues of the unnormalized correlation matrix

.. math:: X = W^\\top W, \\qquad \\lambda_1 \\le \\dots \\le \\lambda_M
          \\quad (\\lambda_i = \\sigma_i(W)^2,\\ \\text{no } 1/N \\text{ factor}).

A ``Conv2d`` weight ``(c_out, c_in, k_h, k_w)`` gives ``k_h k_w`` matrices ``W[:, :, i, j]``,
each scaled by ``1/\\sqrt 2`` (WeightWatcher's ``conv2d_norm``), whose eigenvalues are pooled
into one ESD of ``M k_h k_w`` values. Linear, Conv1d (2-D weights, as in ``transformers``'
``Conv1D``), Conv2d and Embedding layers are analysed; a layer is skipped by WeightWatcher
(here: reported with NaN metrics and a ``reason``) when it has fewer than ``min_evals`` = 8 or
more than ``max_evals`` = 15000 eigenvalues or ``N > max_N`` = 50000.

The tail of the ESD is fitted by a power law ``p(λ) ∝ λ^{-α}`` for ``λ >= λ_min`` with
WeightWatcher's own fitter (``WeightWatcher.fit_powerlaw``, ``pl_package="ww"``): over the
eigenvalues ``> 1e-5``, every eigenvalue is tried as ``λ_min``, ``α`` is the continuous maximum
likelihood estimate

.. math:: \\hat α = 1 + n \\Big/ \\sum_{λ_j >= λ_{\\min}} \\ln(λ_j / λ_{\\min})

(``n`` eigenvalues in the tail; a bias-corrected variant below 20 eigenvalues) and the ``λ_min``
with the smallest Kolmogorov-Smirnov distance ``D`` between the empirical and fitted tail CDFs
is kept. No ``fix_fingers``, ``randomize`` or MP fit (all off by default in ``analyze``). From
the same eigenvalues:

* ``log_spectral_norm = log10 λ_max``, ``alpha_weighted = α log10 λ_max``,
* ``log_norm = log10 Σλ = log10 ||W||_F^2``, ``stable_rank = Σλ / λ_max``,
* ``log_alpha_norm = log10 Σ λ^α``.

Well-trained layers typically have ``2 <= α <= 6`` (Martin & Mahoney). ``α`` is not a smooth
function of the weights: ``λ_min`` is an argmin over candidates whose ``D`` values can nearly
tie, so a small perturbation (int8 rounding) can move ``λ_min`` and make one layer's ``α`` jump
(:func:`alpha_summary` reports a median per-layer change beside the correlation for this).

:func:`alpha_sweep`
computes these metrics for a model and for its simulated-quantized copies
(:func:`quantlens.quantize.quantize_dequantize` of each analysed weight, symmetric, per tensor,
channel or group) without copying the model: each weight is read once (layer by layer from
safetensors files, so a model larger than memory can be analysed), its baseline ESD computed
once, and all ``(bits, granularity)`` variants made and analysed while it is in memory.
The eigenvalues are those of the ``M x M`` Gram matrix in float64 (``numpy.linalg.eigvalsh``):
the same numbers as WeightWatcher's float64 SVD (on a CPU machine) to ~1e-13 relative, as fast
for square matrices and 2-3x faster for tall ones (1536 x 384, 30522 x 384). On a machine with
CUDA, weightwatcher 0.7.7 itself rounds the weights to float16 and takes float32 GPU SVDs, so
its numbers there differ from these (and from its own CPU numbers) at the ~1e-3 level.

:func:`quantlens.outcomes.embedding_similarity` measures a task signal beside ``α``: how far
the sentence embeddings of a pretrained encoder (all-MiniLM-L6-v2 by default) move when its
Linear layers are quantized; :func:`alpha_vs_similarity` correlates the two.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .distributed import collect, share
from .guard import preserved
from .models import Pretrained, load_pretrained
from .quantize import GRANULARITIES, QuantSpec, quantize_dequantize

if TYPE_CHECKING:
    from .outcomes import EmbeddingSimilarity

#: Defaults of ``WeightWatcher.analyze`` (0.7.7) for which layers are analysed.
WW_MIN_EVALS, WW_MAX_EVALS, WW_MAX_N = 8, 15000, 50000
#: The range of ``α`` WeightWatcher calls well trained (below: over-, above: under-trained).
ALPHA_RANGE = (2.0, 6.0)
DEFAULT_BITS: tuple[int | None, ...] = (None, 8, 6, 5, 4, 3, 2)
METRICS = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "log_norm",
           "log_alpha_norm")
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})  # safetensors dtype names


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlphaSweep:
    """WeightWatcher metrics of every analysed layer at every ``(bits, granularity)``.

    ``layers`` has one row per layer and setting: ``layer, layer_type, layer_id, N, M, rf,
    num_evals, bits, granularity, alpha, alpha_weighted, log_spectral_norm, stable_rank,
    log_norm, log_alpha_norm, xmin, D, num_pl_spikes, reason``. The baseline (unquantized)
    rows have ``bits = <NA>`` and ``granularity = "none"``. ``reason`` says why ``alpha`` is
    NaN (empty when it is not). ``layer_id`` is WeightWatcher's id (index in
    ``model.named_modules()``; for files, 1-based position among the weight tensors).
    """

    layers: pd.DataFrame
    source: str

    def summary(self, layers: Collection[str] | None = None) -> pd.DataFrame:
        """:func:`alpha_summary` of this sweep (optionally over the named layers only)."""
        return alpha_summary(self.layers, layers)

    def __repr__(self) -> str:
        df = self.layers
        n = df.loc[df["bits"].isna(), "layer"].nunique()
        settings = df[["granularity", "bits"]].drop_duplicates().shape[0]
        return f"AlphaSweep({n} layers x {settings} settings, source={self.source})"


@dataclass(frozen=True)
class AlphaSimilarity:
    """Alpha change next to embedding-similarity drop, and their correlations.

    ``table``: one row per quantized setting with the alpha summary (over the layers that the
    similarity run quantized), ``abs_alpha_change_pct``, ``one_minus_alpha_corr``,
    ``cos_mean``, ``cos_min`` and ``similarity_drop``. ``correlation``: Pearson and Spearman
    correlation of each alpha-change measure (``abs_alpha_change_pct``,
    ``one_minus_alpha_corr``, ``alpha_median_abs_change_pct``) with ``similarity_drop``,
    over all settings
    (``granularity = "all"``) and within each granularity, with the number of points ``n``.
    """

    table: pd.DataFrame
    correlation: pd.DataFrame


# ---------------------------------------------------------------------------------------------
# weightwatcher, imported quietly
# ---------------------------------------------------------------------------------------------
@cache
def _ww():
    """The ``weightwatcher.weightwatcher`` module, imported without its side effects.

    Importing weightwatcher 0.7.7 calls ``logging.basicConfig(level=INFO)`` (a root handler),
    logs about CUDA, and ``warnings.simplefilter("ignore")`` for the whole process; all three
    are undone here.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            from weightwatcher import weightwatcher as ww_module
    finally:
        logging.disable(disabled)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return ww_module


@cache
def _watcher():
    ww = _ww()
    with _quiet_ww():
        return ww.WeightWatcher()


@contextlib.contextmanager
def _ww_log_off() -> Iterator[None]:
    """Silence the ``weightwatcher`` logger (a failed fit logs warnings) for the block."""
    log = logging.getLogger(_ww().WW_NAME)
    level = log.level
    if level == logging.CRITICAL:  # already off; setLevel clears every logger's cache
        yield
        return
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _quiet_ww() -> Iterator[None]:
    """Silence weightwatcher's log messages, prints and numpy warnings for the block."""
    with _ww_log_off(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
            np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def weightwatcher_analyze(model: nn.Module) -> pd.DataFrame:
    """WeightWatcher's own ``WeightWatcher(model=model).analyze()`` with its defaults.

    Its log messages, prints and warnings are silenced; rows are indexed by the layer's
    module name (``longname``). This is the independent reference that the baseline rows of
    :func:`alpha_sweep` reproduce (a test checks it to 1e-9); it runs one full analysis per
    call, which is what :func:`alpha_sweep` avoids doing once per quantized copy. The model is
    only read.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ww = _ww()
    with preserved(model), _quiet_ww():
        warnings.simplefilter("ignore")  # scoped by _quiet_ww's catch_warnings
        details = ww.WeightWatcher(model=model).analyze()
    return details.set_index("longname")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous number.

    The sweep alternates torch's element-wise quantization with numpy's BLAS/LAPACK (Gram
    matrix, eigensolver). Both thread pools busy-wait between calls, so on a small machine they
    starve each other (measured on 2 cores: the MiniLM sweep takes 18 s instead of 10 s).
    The quantization is cheap next to the eigensolver, so torch gets one thread.
    """
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# one weight -> ESD -> metrics
# ---------------------------------------------------------------------------------------------
def _dims(layer_type: str, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(N, M, rf)`` as WeightWatcher defines them, or None for an unsupported shape."""
    if layer_type == "conv2d" and len(shape) == 4:
        return max(shape[:2]), min(shape[:2]), shape[2] * shape[3]
    if len(shape) == 2:
        return max(shape), min(shape), 1
    return None


def _skip_reason(layer_type: str, shape: tuple[int, ...], min_evals: int, max_evals: int,
                 max_n: int) -> str:
    dims = _dims(layer_type, shape)
    if dims is None:
        return f"{len(shape)}-D {layer_type} weight {tuple(shape)} is not analysed by WeightWatcher"
    n, m, rf = dims
    if m * rf < min_evals:
        return f"too few eigenvalues: M*rf = {m * rf} < min_evals = {min_evals}"
    if m * rf > max_evals:
        return f"too many eigenvalues: M*rf = {m * rf} > max_evals = {max_evals}"
    if n > max_n:
        return f"matrix too large: N = {n} > max_N = {max_n}"
    return ""


def esd(weight: torch.Tensor, layer_type: str = "dense") -> np.ndarray:
    """Sorted eigenvalues of ``W^T W`` (WeightWatcher's ESD) of one layer weight.

    Parameters
    ----------
    weight : torch.Tensor
        A 2-D weight (Linear ``(out, in)``, Embedding, 2-D Conv1d) or a 4-D Conv2d weight.
    layer_type : {"dense", "embedding", "conv1d", "conv2d"}
        ``"conv2d"`` pools the ``k_h k_w`` matrices ``W[:, :, i, j] / sqrt(2)``.

    Returns
    -------
    numpy.ndarray
        The ``M * rf`` eigenvalues in float64, ascending, clipped at 0.
    """
    w = weight.detach().cpu()
    x = (w if w.dtype == torch.float64 else w.float()).numpy().astype(np.float64)
    if layer_type == "conv2d":
        if x.ndim != 4:
            raise ValueError(f"a conv2d weight must be 4-D, got shape {tuple(x.shape)}")
        mats, scale = x.transpose(2, 3, 0, 1).reshape(-1, x.shape[0], x.shape[1]), 0.5
    else:
        if x.ndim != 2:
            raise ValueError(f"a {layer_type} weight must be 2-D, got shape {tuple(x.shape)}")
        mats, scale = x[None], 1.0
    if mats.shape[1] < mats.shape[2]:
        mats = mats.transpose(0, 2, 1)
    # X = W^T W (M x M): its eigenvalues are sigma(W)^2. For one matrix numpy's `a.T @ a` is a
    # BLAS syrk; eigvalsh is numpy's LAPACK (torch's OpenMP eigvalsh stalls on a busy machine).
    gram = mats[0].T @ mats[0] if len(mats) == 1 else mats.transpose(0, 2, 1) @ mats
    evals = np.linalg.eigvalsh(gram).reshape(-1).clip(min=0.0) * scale
    return np.sort(evals)


def esd_metrics(evals: np.ndarray) -> dict:
    """WeightWatcher's metrics of one ESD (see the module docstring for the formulas).

    The power law is fitted by ``WeightWatcher.fit_powerlaw`` itself. A failed fit (fewer
    than two eigenvalues above 1e-5; WeightWatcher reports ``alpha = -1``) or an all-zero
    ESD gives NaN and a non-empty ``reason``.

    Returns
    -------
    dict
        ``alpha, alpha_weighted, log_spectral_norm, stable_rank, log_norm, log_alpha_norm,
        xmin, D, num_pl_spikes, num_evals, reason``.
    """
    ww = _ww()
    evals = np.asarray(evals, dtype=np.float64)
    out = dict.fromkeys(METRICS + ("xmin", "D"), math.nan)
    out.update(num_pl_spikes=0, num_evals=len(evals), reason="")
    if len(evals) == 0 or not np.all(np.isfinite(evals)):
        return {**out, "reason": "the weight has no finite eigenvalues"}
    norm, lam_max = float(np.sum(evals)), float(np.max(evals))
    if lam_max <= 0.0:
        return {**out, "reason": "all eigenvalues are 0 (zero weight)"}
    out.update(log_norm=math.log10(norm), log_spectral_norm=math.log10(lam_max),
               stable_rank=norm / lam_max)
    with _quiet_ww():
        alpha, _, xmin, _, d_ks, _, spikes, _, _, status, _ = ww.WeightWatcher.fit_powerlaw(
            _watcher(), evals, xmin=None, xmax=None, plot=False, savefig=False,
            fix_fingers=False, fit_type=ww.POWER_LAW, pl_package=ww.WW_POWERLAW_PACKAGE)
        if status == ww.FAILED or not np.isfinite(alpha):
            n_pos = int(np.sum(evals > ww.EVALS_THRESH))
            return {**out, "reason": f"power-law fit failed: {n_pos} eigenvalue(s) > "
                                     f"{ww.EVALS_THRESH:g}"}
        log_alpha_norm = float(np.log10(np.sum(evals ** alpha)))
    alpha = float(alpha)
    out.update(alpha=alpha, alpha_weighted=alpha * out["log_spectral_norm"],
               log_alpha_norm=log_alpha_norm, xmin=float(xmin), D=float(d_ks),
               num_pl_spikes=int(spikes))
    return out


# ---------------------------------------------------------------------------------------------
# where the weights come from: a module, or safetensors files read lazily
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerRef:
    layer_id: int
    name: str
    layer_type: str
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    key: object  # same key -> same tensor (tied weights are analysed once)


def _ww_layer_type(module: nn.Module) -> str | None:
    """WeightWatcher's ``PyTorchLayer.layer_type``: isinstance, or the class path's name."""
    typestr = str(type(module)).lower()
    if isinstance(module, nn.Linear) or "linear" in typestr:
        return "dense"
    if isinstance(module, nn.Conv1d) or "conv1d" in typestr:
        return "conv1d"
    if isinstance(module, nn.Conv2d) or "conv2d" in typestr:
        return "conv2d"
    if isinstance(module, nn.Embedding) or "embedding" in typestr:
        return "embedding"
    return None


def _module_layers(model: nn.Module) -> list[_LayerRef]:
    refs = []
    for layer_id, (name, module) in enumerate(model.named_modules()):
        layer_type = _ww_layer_type(module)
        weight = getattr(module, "weight", None) if layer_type else None
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            continue
        # a Parameter lives as long as the model, so its id identifies tied weights; a computed
        # weight (parametrization) is a new tensor on every access
        key = id(weight) if isinstance(weight, nn.Parameter) else ("computed", name)
        refs.append(_LayerRef(layer_id, name, layer_type, tuple(weight.shape),
                              lambda m=module: m.weight.detach(), key=key))
    return refs


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _file_type(name: str, ndim: int) -> str:
    if ndim == 4:
        return "conv2d"
    if ndim == 3:
        return "conv1d"
    return "embedding" if "embed" in name.lower() else "dense"


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"source file {str(path)!r} is not a .safetensors file")
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"source: {indexes[0].name} has no 'weight_map' object")
        files = [path / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"source: shards listed in {indexes[0].name} are missing: "
                                    f"{missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"source folder {str(path)!r} has no .safetensors file (pytorch_model.bin folders "
            "cannot be streamed; load the model and pass the nn.Module instead)")
    return files


@contextlib.contextmanager
def _file_layers(path: Path) -> Iterator[list[_LayerRef]]:
    """Layer references into safetensors files; each ``load()`` reads one tensor."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        found = {}
        for file in _safetensors_files(path):
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            for key in handle.keys():
                if not key.endswith(".weight") or key in found:
                    continue
                view = handle.get_slice(key)
                shape = tuple(view.get_shape())
                if view.get_dtype() in _FLOAT_DTYPES and 2 <= len(shape) <= 4:
                    found[key] = (handle, shape)
        refs = []
        for i, key in enumerate(sorted(found, key=_natural_key), start=1):
            handle, shape = found[key]
            name = key[: -len(".weight")]
            refs.append(_LayerRef(i, name, _file_type(name, len(shape)), shape,
                                  lambda h=handle, k=key: h.get_tensor(k), key=key))
        yield refs


@contextlib.contextmanager
def _layers_of(source) -> Iterator[tuple[list[_LayerRef], str]]:
    if isinstance(source, Pretrained):
        source = source.model
    if isinstance(source, nn.Module):
        yield _module_layers(source), type(source).__name__
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"source {str(path)!r} does not exist")
        with _file_layers(path) as refs:
            yield refs, str(path)
    else:
        raise TypeError("source must be an nn.Module, a Pretrained, or the path of a "
                        f"safetensors file or model folder, got {type(source).__name__}")


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
def _check_bits(bits) -> list[int]:
    """Quantized bit widths (``None`` entries = the baseline, always included)."""
    if bits is None or isinstance(bits, int):
        bits = (bits,)
    if isinstance(bits, str) or not isinstance(bits, Sequence):
        raise TypeError(f"bits must be a sequence of ints in [2, 16] or None, got {bits!r}")
    out = []
    for b in bits:
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise TypeError(f"bits must contain ints in [2, 16] or None, got {b!r}")
        if not 2 <= b <= 16:
            raise ValueError(f"bits must be in [2, 16] (or None for the baseline), got {b}")
        if int(b) not in out:
            out.append(int(b))
    return out


def _check_granularities(granularities, needed: bool) -> list[str]:
    if isinstance(granularities, str):
        granularities = (granularities,)
    if not isinstance(granularities, Sequence):
        raise TypeError(f"granularities must be a sequence of strings, got {granularities!r}")
    out = []
    for g in granularities:
        if g not in GRANULARITIES:
            raise ValueError(f"granularities: unknown granularity {g!r}; "
                             f"choose from {GRANULARITIES}")
        if g not in out:
            out.append(g)
    if needed and not out:
        raise ValueError("granularities is empty but bits asks for quantized settings")
    return out


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _settings(bits, granularities, group_size) -> list[tuple[int, str, QuantSpec]]:
    _check_positive_int("group_size", group_size)
    qbits = _check_bits(bits)
    grans = _check_granularities(granularities, needed=bool(qbits))
    return [(b, g, QuantSpec(b, granularity=g, group_size=group_size))
            for g in grans for b in qbits]


def _quant_axis(layer_type: str, ndim: int) -> int:
    # transformers' Conv1D (GPT-2) stores (in, out): its output channels are axis 1
    return 1 if layer_type == "conv1d" and ndim == 2 else 0


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------
def alpha_sweep(
    source,
    bits: Sequence[int | None] = DEFAULT_BITS,
    granularities: Sequence[str] = ("tensor", "channel", "group"),
    group_size: int = 128,
    *,
    min_evals: int = WW_MIN_EVALS,
    max_evals: int = WW_MAX_EVALS,
    max_N: int = WW_MAX_N,  # noqa: N803 - WeightWatcher's name
    progress: bool = True,
) -> AlphaSweep:
    """WeightWatcher metrics of every layer, unquantized and at each bit width and granularity.

    For each layer WeightWatcher analyses (Linear, Conv1d, Conv2d, Embedding), the baseline
    metrics are those of ``WeightWatcher(model).analyze()`` (see the module docstring), and for
    each ``b`` in ``bits`` and ``g`` in ``granularities`` those of the ESD of the simulated
    quantized weight ``Q(W) = quantize_dequantize(W, QuantSpec(b, granularity=g))``
    (symmetric; per tensor as in the seed study, per output channel, or per group of
    ``group_size`` inputs of an output channel; Embedding rows count as channels). Each weight
    is read once and its baseline ESD computed once; the per-group ``max|w|`` is computed once
    per granularity and reused for every bit width (the result is bitwise
    ``quantize_dequantize``); settings that are the same quantizer for this weight (per-group
    with ``group_size >=`` fan-in is per-channel; per-channel of one channel is per-tensor)
    share one analysis, as do tied weights. Every analysed layer is quantized; a layer's
    metrics depend only on its own weight, so the summary over a subset of layers
    (:meth:`AlphaSweep.summary`) is the sweep of quantizing only that subset. torch runs on
    one CPU thread during the sweep (see ``_torch_threads``); the setting is restored after.

    Parameters
    ----------
    source : nn.Module, Pretrained, str or Path
        A model (never modified: only its weights are read), or a ``.safetensors`` file, or a
        folder with ``*.safetensors`` files (sharded with ``*.safetensors.index.json`` or not),
        read one tensor at a time so the model is never in memory as a whole. From files,
        every float16/bfloat16/float32/float64 ``*.weight`` tensor with 2-4 dims is a layer:
        4-D is Conv2d, 2-D an Embedding if its name contains "embed", else Linear ("dense";
        the labels only, the metrics do not depend on them); 3-D (Conv1d) weights are listed
        with a reason, as WeightWatcher does not analyse them.
    bits : sequence of int or None
        Bit widths in ``[2, 16]``; ``None`` is the baseline, which is always analysed.
    granularities : sequence of {"tensor", "channel", "group"}
    group_size : int
        Inputs per scale for ``"group"``.
    min_evals, max_evals, max_N : int
        WeightWatcher's layer filters (its defaults). A filtered layer is kept with NaN metrics
        and a ``reason``, as are layers whose power-law fit fails.
    progress : bool
        Show a progress bar over layers.

    Returns
    -------
    AlphaSweep
        ``layers`` DataFrame (one row per layer and setting); ``summary()`` gives the table of
        :func:`alpha_summary`.
    """
    settings = _settings(bits, granularities, group_size)
    for name, value in (("min_evals", min_evals), ("max_evals", max_evals), ("max_N", max_N)):
        _check_positive_int(name, value)
    rows: list[dict] = []
    with _layers_of(source) as (refs, description), _ww_log_off(), _torch_threads(1):
        skips = [_skip_reason(r.layer_type, r.shape, min_evals, max_evals, max_N) for r in refs]
        if not refs or all(skips):
            found = "; ".join(f"{r.name}: {why}" for r, why in zip(refs[:5], skips))
            raise ValueError(f"source {description} has no analysable layer (Linear, Conv1d, "
                             "Conv2d or Embedding weight that WeightWatcher can analyse)"
                             + (f" ({found})" if found else ""))
        done: dict[object, list[dict]] = {}
        # under torch.distributed each rank analyses its share of the layers; the layers'
        # rows are gathered in layer order, as one process makes them
        mine = share(list(enumerate(refs)))
        per_layer = []
        for pos, ref in tqdm(mine, desc="alpha sweep", disable=not progress, leave=False):
            head = {"layer": ref.name, "layer_type": ref.layer_type, "layer_id": ref.layer_id}
            dims = _dims(ref.layer_type, ref.shape)
            head.update(zip(("N", "M", "rf"), dims or (math.nan,) * 3))
            if ref.key not in done:
                done[ref.key] = _analyse_layer(ref, settings, min_evals, max_evals, max_N)
            per_layer.append((pos, [{**head, **r} for r in done[ref.key]]))
        rows = [r for layer_rows in collect(per_layer) for r in layer_rows]
    layers = pd.DataFrame(rows).sort_values("_order", kind="stable").drop(columns="_order")
    layers["bits"] = layers["bits"].astype("Int64")
    if layers.loc[layers["bits"].isna(), "alpha"].isna().all():
        reasons = "; ".join(f"{r.layer}: {r.reason}" for r in
                            layers[layers["bits"].isna()].head(5).itertuples())
        raise ValueError(f"source {description} has no layer WeightWatcher can fit ({reasons})")
    columns = ["layer", "layer_type", "layer_id", "N", "M", "rf", "num_evals", "bits",
               "granularity", *METRICS, "xmin", "D", "num_pl_spikes", "reason"]
    return AlphaSweep(layers=layers[columns].reset_index(drop=True), source=description)


def _analyse_layer(ref: _LayerRef, settings, min_evals, max_evals, max_n) -> list[dict]:
    """Rows (without the layer columns) for the baseline and every setting of one layer."""
    skip = _skip_reason(ref.layer_type, ref.shape, min_evals, max_evals, max_n)
    weight = None
    if not skip:
        weight = ref.load()
        if not bool(torch.isfinite(weight).all()):
            skip = "the weight has NaN or Inf values"
    if skip:
        empty = {**dict.fromkeys(METRICS + ("xmin", "D"), math.nan), "num_pl_spikes": 0,
                 "num_evals": 0, "reason": skip}
        return [{"_order": 0, "bits": None, "granularity": "none", **empty}] + [
            {"_order": i, "bits": b, "granularity": g, **empty}
            for i, (b, g, _) in enumerate(settings, start=1)]
    rows = [{"_order": 0, "bits": None, "granularity": "none",
             **esd_metrics(esd(weight, ref.layer_type))}]
    axis = _quant_axis(ref.layer_type, weight.ndim)
    done: dict[tuple[int, str], dict] = {}
    for i, (b, g, q) in enumerate(_quantized_copies(weight, settings, axis), start=1):
        key = (b, _effective_granularity(weight.shape, g, axis, settings[i - 1][2].group_size))
        if key not in done:  # e.g. per-group with group_size >= fan-in is per-channel, bitwise
            done[key] = esd_metrics(esd(q(), ref.layer_type))
        rows.append({"_order": i, "bits": b, "granularity": g, **done[key]})
    return rows


def _effective_granularity(shape, granularity: str, axis: int, group_size: int) -> str:
    """The coarsest granularity that quantizes a weight of ``shape`` bitwise identically."""
    channels = shape[axis]
    fan_in = math.prod(shape) // channels
    if granularity == "group" and group_size >= fan_in:
        granularity = "channel"  # one group per channel (zero padding changes no max|w|)
    if granularity == "channel" and channels == 1:
        granularity = "tensor"
    return granularity


def _quantized_copies(weight: torch.Tensor, settings, axis: int):
    """``(bits, granularity, thunk)``: ``thunk()`` is ``quantize_dequantize(weight, spec)``
    with the quantization axis of this layer; made lazily, so a setting whose analysis is
    shared with an earlier one (:func:`_effective_granularity`) is never quantized."""
    x = weight.detach()
    for b, g, spec in settings:
        yield b, g, partial(quantize_dequantize, x, replace(spec, axis=axis))


# ---------------------------------------------------------------------------------------------
# the summary table
# ---------------------------------------------------------------------------------------------
def _pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else math.nan


def _spearman(x, y) -> float:
    x, y = pd.Series(np.asarray(x, dtype=np.float64)), pd.Series(np.asarray(y, dtype=np.float64))
    return _pearson(x.rank().to_numpy(), y.rank().to_numpy())


_LAYER_COLUMNS = {"layer", "bits", "granularity", "alpha", "alpha_weighted",
                  "log_spectral_norm", "stable_rank"}


def alpha_summary(layers: pd.DataFrame, names: Collection[str] | None = None) -> pd.DataFrame:
    """The seed study's table: one row per setting, the baseline first.

    ``n_layers``: layers with a finite ``α`` in the setting (``n_failed`` have NaN);
    ``alpha_mean``: their mean ``α`` (as the seed reports it). The changes compare like with
    like, over the layers with a finite ``α`` both in the setting and in the baseline:
    ``alpha_change_pct = 100 (mean α / mean α_base - 1)``, ``alpha_corr`` (Pearson
    correlation across layers of ``α`` with ``α_base``), ``alpha_median_abs_change_pct``
    (median over layers of ``100 |α / α_base - 1|``: robust to the few layers whose power-law
    fit jumps to another ``λ_min``, which dominate ``alpha_corr``), ``alpha_weighted_mean``,
    ``n_in_range``/``pct_in_range`` (layers with ``2 <= α <= 6``, count and percent of
    ``n_layers``), ``n_below_2``, ``n_above_6``, and the
    mean per-layer change against the baseline of ``log_spectral_norm`` and ``stable_rank``
    (``d_log_spectral_norm``, ``d_stable_rank``).

    Parameters
    ----------
    layers : pandas.DataFrame
        :attr:`AlphaSweep.layers`.
    names : collection of str, optional
        Summarize only these layers.
    """
    if not isinstance(layers, pd.DataFrame):
        raise TypeError(f"layers must be a pandas DataFrame, got {type(layers).__name__}")
    missing = _LAYER_COLUMNS - set(layers.columns)
    if missing:
        raise ValueError(f"layers lacks the columns {sorted(missing)} of AlphaSweep.layers")
    if names is not None:
        if isinstance(names, str):
            raise TypeError("names must be a collection of layer names, not a string")
        unknown = sorted(set(names) - set(layers["layer"]))
        if unknown:
            raise ValueError(f"names has layers that are not in layers: {unknown[:5]}")
        layers = layers[layers["layer"].isin(list(names))]
    base = layers[layers["bits"].isna()].set_index("layer")
    if base.empty:
        raise ValueError("layers has no baseline rows (bits = <NA>)")
    lo, hi = ALPHA_RANGE
    rows = []
    for (gran, bits), g in layers.groupby(["granularity", "bits"], sort=False, dropna=False):
        g = g.set_index("layer")
        alpha = g["alpha"].dropna()
        pair = pd.concat([base["alpha"], g["alpha"]], axis=1, keys=["b", "q"]).dropna()
        n = len(alpha)
        n_in = int(((alpha >= lo) & (alpha <= hi)).sum())
        rows.append({
            "granularity": gran, "bits": bits, "n_layers": n, "n_failed": len(g) - n,
            "alpha_mean": alpha.mean(),
            "alpha_change_pct": 100.0 * (pair["q"].mean() / pair["b"].mean() - 1.0),
            "alpha_corr": _pearson(pair["b"], pair["q"]),
            "alpha_median_abs_change_pct": 100.0 * (pair["q"] / pair["b"] - 1.0).abs().median(),
            "alpha_weighted_mean": g["alpha_weighted"].mean(),
            "n_in_range": n_in, "pct_in_range": 100.0 * n_in / n if n else math.nan,
            "n_below_2": int((alpha < lo).sum()), "n_above_6": int((alpha > hi).sum()),
            "d_log_spectral_norm": (g["log_spectral_norm"] - base["log_spectral_norm"]).mean(),
            "d_stable_rank": (g["stable_rank"] - base["stable_rank"]).mean(),
        })
    out = pd.DataFrame(rows)
    out["bits"] = out["bits"].astype("Int64")
    return out


# ---------------------------------------------------------------------------------------------
# a task signal: sentence-embedding similarity
# ---------------------------------------------------------------------------------------------
_KINDS = (  # (pattern in the layer name, kind), first match wins
    ("attention.self.query", "query"), ("attention.self.key", "key"),
    ("attention.self.value", "value"), ("attention.output.dense", "attention out"),
    ("intermediate.dense", "FFN in"), ("output.dense", "FFN out"),
    ("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("o_proj", "attention out"),
    ("gate_proj", "FFN gate"), ("up_proj", "FFN in"), ("down_proj", "FFN out"),
    ("embed", "embedding"), ("pooler", "pooler"), ("lm_head", "head"),
)


def layer_kind(name: str) -> str:
    """The role of a transformer layer from its name: ``query, key, value, attention out,
    FFN in, FFN gate, FFN out, embedding, pooler, head``, or ``other``.

    Knows BERT-style (``attention.self.query``, ``intermediate.dense``, ...) and
    LLaMA/Qwen-style (``q_proj``, ``up_proj``, ``down_proj``, ...) names.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return next((kind for pattern, kind in _KINDS if pattern in name), "other")


def encoder_linear_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers inside ``model.encoder`` (all of them if none)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    encoder = getattr(model, "encoder", None)
    root, prefix = (encoder, "encoder.") if isinstance(encoder, nn.Module) else (model, "")
    names = [prefix + n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no nn.Linear layer to quantize")
    return names


def _as_pretrained(source) -> Pretrained:
    if source is None or isinstance(source, (str, os.PathLike)):
        return load_pretrained(source)
    if isinstance(source, Pretrained):
        return source
    raise TypeError("source must be a Pretrained, a Hugging Face model folder or None (the "
                    f"embedded all-MiniLM-L6-v2), got {type(source).__name__}")


def alpha_vs_similarity(sweep: AlphaSweep | pd.DataFrame,
                        similarity: EmbeddingSimilarity) -> AlphaSimilarity:
    """Correlate the change of ``α`` with the drop of embedding similarity across settings.

    The alpha summary is taken over the layers the similarity run quantized (so both sides
    describe the same quantized model). For every quantized setting present in both:
    ``x = |alpha_change_pct|``, ``x = 1 - alpha_corr`` and ``x = alpha_median_abs_change_pct``
    against
    ``y = similarity_drop = 1 - mean cos``; Pearson ``r`` and Spearman ``ρ`` (Pearson of the
    ranks) over all settings and within each granularity (NaN with fewer than 3 points).
    """
    from .outcomes import EmbeddingSimilarity

    layers = sweep.layers if isinstance(sweep, AlphaSweep) else sweep
    if not isinstance(similarity, EmbeddingSimilarity):
        raise TypeError("similarity must be an EmbeddingSimilarity, got "
                        f"{type(similarity).__name__}")
    summary = alpha_summary(layers, similarity.layers)
    sim = similarity.table[["granularity", "bits", "cos_mean", "cos_min", "similarity_drop"]]
    table = summary.merge(sim, on=["granularity", "bits"], how="inner")
    table = table[table["bits"].notna()].reset_index(drop=True)
    if table.empty:
        raise ValueError("sweep and similarity have no quantized setting in common")
    table.insert(table.columns.get_loc("alpha_change_pct") + 1, "abs_alpha_change_pct",
                 table["alpha_change_pct"].abs())
    table.insert(table.columns.get_loc("alpha_corr") + 1, "one_minus_alpha_corr",
                 1.0 - table["alpha_corr"])
    rows = []
    scopes = [("all", table)] + list(table.groupby("granularity", sort=False))
    for scope, part in scopes:
        for x in ("abs_alpha_change_pct", "one_minus_alpha_corr", "alpha_median_abs_change_pct"):
            ok = part[[x, "similarity_drop"]].dropna()
            rows.append({"granularity": scope, "alpha_measure": x, "n": len(ok),
                         "pearson": _pearson(ok[x], ok["similarity_drop"]),
                         "spearman": _spearman(ok[x], ok["similarity_drop"])})
    return AlphaSimilarity(table=table, correlation=pd.DataFrame(rows))
