"""Bit collapse: does sharpness-aware QAT put quantized networks in wider, sturdier basins?

The experiment of "The Geometry of Bit-Collapse" (seed 000), over seeds, bit widths and
optimizers, measured at the deployed (quantized) point.

Protocol, per training seed ``s``:

1. **FP32 start.** ``make_model(config.model, seed=s)`` trained with Adam
   (``config.pretrain_epochs``; cached per process).
2. **Fine-tuning**, for every *setting* and *optimizer*, from a copy of that start:
   ``config.epochs`` epochs of SGD with momentum, plain (``"sgd"``), sharpness-aware
   (``"sam"``, radius ρ) or adaptive sharpness-aware (``"asam"``), batch order seeded by
   ``s``. Settings: ``"fp32"`` (no quantization), ``"int<b>"`` (quantization-aware training,
   STE, of the weights of every Linear/Conv layer at ``b`` bits, symmetric per-tensor by
   default) and ``"int<b>-last"`` (only the last Linear layer, the seed document's setting).
   SAM/ASAM perturb the latent float weights; BatchNorm statistics come from the first pass.
3. **Measures of the deployed model** ``Q(θ)`` (weights rounded, not the latent floats):
   test loss and accuracy; ``λ_max`` (Lanczos) and ``tr H`` (Hutch++) of the training loss
   on a fixed sample of ``config.n_curvature`` training images; basin width along
   ``config.directions`` filter-normalized random directions (the same direction seeds for
   every model) in two modes, *dequantized* (perturb ``Q(θ)`` as floats: the curvature
   picture) and *requantize* (perturb the latent ``θ`` and evaluate ``Q(θ + αd)``: what a
   deployed model computes); brittleness (:mod:`quantlens.brittleness`: weight noise, input
   noise, shifted and rotated digits, FGSM) on the test set; and the bit-collapse curve,
   the latent weights deployed at each of ``config.deploy_bits``.

Every (setting, optimizer, seed) is computed independently from the cached start, so any
subset of the grid reproduces the full run's rows bitwise under pinned numerics.

ρ is not picked by taste: :func:`rho_search` fine-tunes on 1,147 training images with
separate search seeds and scores each ρ on the 200 held-out training images (never the test
set); :func:`best_rho` takes the highest mean validation accuracy (ties: lower loss).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .brittleness import measure_brittleness
from .data import load_digits_split
from .hessian import HessianOperator, hutchpp, lanczos
from .landscape import basin_width, loss_line, random_direction
from .models import make_model
from .quantize import (
    QuantSpec,
    convert_qat,
    prepare_qat,
    quantizable_layers,
    quantize_model,
)
from .train import evaluate, fit

OPTIMIZERS = ("sgd", "sam", "asam")
SETTINGS = ("fp32", "int8", "int4", "int3", "int2", "int8-last")
MODES = ("dequantized", "requantize")
_SETTING = re.compile(r"^(fp32|int(\d+)(-last)?)$")


@dataclass(frozen=True)
class CollapseConfig:
    """Every choice of the experiment (defaults: the book's chapter).

    ``granularity``/``symmetric`` fix the quantizer; ``lr``/``momentum``/``epochs`` the
    fine-tuning; ``n_curvature`` the training images on which λ_max, trace and basin widths
    are measured; ``directions``, ``distance``, ``steps`` and ``threshold`` the basin widths
    (width where the loss first exceeds the line's minimum by ``threshold`` nats; a side that
    never does within ``distance`` is censored at ``distance``).
    """

    model: str = "mlp"
    pretrain_epochs: int = 30
    pretrain_lr: float = 3e-3
    epochs: int = 10
    lr: float = 0.02
    momentum: float = 0.9
    batch_size: int = 64
    granularity: str = "tensor"
    symmetric: bool = True
    n_curvature: int = 256
    lanczos_tol: float = 1e-3
    trace_hvp: int = 30
    directions: int = 16
    distance: float = 1.0
    steps: int = 21
    threshold: float = 0.1
    weight_sigmas: tuple[float, ...] = (0.1, 0.25, 0.5)
    input_sigmas: tuple[float, ...] = (0.1, 0.2, 0.3)
    shifts: tuple[int, ...] = (1,)
    rotations: tuple[float, ...] = (10.0, 20.0)
    fgsm_epsilons: tuple[float, ...] = (0.02, 0.05, 0.1)
    deploy_bits: tuple[int, ...] = (8, 4, 3, 2)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(v, bool) or not isinstance(
                    v, (int, float)) or not np.isfinite(v) or v <= 0):
                raise ValueError(f"{f.name} must be a positive number, got {v!r}")
        QuantSpec(8, self.symmetric, self.granularity)  # validates both


@dataclass(frozen=True)
class Setting:
    """A parsed setting name: ``bits`` (``None`` for FP32) and whether only the last layer
    is quantized."""

    name: str
    bits: int | None
    last_only: bool

    @classmethod
    def parse(cls, name: str) -> Setting:
        m = _SETTING.match(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(f"setting must be 'fp32', 'int<b>' or 'int<b>-last' (e.g. "
                             f"'int4', 'int8-last'), got {name!r}")
        bits = None if m.group(2) is None else int(m.group(2))
        if bits is not None and not 2 <= bits <= 16:
            raise ValueError(f"setting {name!r}: bits must be in [2, 16]")
        return cls(name, bits, m.group(3) is not None)

    def spec(self, model: nn.Module, config: CollapseConfig, bits: int | None = None):
        """The :func:`prepare_qat`/:func:`quantize_model` spec of this setting (at ``bits``
        instead of the setting's own width, if given), or None for FP32."""
        if self.bits is None and bits is None:
            return None
        q = QuantSpec(self.bits if bits is None else bits, config.symmetric, config.granularity)
        return {list(quantizable_layers(model))[-1]: q} if self.last_only else q


def _check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def digits_data(config: CollapseConfig, validation: bool = False):
    """``(train, test, curvature)`` loaders of the default digits split.

    ``validation=True`` (ρ search): train on the first 1,147 training images, ``test`` is
    the remaining 200 training images. ``curvature`` holds the first ``n_curvature``
    training images in one fixed batch.
    """
    key = (config.batch_size, config.n_curvature, validation)
    if key not in _DATA:
        _DATA[key] = _digits_data(config, validation)
    return _DATA[key]


_DATA: dict = {}


def _digits_data(config: CollapseConfig, validation: bool):
    split = load_digits_split()
    x, y = split.x_train, split.y_train
    if validation:
        x, y, xt, yt = x[:-200], y[:-200], x[-200:], y[-200:]
    else:
        xt, yt = split.x_test, split.y_test
    n = min(config.n_curvature, len(y))
    train = DataLoader(TensorDataset(x, y), batch_size=config.batch_size, shuffle=True)
    test = DataLoader(TensorDataset(xt, yt), batch_size=256)
    curvature = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=n)
    return train, test, curvature


_STARTS: dict = {}


def fp32_start(seed: int, config: CollapseConfig = CollapseConfig(),
               validation: bool = False) -> nn.Module:
    """The Adam-trained FP32 starting point of ``seed`` (a fresh copy; cached per process)."""
    key = (seed, config.model, config.pretrain_epochs, config.pretrain_lr, config.batch_size,
           validation)
    if key not in _STARTS:
        train, _, _ = digits_data(config, validation)
        model = make_model(config.model, seed=seed)
        fit(model, train, epochs=config.pretrain_epochs, lr=config.pretrain_lr, seed=seed)
        _STARTS[key] = model
    return copy.deepcopy(_STARTS[key])


def finetune(setting: str, optimizer: str, seed: int, rho: float | None = None,
             config: CollapseConfig = CollapseConfig(), validation: bool = False
             ) -> tuple[nn.Module, nn.Module, pd.DataFrame]:
    """Fine-tune the FP32 start of ``seed`` in one setting with one optimizer.

    Returns ``(deployed, latent, history)``: the deployed model (weights ``Q(θ)``; for FP32
    the trained model), the latent float weights ``θ`` (the point the optimizer moved) and
    the per-epoch training history. ``rho`` is needed for ``"sam"``/``"asam"``.
    """
    s = Setting.parse(setting)
    _check_optimizer(optimizer)
    if optimizer == "sgd":
        rho = None
    elif rho is None:
        raise ValueError(f"optimizer {optimizer!r} needs rho")
    train, _, _ = digits_data(config, validation)
    start = fp32_start(seed, config, validation)
    spec = s.spec(start, config)
    model = start if spec is None else prepare_qat(start, spec)
    history = fit(model, train, epochs=config.epochs, lr=config.lr, seed=seed, optimizer="sgd",
                  momentum=config.momentum, rho=rho, adaptive=optimizer == "asam")
    if spec is None:
        return model, copy.deepcopy(model), history
    return convert_qat(model), convert_qat(model, latent=True), history


def rho_search(
    setting: str = "int4",
    sam_rhos: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    asam_rhos: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
    seeds: Sequence[int] = (100, 101, 102),
    config: CollapseConfig = CollapseConfig(),
    progress: bool = True,
) -> pd.DataFrame:
    """Validation accuracy and loss of SAM and ASAM at each ρ (and SGD, for reference).

    One row per ``(optimizer, rho, seed)``: fine-tuned on 1,147 training images, scored on
    the 200 held-out training images (:func:`digits_data` with ``validation=True``). The
    search seeds differ from the experiment's, so the choice is not tuned on its networks.
    """
    runs = [("sgd", None)] + [("sam", r) for r in sam_rhos] + [("asam", r) for r in asam_rhos]
    _, val, _ = digits_data(config, validation=True)
    rows = []
    for (opt, rho), seed in tqdm([(r, s) for r in runs for s in seeds], desc="ρ search",
                                 disable=not progress, leave=False):
        deployed, _, _ = finetune(setting, opt, seed, rho, config, validation=True)
        ev = evaluate(deployed, val)
        rows.append({"optimizer": opt, "rho": np.nan if rho is None else float(rho),
                     "seed": seed, "val_accuracy": ev.accuracy, "val_loss": ev.loss})
    return pd.DataFrame(rows)


def best_rho(search: pd.DataFrame, optimizers: Sequence[str] = ("sam", "asam")
             ) -> dict[str, float]:
    """``{"sam": ρ, "asam": ρ}``: the highest mean validation accuracy over the search seeds
    (ties broken by the lower mean validation loss, then the smaller ρ)."""
    out = {}
    for opt in optimizers:
        g = search[search.optimizer == opt].groupby("rho")[["val_accuracy", "val_loss"]].mean()
        if g.empty:
            raise ValueError(f"the search has no {opt!r} rows")
        g = g.reset_index().sort_values(["val_accuracy", "val_loss", "rho"],
                                        ascending=[False, True, True])
        out[opt] = float(g.rho.iloc[0])
    return out


def line_width(line, threshold: float) -> tuple[float, int]:
    """Basin width of a 1-D line (:func:`quantlens.basin_width`) with each side that never
    crosses ``L_min + threshold`` counted at the grid's end (a lower bound; censored), and
    the number of censored sides (0, 1 or 2)."""
    b = basin_width(line, threshold)
    i0 = int(np.nanargmin(line.loss))
    ends = (abs(line.alphas[0] - line.alphas[i0]), abs(line.alphas[-1] - line.alphas[i0]))
    sides = [e if np.isnan(v) else v for v, e in zip((b.left, b.right), ends)]
    return float(sum(sides)), int(np.isnan(b.left)) + int(np.isnan(b.right))


def _basins(latent, spec, curvature, config, keep_curves):
    """Basin widths (and optionally the lines) in both modes, one row per direction."""
    rows, curves = [], []
    modes = MODES if spec is not None else ("float",)
    for d in range(config.directions):
        direction = random_direction(latent, seed=d)
        for mode in modes:
            line = loss_line(latent, curvature, direction, config.distance, config.steps,
                             spec=spec, mode=mode, progress=False)
            width, censored = line_width(line, config.threshold)
            for m in MODES if mode == "float" else (mode,):
                rows.append({"mode": m, "direction": d, "width": width, "censored": censored})
                if keep_curves:
                    curves += [{"mode": m, "direction": d, "alpha": float(a), "loss": float(v),
                                "accuracy": float(c)}
                               for a, v, c in zip(line.alphas, line.loss, line.accuracy)]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def measure(deployed: nn.Module, latent: nn.Module, setting: str,
            config: CollapseConfig = CollapseConfig(), keep_curves: bool = True) -> dict:
    """Every measure of one fine-tuned model (see the module docstring).

    Returns a dict of DataFrames: ``scalars`` (one row: test accuracy and loss,
    ``lambda_max``, ``trace``, ``trace_se``), ``basins`` (mode, direction, width, censored),
    ``curves`` (the lines), ``brittleness`` and ``deploy`` (accuracy of the latent weights
    quantized at each of ``config.deploy_bits``).
    """
    s = Setting.parse(setting)
    _, test, curvature = digits_data(config)
    spec = s.spec(latent, config)
    ev = evaluate(deployed, test)
    op = HessianOperator(deployed, curvature)
    lam = float(lanczos(op, 1, tol=config.lanczos_tol, seed=0).eigenvalues[0])
    tr = hutchpp(op, config.trace_hvp, seed=0)
    basins, curves = _basins(latent, spec, curvature, config, keep_curves)
    brittle = measure_brittleness(deployed, test, config.weight_sigmas, config.input_sigmas,
                          config.shifts, config.rotations, config.fgsm_epsilons)
    deploy = []
    for b in config.deploy_bits:
        e = evaluate(quantize_model(latent, s.spec(latent, config, b)), test)
        deploy.append({"deploy_bits": b, "accuracy": e.accuracy, "loss": e.loss})
    scalars = pd.DataFrame([{"test_accuracy": ev.accuracy, "test_loss": ev.loss,
                             "lambda_max": lam, "trace": tr.value, "trace_se": tr.stderr}])
    return {"scalars": scalars, "basins": basins, "curves": curves, "brittleness": brittle,
            "deploy": pd.DataFrame(deploy)}


KEYS = ["setting", "bits", "optimizer", "rho", "seed"]


@dataclass(frozen=True)
class BitCollapse:
    """Result of :func:`bit_collapse`. Every table starts with the model's keys ``setting,
    bits`` (32 for FP32), ``optimizer, rho, seed``.

    ``models``: one row per trained model (test accuracy/loss, final training loss,
    ``lambda_max``, ``trace``, and per mode the median and quartiles of the basin width over
    the directions, ``basin_<mode>``, ``basin_<mode>_q25/_q75``, ``censored_<mode>``);
    ``basins``: one row per model, mode and direction; ``curves``: the 1-D lines;
    ``brittleness``: accuracy per measure and level; ``deploy``: accuracy at each deployed
    bit width; ``search``: the ρ search. :attr:`table` stacks everything as one long tidy
    table ``keys…, metric, level, value``.
    """

    models: pd.DataFrame
    basins: pd.DataFrame
    curves: pd.DataFrame
    brittleness: pd.DataFrame
    deploy: pd.DataFrame
    search: pd.DataFrame
    rho: dict
    config: CollapseConfig = field(repr=False)

    def __repr__(self) -> str:
        m = self.models
        return (f"BitCollapse({len(m)} models: settings {list(dict.fromkeys(m.setting))}, "
                f"optimizers {list(dict.fromkeys(m.optimizer))}, {m.seed.nunique()} seeds, "
                f"ρ {self.rho})")

    @property
    def table(self) -> pd.DataFrame:
        """The long tidy table: one row per model, metric and level."""
        scal = self.models.melt(id_vars=KEYS, var_name="metric", value_name="value")
        scal.insert(len(KEYS) + 1, "level", np.nan)
        b = self.basins.assign(metric="basin_" + self.basins["mode"], level=self.basins.direction,
                               value=self.basins.width)
        r = self.brittleness.assign(metric=self.brittleness.measure,
                                    value=self.brittleness.accuracy)
        d = self.deploy.assign(metric="deploy_accuracy", level=self.deploy.deploy_bits,
                               value=self.deploy.accuracy)
        cols = [*KEYS, "metric", "level", "value"]
        return pd.concat([scal[cols], b[cols], r[cols], d[cols]], ignore_index=True)

    def wide(self) -> pd.DataFrame:
        """``models`` with one column per brittleness measure and level (``fgsm@0.05``) and
        per deployed width (``deploy@4``)."""
        r = self.brittleness.assign(col=self.brittleness.measure + "@"
                                    + self.brittleness.level.map("{:g}".format))
        keys = ["setting", "optimizer", "seed"]
        r = r.pivot_table(index=keys, columns="col", values="accuracy", sort=False)
        d = self.deploy.assign(col="deploy@" + self.deploy.deploy_bits.astype(str)).pivot_table(
            index=keys, columns="col", values="accuracy", sort=False)
        return self.models.merge(r.reset_index(), on=keys).merge(d.reset_index(), on=keys)


def bit_collapse(
    settings: Sequence[str] = SETTINGS,
    optimizers: Sequence[str] = OPTIMIZERS,
    seeds: int | Sequence[int] = 5,
    rho: dict[str, float] | None = None,
    config: CollapseConfig = CollapseConfig(),
    search: pd.DataFrame | None = None,
    curves_for: Sequence[str] | None = None,
    progress: bool = True,
) -> BitCollapse:
    """Run the bit-collapse experiment (module docstring) and return every measure.

    Parameters
    ----------
    settings : sequence of str
        ``"fp32"``, ``"int<b>"``, ``"int<b>-last"``.
    optimizers : sequence of {"sgd", "sam", "asam"}
    seeds : int or sequence of int
        ``n`` means ``0..n-1``; at least 5 before a difference is called a finding.
    rho : dict, optional
        ``{"sam": ρ, "asam": ρ}``; by default chosen by :func:`rho_search` (run here unless
        its table is passed as ``search``) and :func:`best_rho`.
    curves_for : sequence of str, optional
        Settings whose 1-D lines are kept in ``curves`` (default: all).
    """
    from .seeds import _seed_list

    settings = [Setting.parse(s).name for s in settings]
    if not settings or len(set(settings)) != len(settings):
        raise ValueError(f"settings must be distinct and non-empty, got {settings!r}")
    if isinstance(optimizers, str) or not optimizers:
        raise TypeError(f"optimizers must be a sequence of names, got {optimizers!r}")
    for o in optimizers:
        _check_optimizer(o)
    seeds = _seed_list(seeds)
    if not isinstance(config, CollapseConfig):
        raise TypeError(f"config must be a CollapseConfig, got {type(config).__name__}")
    if rho is None and any(o != "sgd" for o in optimizers):
        if search is None:
            search = rho_search(config=config, progress=progress)
        rho = best_rho(search)
    rho = dict(rho or {})
    for o in optimizers:
        if o != "sgd" and (o not in rho or not np.isfinite(rho[o]) or rho[o] < 0):
            raise ValueError(f"rho must give a finite ρ >= 0 for {o!r}, got {rho!r}")
    keep = set(settings if curves_for is None else curves_for)
    parts: dict[str, list] = {k: [] for k in ("models", "basins", "curves", "brittleness",
                                              "deploy")}
    runs = [(s, o, seed) for seed in seeds for s in settings for o in optimizers]
    for setting, opt, seed in tqdm(runs, desc="bit collapse", disable=not progress):
        r = None if opt == "sgd" else rho[opt]
        deployed, latent, history = finetune(setting, opt, seed, r, config)
        out = measure(deployed, latent, setting, config, keep_curves=setting in keep)
        bits = Setting.parse(setting).bits or 32
        key = {"setting": setting, "bits": bits, "optimizer": opt,
               "rho": np.nan if r is None else float(r), "seed": seed}
        row = {**key, **out["scalars"].iloc[0].to_dict(),
               "train_loss": float(history.train_loss.iloc[-1])}
        for mode, g in out["basins"].groupby("mode", sort=False):
            row[f"basin_{mode}"] = float(g.width.median())
            row[f"basin_{mode}_q25"] = float(g.width.quantile(0.25))
            row[f"basin_{mode}_q75"] = float(g.width.quantile(0.75))
            row[f"censored_{mode}"] = int(g.censored.sum())
        parts["models"].append(pd.DataFrame([row]))
        for name in ("basins", "curves", "brittleness", "deploy"):
            if len(out[name]):
                parts[name].append(out[name].assign(**key)[[*KEYS, *out[name].columns]])
    tables = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame(columns=KEYS)
              for k, v in parts.items()}
    return BitCollapse(**tables, search=search if search is not None else pd.DataFrame(),
                       rho=rho, config=config)


# ---------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------
GEOMETRY = ("lambda_max", "trace", "basin_dequantized", "basin_requantize")
BRITTLENESS = ("weight_noise@0.25", "input_noise@0.2", "shift@1", "rotation@10", "fgsm@0.05")


def _wide(result: BitCollapse | pd.DataFrame) -> pd.DataFrame:
    if isinstance(result, BitCollapse):
        return result.wide()
    if isinstance(result, pd.DataFrame):
        return result
    raise TypeError(f"result must be a BitCollapse or its wide() table, got "
                    f"{type(result).__name__}")


def geometry_vs_brittleness(
    result: BitCollapse | pd.DataFrame,
    geometry: Sequence[str] = GEOMETRY,
    brittle: Sequence[str] = BRITTLENESS,
    within: bool = False,
) -> pd.DataFrame:
    """Spearman rank correlation of each geometry measure with each brittleness measure.

    Brittleness is the accuracy *drop* ``clean − disturbed`` (higher = more brittle), so a
    model that is simply inaccurate is not counted as brittle. Across all models
    (``within=False``), or within each setting (``within=True``: the mean of the per-setting
    correlations, which removes what bit width alone explains). One row per pair:
    ``geometry, brittleness, spearman, p_value`` (across all models), ``n``.
    """
    from scipy.stats import spearmanr

    w = _wide(result)
    missing = [c for c in (*geometry, *brittle, "clean@0") if c not in w.columns]
    if missing:
        raise ValueError(f"no column {missing} in the result (columns: {list(w.columns)})")
    rows = []
    for g in geometry:
        for b in brittle:
            drop = w["clean@0"] - w[b]
            if within:
                rs = [spearmanr(grp[g], drop[grp.index]).statistic
                      for _, grp in w.groupby("setting", sort=False)
                      if grp[g].nunique() > 1 and drop[grp.index].nunique() > 1]
                rows.append({"geometry": g, "brittleness": b, "spearman": float(np.mean(rs)),
                             "p_value": np.nan, "n": len(rs)})
            else:
                r = spearmanr(w[g], drop)
                rows.append({"geometry": g, "brittleness": b, "spearman": float(r.statistic),
                             "p_value": float(r.pvalue), "n": len(w)})
    return pd.DataFrame(rows)


def compare(result: BitCollapse | pd.DataFrame, value: str, a: str, b: str,
            by: str | None = None) -> pd.DataFrame:
    """Seed-paired :func:`quantlens.compare_over_seeds` of two models named
    ``"<setting>/<optimizer>"`` (e.g. ``"int8/sgd"`` vs ``"fp32/sgd"``); with ``by="bits"``
    the setting part is omitted and compared at every setting (e.g. ``"sam"`` vs ``"sgd"``).
    """
    from .seeds import compare_over_seeds

    w = _wide(result)
    if by is None:
        w = w.assign(model=w.setting + "/" + w.optimizer)
        return compare_over_seeds(w, value, "model", a, b)
    return compare_over_seeds(w, value, "optimizer", a, b, by=by)


def claims(result: BitCollapse) -> pd.DataFrame:
    """The seed document's statements, one row each, tested over seeds.

    Columns: ``claim`` (the statement), ``measure``, ``a``, ``b`` (the two models compared),
    ``mean_a``, ``mean_b``, ``diff_mean``, ``spread``, ``a_higher``, ``seeds``, ``verdict``
    (of :func:`quantlens.compare_over_seeds`) and ``holds`` (the claim's direction is a
    finding). The seed's own setting (only the last layer at int8) is tested alongside.
    """
    if not isinstance(result, BitCollapse):
        raise TypeError(f"result must be a BitCollapse, got {type(result).__name__}")
    tests = []
    for s in ("int8", "int8-last"):
        tests += [
            ("int8-SGD has a lower λmax than FP32", "lambda_max", f"{s}/sgd", "fp32/sgd", "b"),
            ("int8-SGD sits in a narrower basin than FP32", "basin_requantize", f"{s}/sgd",
             "fp32/sgd", "b"),
            ("int8-SGD sits in a narrower basin than FP32", "basin_dequantized", f"{s}/sgd",
             "fp32/sgd", "b"),
            ("SAM widens the int8 basin", "basin_requantize", f"{s}/sam", f"{s}/sgd", "a"),
            ("SAM makes int8 sturdier against FGSM", "fgsm@0.05", f"{s}/sam", f"{s}/sgd", "a"),
            ("SAM makes int8 sturdier against shifted digits", "shift@1", f"{s}/sam",
             f"{s}/sgd", "a"),
        ]
    rows = []
    present = set(result.models.setting + "/" + result.models.optimizer)
    for claim, value, a, b, expect in tests:
        if a not in present or b not in present:
            continue
        c = compare(result, value, a, b).iloc[0].to_dict()
        want = f"{a} higher" if expect == "a" else f"{b} higher"
        rows.append({"claim": claim, "measure": value, "a": a, "b": b, **c,
                     "holds": c["verdict"] == want})
    return pd.DataFrame(rows)
