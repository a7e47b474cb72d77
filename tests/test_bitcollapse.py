"""quantlens.bitcollapse: settings, fine-tuning, measures against direct computation, the
subset-reproduces-the-grid property, ρ choice, correlations and claims; bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

import quantlens as ql
from quantlens import bitcollapse as bc

FAST = bc.CollapseConfig(pretrain_epochs=2, epochs=1, n_curvature=64, trace_hvp=6,
                         directions=2, steps=5, weight_sigmas=(0.2,), input_sigmas=(0.1,),
                         rotations=(10.0,), fgsm_epsilons=(0.05,), deploy_bits=(4, 2))


def test_settings_parse_and_specs():
    model = ql.make_model("mlp")
    assert bc.Setting.parse("fp32").spec(model, FAST) is None
    assert bc.Setting.parse("int4").spec(model, FAST) == ql.QuantSpec(4)
    assert bc.Setting.parse("int8-last").spec(model, FAST) == {"net.5": ql.QuantSpec(8)}
    for bad in ("int1", "int", "fp16", 8, "int4-first"):
        with pytest.raises(ValueError, match="setting"):
            bc.Setting.parse(bad)
    with pytest.raises(ValueError, match="epochs"):
        bc.CollapseConfig(epochs=0)
    with pytest.raises(ValueError, match="granularity"):
        bc.CollapseConfig(granularity="row")


def test_finetune_deploys_on_the_grid_and_leaves_the_cached_start():
    start = bc.fp32_start(0, FAST)
    snapshot = ql.ModelSnapshot.take(start)
    deployed, latent, history = bc.finetune("int4", "sam", 0, 0.05, FAST)
    assert len(history) == FAST.epochs
    for name, layer in ql.quantizable_layers(deployed).items():
        w = layer.weight.detach()
        assert torch.equal(w, ql.quantize_dequantize(ql.quantizable_layers(latent)[name]
                                                     .weight.detach(), 4))
        assert len(torch.unique(w)) <= 15
    assert not snapshot.differences(bc.fp32_start(0, FAST))  # the cache is untouched
    last, _, _ = bc.finetune("int8-last", "sgd", 0, config=FAST)
    layers = ql.quantizable_layers(last)
    assert len(torch.unique(layers["net.5"].weight)) <= 255
    assert len(torch.unique(layers["net.1"].weight)) > 255  # not quantized
    with pytest.raises(ValueError, match="needs rho"):
        bc.finetune("int4", "asam", 0, config=FAST)
    with pytest.raises(ValueError, match="optimizer"):
        bc.finetune("int4", "adam", 0, config=FAST)


def test_measures_match_direct_computation():
    deployed, latent, _ = bc.finetune("int4", "sgd", 1, config=FAST)
    out = bc.measure(deployed, latent, "int4", FAST)
    _, test, curvature = bc.digits_data(FAST)
    ev = ql.evaluate(deployed, test)
    assert out["scalars"].test_accuracy[0] == ev.accuracy
    lam = ql.lanczos(ql.HessianOperator(deployed, curvature), 1, tol=1e-8).eigenvalues[0]
    assert out["scalars"].lambda_max[0] == pytest.approx(lam, rel=1e-2)
    d = ql.random_direction(latent, seed=1)
    line = ql.loss_line(latent, curvature, d, FAST.distance, FAST.steps, spec=4,
                        mode="requantize", progress=False)
    row = out["basins"].query("mode == 'requantize' and direction == 1").iloc[0]
    assert row.width == bc.line_width(line, FAST.threshold)[0]
    deploy = out["deploy"].set_index("deploy_bits")
    assert deploy.loc[4, "accuracy"] == ev.accuracy  # trained at int4, deployed at int4
    assert deploy.loc[2, "accuracy"] == ql.evaluate(ql.quantize_model(latent, 2), test).accuracy
    # FP32: one float line serves both modes
    fp, lat, _ = bc.finetune("fp32", "sgd", 1, config=FAST)
    basins = bc.measure(fp, lat, "fp32", FAST)["basins"]
    a, b = (basins[basins["mode"] == m].width.to_numpy() for m in bc.MODES)
    assert np.array_equal(a, b)


def test_line_width_censors_at_the_grid_end():
    alphas = np.linspace(-1, 1, 5)
    flat = ql.Landscape(alphas=alphas, loss=np.array([1.0, 0.5, 0.0, 0.05, 0.08]),
                        accuracy=np.zeros(5))
    width, censored = bc.line_width(flat, 0.1)
    # left: crosses 0.1 between -0.5 (0.5) and 0 (0.0) at 0.1 from 0; right never crosses
    assert censored == 1 and width == pytest.approx(0.1 + 1.0)


def test_a_subset_reproduces_the_grid_bitwise():
    rho = {"sam": 0.1}
    grid = bc.bit_collapse(("fp32", "int3"), ("sgd", "sam"), seeds=(0, 1), rho=rho,
                           config=FAST, progress=False)
    one = bc.bit_collapse(("int3",), ("sam",), seeds=(1,), rho=rho, config=FAST,
                          progress=False)
    row = grid.models.query("setting == 'int3' and optimizer == 'sam' and seed == 1")
    pd.testing.assert_frame_equal(row.reset_index(drop=True), one.models)
    assert len(grid.models) == 8 and grid.models.seed.nunique() == 2
    assert set(grid.table.metric) >= {"lambda_max", "basin_requantize", "fgsm",
                                      "deploy_accuracy"}
    wide = grid.wide()
    assert {"fgsm@0.05", "deploy@2", "clean@0"} <= set(wide.columns)
    assert (wide["clean@0"] == wide["test_accuracy"]).all()
    assert "8 models" in repr(grid)


def test_best_rho_and_search_table():
    search = pd.DataFrame({
        "optimizer": ["sam"] * 4 + ["asam"] * 2, "rho": [0.1, 0.1, 0.5, 0.5, 1.0, 2.0],
        "seed": [0, 1, 0, 1, 0, 0], "val_accuracy": [0.9, 0.92, 0.91, 0.91, 0.8, 0.8],
        "val_loss": [0.3, 0.3, 0.2, 0.2, 0.5, 0.4]})
    assert bc.best_rho(search) == {"sam": 0.5, "asam": 2.0}  # tie on accuracy: lower loss
    with pytest.raises(ValueError, match="asam"):
        bc.best_rho(search[search.optimizer == "sam"])
    table = bc.rho_search(sam_rhos=(0.05,), asam_rhos=(1.0,), seeds=(7,), config=FAST,
                          progress=False)
    assert list(table.optimizer) == ["sgd", "sam", "asam"]
    assert table.val_accuracy.between(0, 1).all()


def _wide_table(rng):
    n = 12
    return pd.DataFrame({"setting": ["int8"] * 6 + ["int2"] * 6, "optimizer": "sgd",
                         "seed": list(range(6)) * 2, "clean@0": rng.random(n),
                         "lambda_max": rng.random(n), "fgsm@0.05": rng.random(n)})


def test_correlations_against_scipy():
    w = _wide_table(np.random.default_rng(0))
    t = bc.geometry_vs_brittleness(w, geometry=("lambda_max",), brittle=("fgsm@0.05",))
    drop = w["clean@0"] - w["fgsm@0.05"]
    assert t.spearman[0] == pytest.approx(spearmanr(w.lambda_max, drop).statistic)
    within = bc.geometry_vs_brittleness(w, ("lambda_max",), ("fgsm@0.05",), within=True)
    per = [spearmanr(g.lambda_max, g["clean@0"] - g["fgsm@0.05"]).statistic
           for _, g in w.groupby("setting")]
    assert within.spearman[0] == pytest.approx(np.mean(per)) and within.n[0] == 2
    with pytest.raises(ValueError, match="no column"):
        bc.geometry_vs_brittleness(w, geometry=("trace",), brittle=("fgsm@0.05",))
    with pytest.raises(TypeError, match="BitCollapse"):
        bc.geometry_vs_brittleness([1, 2])


def test_claims_and_compare():
    r = bc.bit_collapse(("fp32", "int8"), ("sgd", "sam"), seeds=2, rho={"sam": 0.1},
                        config=FAST, progress=False)
    c = bc.claims(r)
    assert len(c) == 6 and c.holds.dtype == bool
    assert set(c.a) == {"int8/sgd", "int8/sam"}
    row = c.query("measure == 'lambda_max'").iloc[0]
    w = r.wide()
    means = w.groupby(["setting", "optimizer"]).lambda_max.mean()
    assert row.mean_a == pytest.approx(means["int8", "sgd"])
    assert row.mean_b == pytest.approx(means["fp32", "sgd"])
    by = bc.compare(r, "basin_requantize", "sam", "sgd", by="setting")
    assert list(by.index) == ["fp32", "int8"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        bc.bit_collapse(("int4", "int4"), config=FAST)
    with pytest.raises(TypeError, match="optimizers"):
        bc.bit_collapse(("int4",), "sgd", config=FAST)
    with pytest.raises(ValueError, match="optimizer"):
        bc.bit_collapse(("int4",), ("sgd", "lion"), config=FAST)
    with pytest.raises(ValueError, match="rho"):
        bc.bit_collapse(("int4",), ("sam",), rho={"asam": 1.0}, config=FAST)
    with pytest.raises(TypeError, match="config"):
        bc.bit_collapse(("int4",), ("sgd",), config={"epochs": 1})
    with pytest.raises(ValueError, match="seeds"):
        bc.bit_collapse(("int4",), ("sgd",), seeds=0, config=FAST)
