"""Data-parallel Hessian products over torch.distributed: 2 real CPU processes with gloo,
spawned from the test (no external service), against the single-process result."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import quantlens as ql

sys.path.insert(0, str(Path(__file__).parent))
from _dist_data import built_on_the_operator, model_and_data, sweeps  # noqa: E402

WORKER = Path(__file__).parent / "_dist_worker.py"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def _run(tmp_path, mode, size=2):
    init = tmp_path / "rendezvous"
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(size), str(init), mode,
                               str(tmp_path / f"rank{r}.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(size)]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung past 120 s") from None
        results.append((p.returncode, err))
    return results


def test_two_processes_give_the_single_process_spectrum_and_trace(tmp_path):
    results = _run(tmp_path, "ok")
    assert [rc for rc, _ in results] == [0, 0], results
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank holds the same full-data result, bit for bit

    model, data = model_and_data()
    op = ql.HessianOperator(model, DataLoader(data, batch_size=7))
    eig = ql.lanczos(op, 2, tol=1e-9)
    trace = ql.hutchpp(op, 24, seed=3)
    got = ranks[0]
    assert got["n_examples"] == op.n_examples == 45
    # the same sums in another order: equal to float32 rounding
    assert got["eigenvalues"] == pytest.approx(list(eig.eigenvalues), rel=1e-5)
    assert got["trace"] == pytest.approx(trace.value, rel=1e-5)
    assert got["loss"] == pytest.approx(op.loss, rel=1e-6)
    assert got["gradient_norm"] == pytest.approx(float(op.gradient().norm()), rel=1e-5)
    # everything built on the operator: SLQ nodes, per-layer λmax and traces, HAWQ blocks
    ref = built_on_the_operator(model, DataLoader(data, batch_size=7))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # and both are the exact Hessian's
    h = torch.stack([op.matvec(e) for e in torch.eye(op.n)]).double()
    exact = torch.linalg.eigvalsh((h + h.T) / 2)
    assert got["eigenvalues"][0] == pytest.approx(float(exact[-1]), rel=1e-4)


def test_a_rank_failing_midway_is_a_clear_error_on_every_rank(tmp_path):
    results = _run(tmp_path, "fail")
    (rc0, err0), (rc1, err1) = results
    assert rc1 != 0 and "rank 1 fails on purpose midway" in err1
    assert rc0 != 0 and "quantlens: all_reduce on rank 0 of 2 failed" in err0, err0[-2000:]


def test_landscapes_and_sweeps_split_over_two_processes_equal_one_process(tmp_path):
    # grid points, directions, oracle runs, configurations and layers are shared out; each
    # value is computed exactly as one process computes it, so the gathered results are equal
    # bit for bit to the single-process ones, on both ranks
    results = _run(tmp_path, "sweeps")
    assert [rc for rc, _ in results] == [0, 0], results
    ranks = [pickle.loads((tmp_path / f"rank{r}.json").read_bytes()) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        reference = sweeps(*model_and_data())
    finally:
        torch.set_num_threads(threads)
    for got in ranks:
        for key in ("plane", "line"):
            for a, b in zip(got[key], reference[key]):
                np.testing.assert_array_equal(a, b)
        for key in ("widths", "oracle", "optimum", "alpha"):
            pd.testing.assert_frame_equal(got[key], reference[key], check_exact=True)


def test_helpers_without_a_process_group():
    # one process: the helpers are the identity, and collect puts pairs in position order
    t = torch.arange(3.0)
    assert ql.distributed.all_sum(t) is t
    assert ql.distributed.share([1, 2, 3]) == [1, 2, 3]
    assert ql.distributed.collect([(2, "c"), (0, "a"), (1, "b")]) == ["a", "b", "c"]
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        ql.distributed.all_sum([1.0])
