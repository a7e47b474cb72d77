"""QuantDiagnostic against independent references: exact Hessians, torch.ao's SQNR, direct
per-layer evaluation; its report's determinism; models brought by the user; bad input."""

import copy
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.ao.ns.fx.utils import compute_sqnr
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import diagnose as dg
from quantlens.testing import model_unchanged


def _setup(n=48, labels=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(n, 1, 6), torch.randint(0, 3, (n,))
    ds = TensorDataset(x, y) if labels else TensorDataset(x)
    return model, DataLoader(ds, batch_size=16)


def _run(model, loader, **kw):
    d = ql.QuantDiagnostic(model, loader, hessian_batches=None)
    d.add_quantized(8).add_quantized(3, granularity="tensor")
    d.run(progress=False, tol=1e-9, n_directions=2, steps=9, **kw)
    return d


def test_run_leaves_model_unchanged_and_fills_every_table():
    model, loader = _setup()
    model.train()
    with model_unchanged(model):
        d = _run(model, loader)
    r = d.result
    assert list(r.variants["variant"]) == ["fp32", "int8 channel", "int3 tensor"]
    assert r.variants.loc[0, "verdict"] == "reference"
    assert set(r.layers["layer"]) == {"1", "3"} and len(r.layers) == 4
    assert set(r.grading["metric"]) >= {"neg_weight_sqnr_db", "delta_sq", "hawq"}
    tidy = r.table
    assert list(tidy.columns) == ["variant", "layer", "metric", "value"]
    assert {"lambda_max_ratio", "enable_one_loss"} <= set(tidy["metric"])


def _exact_hessian(model, loader, names):
    params = {k: p for k, p in model.named_parameters()
              if any(k.startswith(n + ".") for n in names)}
    xs, ys = map(torch.cat, zip(*loader))
    keys, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()]).double()

    def loss(v):
        chunks, i = {}, 0
        for k, s in zip(keys, shapes):
            chunks[k] = v[i:i + s.numel()].reshape(s)
            i += s.numel()
        full = {k: p.double() for k, p in model.named_parameters()} | chunks
        out = torch.func.functional_call(model.double(), full, (xs.double(),))
        model.float()
        return nn.functional.cross_entropy(out, ys)

    return torch.autograd.functional.hessian(loss, flat)


def test_curvature_matches_the_exact_hessian_of_each_variant():
    model, loader = _setup()
    d = _run(model, loader)
    fp32 = copy.deepcopy(model)
    for name, spec in (("fp32", None), ("int3 tensor", ql.QuantSpec(3, granularity="tensor"))):
        m = fp32 if spec is None else ql.quantize_model(fp32, spec,
                                                        layer_types=dg.LAYER_TYPES)
        h = _exact_hessian(copy.deepcopy(m), loader, ["1", "3"])
        row = d.result.variants.set_index("variant").loc[name]
        assert row["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]),
                                                  rel=1e-4)
        # Hutch++ with 30 products on a 38-parameter Hessian: exact up to its sampling error
        assert row["trace"] == pytest.approx(float(torch.trace(h)), rel=0.25)


def test_per_layer_sqnr_and_damage_match_direct_computation():
    model, loader = _setup()
    d = _run(model, loader)
    lay = d.result.layers.set_index(["variant", "layer"])
    base = ql.evaluate(model, loader)
    spec = ql.QuantSpec(3, granularity="tensor")
    for layer in ("1", "3"):
        w = dict(model.named_modules())[layer].weight.detach()
        q = ql.quantize_dequantize(w, spec)
        row = lay.loc[("int3 tensor", layer)]
        assert row["weight_sqnr_db"] == pytest.approx(float(compute_sqnr(w, q)), rel=1e-5)
        only = ql.evaluate(ql.quantize_model(model, {layer: spec}), loader)
        assert row["enable_one_loss"] == pytest.approx(only.loss - base.loss, abs=1e-7)
        other = "3" if layer == "1" else "1"
        both = ql.evaluate(ql.quantize_model(model, spec, layer_types=dg.LAYER_TYPES), loader)
        rest = ql.evaluate(ql.quantize_model(model, {other: spec}), loader)
        assert row["disable_one_loss"] == pytest.approx(both.loss - rest.loss, abs=1e-7)
    v = d.result.variants.set_index("variant")
    assert v.loc["int8 channel", "weight_only_loss"] == pytest.approx(
        ql.evaluate(ql.quantize_model(model, 8, layer_types=dg.LAYER_TYPES,
                                      granularity="channel"), loader).loss, abs=1e-7)
    # activation-only at 16 bits is (nearly) the FP32 model
    d16 = ql.QuantDiagnostic(model, loader)
    d16.add_quantized(16)
    d16.run(hessian=False, landscape=False, per_layer=False, alpha=False, progress=False)
    a16 = d16.result.variants.set_index("variant").iloc[1]["activation_only_loss"]
    assert a16 == pytest.approx(base.loss, abs=1e-3)
    # the packed size: 8 bits per weight and a 32-bit scale per channel, biases at 32 bits
    size = v.loc["int8 channel", "size_mb"] * 2 ** 20
    assert size == (8 * 30 + 32 * 5 + 32 * 5 + 8 * 15 + 32 * 3 + 32 * 3) / 8


def test_report_json_is_byte_identical_and_html_self_contained(tmp_path):
    model, loader = _setup()
    paths = []
    for i in range(2):
        d = _run(model, loader)
        paths.append(d.report(tmp_path / f"r{i}.html"))
    texts = [p[1].read_bytes() for p in paths]
    assert texts[0] == texts[1]
    doc = json.loads(texts[0])
    assert doc["schema"] == dg.SCHEMA and doc["variants"][0]["variant"] == "fp32"
    assert b"NaN" not in texts[0]
    page = paths[0][0].read_text()
    assert "data:image/png;base64," in page and "http" not in page
    assert "src=" in page and page.count("<img") == 1 and "<script" not in page
    assert doc["environment"]["torch"] == torch.__version__
    with pytest.raises(ValueError, match="path"):
        d.report(tmp_path / "r.pdf")


def test_verdicts_follow_the_rules():
    model, loader = _setup()
    v = _run(model, loader).result.variants
    for _, row in v.iloc[1:].iterrows():
        assert row["verdict"] == ql.verdicts.verdict(row, ql.verdicts.CHOSEN_RULE)
        assert row["verdict_seed"] == ("degraded" if row["lambda_max_ratio"] > 1.5 else "ok")
        assert bool(row["degraded"]) == (row["accuracy_drop"] > 0.01)


def test_label_free_diagnosis_uses_the_distillation_loss():
    model, loader = _setup(labels=False)
    d = ql.QuantDiagnostic(model, loader)
    assert d.label_free
    d.add_quantized(4)
    d.run(progress=False, per_layer=False, n_directions=1, steps=5)
    v = d.result.variants
    assert v.loc[0, "loss"] == pytest.approx(0.0, abs=1e-6) and math.isnan(v.loc[1, "kl"])
    assert 0 < v.loc[1, "cosine"] < 1
    assert bool(v.loc[1, "degraded"]) == (v.loc[1, "cosine"] < 0.99)
    # without logits the verdict is the measured cosine itself
    assert d.result.rule == ql.verdicts.LABEL_FREE_RULE
    assert v.loc[1, "verdict"] == ("degraded" if v.loc[1, "cosine"] < 0.99 else "ok")


def test_models_brought_by_the_user():
    model, loader = _setup()
    d = ql.QuantDiagnostic(model, loader)
    qat = ql.prepare_qat(model, 4, layer_types=dg.LAYER_TYPES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear},
                                                     dtype=torch.qint8)
    with model_unchanged(qat), model_unchanged(model):
        d.add_model("qat", qat).add_model("dynamic", dyn)
        d.add_allocation(ql.Allocation({"1": 4, "3": 8}, 0.0, 0.0, 0.0, 5.0, "exact"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d.run(progress=False, hessian=False, landscape=False)
    v = d.result.variants.set_index("variant")
    assert v.loc["qat", "source"] == "qat" and v.loc["dynamic", "source"] == "torch.ao dynamic"
    view, _, _ = dg.dequantized_view(dyn)
    ref = dyn[1].weight().dequantize()
    assert torch.equal(dict(view.named_modules())["1"].weight, ref)
    # the dynamic model's outcome is its own (dynamic activation quantization included)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert v.loc["dynamic", "loss"] == ql.evaluate(dyn, loader).loss
    assert v.loc["qat", "size_method"] == "packed"
    assert v.loc["exact 5.00b", "bits"] == "mixed"


class _Packed(torch.Tensor):
    """A stand-in for a torchao weight: a tensor subclass that knows its dequantized form."""

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_subclass(cls, data, False)

    def __deepcopy__(self, memo):
        return _Packed(self.as_subclass(torch.Tensor).clone())

    def dequantize(self):
        return ql.quantize_dequantize(self.as_subclass(torch.Tensor), 4)


def test_tensor_subclass_weights_are_dequantized():
    model, _ = _setup()
    other = copy.deepcopy(model)
    other[1].weight = nn.Parameter(_Packed(other[1].weight.detach().clone()),
                                   requires_grad=False)
    view, source, _ = dg.dequantized_view(other)
    assert source == "torchao"
    assert type(view[1].weight) is nn.Parameter
    assert torch.equal(view[1].weight, ql.quantize_dequantize(model[1].weight.detach(), 4))


def test_bad_input_gets_clear_errors():
    model, loader = _setup()
    with pytest.raises(TypeError, match="model"):
        ql.QuantDiagnostic("model", loader)
    with pytest.raises(TypeError, match="loader"):
        ql.QuantDiagnostic(model, [1, 2])
    with pytest.raises(ValueError, match="loss"):
        ql.QuantDiagnostic(model, loader, loss="mse")
    with pytest.raises(ValueError, match="layer"):
        ql.QuantDiagnostic(nn.Sequential(nn.ReLU()), loader)
    d = ql.QuantDiagnostic(model, loader)
    with pytest.raises(ValueError, match="add_quantized"):
        d.run()
    with pytest.raises(ValueError, match="run"):
        d.plot()
    with pytest.raises(ValueError, match="bits"):
        d.add_quantized(1)
    with pytest.raises(TypeError, match="bits"):
        d.add_quantized(4.0)
    with pytest.raises(ValueError, match="bits"):
        d.add_quantized({"nope": 4})
    d.add_quantized(4)
    with pytest.raises(ValueError, match="taken"):
        d.add_quantized(4)
    with pytest.raises(ValueError, match="lacks"):
        d.add_model("other", nn.Sequential(nn.Linear(6, 3)))
    with pytest.raises(TypeError, match="allocation"):
        d.add_allocation({"1": 4})
    for kw, match in ((dict(steps=2), "steps"), (dict(tol=2.0), "tol"),
                      (dict(distance=-1), "distance"), (dict(threshold=0), "threshold")):
        with pytest.raises(ValueError, match=match):
            d.run(**kw)


def test_grading_is_spearman_of_each_metric_with_the_damage():
    rows = [{"variant": "a", "layer": str(i), "delta_sq": float(i),
             "enable_one_loss": float(i) ** 2} for i in range(5)]
    rows += [{"variant": "b", "layer": str(i), "delta_sq": float(i),
              "enable_one_loss": -float(i)} for i in range(5)]
    g = dg.grade(pd.DataFrame(rows)).set_index("metric")
    assert g.loc["delta_sq", "spearman_within"] == pytest.approx(0.0)
    assert g.loc["delta_sq", "n"] == 10
    assert np.isfinite(g.loc["delta_sq", "spearman"])


def test_an_error_midway_leaves_every_model_unchanged(monkeypatch):
    model, loader = _setup()
    qat = ql.prepare_qat(model, 4, layer_types=dg.LAYER_TYPES)
    d = ql.QuantDiagnostic(model, loader)
    d.add_quantized(4).add_model("qat", qat)

    def failing(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(dg, "_basin_widths", failing)
    with model_unchanged(model), model_unchanged(qat):
        with pytest.raises(RuntimeError, match="injected"):
            d.run(progress=False)
    assert d.result is None
