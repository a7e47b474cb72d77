"""Mixed precision, measured: allocations from each sensitivity measure against the truth.

:mod:`quantlens.sensitivity` predicts each layer's damage; :mod:`quantlens.allocation` turns
predictions into widths. This module measures what the result is worth on a real model:

* :func:`evaluate_allocations`: for each budget, each measure and each allocator, the
  allocation's measured loss and accuracy (and the uniform widths the budget allows);
* :func:`measured_optimum`: the best allocation by the *measured* loss, by brute force over
  every configuration (small models only), the yardstick for the regret of the others;
* :func:`configuration_agreement`: FIT-style check at the configuration level, Kendall τ
  between each measure's predicted damage ``Σ_ℓ c_ℓ(b_ℓ)`` and the measured loss increase
  over random mixed-precision configurations.

Nothing here changes the model: every configuration is a quantized copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .allocation import allocate, memory_budget
from .distributed import collect, share
from .quantize import QuantSpec, quantize_model
from .sensitivity import cost_table
from .train import evaluate


def _measure(model, loader, bits: Mapping[str, int], loss_fn, defaults) -> tuple[float, float]:
    q = quantize_model(model, {n: QuantSpec(int(b), **defaults) for n, b in bits.items()})
    ev = evaluate(q, loader, loss_fn)
    return ev.loss, ev.accuracy


def evaluate_allocations(
    model: nn.Module,
    loader: DataLoader,
    table: pd.DataFrame,
    average_bits: Sequence[float],
    measures: Sequence[str] = ("kappa_cost", "hawq", "fisher", "delta_sq", "oracle_loss"),
    methods: Sequence[str] = ("exact", "monotone", "greedy", "proportional", "relaxed"),
    loss_fn=nn.functional.cross_entropy,
    progress: bool = False,
    **defaults,
) -> pd.DataFrame:
    """Measured loss and accuracy of every (budget, measure, method) allocation.

    ``table`` is a :func:`quantlens.layer_sensitivity` table of ``model`` (its ``bits`` are
    the allowed widths, its ``n_params`` the memory weights); budgets are average bits per
    weight. ``"proportional"``/``"relaxed"`` use the seed's score (``kappa``) whatever the
    measure, so they are run once, as measure ``"kappa_cost"``; ``"monotone"`` orders the layers
    by their mean cost over the widths (least sensitive first), as NNCF orders by trace.
    Uniform widths are added as method ``"uniform"`` where a budget is a width of
    ``table``. Returns one row per allocation:
    ``average_bits`` (the budget), ``measure, method, used_bits`` (achieved average),
    ``predicted`` (the allocation's cost), ``loss, accuracy, bits`` (a ``{layer: width}``
    dict).
    """
    sizes = table.drop_duplicates("layer").set_index("layer").n_params.astype(int).to_dict()
    kappa = table.drop_duplicates("layer").set_index("layer").kappa.to_dict()
    widths = sorted(table.bits.unique())
    runs = []
    for avg in average_bits:
        if avg in widths:
            runs.append((avg, "uniform", "uniform"))
        for m in measures:
            for method in methods:
                if method in ("proportional", "relaxed") and m != "kappa_cost":
                    continue
                runs.append((avg, m, method))
    rows = []
    for avg, m, method in tqdm(runs, desc="allocations", disable=not progress, leave=False):
        if method == "uniform":
            bits = {n: int(avg) for n in sizes}
            predicted, used = np.nan, float(avg)
        else:
            scores = kappa if method in ("proportional", "relaxed") else None
            costs = cost_table(table, m)
            # NNCF's HAWQ rule: widths never decrease with the measure's sensitivity order
            order = list(costs.mean(axis=1).sort_values(kind="stable").index)
            a = allocate(costs, sizes, memory_budget(sizes, average_bits=avg), method,
                         scores=scores, order=order)
            bits, predicted, used = a.bits, a.cost, a.average_bits
        loss, acc = _measure(model, loader, bits, loss_fn, defaults)
        rows.append({"average_bits": float(avg), "measure": m, "method": method,
                     "used_bits": used, "predicted": predicted, "loss": loss,
                     "accuracy": acc, "bits": bits})
    return pd.DataFrame(rows)


def _configurations(layers: list[str], widths: list[int]) -> list[dict[str, int]]:
    return [dict(zip(layers, c)) for c in itertools.product(widths, repeat=len(layers))]


def measured_optimum(
    model: nn.Module,
    loader: DataLoader,
    sizes: Mapping[str, int],
    widths: Sequence[int],
    average_bits: Sequence[float],
    loss_fn=nn.functional.cross_entropy,
    progress: bool = False,
    max_configurations: int = 5000,
    **defaults,
) -> pd.DataFrame:
    """The allocation with the lowest *measured* loss at each budget, by evaluating every
    configuration of ``widths`` over the layers of ``sizes`` (``|widths|^layers`` of them).

    Returns one row per budget: ``average_bits, used_bits, loss, accuracy, bits`` and
    ``n_configurations``.
    """
    layers = list(sizes)
    n = len(widths) ** len(layers)
    if n > max_configurations:
        raise ValueError(f"{n} configurations exceed max_configurations={max_configurations}")
    total = float(sum(sizes.values()))
    measured = []
    # under torch.distributed each rank measures its share of the configurations
    for i, bits in tqdm(share(list(enumerate(_configurations(layers, list(widths))))),
                        desc="configurations", disable=not progress, leave=False):
        loss, acc = _measure(model, loader, bits, loss_fn, defaults)
        used = sum(sizes[k] * b for k, b in bits.items()) / total
        measured.append((i, (used, loss, acc, bits)))
    measured = collect(measured)
    rows = []
    for avg in average_bits:
        feasible = [m for m in measured if m[0] <= avg * (1 + 1e-12)]
        if not feasible:
            raise ValueError(f"no configuration fits {avg} bits on average")
        used, loss, acc, bits = min(feasible, key=lambda m: (m[1], m[0]))
        rows.append({"average_bits": float(avg), "used_bits": used, "loss": loss,
                     "accuracy": acc, "bits": bits, "n_configurations": n})
    return pd.DataFrame(rows)


def configuration_agreement(
    model: nn.Module,
    loader: DataLoader,
    table: pd.DataFrame,
    n_configurations: int = 100,
    measures: Sequence[str] = ("kappa_cost", "hawq", "fisher", "delta_sq", "oracle_loss"),
    seed: int = 0,
    loss_fn=nn.functional.cross_entropy,
    progress: bool = False,
    **defaults,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kendall τ between predicted and measured damage over random configurations.

    Each configuration draws every layer's width uniformly from ``table``'s widths (seeded);
    its predicted damage under a measure is ``Σ_ℓ c_ℓ(b_ℓ)`` (additivity is what every
    allocator assumes), its measured damage the loss increase over the unquantized model.
    Returns ``(agreement, configurations)``: one row per measure (``kendall, spearman, n``)
    and one row per configuration (``loss_increase`` and each measure's prediction).
    """
    from scipy.stats import kendalltau, spearmanr

    if isinstance(n_configurations, bool) or not isinstance(n_configurations, int) \
            or n_configurations < 3:
        raise ValueError(f"n_configurations must be an int >= 3, got {n_configurations!r}")
    layers = list(dict.fromkeys(table.layer))
    widths = sorted(table.bits.unique())
    costs = {m: cost_table(table, m) for m in measures}
    rng = np.random.default_rng(seed)
    drawn = [{n: int(rng.choice(widths)) for n in layers} for _ in range(n_configurations)]
    base = evaluate(model, loader, loss_fn).loss
    rows = []
    # under torch.distributed each rank measures its share of the configurations
    for i, bits in tqdm(share(list(enumerate(drawn))), desc="configurations",
                        disable=not progress, leave=False):
        loss, _ = _measure(model, loader, bits, loss_fn, defaults)
        row = {"loss_increase": loss - base, "bits": bits}
        for m, c in costs.items():
            row[m] = float(sum(c.loc[n, b] for n, b in bits.items()))
        rows.append((i, row))
    configs = pd.DataFrame(collect(rows))
    agreement = pd.DataFrame([
        {"measure": m, "kendall": float(kendalltau(configs[m], configs.loss_increase)[0]),
         "spearman": float(spearmanr(configs[m], configs.loss_increase)[0]),
         "n": n_configurations} for m in measures])
    return agreement, configs


def regret(allocations: pd.DataFrame, optimum: pd.DataFrame) -> pd.DataFrame:
    """``allocations`` with ``regret_pct = 100 (L − L_opt) / L_opt``: how much higher the
    measured loss is than the measured optimum's (:func:`measured_optimum`) at the same
    budget (negative only where an allocation beats the optimum on other data)."""
    best = optimum.set_index("average_bits").loss
    out = allocations.copy()
    opt = out.average_bits.map(best)
    out["regret_pct"] = 100 * (out.loss - opt) / opt
    return out


WIDTHS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16)


def digits_study(
    model: str = "mlp",
    seeds: int | Sequence[int] = 5,
    widths: Sequence[int] = WIDTHS,
    average_bits: Sequence[float] = (3, 4, 6, 8),
    n_configurations: int = 100,
    optimum: bool = True,
    n_curvature: int = 256,
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """The mixed-precision experiment on a digits model, over training seeds.

    Per seed: the model trained as :func:`quantlens.trained_digits_model` (30 epochs, the
    seed's split), sensitivities on ``n_curvature`` fixed training images
    (:func:`quantlens.layer_sensitivity`), then on the test set: rank agreement with the
    measured damage, every allocation at every budget (:func:`evaluate_allocations`), with
    ``optimum`` the brute-force measured optimum and each allocation's regret, and the
    configuration-level Kendall τ over ``n_configurations`` random configurations.

    Returns a dict of tidy tables, each with a ``seed`` column: ``sensitivity``,
    ``agreement``, ``allocations``, ``optimum`` (if computed), ``configurations``
    (Kendall τ per measure) and ``reference`` (FP32 loss and accuracy).
    """
    from .data import digits_loaders
    from .seeds import _seed_list
    from .sensitivity import layer_sensitivity, rank_agreement
    from .train import trained_digits_model

    out: dict[str, list] = {k: [] for k in ("sensitivity", "agreement", "allocations",
                                            "optimum", "configurations", "reference")}
    for seed in tqdm(_seed_list(seeds), desc="seeds", disable=not progress, leave=False):
        net, _ = trained_digits_model(model, seed=seed)
        sample, _ = digits_loaders(batch_size=n_curvature, seed=seed, shuffle_train=False,
                                   n_train=n_curvature)
        _, test = digits_loaders(seed=seed)
        # predictive measures on training images, the damage that counts on held-out data
        table = layer_sensitivity(net, sample, widths, seed=seed, oracle_loader=test)
        ref = evaluate(net, test)
        out["reference"].append(pd.DataFrame([{"seed": seed, "loss": ref.loss,
                                               "accuracy": ref.accuracy}]))
        out["sensitivity"].append(table.assign(seed=seed))
        out["agreement"].append(rank_agreement(table).assign(seed=seed))
        allocs = evaluate_allocations(net, test, table, average_bits)
        if optimum:
            sizes = table.drop_duplicates("layer").set_index("layer").n_params.to_dict()
            opt = measured_optimum(net, test, sizes, widths, average_bits)
            allocs = regret(allocs, opt)
            out["optimum"].append(opt.assign(seed=seed))
        out["allocations"].append(allocs.assign(seed=seed))
        agree, _ = configuration_agreement(net, test, table, n_configurations, seed=seed)
        out["configurations"].append(agree.assign(seed=seed))
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items() if v}


def encoder_study(
    pretrained=None,
    widths: Sequence[int] = (3, 4, 6, 8),
    average_bits: Sequence[float] = (4, 6),
    n_hvp: int = 10,
    batch_size: int = 10,
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """Sensitivity and allocation for a pretrained encoder without labels.

    The loss is the cosine distance of the sentence embeddings to the FP32 encoder's
    (:func:`quantlens.output_distance`, on :data:`quantlens.SENTENCES`), over the encoder's
    Linear layers; each row gets its ``kind`` (query, key, value, attention out, FFN in, FFN
    out; :func:`quantlens.layer_kind`). The Fisher is skipped: the empirical Fisher of a
    distance to the model itself is zero at the model. Returns ``sensitivity``,
    ``agreement`` and ``allocations`` (measured embedding distance as ``loss``).
    """
    import copy

    from .alpha import encoder_linear_layers, layer_kind
    from .batches import output_distance
    from .data import sentence_loader
    from .models import load_pretrained
    from .sensitivity import layer_sensitivity, rank_agreement

    pre = load_pretrained() if pretrained is None else pretrained
    model = pre.model
    loader = sentence_loader(pre.tokenizer, batch_size=batch_size)
    loss = output_distance(copy.deepcopy(model), "cosine")
    layers = encoder_linear_layers(model)
    table = layer_sensitivity(model, loader, widths, loss, fisher=False, trace_hvp=n_hvp,
                              progress=progress, layers=layers)
    table.insert(1, "kind", table.layer.map(layer_kind))
    measures = ("kappa_cost", "hawq", "delta_sq", "oracle_loss")
    allocations = evaluate_allocations(model, loader, table, average_bits, measures,
                                       loss_fn=loss, progress=progress)
    return {"sensitivity": table,
            "agreement": rank_agreement(table, measures=["kappa", "spectral_norm", "kappa_cost",
                                                         "delta_sq", "hawq"]),
            "allocations": allocations}
