"""quantlens.hessian against PyHessian 0.1, side by side in one run (``make bench``).

For the digits CNN (38k parameters), a digits MLP with 1.1M parameters and a digits
transformer with 1.1M parameters, on the training DataLoader (11 batches of 128), it prints:

1. time and Hessian-vector products (HVPs) to the top eigenvalue at relative accuracy 1e-4:
   quantlens Lanczos vs PyHessian power iteration. "Accuracy" is measured against a reference
   λ_max from Lanczos run to 1e-9; each method's own tolerance is tightened (10x at a time)
   until its answer is within 1e-4, and the run that first gets there is the one timed;
2. trace at equal standard error: the Hutch++ budget whose standard error is at most that of
   plain Hutchinson with 120 HVPs, and the ratio of HVPs;
3. peak memory of Lanczos: the basis bound (max_iter+1)·n·4 bytes and the measured increase
   of the process's resident memory.

PyHessian is given a deep copy (it calls ``model.eval()`` and accumulates ``.grad``).
Requires ``pip install pyhessian==0.1`` (the ``bench`` extra).
"""

from __future__ import annotations

import copy
import threading
import time

import psutil
import torch
from pyhessian import hessian as PyHessian

import quantlens as ql
from quantlens.hessian import HessianOperator, hutchinson, hutchpp, lanczos

TARGET = 1e-4


def models():
    cnn, _ = ql.trained_digits_model("cnn")
    big = ql.make_model("mlp", hidden=(1024, 1024))
    tf = ql.make_model("transformer", dim=256, depth=2, heads=8)
    train, test = ql.digits_loaders(batch_size=128)
    ql.fit(big, train, epochs=5, lr=1e-3)
    ql.fit(tf, train, epochs=5, lr=1e-3)
    return {"digits CNN": cnn, "MLP 64-1024-1024-10": big, "TinyTransformer dim 256": tf}


class PeakRSS:
    """Sample the resident set size every 2 ms in a thread; report the peak increase."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.increase_mb = (self.peak - self.base) / 2**20


def time_lanczos(model, loader, ref, method):
    for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
        t0 = time.perf_counter()
        op = HessianOperator(model, loader, method=method)
        res = lanczos(op, 1, tol=tol, seed=1)
        dt = time.perf_counter() - t0
        err = abs(res.eigenvalues[0] - ref) / abs(ref)
        if err <= TARGET:
            return dt, res.n_hvp, err, tol
    return dt, res.n_hvp, err, tol


def time_pyhessian(model, loader, ref):
    for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
        m = copy.deepcopy(model)
        torch.manual_seed(1)
        t0 = time.perf_counter()
        ph = PyHessian(m, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
        calls = {"n": 0}
        inner = ph.dataloader_hv_product

        def counted(v, inner=inner, calls=calls):
            calls["n"] += 1
            return inner(v)

        ph.dataloader_hv_product = counted
        top, _ = ph.eigenvalues(maxIter=1000, tol=tol, top_n=1)
        dt = time.perf_counter() - t0
        err = abs(top[0] - ref) / abs(ref)
        if err <= TARGET:
            return dt, calls["n"], err, tol
    return dt, calls["n"], err, tol


def main() -> None:
    torch.manual_seed(0)
    train, _ = ql.digits_loaders(batch_size=128)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(train)} batches, {len(train.dataset)} examples")
    for name, model in models().items():
        n = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {n:,} parameters")
        ref_op = HessianOperator(model, train)
        ref = float(lanczos(ref_op, 1, tol=1e-9, max_iter=200).eigenvalues[0])
        print(f"reference λ_max = {ref:.6f} (Lanczos, tol 1e-9)")

        # per-product cost of the two HVP methods
        for method in ("double_backward", "forward_over_reverse"):
            op = HessianOperator(model, train, method=method)
            v = torch.randn(op.n)
            op.matvec(v)
            t0 = time.perf_counter()
            for _ in range(5):
                op.matvec(v)
            print(f"  HVP {method:22s} {1e3 * (time.perf_counter() - t0) / 5:8.1f} ms/product")

        lz = time_lanczos(model, train, ref, "double_backward")
        ph = time_pyhessian(model, train, ref)
        print(f"top eigenvalue to rel. accuracy {TARGET:g}:")
        print(f"  quantlens Lanczos   {lz[0]:7.2f} s  {lz[1]:4d} HVPs  error {lz[2]:.1e}"
              f"  (tol {lz[3]:g})")
        print(f"  PyHessian power it. {ph[0]:7.2f} s  {ph[1]:4d} HVPs  error {ph[2]:.1e}"
              f"  (tol {ph[3]:g})")
        print(f"  speed-up: {ph[0] / lz[0]:.1f}x wall clock, {ph[1] / lz[1]:.1f}x fewer HVPs")

        op = HessianOperator(model, train)
        base = hutchinson(op, 120, seed=0)
        budget = None
        for b in (12, 18, 24, 30, 45, 60, 90, 120):
            pp = hutchpp(op, b, seed=0)
            if pp.stderr <= base.stderr:
                budget = pp
                break
        print("trace at equal standard error:")
        print(f"  Hutchinson {base.value:10.3f} ± {base.stderr:.3f} with {base.n_hvp} HVPs")
        if budget is None:
            print("  Hutch++ did not reach that standard error within 120 HVPs")
        else:
            print(f"  Hutch++    {budget.value:10.3f} ± {budget.stderr:.3f} with {budget.n_hvp}"
                  f" HVPs -> {base.n_hvp / budget.n_hvp:.1f}x fewer HVPs")

        max_iter = 80
        op = HessianOperator(model, train)
        with PeakRSS() as mem:
            lanczos(op, 5, tol=1e-12, max_iter=max_iter)
        bound = (max_iter + 1) * op.n * 4 / 2**20
        print(f"Lanczos memory (k=5, {max_iter} iterations): basis bound {bound:.1f} MiB, "
              f"measured peak RSS increase {mem.increase_mb:.1f} MiB")


if __name__ == "__main__":
    main()
