"""Tables for readers: result DataFrames turned into what a page should show.

Results stay numeric DataFrames (for code and tests); :func:`for_readers` is only for display.
It returns a DataFrame of *strings* — so nbval, which compares a table's text, still
compares every number — with

* human headers (snake_case result columns get words and units, see :data:`HEADERS`),
* one number format per column: fixed decimals giving ``digits`` significant digits of the
  column's largest value and at least two of its smallest, or scientific notation for a
  column that would need more than four decimals or spans more than three decades
  (``8.42e-04`` beside ``5.25e-05``, not ``0.0008418`` beside ``5.247e-05``),
* a dash for missing values (``NaN``, ``<NA>``, ``None``), ``0`` for ``-0``,
  ``yes``/``no`` for booleans,
* a multi-level index flattened into one readable label (``int8 · sym · per-tensor``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

DASH = "–"

HEADERS: dict[str, str] = {
    "mean_a": "mean (first)",
    "mean_b": "mean (second)",
    "diff_mean": "mean difference",
    "diff_std": "difference std",
    "diff_min": "smallest difference",
    "diff_max": "largest difference",
    "a_higher": "seeds first higher",
    "seeds": "seeds",
    "spread": "seed spread",
    "verdict": "verdict",
    "lambda_max": "λmax",
    "lambda_min": "λmin",
    "trace_se": "trace s.e.",
    "trace_method": "trace by",
    "trace_per_param": "trace / parameter",
    "n_params": "parameters",
    "n_hvp": "Hessian-vector products",
    "grad_norm": "gradient norm",
    "cos_mean": "mean cosine",
    "cos_min": "worst cosine",
    "similarity_drop": "1 − mean cosine",
    "snr_db": "SNR (dB)",
    "rmse_over_law": "RMSE / (s/√12)",
    "levels_used": "levels used",
    "bits_per_element": "bits / weight",
    "alpha_mean": "mean α",
    "alpha_median": "median α",
    "abs_alpha_change_pct": "|Δ mean α| (%)",
    "alpha_median_abs_change_pct": "median |Δα| (%)",
    "alpha_corr": "α correlation with FP32",
    "one_minus_alpha_corr": "1 − α correlation",
    "frac_in_range": "layers with 2 ≤ α ≤ 6",
    "n_layers": "layers",
}


def _header(name, names: Mapping[str, str] = HEADERS) -> str:
    if isinstance(name, tuple):
        return " · ".join(_header(n, names) for n in name if str(n) != "")
    key = str(name)
    return names.get(key, key.replace("_", " "))


def _label(value) -> str:
    if isinstance(value, tuple):
        return " · ".join(_label(v) for v in value if not _missing(v))
    if _missing(value):
        return DASH
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _missing(value) -> bool:
    try:
        return value is None or value is pd.NA or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _column_format(values: pd.Series, digits: int):
    x = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    finite = np.abs(x[np.isfinite(x) & (x != 0)])
    if finite.size == 0:
        return lambda v: f"{v:.0f}"
    present = x[np.isfinite(x)]
    if np.all(present == np.round(present)) and finite.max() < 1e15:  # whole numbers
        return lambda v: f"{v:,.0f}"
    top, bottom = finite.max(), finite.min()
    # decimals for `digits` significant digits of the largest value, and at least two of
    # the smallest; a column that would need more than 4 decimals (or spans more than
    # three decades) is written in scientific notation instead
    decimals = max(0, digits - 1 - math.floor(math.log10(top)),
                   1 - math.floor(math.log10(bottom)))
    if top >= 1e6 or decimals > 4 or top / bottom > 1e3:
        return lambda v: f"{v:.{digits - 1}e}"
    return lambda v: f"{v:.{decimals}f}"


def _cell(value, fmt) -> str:
    if _missing(value):
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        text = fmt(v)
        if text.startswith("-") and float(text.replace(",", "")) == 0:
            text = text[1:]  # -0, -0.00: no sign on a zero
        return text
    return str(value)


def for_readers(
    df: pd.DataFrame,
    digits: int = 3,
    headers: Mapping[str, str] | None = None,
    columns: list | None = None,
    index_name: str | None = None,
) -> pd.DataFrame:
    """A display copy of ``df``: strings with one format per column, readable headers.

    Parameters
    ----------
    df : DataFrame
        A result table (not modified).
    digits : int
        Significant digits of the largest value of each numeric column.
    headers : mapping, optional
        Header text per column name, on top of :data:`HEADERS`.
    columns : list, optional
        Keep only these columns, in this order.
    index_name : str, optional
        Header of the (flattened) index.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 12:
        raise ValueError(f"digits must be an int in [1, 12], got {digits!r}")
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"columns not in the table: {missing}")
        df = df[list(columns)]
    names = {**HEADERS, **(headers or {})}
    out = pd.DataFrame(index=[_label(i) for i in df.index])
    for col in df.columns:
        values = df[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
            values)
        fmt = _column_format(values, digits) if numeric else None
        out[_header(col, names)] = [_cell(v, fmt) if numeric else _text(v)
                                   for v in values]
    if index_name is None:
        index_name = _header(tuple(n for n in df.index.names if n is not None))
    out.index.name = index_name or None
    return out


def _text(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return _label(value)
