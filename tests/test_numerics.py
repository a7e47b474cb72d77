"""Pinned numerics: training gives the same bits whatever the ISA limits, core and thread count.

Each check runs in a fresh Python (the pins act when a library starts), so these tests hold on
any machine: they compare a machine with itself under perturbations that change results when
the numerics are *not* pinned.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import quantlens as ql
from quantlens.numerics import NUMPY_DISPATCH, PINNED_ENV, pinned_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "quantlens" / "numerics.py"

TRAIN = """
import hashlib, torch, quantlens as ql
status = ql.reproducible()
model = ql.make_model("cnn", seed=0)
train, _ = ql.digits_loaders(seed=0)
ql.fit(model, train, epochs=2, seed=0)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
print(status.pinned, digest.hexdigest())
"""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in PINNED_ENV and k not in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                                                 "GLIBC_TUNABLES")}
    env.update(extra)
    return env


def _run(code: str, env: dict, prefix: tuple[str, ...] = ()) -> str:
    out = subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_script_prints_the_pinned_environment_with_the_standard_library_alone():
    out = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT)], capture_output=True,
                         text=True, timeout=60, env=_clean_env())
    assert out.returncode == 0, out.stderr
    import shlex

    printed = dict(item.split("=", 1) for item in shlex.split(out.stdout))
    assert printed == pinned_env(_clean_env())
    for key, value in PINNED_ENV.items():
        assert printed[key] == value


def test_numpy_dispatch_list_covers_the_installed_numpy():
    from numpy._core._multiarray_umath import __cpu_dispatch__

    assert set(__cpu_dispatch__) <= set(NUMPY_DISPATCH)


def test_openblas_core_is_left_alone_when_set():
    assert pinned_env({"OPENBLAS_CORETYPE": "Zen"}).get("OPENBLAS_CORETYPE") is None


def test_reproducible_reports_what_is_not_pinned():
    # NumPy's SIMD list is read when NumPy starts: without it the report must say so.
    out = _run("import quantlens as ql; s = ql.reproducible(); print(s.pinned); print(s)",
               _clean_env())
    first, line = out.splitlines()[-2:]
    assert first == "False" and "NOT pinned" in line and "NPY_DISABLE_CPU_FEATURES" in line
    # ATen picks its kernels on first use: a late call cannot pin them, and says so.
    late = _run("import torch; torch.ones(3).exp(); import quantlens as ql; "
                "print(ql.reproducible())", _clean_env(**pinned_env()) | {
                    "ATEN_CPU_CAPABILITY": ""})
    if "ATen already chose" not in late:  # a CPU whose best ATen kernels are the defaults
        assert "ATEN_CPU_CAPABILITY is set to ''" in late


def test_pinned_in_a_fresh_process():
    out = _run("import quantlens as ql; print(repr(ql.reproducible()))",
               _clean_env(**pinned_env()))
    assert out.startswith("numerics pinned: 1 thread"), out


@pytest.mark.skipif(sys.platform != "linux", reason="taskset and glibc tunables are Linux's")
def test_training_is_bitwise_identical_under_perturbations():
    """Two epochs of the digits CNN: one hash under every simulated machine."""
    pinned = _clean_env(**pinned_env())
    runs = {"as is": _run(TRAIN, pinned)}
    runs["MKL/oneDNN at AVX2"] = _run(TRAIN, pinned | {"MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                                      "ONEDNN_MAX_CPU_ISA": "AVX2"})
    runs["libm without AVX2/FMA"] = _run(TRAIN, pinned | {
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA"})
    runs["4 OpenMP threads asked"] = _run(TRAIN, pinned | {"OMP_NUM_THREADS": "4"})
    if shutil.which("taskset"):
        runs["one core"] = _run(TRAIN, pinned, prefix=("taskset", "-c", "0"))
    assert all(v.startswith("True ") for v in runs.values()), runs
    assert len(set(runs.values())) == 1, runs


def test_install_kernel_writes_the_pinned_environment(tmp_path):
    folder = ql.install_kernel(name="quantlens-test", prefix=str(tmp_path))
    spec = json.loads((Path(folder) / "kernel.json").read_text())
    assert spec["env"] == pinned_env()
    assert spec["argv"][0] == sys.executable
    assert spec["display_name"] == "Python 3 (quantlens, pinned numerics)"
