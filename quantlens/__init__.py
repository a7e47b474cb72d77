"""quantlens: see and measure what quantization does to a neural network.

Modules (one concept each): :mod:`~quantlens.quantize` (simulated quantization, STE, QAT,
error reports), :mod:`~quantlens.alpha` (WeightWatcher's heavy-tailed α across bit widths),
:mod:`~quantlens.data` (embedded digits data, sentences), :mod:`~quantlens.batches` (what a
batch is: any DataLoader, any loss, bounded reading), :mod:`~quantlens.models`
(reference models, pretrained loader), :mod:`~quantlens.landscape` (loss lines, planes,
basin width), :mod:`~quantlens.hessian` (Hessian spectrum, trace, density, per-layer
sharpness), :mod:`~quantlens.train` (seeded training, evaluation, PTQ sweeps),
:mod:`~quantlens.sam` (sharpness-aware minimization, SAM/ASAM),
:mod:`~quantlens.brittleness` (accuracy under weight/input noise, shifts, rotations, FGSM),
:mod:`~quantlens.bitcollapse` (the bit-collapse experiment: SGD vs SAM/ASAM QAT over seeds),
:mod:`~quantlens.sensitivity` (per-layer sensitivity several ways, against measured damage),
:mod:`~quantlens.allocation` (mixed-precision bit allocation under a budget, exact and heuristic),
:mod:`~quantlens.bounds` (the seed's precision theorems 4.7 and 3.4, against measured errors),
:mod:`~quantlens.outcomes` (measured outcomes of a variant: SQNR, output KL, agreement),
:mod:`~quantlens.mixed_precision` (allocations measured: regret against the measured optimum,
configuration-level agreement),
:mod:`~quantlens.diagnose` (QuantDiagnostic: every measure of a model and its variants in one
table, figure and report), :mod:`~quantlens.verdicts` (verdict rules validated against
measured damage),
:mod:`~quantlens.distributed` (the same calls data-parallel under ``torchrun``),
:mod:`~quantlens.guard` (leave the caller's model unchanged), :mod:`~quantlens.plotting`,
:mod:`~quantlens.widgets` and :mod:`~quantlens.testing`.
"""

from . import (
    allocation,
    alpha,
    batches,
    bitcollapse,
    bounds,
    brittleness,
    diagnose,
    distributed,
    hessian,
    landscape,
    mixed_precision,
    numerics,
    outcomes,
    plotting,
    seeds,
    sensitivity,
    tables,
    testing,
    verdicts,
    widgets,
)
from .allocation import Allocation, allocate, memory_budget
from .alpha import (
    AlphaSimilarity,
    AlphaSweep,
    alpha_summary,
    alpha_sweep,
    alpha_vs_similarity,
    encoder_linear_layers,
    layer_kind,
    weightwatcher_analyze,
)
from .batches import BatchLoss, batch_term, output_distance
from .bitcollapse import BitCollapse, CollapseConfig, bit_collapse
from .brittleness import fgsm, measure_brittleness, rotate_images, shift_images
from .data import SENTENCES, DigitsSplit, digits_loaders, load_digits_split, sentence_loader
from .diagnose import DiagnosticResult, QuantDiagnostic, dequantized_view
from .guard import ModelSnapshot, eval_mode, preserved, swapped
from .hessian import (
    EigenResult,
    HessianOperator,
    SpectralDensity,
    TraceEstimate,
    exact_trace,
    hessian_summary,
    hutchinson,
    hutchpp,
    lanczos,
    layer_sharpness,
    power_iteration,
    spectral_density,
    top_eigenvalues,
)
from .landscape import (
    BasinWidth,
    Landscape,
    basin_width,
    basin_widths,
    direction_norm,
    hessian_direction,
    loss_line,
    loss_plane,
    model_difference,
    moved_copy,
    orthogonalize,
    quantization_direction,
    random_direction,
)
from .models import (
    MLP,
    DigitsCNN,
    Pretrained,
    TinyTransformer,
    load_pretrained,
    make_model,
    minilm_path,
)
from .numerics import Numerics, install_kernel, pinned_env, reproducible
from .outcomes import EmbeddingSimilarity, embedding_similarity
from .quantize import (
    GRANULARITIES,
    QUANTIZABLE_LAYERS,
    ActivationFakeQuant,
    QuantError,
    QuantizedTensor,
    QuantSpec,
    WeightFakeQuant,
    calibrate_activations,
    convert_qat,
    error_report,
    fake_quantize,
    integer_linear,
    prepare_qat,
    qparams,
    quantizable_layers,
    quantization_error,
    quantize,
    quantize_dequantize,
    quantize_model,
)
from .sam import SAM
from .seeds import compare_over_seeds, format_spread, over_seeds, seed_spread, verdict_phrase
from .sensitivity import layer_sensitivity, rank_agreement
from .train import Evaluation, evaluate, fit, quantization_sweep, trained_digits_model

__version__ = "0.1.0"

__all__ = [
    "allocation", "bounds", "diagnose", "distributed", "verdicts",
    "DiagnosticResult", "QuantDiagnostic", "dequantized_view",
    "sensitivity", "alpha", "batches", "bitcollapse", "brittleness",
    "hessian", "landscape", "mixed_precision", "numerics", "outcomes", "plotting", "seeds",
    "tables",
    "testing", "widgets",
    "compare_over_seeds", "format_spread", "over_seeds", "seed_spread", "verdict_phrase",
    "BatchLoss", "batch_term", "output_distance", "SAM",
    "BitCollapse", "CollapseConfig", "bit_collapse",
    "Allocation", "allocate", "memory_budget", "layer_sensitivity", "rank_agreement",
    "fgsm", "measure_brittleness", "rotate_images", "shift_images",
    "Numerics", "install_kernel", "pinned_env", "reproducible",
    "AlphaSimilarity", "AlphaSweep", "EmbeddingSimilarity", "SENTENCES", "alpha_summary",
    "alpha_sweep", "alpha_vs_similarity", "embedding_similarity", "encoder_linear_layers",
    "layer_kind", "weightwatcher_analyze",
    "EigenResult", "HessianOperator", "SpectralDensity", "TraceEstimate", "exact_trace",
    "hessian_summary",
    "hutchinson", "hutchpp", "lanczos", "layer_sharpness", "power_iteration",
    "spectral_density", "top_eigenvalues",
    "BasinWidth", "Landscape", "basin_width", "basin_widths", "direction_norm",
    "hessian_direction", "loss_line", "loss_plane", "model_difference", "moved_copy",
    "orthogonalize", "quantization_direction", "random_direction",
    "ActivationFakeQuant", "DigitsCNN", "DigitsSplit", "Evaluation", "GRANULARITIES", "MLP",
    "ModelSnapshot", "Pretrained", "QUANTIZABLE_LAYERS", "QuantError", "QuantSpec",
    "QuantizedTensor", "calibrate_activations", "TinyTransformer", "WeightFakeQuant",
    "convert_qat", "digits_loaders",
    "error_report", "eval_mode", "evaluate", "fake_quantize", "fit", "integer_linear",
    "load_digits_split", "sentence_loader", "load_pretrained", "make_model", "minilm_path",
    "prepare_qat",
    "preserved", "swapped", "qparams", "quantizable_layers", "quantization_error",
    "quantization_sweep",
    "quantize", "quantize_dequantize", "quantize_model", "trained_digits_model",
]
