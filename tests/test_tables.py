"""Display tables: every number kept, one format per column, words for missing values."""

import numpy as np
import pandas as pd
import pytest

import quantlens as ql


def test_for_readers_formats_each_column_once():
    df = pd.DataFrame({
        "mean_a": [0.0008418, 5.247e-05, np.nan],
        "acc": [98.61, 97.2, 20.55],
        "lambda_max": [-0.0, 2.5, 11.25],
        "n_hvp": [12, 1234567, 7],
        "verdict": ["a higher", None, pd.NA],
        "ok": [True, False, True],
    }, index=pd.MultiIndex.from_tuples([(8, "sym", "tensor"), (4, "asym", "channel"),
                                        (2, "sym", np.nan)], names=["bits", "sym", "gran"]))
    out = ql.tables.for_readers(df)
    assert list(out.columns) == ["mean (first)", "acc", "λmax", "Hessian-vector products",
                                 "verdict", "ok"]
    assert list(out["mean (first)"]) == ["8.42e-04", "5.25e-05", "–"]  # spans > 3 decades
    assert list(out["acc"]) == ["98.6", "97.2", "20.6"]  # 3 significant digits of the max
    assert list(out["λmax"]) == ["0.0", "2.5", "11.2"]  # -0.0 shown without a sign
    assert list(out["Hessian-vector products"]) == ["12", "1,234,567", "7"]
    assert list(out["verdict"]) == ["a higher", "–", "–"]
    assert list(out["ok"]) == ["yes", "no", "yes"]
    assert list(out.index) == ["8 · sym · tensor", "4 · asym · channel", "2 · sym"]
    assert out.index.name == "bits · sym · gran"
    assert df["mean_a"].iloc[0] == 0.0008418  # the input is not modified
    small = ql.tables.for_readers(pd.DataFrame({"x": [0.1173, 0.04604, 2.702],
                                                "y": [0.00132, 3.58e-05, 0.0111]}))
    assert list(small["x"]) == ["0.117", "0.046", "2.702"]  # no value loses its digits
    assert list(small["y"]) == ["1.32e-03", "3.58e-05", "1.11e-02"]


def test_for_readers_rejects_bad_arguments():
    with pytest.raises(TypeError, match="df"):
        ql.tables.for_readers([1, 2])
    with pytest.raises(ValueError, match="digits"):
        ql.tables.for_readers(pd.DataFrame({"a": [1.0]}), digits=0)
    with pytest.raises(ValueError, match="columns"):
        ql.tables.for_readers(pd.DataFrame({"a": [1.0]}), columns=["b"])
