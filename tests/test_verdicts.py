"""Verdict rules: counts by hand, thresholds by brute force, and the chosen rule recomputed
from the committed sweep."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantlens import verdicts as vd

SWEEP = Path(__file__).parent.parent / "experiments" / "verdict_sweep.csv"


def _table():
    return pd.DataFrame({
        "seed": [0, 0, 0, 1, 1, 1, 2, 2],
        "accuracy_drop": [0.0, 0.02, 0.5, 0.005, 0.03, np.nan, 0.0, 0.2],
        "cosine": [np.nan, np.nan, np.nan, np.nan, np.nan, 0.95, np.nan, np.nan],
        "lambda_max_ratio": [1.0, 1.2, 3.0, 1.6, 1.1, 2.0, 0.9, np.nan],
        "kl": [0.0, 0.05, 1.0, 0.001, 0.2, np.nan, 0.0, 0.8],
    })


def test_degraded_definition():
    t = _table()
    assert list(vd.degraded(t)) == [False, True, True, False, True, True, False, True]


def test_rule_scores_count_by_hand():
    s = vd.rule_scores(_table(), vd.SEED_RULE)
    # rows with a ratio: truth F T T F T T F; flags (> 1.5) F F T T F T F
    assert (s["tp"], s["fp"], s["fn"], s["tn"], s["n"]) == (2, 1, 2, 2, 7)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_best_threshold_is_the_brute_force_optimum():
    t = _table()
    rule = vd.best_threshold(t, "kl", ">")
    best = max(vd.rule_scores(t, vd.Rule("kl", ">", float(c)))["f1"]
               for c in np.linspace(-0.1, 1.1, 241))
    assert vd.rule_scores(t, rule)["f1"] == pytest.approx(best)
    assert rule.threshold == pytest.approx((0.001 + 0.05) / 2)


def test_validate_cross_validates_over_seeds():
    t = _table()
    val = vd.validate(t, {"kl": ">", "lambda_max_ratio": ">"})
    assert val.iloc[0]["fixed"] and val.iloc[0]["rule"] == vd.SEED_RULE.label()
    kl = val[(~val["fixed"]) & (val["metric"] == "kl")].iloc[0]
    # leave-one-seed-out by hand
    tp = fp = fn = 0
    truth = vd.degraded(t)
    for s in (0, 1, 2):
        rule = vd.best_threshold(t[t.seed != s], "kl", ">", truth[t.seed != s])
        c = vd.rule_scores(t[t.seed == s], rule, truth[t.seed == s])
        tp, fp, fn = tp + c["tp"], fp + c["fp"], fn + c["fn"]
    assert kl["f1_cv"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert vd.choose_rule(val).metric in ("kl", "lambda_max_ratio")


def test_rule_and_bad_input():
    with pytest.raises(ValueError, match="direction"):
        vd.Rule("kl", ">=", 1.0)
    with pytest.raises(ValueError, match="threshold"):
        vd.Rule("kl", ">", math.nan)
    with pytest.raises(ValueError, match="column"):
        vd.SEED_RULE.flags(pd.DataFrame({"x": [1]}))
    assert vd.verdict({"kl": math.nan}) == "unknown"
    assert vd.verdict({"kl": 1.0}, vd.Rule("kl", ">", 0.5)) == "degraded"


def test_chosen_rule_and_validation_come_from_the_committed_sweep():
    table = pd.read_csv(SWEEP)
    variants = table[table["variant"] != "fp32"].reset_index(drop=True)
    val = vd.validate(variants)
    assert vd.choose_rule(val) == vd.CHOSEN_RULE
    assert _close(vd.validation_summary(variants), vd.VALIDATION)
    # the sweep covers what the issue asks: 2 models x 5 seeds x widths x granularities
    digits = variants[variants["model"].str.startswith("digits")]
    assert digits.groupby("model")["seed"].nunique().min() >= 5
    for g in ("tensor", "channel"):
        assert digits["variant"].str.endswith(g).sum() == 2 * 5 * 6


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-12)
    return a == b
