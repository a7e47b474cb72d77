"""Experiments over training seeds: a claim about two settings must hold across seeds.

A network trained from another random initialisation (and another batch order) is another
network. A difference between two settings — per-channel vs per-tensor, int8 vs FP32 — is a
finding only if it is larger than what changing the seed alone does. :func:`over_seeds` runs
one experiment per seed into a tidy DataFrame; :func:`seed_spread` summarises a value per
setting (mean, standard deviation, range); :func:`compare_over_seeds` pairs two settings
seed by seed and says whether their difference stands out of the seed-to-seed spread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

Result = Mapping | Sequence[Mapping] | pd.DataFrame


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int or an iterable of ints, got a bool")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    try:
        out = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be an int or an iterable of ints, got "
                        f"{type(seeds).__name__}") from None
    if not out:
        raise ValueError("seeds is empty")
    if not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in out):
        raise TypeError(f"seeds must be ints, got {out!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out!r}")
    return [int(s) for s in out]


def over_seeds(
    experiment: Callable[[int], Result],
    seeds: int | Iterable[int] = 5,
    progress: bool = True,
    desc: str = "seeds",
) -> pd.DataFrame:
    """Run ``experiment(seed)`` for every seed and stack the results into one tidy table.

    Parameters
    ----------
    experiment : callable
        ``experiment(seed)`` returns one row (a mapping), several rows (a sequence of
        mappings) or a DataFrame. It should seed everything random from ``seed`` (model
        initialisation, batch order, random directions).
    seeds : int or iterable of int
        ``n`` means seeds ``0, ..., n-1``. At least 5 are needed before a comparison is
        called a finding (:func:`compare_over_seeds`).

    Returns
    -------
    pandas.DataFrame
        The rows of every seed, with a first column ``seed``.
    """
    if not callable(experiment):
        raise TypeError(f"experiment must be callable, got {type(experiment).__name__}")
    frames = []
    for seed in tqdm(_seed_list(seeds), desc=desc, disable=not progress, leave=False):
        result = experiment(seed)
        if isinstance(result, pd.DataFrame):
            frame = result.reset_index(drop=True).copy()
        elif isinstance(result, Mapping):
            frame = pd.DataFrame([dict(result)])
        elif isinstance(result, Sequence) and not isinstance(result, str | bytes) and all(
                isinstance(r, Mapping) for r in result):
            frame = pd.DataFrame([dict(r) for r in result])
        else:
            raise TypeError("experiment(seed) must return a mapping, a sequence of mappings "
                            f"or a DataFrame, got {type(result).__name__}")
        if "seed" in frame.columns:
            raise ValueError("experiment(seed) must not return a column named 'seed'")
        frame.insert(0, "seed", seed)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _columns(df: pd.DataFrame, names: str | Sequence[str], arg: str) -> list[str]:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    names = [names] if isinstance(names, str) else list(names)
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"{arg}: no column {missing} in the table (columns: {list(df.columns)})")
    return names


def seed_spread(df: pd.DataFrame, value: str, by: str | Sequence[str]) -> pd.DataFrame:
    """Mean, sample standard deviation, min, max and number of seeds of ``value`` per setting.

    Rows of one seed and setting are first averaged (e.g. several random directions per
    trained network), so ``std`` is the seed-to-seed spread
    ``sqrt(sum_s (v_s - mean)^2 / (n - 1))`` of the per-seed values ``v_s``.
    """
    by = _columns(df, by, "by")
    _columns(df, [value, "seed"], "value")
    per_seed = df.groupby([*by, "seed"], sort=False)[value].mean()
    out = per_seed.groupby(level=list(range(len(by))), sort=False).agg(
        ["mean", "std", "min", "max", "count"])
    return out.rename(columns={"count": "seeds"})


def compare_over_seeds(
    df: pd.DataFrame,
    value: str,
    setting: str,
    a,
    b,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Seed-paired comparison of ``value`` between settings ``a`` and ``b`` of column ``setting``.

    For every seed ``s`` (and every group of ``by``), ``d_s = v_s(a) - v_s(b)`` with ``v``
    the per-seed mean. The difference is called a finding only if both

    * every seed agrees on its sign (for 5 seeds, a chance of ``2/2^5 = 6%`` if the two
      settings were exchangeable), and
    * ``|mean d| > max(std_s v(a), std_s v(b))``: it is larger than what changing the seed
      does to either setting alone;

    otherwise the verdict is ``"within seed spread"``.

    Returns
    -------
    pandas.DataFrame
        ``mean_a, mean_b, diff_mean, diff_std, diff_min, diff_max, a_higher`` (number of seeds
        with ``d_s > 0``), ``seeds``, ``spread`` (the larger seed std) and ``verdict``
        (``"a higher"``, ``"b higher"`` with the settings' names, or ``"within seed spread"``).
    """
    _columns(df, [value, setting, "seed"], "value/setting")
    by = [] if by is None else _columns(df, by, "by")
    present = set(df[setting])
    for name, level in (("a", a), ("b", b)):
        if level not in present:
            raise ValueError(f"{name}={level!r} is not a value of column {setting!r} "
                             f"(values: {sorted(map(str, present))})")
    per_seed = df[df[setting].isin([a, b])].groupby([*by, setting, "seed"], sort=False)[
        value].mean().unstack(setting)
    rows = []
    groups = per_seed.groupby(level=list(range(len(by)))) if by else [((), per_seed)]
    for key, g in groups:
        g = g.dropna(subset=[a, b])
        d = (g[a] - g[b]).to_numpy()
        if len(d) < 2:
            raise ValueError(f"need at least 2 seeds with both {a!r} and {b!r}, got {len(d)}")
        spread = float(max(g[a].std(), g[b].std()))
        mean = float(d.mean())
        same_sign = bool((d > 0).all() or (d < 0).all())
        if same_sign and abs(mean) > spread:
            verdict = f"{a} higher" if mean > 0 else f"{b} higher"
        else:
            verdict = "within seed spread"
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "mean_a": float(g[a].mean()),
                     "mean_b": float(g[b].mean()), "diff_mean": mean,
                     "diff_std": float(d.std(ddof=1)), "diff_min": float(d.min()),
                     "diff_max": float(d.max()), "a_higher": int((d > 0).sum()),
                     "seeds": len(d), "spread": spread, "verdict": verdict})
    out = pd.DataFrame(rows)
    return out.set_index(by) if by else out


def format_spread(spread: pd.DataFrame, digits: int = 1) -> pd.Series:
    """``"mean ± std"`` strings, one per row of a :func:`seed_spread` table.

    For tables and for sentences that quote a result (e.g. through myst-nb's ``glue``), so
    the text shows exactly the numbers the table holds.
    """
    _columns(spread, ["mean", "std"], "spread")
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits!r}")
    return spread.apply(lambda r: f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}", axis=1)


def verdict_phrase(row: pd.Series | pd.DataFrame, a: str | None = None, b: str | None = None,
                   unit: str = "") -> str:
    """State one :func:`compare_over_seeds` row in words, for glued prose.

    ``a``/``b`` name the two settings (default: the verdict's own names ``"a"``/``"b"``);
    ``unit`` follows the numbers (e.g. ``" points"``). Three cases, by the rule of
    :func:`compare_over_seeds`: a finding ("a is higher on all 5 seeds, by 1.4 points on
    average against a seed-to-seed spread of 0.6: a finding"), one sign but within the
    spread ("... but by less than the seed-to-seed spread: not a finding"), and mixed signs
    ("a is higher on 3 of 5 seeds: within the seed-to-seed spread, not a finding").
    """
    if isinstance(row, pd.DataFrame):
        if len(row) != 1:
            raise ValueError(f"row must be one comparison, got {len(row)} rows")
        row = row.iloc[0]
    _columns(row.to_frame().T, ["diff_mean", "diff_min", "diff_max", "a_higher", "seeds",
                                "spread", "verdict"], "row")
    a, b = a or "a", b or "b"
    n, k, mean = int(row["seeds"]), int(row["a_higher"]), float(row["diff_mean"])
    if not (row["diff_min"] > 0 or row["diff_max"] < 0):
        ties = "" if k or row["diff_max"] < 0 else " (never lower: tied on the others)"
        return (f"{a} is higher on {k} of {n} seeds{ties}: within the seed-to-seed spread, "
                "not a finding")
    winner = a if mean > 0 else b
    size = (f"by {abs(mean):.2g}{unit} on average against a seed-to-seed spread of "
            f"{row['spread']:.2g}{unit}")
    if row["verdict"] == "within seed spread":
        return f"{winner} is higher on all {n} seeds, {size}: not a finding"
    return f"{winner} is higher on all {n} seeds, {size}: a finding"
