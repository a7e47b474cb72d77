"""Experiments over seeds: tidy tables, spreads and paired verdicts checked by hand."""

import numpy as np
import pandas as pd
import pytest

import quantlens as ql


def _table():
    # setting "big" is 1 higher than "small" on every seed; "noisy" straddles "small"
    rows = []
    for seed in range(5):
        base = 0.1 * seed
        rows += [{"seed": seed, "setting": "small", "v": base},
                 {"seed": seed, "setting": "big", "v": base + 1.0},
                 {"seed": seed, "setting": "noisy", "v": base + (0.05 if seed % 2 else -0.05)}]
    return pd.DataFrame(rows)


def test_over_seeds_accepts_rows_lists_and_frames():
    one = ql.over_seeds(lambda s: {"x": s * 2}, seeds=3, progress=False)
    assert list(one.columns) == ["seed", "x"] and one.x.tolist() == [0, 2, 4]
    many = ql.over_seeds(lambda s: [{"x": s}, {"x": -s}], seeds=[3, 7], progress=False)
    assert many.seed.tolist() == [3, 3, 7, 7] and many.x.tolist() == [3, -3, 7, -7]
    frame = ql.over_seeds(lambda s: pd.DataFrame({"x": [s, s]}, index=[5, 6]), seeds=2,
                          progress=False)
    assert frame.index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("seeds,err", [
    (0, ValueError), ([], ValueError), ([1, 1], ValueError), (True, TypeError),
    ([0.5], TypeError), ("abc", TypeError), (None, TypeError),
])
def test_over_seeds_bad_seeds(seeds, err):
    with pytest.raises(err, match="seeds"):
        ql.over_seeds(lambda s: {"x": s}, seeds=seeds, progress=False)


def test_over_seeds_bad_experiment():
    with pytest.raises(TypeError, match="experiment must be callable"):
        ql.over_seeds(3, seeds=2)
    with pytest.raises(TypeError, match="must return a mapping"):
        ql.over_seeds(lambda s: 1.0, seeds=2, progress=False)
    with pytest.raises(ValueError, match="'seed'"):
        ql.over_seeds(lambda s: {"seed": s}, seeds=2, progress=False)


def test_seed_spread_averages_within_a_seed_first():
    df = pd.DataFrame({"seed": [0, 0, 1, 1], "m": ["a"] * 4, "w": [1.0, 3.0, 5.0, 7.0]})
    out = ql.seed_spread(df, "w", "m")
    # per-seed means 2 and 6: mean 4, sample std sqrt(8)
    assert out.loc["a", "mean"] == 4.0 and out.loc["a", "std"] == pytest.approx(np.sqrt(8))
    assert out.loc["a", "min"] == 2.0 and out.loc["a", "max"] == 6.0
    assert out.loc["a", "seeds"] == 2


def test_compare_over_seeds_verdicts():
    df = _table()
    big = ql.compare_over_seeds(df, "v", "setting", "big", "small").iloc[0]
    assert big.verdict == "big higher" and big.a_higher == 5 and big.seeds == 5
    assert big.diff_mean == pytest.approx(1.0) and big.diff_std == pytest.approx(0.0, abs=1e-12)
    assert big.spread == pytest.approx(np.std([0.1 * s for s in range(5)], ddof=1))
    rev = ql.compare_over_seeds(df, "v", "setting", "small", "big").iloc[0]
    assert rev.verdict == "big higher" and rev.a_higher == 0
    noisy = ql.compare_over_seeds(df, "v", "setting", "noisy", "small").iloc[0]
    assert noisy.verdict == "within seed spread" and noisy.a_higher == 2


def test_compare_over_seeds_same_sign_but_small_is_not_a_finding():
    # +0.01 on every seed, but the seeds themselves spread by 0.16
    df = pd.DataFrame([{"seed": s, "k": k, "v": 0.1 * s + (0.01 if k == "x" else 0.0)}
                       for s in range(5) for k in ("x", "y")])
    assert ql.compare_over_seeds(df, "v", "k", "x", "y").verdict.iloc[0] == "within seed spread"


def test_compare_over_seeds_by_group_and_errors():
    df = pd.concat([_table().assign(bits=4), _table().assign(bits=8)])
    out = ql.compare_over_seeds(df, "v", "setting", "big", "small", by="bits")
    assert list(out.index) == [4, 8] and set(out.verdict) == {"big higher"}
    with pytest.raises(ValueError, match="a='huge' is not a value"):
        ql.compare_over_seeds(df, "v", "setting", "huge", "small")
    with pytest.raises(ValueError, match="no column"):
        ql.compare_over_seeds(df, "nope", "setting", "big", "small")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ql.compare_over_seeds(df[df.seed == 0], "v", "setting", "big", "small")
    with pytest.raises(TypeError, match="DataFrame"):
        ql.seed_spread([1, 2], "v", "setting")


def test_format_spread():
    df = pd.DataFrame({"seed": [0, 1, 0, 1], "m": ["a", "a", "b", "b"], "w": [1.0, 2.0, 4.0, 4.0]})
    text = ql.seeds.format_spread(ql.seed_spread(df, "w", "m"), digits=2)
    assert text.to_dict() == {"a": "1.50 ± 0.71", "b": "4.00 ± 0.00"}
    with pytest.raises(ValueError, match="digits"):
        ql.seeds.format_spread(ql.seed_spread(df, "w", "m"), digits=-1)
    with pytest.raises(ValueError, match="spread"):
        ql.seeds.format_spread(df, 1)


@pytest.mark.parametrize("x", ["bits", "setting"])
def test_plot_over_seeds_draws_every_seed(x):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = _table().assign(bits=lambda d: d.setting.map({"small": 2, "big": 4, "noisy": 8}))
    fig, ax = plt.subplots()
    ql.plotting.plot_over_seeds(df, x, "v", ax=ax)
    dots = [c for c in ax.collections if len(c.get_offsets()) == 15]
    assert dots, "one dot per seed and setting"
    assert ax.get_xlabel() == x and "5 seeds" in ax.texts[-1].get_text()
    plt.close(fig)


def _comparison(diffs, spread_a=0.1):
    rows = []
    for seed, d in enumerate(diffs):
        rows += [{"seed": seed, "s": "a", "v": 1.0 + d + spread_a * (seed - 2)},
                 {"seed": seed, "s": "b", "v": 1.0 + spread_a * (seed - 2)}]
    return ql.compare_over_seeds(pd.DataFrame(rows), "v", "s", "a", "b")


def test_verdict_phrase_states_each_case():
    finding = ql.verdict_phrase(_comparison([1.0, 1.1, 0.9, 1.2, 1.0]), "int8", "fp32")
    assert finding.startswith("int8 is higher on all 5 seeds") and finding.endswith(": a finding")
    small = ql.verdict_phrase(_comparison([0.01, 0.02, 0.01, 0.03, 0.02]), "int8", "fp32")
    assert small.endswith(": not a finding") and "all 5 seeds" in small
    mixed = ql.verdict_phrase(_comparison([1.0, -1.0, 0.5, 0.2, 0.3]), "int8", "fp32")
    assert mixed == ("int8 is higher on 4 of 5 seeds: within the seed-to-seed spread, "
                     "not a finding")
    lower = ql.verdict_phrase(_comparison([-1.0, -1.1, -0.9, -1.2, -1.0]), "int8", "fp32")
    assert lower.startswith("fp32 is higher on all 5 seeds")
    with pytest.raises(ValueError, match="one comparison"):
        ql.verdict_phrase(pd.concat([_comparison([1] * 5)] * 2))
