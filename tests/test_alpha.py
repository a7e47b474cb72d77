"""quantlens.alpha: WeightWatcher metrics across bit widths, checked against weightwatcher."""

import copy
import dataclasses
import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import quantlens as ql
from quantlens import alpha as qa
from quantlens.guard import _bitwise_equal
from quantlens.quantize import QuantSpec, quantize_dequantize, quantize_model
from quantlens.testing import assert_model_unchanged, model_unchanged

METRICS = ["alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "log_norm",
           "log_alpha_norm", "xmin", "D"]


def _small_model() -> nn.Module:
    """Layers big enough to fit, a Conv2d, an Embedding, a rank-1 layer (the power-law fit
    fails: one eigenvalue) and a layer too small for WeightWatcher (3 eigenvalues)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        embed=nn.Embedding(300, 64), fc1=nn.Linear(64, 256), act=nn.ReLU(),
        fc2=nn.Linear(256, 512), fc3=nn.Linear(512, 128), conv=nn.Conv2d(16, 32, 3),
        rank1=nn.Linear(48, 32), tiny=nn.Linear(4, 3)))
    with torch.no_grad():
        model.rank1.weight.copy_(torch.outer(torch.randn(32), torch.randn(48)))
    return model


@pytest.fixture(scope="module")
def small():
    model = _small_model()
    return model, qa.alpha_sweep(model, bits=(None, 8, 4, 2), group_size=32, progress=False)


@pytest.fixture(scope="module")
def minilm():
    return ql.load_pretrained()


@pytest.fixture
def ww_cpu(monkeypatch):
    """weightwatcher 0.7.7 rounds weights to float16 and takes float32 GPU SVDs when CUDA is
    available; the comparisons are with its CPU numerics (float32 weights, float64 SVD)."""
    ww = qa._ww()
    if torch.cuda.is_available():
        from weightwatcher import RMT_Util

        monkeypatch.setattr(ww, "torch_T_to_np", lambda t: t.to("cpu").float().numpy())
        monkeypatch.setattr(RMT_Util, "_svd_vals_fast", RMT_Util._svd_vals_accurate)


def _ww_analyze(model: nn.Module) -> pd.DataFrame:
    """weightwatcher's own ``analyze()`` (its log, prints and warnings silenced)."""
    return assert_model_unchanged(model, qa.weightwatcher_analyze, model)


def _rows(sweep: qa.AlphaSweep, bits, granularity) -> pd.DataFrame:
    df = sweep.layers
    mask = df["bits"].isna() if bits is None else df["bits"] == bits
    return df[mask & (df["granularity"] == granularity)].set_index("layer")


def _assert_matches_ww(rows: pd.DataFrame, details: pd.DataFrame, rtol: float = 1e-9) -> None:
    # the same layers: WeightWatcher's, plus the ones it skips (here NaN with a reason)
    assert set(details.index) <= set(rows.index)
    extra = rows.loc[sorted(set(rows.index) - set(details.index))]
    assert extra["alpha"].isna().all() and extra["reason"].str.contains("eigenvalues").all()
    ours = rows.loc[details.index]
    assert (ours["layer_id"] == details["layer_id"]).all()
    assert (ours["num_evals"] == details["num_evals"]).all()
    failed = details["alpha"] == -1  # weightwatcher's failed fit
    assert ours.loc[failed, "alpha"].isna().all()
    assert ours.loc[failed, "reason"].str.startswith("power-law fit failed").all()
    assert (ours.loc[~failed, "reason"] == "").all()
    for col in METRICS:
        ok = ~failed if col in ("alpha", "alpha_weighted", "log_alpha_norm", "xmin", "D") \
            else slice(None)
        np.testing.assert_allclose(ours.loc[ok, col].to_numpy(float),
                                   details.loc[ok, col].to_numpy(float), rtol=rtol, err_msg=col)


# ---------------------------------------------------------------------------------------------
def test_baseline_equals_weightwatcher_analyze(small, ww_cpu):
    model, sweep = small
    details = _ww_analyze(model)
    assert len(details) == 6 and (details.loc["rank1", "alpha"] == -1)
    base = _rows(sweep, None, "none")
    _assert_matches_ww(base, details)
    assert (base[["N", "M", "rf"]].loc[details.index].to_numpy()
            == details[["N", "M", "rf"]].to_numpy()).all()
    assert base.loc["conv", "layer_type"] == "conv2d" and base.loc["conv", "rf"] == 9
    assert base.loc["embed", "layer_type"] == "embedding"
    # a layer too small for a fit and a failed fit: NaN alpha with a reason, not a crash
    assert np.isnan(base.loc["tiny", "alpha"])
    assert base.loc["tiny", "reason"] == "too few eigenvalues: M*rf = 3 < min_evals = 8"
    assert base.loc["rank1", "reason"] == "power-law fit failed: 1 eigenvalue(s) > 1e-05"
    assert np.isfinite(base.loc["rank1", "log_spectral_norm"])


@pytest.mark.parametrize("bits,granularity", [(4, "channel"), (2, "tensor"), (4, "group")])
def test_quantized_rows_equal_weightwatcher_on_quantized_copy(small, bits, granularity, ww_cpu):
    model, sweep = small
    qmodel = quantize_model(model, QuantSpec(bits, granularity=granularity, group_size=32))
    _assert_matches_ww(_rows(sweep, bits, granularity), _ww_analyze(qmodel))


def test_minilm_equals_weightwatcher_and_its_safetensors_file(minilm, ww_cpu):
    sweep = qa.alpha_sweep(minilm.model, bits=(None, 3), granularities="group", progress=False)
    base = _rows(sweep, None, "none")
    details = _ww_analyze(minilm.model)
    assert len(details) == 39  # 36 encoder Linear, pooler, word and position embeddings
    _assert_matches_ww(base, details)
    qmodel = quantize_model(minilm.model, QuantSpec(3, granularity="group", group_size=128))
    _assert_matches_ww(_rows(sweep, 3, "group"), _ww_analyze(qmodel))
    assert list(base.index[base["alpha"].isna()]) == ["embeddings.token_type_embeddings"]
    # the same numbers streamed from the model's own folder (biases, buffers, LayerNorms in it)
    from_file = _rows(qa.alpha_sweep(minilm.path, bits=(None,), progress=False), None, "none")
    assert sorted(from_file.index) == sorted(base.index)
    pd.testing.assert_frame_equal(from_file.loc[base.index, METRICS + ["layer_type"]],
                                  base[METRICS + ["layer_type"]])


def test_8bit_per_tensor_close_to_baseline_and_summary_math(small):
    _, sweep = small
    summary = sweep.summary()
    assert list(summary["granularity"][:4]) == ["none", "tensor", "tensor", "tensor"]
    assert summary["bits"].isna().tolist() == [True] + [False] * 9
    int8 = summary[(summary["granularity"] == "tensor") & (summary["bits"] == 8)].iloc[0]
    assert abs(int8["alpha_change_pct"]) < 1.0 and int8["alpha_corr"] > 0.99
    assert int8["alpha_median_abs_change_pct"] < 1.0
    assert abs(int8["d_log_spectral_norm"]) < 1e-3
    # every column recomputed by hand for one setting
    base, q = _rows(sweep, None, "none"), _rows(sweep, 2, "tensor")
    row = summary[(summary["granularity"] == "tensor") & (summary["bits"] == 2)].iloc[0]
    a = q["alpha"].dropna()
    assert row["n_layers"] == len(a) and row["n_failed"] == q["alpha"].isna().sum() >= 1
    assert row["alpha_mean"] == pytest.approx(a.mean())
    both = pd.concat([base["alpha"], q["alpha"]], axis=1).dropna().to_numpy()  # paired layers
    assert row["alpha_change_pct"] == pytest.approx(100 * (both[:, 1].mean() / both[:, 0].mean()
                                                           - 1))
    assert row["alpha_corr"] == pytest.approx(np.corrcoef(both.T)[0, 1])
    assert row["alpha_median_abs_change_pct"] == pytest.approx(
        100 * np.median(np.abs(both[:, 1] / both[:, 0] - 1)))
    assert row["n_in_range"] == ((a >= 2) & (a <= 6)).sum()
    assert row["pct_in_range"] == pytest.approx(100 * row["n_in_range"] / len(a))
    assert row["n_below_2"] + row["n_in_range"] + row["n_above_6"] == len(a)
    assert row["d_stable_rank"] == pytest.approx((q["stable_rank"] - base["stable_rank"]).mean())
    # a subset of layers
    sub = sweep.summary(["fc1", "fc2"])
    assert (sub["n_layers"] <= 2).all() and sub["alpha_mean"].iloc[0] == pytest.approx(
        base.loc[["fc1", "fc2"], "alpha"].mean())


def test_quantized_copies_are_bitwise_quantize_dequantize():
    torch.manual_seed(1)
    weights = [torch.randn(64, 300), torch.randn(32, 16, 3, 3), torch.randn(1, 50),
               torch.randn(20, 40).half(), torch.randn(40, 30).bfloat16(),
               torch.randn(10, 10, dtype=torch.float64)]
    weights[0][3] = 0.0  # a zero channel
    settings = qa._settings((None, 16, 8, 5, 3, 2), qa.GRANULARITIES, 128)
    for w in weights:
        for axis in (0, 1) if w.ndim == 2 else (0,):
            for b, g, thunk in qa._quantized_copies(w, settings, axis):
                ref = quantize_dequantize(w, QuantSpec(b, granularity=g, axis=axis))
                assert _bitwise_equal(thunk(), ref), (tuple(w.shape), axis, b, g)


def test_work_is_done_once(monkeypatch):
    """Each weight read once, tied weights and identical granularities analysed once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 64), nn.Linear(64, 96))
    model[2].weight = model[0].weight  # tied
    calls = {"esd": 0, "load": 0}
    esd, analyse = qa.esd, qa._analyse_layer

    def counting_esd(*args, **kwargs):
        calls["esd"] += 1
        return esd(*args, **kwargs)

    def counting_analyse(ref, *args):
        def load():
            calls["load"] += 1
            return ref.load()
        return analyse(dataclasses.replace(ref, load=load), *args)

    monkeypatch.setattr(qa, "esd", counting_esd)
    monkeypatch.setattr(qa, "_analyse_layer", counting_analyse)
    # group_size 128 >= every fan-in: per-group is per-channel, bitwise
    sweep = qa.alpha_sweep(model, bits=(None, 8, 4), group_size=128, progress=False)
    assert calls == {"load": 2, "esd": 2 * (1 + 2 * 2)}
    df = sweep.layers.set_index(["layer", "bits", "granularity"])
    assert len(df) == 3 * (1 + 2 * 3)
    for layer in ("0", "2"):
        pd.testing.assert_series_equal(df.loc[(layer, 4, "group"), METRICS],
                                       df.loc[("0", 4, "channel"), METRICS], check_names=False)


def _write_shards(model: nn.Module, folder, n_shards: int = 3) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    keys = list(state)
    weight_map = {}
    for i in range(n_shards):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::n_shards]}
        save_file(part, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_safetensors_folder_equals_module(tmp_path, small, monkeypatch):
    model, sweep = small
    _write_shards(model, tmp_path)
    loads = []
    analyse = qa._analyse_layer

    def tracking(ref, *args):
        def load():
            loads.append(ref.name)
            return ref.load()
        return analyse(dataclasses.replace(ref, load=load), *args)

    monkeypatch.setattr(qa, "_analyse_layer", tracking)
    streamed = qa.alpha_sweep(str(tmp_path), bits=(None, 8, 4, 2), group_size=32,
                              progress=False)
    assert sorted(loads) == sorted(["embed", "fc1", "fc2", "fc3", "conv", "rank1"])  # once each
    key = ["layer", "bits", "granularity"]
    cols = key + ["layer_type", "N", "M", "rf", "num_evals"] + METRICS + ["reason"]
    a = streamed.layers[cols].sort_values(key, ignore_index=True)
    b = sweep.layers[cols].sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    # one file, and a folder of unsharded files, give the same
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "one.safetensors"))
    one = qa.alpha_sweep(tmp_path / "one.safetensors", bits=(None,), progress=False).layers
    pd.testing.assert_frame_equal(one[cols].sort_values(key, ignore_index=True),
                                  b[b["bits"].isna()].reset_index(drop=True))


def test_model_unchanged_also_when_raising(monkeypatch):
    model = _small_model()
    model.train()
    model.fc2.eval()
    model.fc1.weight.requires_grad_(False)
    threads = torch.get_num_threads()
    assert_model_unchanged(model, qa.alpha_sweep, model, bits=(None, 4), progress=False)
    assert torch.get_num_threads() == threads
    calls = []
    esd_metrics = qa.esd_metrics

    def failing(evals):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected failure")
        return esd_metrics(evals)

    monkeypatch.setattr(qa, "esd_metrics", failing)
    with model_unchanged(model), pytest.raises(RuntimeError, match="injected"):
        qa.alpha_sweep(model, bits=(None, 4), progress=False)
    assert torch.get_num_threads() == threads


def test_bad_input(tmp_path):
    model = _small_model()
    with pytest.raises(ValueError, match="no analysable layer"):
        qa.alpha_sweep(nn.Sequential(nn.ReLU(), nn.LayerNorm(8)), progress=False)
    with pytest.raises(ValueError, match="no analysable layer.*min_evals"):
        qa.alpha_sweep(nn.Linear(4, 3), progress=False)
    with pytest.raises(ValueError, match="no layer WeightWatcher can fit"):
        rank1 = nn.Linear(32, 32)
        with torch.no_grad():
            rank1.weight.copy_(torch.outer(torch.ones(32), torch.ones(32)))
        qa.alpha_sweep(rank1, bits=None, progress=False)
    torch.manual_seed(0)
    nan_model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    with torch.no_grad():
        nan_model[0].weight[0, 0] = float("nan")
    rows = _rows(qa.alpha_sweep(nan_model, bits=(None, 4), progress=False), 4, "tensor")
    assert rows.loc["0", "reason"] == "the weight has NaN or Inf values"
    assert np.isfinite(rows.loc["1", "alpha"])
    with pytest.raises(ValueError, match="granularities"):
        qa.alpha_sweep(model, granularities=("tensor", "row"), progress=False)
    for bad in ((None, 1), (17,), 0):
        with pytest.raises(ValueError, match="bits"):
            qa.alpha_sweep(model, bits=bad, progress=False)
    for bad in ((4.0,), (True,), "8"):
        with pytest.raises(TypeError, match="bits"):
            qa.alpha_sweep(model, bits=bad, progress=False)
    with pytest.raises(ValueError, match="group_size"):
        qa.alpha_sweep(model, group_size=0, progress=False)
    with pytest.raises(TypeError, match="source"):
        qa.alpha_sweep(42, progress=False)
    with pytest.raises(FileNotFoundError, match="source"):
        qa.alpha_sweep(tmp_path / "missing", progress=False)
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        qa.alpha_sweep(tmp_path, progress=False)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        qa.alpha_sweep(tmp_path / "weights.bin", progress=False)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="missing"):
        qa.alpha_sweep(tmp_path, progress=False)
    layers = qa.alpha_sweep(model, bits=(None, 8), granularities="tensor",
                            progress=False).layers
    with pytest.raises(ValueError, match="baseline"):
        qa.alpha_summary(layers[layers["bits"].notna()])
    with pytest.raises(ValueError, match="columns"):
        qa.alpha_summary(layers.drop(columns="alpha"))
    with pytest.raises(ValueError, match="names"):
        qa.alpha_summary(layers, ["nope"])
    with pytest.raises(TypeError, match="sentences"):
        ql.embedding_similarity(sentences=[])
    with pytest.raises(ValueError, match="sentences"):
        ql.embedding_similarity(sentences=["ok", " "])
    with pytest.raises(ValueError, match="bits"):
        ql.embedding_similarity(bits=(20,))
    with pytest.raises(TypeError, match="source"):
        ql.embedding_similarity(source=model)


def _reference_cosines(pre, spec, sentences) -> torch.Tensor:
    """Quantize a deep copy's encoder Linear weights and mean-pool by hand."""
    def embed(model):
        batch = pre.tokenizer(list(sentences), padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state.double()
        mask = batch["attention_mask"].unsqueeze(-1).double()
        return (hidden * mask).sum(1) / mask.sum(1)

    qmodel = copy.deepcopy(pre.model).eval()
    with torch.no_grad():
        for name in qa.encoder_linear_layers(qmodel):
            w = qmodel.get_submodule(name).weight
            w.copy_(quantize_dequantize(w, spec))
    return torch.nn.functional.cosine_similarity(embed(qmodel), embed(pre.model.eval()), dim=1)


def test_embedding_similarity(minilm, monkeypatch):
    model = minilm.model
    model.train()  # the function must evaluate in eval mode and give the flag back
    try:
        sim = assert_model_unchanged(model, ql.embedding_similarity, minilm, bits=(None, 8, 4, 2),
                                     granularities=("tensor", "channel"), progress=False)
        assert model.training
    finally:
        model.eval()
    assert len(sim.layers) == 36 and all(n.startswith("encoder.layer.") for n in sim.layers)
    base = sim.table.iloc[0]
    assert base["granularity"] == "none" and pd.isna(base["bits"])
    assert base["cos_mean"] == pytest.approx(1.0, abs=1e-9)
    assert base["cos_min"] == pytest.approx(1.0, abs=1e-9)
    t = sim.table.iloc[1:].astype({"bits": int}).set_index(["granularity", "bits"])
    for g in ("tensor", "channel"):
        cos = [t.loc[(g, b), "cos_mean"] for b in (8, 4, 2)]
        assert 1.0 > cos[0] > cos[1] > cos[2]
        assert (t.loc[g, "cos_min"] <= t.loc[g, "cos_mean"]).all()
    assert t.loc[("channel", 8), "cos_mean"] > 0.99 and t.loc[("tensor", 2), "cos_mean"] < 0.5
    spec = QuantSpec(4, granularity="channel")
    ref = _reference_cosines(minilm, spec, ql.data.SENTENCES)
    assert t.loc[("channel", 4), "cos_mean"] == pytest.approx(float(ref.mean()), abs=1e-6)
    assert t.loc[("channel", 4), "cos_min"] == pytest.approx(float(ref.min()), abs=1e-6)
    # an error midway leaves the model as it was
    calls = []

    def failing(x, spec):
        calls.append(1)
        if len(calls) == 40:
            raise RuntimeError("injected failure")
        return quantize_dequantize(x, spec)

    monkeypatch.setattr(ql.outcomes, "quantize_dequantize", failing)
    with model_unchanged(model), pytest.raises(RuntimeError, match="injected"):
        ql.embedding_similarity(minilm, bits=(8, 4), granularities="tensor", progress=False)


def test_alpha_vs_similarity_joins_and_correlates():
    names = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    rows = []
    settings = [(None, "none")] + [(b, g) for g in ("tensor", "channel") for b in (8, 6, 4, 2)]
    for b, g in settings:
        shift = 0.0 if b is None else 1.0 / b
        for i, name in enumerate(names):
            rows.append({"layer": name, "bits": b, "granularity": g,
                         "alpha": 3.0 + i + shift * (i + 1) + 0.01 * rng.standard_normal(),
                         "alpha_weighted": 1.0, "log_spectral_norm": 1.0, "stable_rank": 5.0})
        # a layer the similarity run did not quantize: must not enter the summary
        rows.append({"layer": "embed", "bits": b, "granularity": g, "alpha": 100.0 * (1 + shift),
                     "alpha_weighted": 1.0, "log_spectral_norm": 1.0, "stable_rank": 5.0})
    layers = pd.DataFrame(rows).astype({"bits": "Int64"})
    drops = {(b, g): (0.0 if b is None else 0.5 ** b * (2 if g == "tensor" else 1))
             for b, g in settings}
    table = pd.DataFrame([{"granularity": g, "bits": b, "cos_mean": 1 - drops[b, g],
                           "cos_min": 1 - 2 * drops[b, g], "similarity_drop": drops[b, g]}
                          for b, g in settings]).astype({"bits": "Int64"})
    sim = ql.EmbeddingSimilarity(table=table, layers=tuple(names))
    result = qa.alpha_vs_similarity(layers, sim)
    assert len(result.table) == 8 and result.table["bits"].notna().all()
    summary = qa.alpha_summary(layers, names)
    merged = summary[summary["bits"].notna()].reset_index(drop=True)
    np.testing.assert_allclose(result.table["abs_alpha_change_pct"],
                               merged["alpha_change_pct"].abs())
    x, y = result.table["abs_alpha_change_pct"], result.table["similarity_drop"]
    corr = result.correlation.set_index(["granularity", "alpha_measure"])
    assert corr.loc[("all", "abs_alpha_change_pct"), "pearson"] == pytest.approx(
        np.corrcoef(x, y)[0, 1])
    assert corr.loc[("all", "abs_alpha_change_pct"), "spearman"] == pytest.approx(
        np.corrcoef(x.rank(), y.rank())[0, 1])
    assert corr.loc[("all", "abs_alpha_change_pct"), "n"] == 8
    assert corr.loc[("tensor", "one_minus_alpha_corr"), "n"] == 4
    assert len(result.correlation) == 3 * 3  # (all, tensor, channel) x three alpha measures
    with pytest.raises(TypeError, match="similarity"):
        qa.alpha_vs_similarity(layers, table)


def test_computed_weights_of_a_qat_model():
    """Parametrized weights are read through the parametrization, one layer each."""
    model = _small_model()
    spec = QuantSpec(4, granularity="channel")
    qat = ql.prepare_qat(model, spec)
    ours = _rows(qa.alpha_sweep(qat, bits=None, progress=False), None, "none")
    ref = _rows(qa.alpha_sweep(quantize_model(model, spec), bits=None, progress=False),
                None, "none")
    assert sorted(ours.index) == sorted(ref.index)
    pd.testing.assert_frame_equal(ours.loc[ref.index, METRICS], ref[METRICS])


def test_layer_kind():
    from quantlens.alpha import layer_kind

    assert layer_kind("encoder.layer.3.attention.self.query") == "query"
    assert layer_kind("encoder.layer.3.attention.output.dense") == "attention out"
    assert layer_kind("encoder.layer.3.intermediate.dense") == "FFN in"
    assert layer_kind("encoder.layer.3.output.dense") == "FFN out"
    assert layer_kind("model.layers.0.mlp.down_proj") == "FFN out"
    assert layer_kind("embeddings.word_embeddings") == "embedding"
    assert layer_kind("conv1") == "other"
    with pytest.raises(TypeError, match="name"):
        layer_kind(3)
