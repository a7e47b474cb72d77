"""A diagnostic's results as a self-contained HTML report and schema-versioned JSON.

:func:`to_json` serializes a :class:`quantlens.diagnose.DiagnosticResult` deterministically
(sorted keys, floats as Python's shortest round-trip ``repr``, NaN as ``null``, infinities as
the strings ``"inf"``/``"-inf"``; no time stamps or host names), so rerunning the same
diagnosis under pinned numerics gives a byte-identical file. :func:`write_report` writes that
JSON beside one HTML page holding the verdicts, every table, the figure (a PNG embedded as a
data URI), how the verdict rule was validated, the run's settings and the environment: no
script, style sheet, font or image is fetched from anywhere, so the page reads offline and
can be attached to a review.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from .diagnose import SCHEMA, DiagnosticResult
from .verdicts import ACCURACY_DROP, CHOSEN_RULE, MIN_COSINE, SEED_RULE, VALIDATION


def _clean(value):
    """JSON-safe: NaN/NA -> None, ±inf -> "inf"/"-inf", numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return str(value)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{c: _clean(r[c]) for c in frame.columns} for _, r in frame.iterrows()]


def environment() -> dict:
    """Versions and numerics of this process (no host name, no time)."""
    import torch

    from . import __version__
    from .numerics import pinned_env

    pins = pinned_env()
    return {"python": platform.python_version(), "machine": platform.machine(),
            "system": platform.system(), "quantlens": __version__,
            "torch": torch.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "torch_threads": torch.get_num_threads(),
            "numerics_pinned": all(os.environ.get(k) == v for k, v in pins.items())}


def as_dict(result: DiagnosticResult) -> dict:
    """The JSON document of ``result`` (see :func:`to_json`)."""
    if not isinstance(result, DiagnosticResult):
        raise TypeError(f"result must be a DiagnosticResult, got {type(result).__name__}")
    return _clean({
        "schema": SCHEMA,
        "environment": environment(),
        "settings": result.settings,
        "label_free": result.label_free,
        "degraded_definition": {"accuracy_drop_above": ACCURACY_DROP,
                                "cosine_below": MIN_COSINE},
        "rule": {"metric": result.rule.metric, "direction": result.rule.direction,
                 "threshold": result.rule.threshold},
        "seed_rule": {"metric": SEED_RULE.metric, "direction": SEED_RULE.direction,
                      "threshold": SEED_RULE.threshold},
        "validation": VALIDATION,
        "variants": _records(result.variants),
        "layers": _records(result.layers),
        "grading": _records(result.grading),
    })


def to_json(result: DiagnosticResult) -> str:
    """``result`` as JSON text: deterministic, byte-identical for identical results."""
    return json.dumps(as_dict(result), sort_keys=True, indent=1, allow_nan=False) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    if frame.empty:
        return "<p>(not computed)</p>"
    out = frame.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda x: "" if pd.isna(x) else f"{x:.{digits}g}")
    return out.to_html(index=False, border=0, escape=True, na_rep="")


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em;display:block;
overflow-x:auto}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.degraded{color:#b30000;font-weight:bold}.ok{color:#006d2c}code{background:#f4f4f4}"""


def to_html(result: DiagnosticResult, figure=None) -> str:
    """The self-contained HTML page of ``result`` (``figure``: default
    :func:`quantlens.plotting.plot_diagnostic`)."""
    import matplotlib.pyplot as plt

    from .plotting import plot_diagnostic

    doc = as_dict(result)
    own = figure is None
    fig = plot_diagnostic(result) if own else figure
    png = _png(fig)
    if own:
        plt.close(fig)
    v = result.variants
    outcome = "cosine" if result.label_free else "accuracy"
    cols = ["variant", "bits", "size_mb", outcome, "accuracy_drop", "kl", "lambda_max_ratio",
            "degraded", "verdict", "verdict_seed"]
    summary = v[[c for c in cols if c in v]]
    val = VALIDATION
    esc = html.escape
    rule = result.rule.label()
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>quantlens diagnostic</title>", f"<style>{CSS}</style></head><body>",
        "<h1>Quantization diagnostic</h1>",
        f"<p>{len(v) - 1} variant(s) of a model with {result.settings['layers']} analysed "
        f"layers; loss: <code>{esc(str(result.settings['loss']))}</code>"
        f"{' (label-free)' if result.label_free else ''}.</p>",
        "<h2>Verdicts</h2>",
        f"<p><b>verdict</b> uses the validated rule <code>{esc(rule)}</code>; "
        f"<b>verdict_seed</b> the seed document's <code>{esc(SEED_RULE.label())}</code>; "
        "<b>degraded</b> is measured: accuracy drop above "
        f"{100 * ACCURACY_DROP:g} percentage point, or without labels an embedding cosine "
        f"below {MIN_COSINE}.</p>",
        _table(summary),
        "<h2>How the verdict rule was validated</h2>",
        f"<p>On {val['variants']} quantized variants ({val['degraded']} degraded) in "
        f"<code>{esc(val['source'])}</code> (digits MLP and CNN × 6 bit widths × "
        "2 granularities × 5 training seeds, and all-MiniLM-L6-v2), each candidate metric's "
        "threshold was chosen by F1 and scored by leave-one-seed-out cross-validation. "
        f"The seed's rule <code>{esc(SEED_RULE.label())}</code>: precision "
        f"{val['seed_rule']['precision']:.2f}, recall {val['seed_rule']['recall']:.2f}, "
        f"F1 {val['seed_rule']['f1']:.2f} (n = {val['seed_rule']['n']}). The chosen rule "
        f"<code>{esc(CHOSEN_RULE.label())}</code> (cross-validated, on the "
        f"{val['chosen_rule']['n']} variants with logits): precision "
        f"{val['chosen_rule']['precision']:.2f}, recall "
        f"{val['chosen_rule']['recall']:.2f}, F1 {val['chosen_rule']['f1']:.2f}."
        + (" This model has no logits: its verdict is the measured embedding cosine "
           f"itself (<code>{esc(rule)}</code>)." if result.label_free else "") + "</p>",
        "<h2>Figure</h2>",
        f"<img alt='diagnostic figure' src='data:image/png;base64,{png}'>",
        "<h2>All variant metrics</h2>", _table(v),
        "<h2>How well each per-layer metric ranked the measured damage</h2>",
        "<p>Spearman correlation with the loss increase when only that layer is quantized "
        "(enable one).</p>", _table(result.grading),
        "<h2>Per layer</h2>", _table(result.layers),
        "<h2>Settings</h2>", _table(pd.DataFrame(
            {"setting": list(doc["settings"]), "value": [str(x) for x in
                                                         doc["settings"].values()]})),
        "<h2>Environment</h2>", _table(pd.DataFrame(
            {"item": list(doc["environment"]), "value": [str(x) for x in
                                                       doc["environment"].values()]})),
        f"<p>JSON schema <code>{SCHEMA}</code>.</p>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_report(result: DiagnosticResult, path, figure=None) -> tuple[Path, Path]:
    """Write ``path`` (HTML, see :func:`to_html`) and the same path with suffix ``.json``
    (:func:`to_json`); parent folders are created. Returns ``(html_path, json_path)``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path must end in .html, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(result)
    page = to_html(result, figure)
    json_path = path.with_suffix(".json")
    path.write_text(page, encoding="utf-8")
    json_path.write_text(text, encoding="utf-8")
    return path, json_path


__all__ = ["as_dict", "environment", "to_html", "to_json", "write_report"]
