"""Pinned numerics: the same bits on every x86-64 CPU, core count and BLAS code path.

Float arithmetic is exact and deterministic; what differs between machines is *which*
arithmetic runs. On CPU, PyTorch, MKL, oneDNN, NNPACK, NumPy and OpenBLAS each choose
kernels at run time from the instruction set (SSE, AVX2, AVX-512, ...), the cache sizes and
the number of threads, and each choice sums in its own order. A network trained for a few
hundred steps amplifies those last-bit differences into a different network. Pinning
removes every such choice:

===============================  ==========================================================
what varies                      pin
===============================  ==========================================================
threads (reduction split)        one thread: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
                                 ``OPENBLAS_NUM_THREADS`` = 1 and ``torch.set_num_threads(1)``
ATen vectorized kernels          ``ATEN_CPU_CAPABILITY=default`` (no ISA-specific kernels)
MKL BLAS/LAPACK code path        ``MKL_CBWR=COMPATIBLE`` (conditional numerical
                                 reproducibility: one SSE2 branch on every CPU)
oneDNN, NNPACK convolutions      disabled (``torch.backends.mkldnn``/``nnpack``); convolutions
                                 run as im2col + MKL GEMM
NumPy SIMD dispatch              ``NPY_DISABLE_CPU_FEATURES`` lists every dispatched target
OpenBLAS (NumPy/SciPy) kernels   ``OPENBLAS_CORETYPE=Haswell`` unless already set (AVX2+FMA
                                 CPUs, i.e. every x86-64 CPU since 2013/2017)
===============================  ==========================================================

Variables that a library reads when it starts (NumPy's SIMD list, OpenBLAS's core type) can
only be pinned *before* Python starts: ``make nbval``, ``make html``, ``make notebooks`` and
``make lab`` export them, and :func:`install_kernel` writes them into a Jupyter kernel spec.
Everything else :func:`reproducible` pins at run time, provided it is called before the first
tensor operation (ATen fixes its kernel choice, MKL its branch, on first use).

Library code never calls :func:`reproducible`: changing the caller's global numerics is the
caller's decision.

Run this file as a script (``python quantlens/numerics.py``) to print the pinned environment
as shell assignments; it needs only the standard library.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import dataclass, field

# NumPy >= 2.0 dispatch targets on x86-64 (its baseline, X86_V2, is always on). Names that a
# NumPy version does not know are ignored by it. tests/test_numerics.py checks the list
# covers the installed NumPy's ``__cpu_dispatch__``.
NUMPY_DISPATCH = ("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR")
OPENBLAS_CORE = "Haswell"

PINNED_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "NPY_DISABLE_CPU_FEATURES": " ".join(NUMPY_DISPATCH),
}

_MKL_CBWR_BRANCH = 1  # mkl_cbwr_get(MKL_CBWR_BRANCH)
_MKL_CBWR_COMPATIBLE = 3


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pinned_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables of pinned numerics, for a process started from ``environ``.

    ``OPENBLAS_CORETYPE`` is added only where ``environ`` (default: ``os.environ``) does not
    set it already and the CPU has AVX2 and FMA (the Haswell kernels need both); a core type
    set by the user or the machine's administrator is left alone, and :func:`reproducible`
    then reports whether it matches.
    """
    environ = os.environ if environ is None else environ
    env = dict(PINNED_ENV)
    if "OPENBLAS_CORETYPE" not in environ and {"avx2", "fma"} <= _cpu_flags():
        env["OPENBLAS_CORETYPE"] = OPENBLAS_CORE
    return env


@dataclass(frozen=True)
class Numerics:
    """What :func:`reproducible` pinned, and what it could not.

    ``problems`` is empty exactly when every pin is in effect; each entry says what differs
    and how to fix it. ``repr`` is one line, so a chapter's first cell states plainly whether
    its numbers can be expected to match the book's.
    """

    pinned: bool
    settings: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        if self.pinned:
            return "numerics pinned: " + " · ".join(self.settings)
        return ("numerics NOT pinned, so numbers may differ from the book's in the last "
                "digits or more: " + "; ".join(self.problems))


def _mkl_cbwr():
    """``(get, set)`` of MKL's CBWR branch in torch's statically linked MKL, or None."""
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib",
                                       "libtorch_cpu.so"))
        return lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return None


def _openblas_cores() -> list[str]:
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return []
    import numpy  # noqa: F401  (loads NumPy's OpenBLAS)

    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
    except ImportError:  # pragma: no cover
        pass
    return [d.get("architecture") or "?" for d in threadpoolctl.threadpool_info()
            if d.get("internal_api") == "openblas"]


def reproducible() -> Numerics:
    """Pin this process's numerics (see the module docstring) and report what is in effect.

    Sets one thread in torch, MKL and OpenBLAS; turns oneDNN and NNPACK off; selects ATen's
    ``default`` kernels and MKL's COMPATIBLE branch if they are not fixed yet; exports
    :func:`pinned_env` for child processes. Nothing is raised: what could not be pinned (a
    library that started before the call, a non-x86-64 machine) is listed in the returned
    :class:`Numerics`, whose one-line ``repr`` says so.

    Call it at the top of a script or notebook, right after the imports and before any
    tensor is computed.
    """
    import numpy as np
    import torch

    for key, value in pinned_env().items():
        os.environ.setdefault(key, value)
    problems: list[str] = []
    settings: list[str] = []

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch._C._set_nnpack_enabled(False)
    settings.append("1 thread")

    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() != "default":
        problems.append("ATEN_CPU_CAPABILITY is set to "
                        f"{os.environ['ATEN_CPU_CAPABILITY']!r}, not 'default'")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "DEFAULT":
        settings.append("ATen default kernels")
    else:
        problems.append(f"ATen already chose its {capability} kernels (call reproducible() "
                        "before the first tensor operation, or start Python with "
                        "ATEN_CPU_CAPABILITY=default)")

    if torch.backends.mkl.is_available():
        cbwr = _mkl_cbwr()
        if cbwr is None:
            problems.append("cannot reach MKL's CBWR control: start Python with MKL_CBWR="
                            "COMPATIBLE")
        else:
            get, put = cbwr
            if get(_MKL_CBWR_BRANCH) != _MKL_CBWR_COMPATIBLE:
                put(_MKL_CBWR_COMPATIBLE)
            if get(_MKL_CBWR_BRANCH) == _MKL_CBWR_COMPATIBLE:
                settings.append("MKL CBWR COMPATIBLE")
            else:
                problems.append("MKL already chose its code path (call reproducible() before "
                                "the first tensor operation, or start Python with "
                                "MKL_CBWR=COMPATIBLE)")
    settings.append("oneDNN/NNPACK off")

    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # pragma: no cover - NumPy < 2
        __cpu_dispatch__, __cpu_features__ = list(NUMPY_DISPATCH), {}
    on = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    if on:
        wanted = PINNED_ENV["NPY_DISABLE_CPU_FEATURES"]
        problems.append(f"NumPy {np.__version__} dispatches to {', '.join(on)} (start Python "
                        f"with NPY_DISABLE_CPU_FEATURES='{wanted}')")
    else:
        settings.append("NumPy baseline SIMD")

    cores = sorted(set(_openblas_cores()))
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover
        pass
    if cores and cores != [OPENBLAS_CORE]:
        problems.append(f"OpenBLAS runs its {', '.join(cores)} kernels, not {OPENBLAS_CORE} "
                        f"(start Python with OPENBLAS_CORETYPE={OPENBLAS_CORE} on an AVX2 CPU)")
    elif cores:
        settings.append(f"OpenBLAS {OPENBLAS_CORE}")

    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        problems.append(f"this is a {machine} machine: the book's numbers are bitwise "
                        "reproducible on x86-64 only")
    return Numerics(pinned=not problems, settings=tuple(settings), problems=tuple(problems))


def install_kernel(name: str = "quantlens", prefix: str | None = None,
                   user: bool = False) -> str:
    """Install a Jupyter kernel spec that starts this Python with :func:`pinned_env`.

    The chapters name this kernel (``quantlens``), so Jupyter, nbval and the book build all
    start them with pinned numerics. Default location: this environment (``sys.prefix``);
    ``user=True`` installs it for the current user instead. Returns the spec's folder.
    """
    from ipykernel.kernelspec import install

    return install(
        kernel_name=name, display_name="Python 3 (quantlens, pinned numerics)",
        prefix=None if user else (prefix or sys.prefix), user=user, env=pinned_env(),
    )


def _main(argv: list[str]) -> int:
    if argv[:1] == ["install-kernel"]:
        print(install_kernel(user="--user" in argv))
        return 0
    if argv:
        print("usage: python quantlens/numerics.py [install-kernel [--user]]", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={shlex.quote(v)}" for k, v in pinned_env().items()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
