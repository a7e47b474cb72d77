"""Verdicts on quantized variants, and how well a verdict rule matches measured damage.

A *rule* flags a variant as degraded when one measured metric crosses a threshold, e.g. the
seed document's (001) "``λ_max`` ratio quantized / FP32 ``> 1.5`` means quantization degraded
the optimum". Whether a variant *is* degraded is a stated, measured definition
(:func:`degraded`):

* with labels: the test accuracy drops by more than :data:`ACCURACY_DROP` (1 percentage
  point) against the FP32 model;
* without labels (a sentence encoder): the mean cosine similarity of its embeddings to the
  FP32 model's falls below :data:`MIN_COSINE` (0.99).

:func:`rule_scores` counts a rule's hits against that definition (precision, recall, F1);
:func:`best_threshold` picks the threshold of one metric that maximizes F1;
:func:`validate` scores every candidate metric in-sample and by leave-one-seed-out
cross-validation (threshold chosen on the other seeds, scored on the held-out one), so the
chosen rule is judged on networks it was not fitted to.

:data:`CHOSEN_RULE` is the rule :class:`quantlens.diagnose.QuantDiagnostic` uses; it was
chosen by :func:`validate` on the committed sweep ``experiments/verdict_sweep.csv``
(``make sweep``), and ``tests/test_verdicts.py`` recomputes it from that file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

ACCURACY_DROP = 0.01
MIN_COSINE = 0.99


@dataclass(frozen=True)
class Rule:
    """``metric > threshold`` (``direction=">"``) or ``metric < threshold`` means degraded."""

    metric: str
    direction: str
    threshold: float

    def __post_init__(self) -> None:
        if self.direction not in (">", "<"):
            raise ValueError(f"direction must be '>' or '<', got {self.direction!r}")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")

    def label(self) -> str:
        return f"{self.metric} {self.direction} {self.threshold:.4g}"

    def flags(self, table: pd.DataFrame) -> pd.Series:
        """Boolean flags (``<NA>`` where the metric is missing) for every row of ``table``."""
        if self.metric not in table.columns:
            raise ValueError(f"table has no column {self.metric!r}")
        x = pd.to_numeric(table[self.metric], errors="coerce").astype(float)
        out = (x > self.threshold) if self.direction == ">" else (x < self.threshold)
        return out.astype("boolean").mask(x.isna())


SEED_RULE = Rule("lambda_max_ratio", ">", 1.5)
# Chosen by validate() on experiments/verdict_sweep.csv (best leave-one-seed-out F1 of every
# candidate); tests/test_verdicts.py checks it against that file. It needs logits (a
# classifier's output KL on unlabeled data).
CHOSEN_RULE = Rule("kl", ">", 0.027031113235313563)
# Without logits (a sentence encoder) the damage is measured directly, so the verdict is the
# definition of degraded itself: embedding cosine to FP32 below MIN_COSINE.
LABEL_FREE_RULE = Rule("embedding_drift", ">", 1.0 - MIN_COSINE)

# Candidate metrics and the direction in which each signals damage.
CANDIDATES: dict[str, str] = {
    "lambda_max_ratio": ">",
    "trace_ratio": ">",
    "basin_width_ratio": "<",
    "weight_sqnr_db_min": "<",
    "output_sqnr_db": "<",
    "kl": ">",
    "top1_disagreement": ">",
    "embedding_drift": ">",
}


def degraded(table: pd.DataFrame) -> pd.Series:
    """The measured definition of damage, per row: ``accuracy_drop > ACCURACY_DROP`` where the
    row has an accuracy drop, else ``cosine < MIN_COSINE``."""
    for col in ("accuracy_drop", "cosine"):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}")
    drop = pd.to_numeric(table["accuracy_drop"], errors="coerce").astype(float)
    cos = pd.to_numeric(table["cosine"], errors="coerce").astype(float)
    by_acc = drop > ACCURACY_DROP
    out = by_acc.where(drop.notna(), cos < MIN_COSINE)
    return out.astype("boolean").mask(drop.isna() & cos.isna())


def rule_scores(table: pd.DataFrame, rule: Rule, truth: pd.Series | None = None) -> dict:
    """Confusion counts, ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)`` and
    ``F1 = 2PR/(P+R)`` of ``rule`` against ``truth`` (default :func:`degraded`), over the rows
    where both are defined (``n``). Undefined ratios are NaN."""
    truth = degraded(table) if truth is None else truth
    flags = rule.flags(table)
    ok = flags.notna() & truth.notna()
    f, t = flags[ok].astype(bool), truth[ok].astype(bool)
    tp, fp = int((f & t).sum()), int((f & ~t).sum())
    fn, tn = int((~f & t).sum()), int((~f & ~t).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = (2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else math.nan
    return {"rule": rule.label(), "n": int(ok.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": precision, "recall": recall, "f1": f1}


def best_threshold(table: pd.DataFrame, metric: str, direction: str,
                   truth: pd.Series | None = None) -> Rule:
    """The threshold of ``metric`` with the highest F1 against ``truth``.

    Candidates are the midpoints between consecutive distinct finite values (and one value
    beyond each end); ties go to the smallest number of false positives, then to the most
    conservative threshold (flagging fewest rows).
    """
    truth = degraded(table) if truth is None else truth
    x = pd.to_numeric(table[metric], errors="coerce").astype(float)
    ok = x.notna() & np.isfinite(x) & truth.notna()
    values = np.unique(x[ok].to_numpy())
    if len(values) == 0:
        raise ValueError(f"metric {metric!r} has no finite value where the truth is known")
    mids = (values[1:] + values[:-1]) / 2
    cands = np.concatenate([[values[0] - 1.0], mids, [values[-1] + 1.0]])
    best, key = None, None
    for c in cands:
        rule = Rule(metric, direction, float(c))
        s = rule_scores(table[ok], rule, truth[ok])
        flagged = s["tp"] + s["fp"]
        k = (-1.0 if math.isnan(s["f1"]) else s["f1"], -s["fp"], -flagged)
        if key is None or k > key:
            best, key = rule, k
    return best


def validate(table: pd.DataFrame, metrics: dict[str, str] | None = None,
             group: str = "seed", rules: Sequence[Rule] = (SEED_RULE,)) -> pd.DataFrame:
    """Every candidate rule, in-sample and cross-validated over ``group`` (leave one group out).

    For each metric: the F1-best threshold on the whole table with its precision/recall/F1
    (``*_in_sample``), and the pooled leave-one-``group``-out counts (for each held-out group
    the threshold is chosen on the other groups). Fixed ``rules`` (the seed's) are scored as
    they are. Rows are sorted by cross-validated F1.
    """
    metrics = CANDIDATES if metrics is None else metrics
    truth = degraded(table)
    rows = []
    for rule in rules:
        s = rule_scores(table, rule, truth)
        rows.append({"metric": rule.metric, "rule": rule.label(), "fixed": True,
                     "threshold": rule.threshold, "n": s["n"],
                     **{f"{k}_cv": s[k] for k in ("precision", "recall", "f1")},
                     **{f"{k}_in_sample": s[k] for k in ("precision", "recall", "f1")}})
    for metric, direction in metrics.items():
        if metric not in table.columns or table[metric].isna().all():
            continue
        rule = best_threshold(table, metric, direction, truth)
        s = rule_scores(table, rule, truth)
        counts = dict.fromkeys(("tp", "fp", "fn", "tn"), 0)
        for g in table[group].unique():
            train = table[group] != g
            fitted = best_threshold(table[train], metric, direction, truth[train])
            held = rule_scores(table[~train], fitted, truth[~train])
            for k in counts:
                counts[k] += held[k]
        tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
        rows.append({"metric": metric, "rule": rule.label(), "fixed": False,
                     "threshold": rule.threshold, "n": s["n"],
                     "precision_cv": tp / (tp + fp) if tp + fp else math.nan,
                     "recall_cv": tp / (tp + fn) if tp + fn else math.nan,
                     "f1_cv": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
                     "precision_in_sample": s["precision"], "recall_in_sample": s["recall"],
                     "f1_in_sample": s["f1"]})
    out = pd.DataFrame(rows)
    return out.sort_values(["fixed", "f1_cv"], ascending=[False, False],
                           kind="stable").reset_index(drop=True)


def choose_rule(validation: pd.DataFrame) -> Rule:
    """The fitted rule with the best cross-validated F1 (ties: best in-sample F1, then the
    order of :data:`CANDIDATES`)."""
    fitted = validation[~validation["fixed"]].copy()
    if fitted.empty:
        raise ValueError("validation has no fitted rule")
    order = {m: i for i, m in enumerate(CANDIDATES)}
    fitted["_order"] = fitted["metric"].map(order).fillna(len(order))
    top = fitted.sort_values(["f1_cv", "f1_in_sample", "_order"],
                             ascending=[False, False, True], kind="stable").iloc[0]
    return Rule(top["metric"], CANDIDATES.get(top["metric"], ">"), float(top["threshold"]))


def verdict(row: pd.Series | dict, rule: Rule = CHOSEN_RULE) -> str:
    """``"degraded"``, ``"ok"`` or ``"unknown"`` (metric missing) for one variant."""
    value = row.get(rule.metric, math.nan)
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return "unknown"
    hit = value > rule.threshold if rule.direction == ">" else value < rule.threshold
    return "degraded" if hit else "ok"


# The validation of SEED_RULE and CHOSEN_RULE on experiments/verdict_sweep.csv, as the
# diagnostic's report states it (tests/test_verdicts.py recomputes every number from the file).
VALIDATION: dict = {
    "source": "experiments/verdict_sweep.csv",
    "variants": 132,
    "degraded": 42,
    "seed_rule": {"n": 132, "precision": 0.673469387755102, "recall": 0.7857142857142857,
                  "f1": 0.7252747252747253},
    "chosen_rule": {"n": 120, "precision": 0.9393939393939394, "recall": 0.96875,
                    "f1": 0.9538461538461539},
}


def validation_summary(table: pd.DataFrame) -> dict:
    """The :data:`VALIDATION` record of a sweep table: its size, how many variants are
    degraded, the seed rule's scores and the chosen rule's leave-one-seed-out scores."""
    val = validate(table)
    seed = val[val["fixed"]].iloc[0]
    chosen = choose_rule(val)
    row = val[(~val["fixed"]) & (val["metric"] == chosen.metric)].iloc[0]
    truth = degraded(table)
    return {
        "source": "experiments/verdict_sweep.csv",
        "variants": int(truth.notna().sum()),
        "degraded": int(truth.fillna(False).astype(bool).sum()),
        "seed_rule": {"n": int(seed["n"]),
                      **{k: float(seed[f"{k}_cv"]) for k in ("precision", "recall", "f1")}},
        "chosen_rule": {"n": int(row["n"]),
                        **{k: float(row[f"{k}_cv"]) for k in ("precision", "recall", "f1")}},
    }
