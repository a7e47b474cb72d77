"""quantlens.hessian against PyHessian 0.1 in both of its modes, side by side in one run.

For the digits CNN (38k parameters), a digits MLP with 1.1M parameters and a digits
transformer with 1.1M parameters, on the 1,347 training images (11 batches of 128), it prints:

1. the cost of one Hessian-vector product (HVP): quantlens over the 11 batches (double
   backward, and forward-over-reverse), PyHessian full-batch (one graph of all 1,347 images,
   kept) and PyHessian's dataloader mode (the graph rebuilt for every product); the FLOPs of
   one product (torch's FlopCounterMode), the GFLOP/s reached and the fraction of the float32
   GEMM rate measured in the same run (the roofline);
2. time and HVPs to the top eigenvalue at relative accuracy 1e-4: quantlens Lanczos against
   PyHessian's power iteration in each mode. "Accuracy" is measured against a reference
   λ_max from Lanczos run to 1e-9; each method's own tolerance is tightened (10x at a time)
   in an untimed calibration pass until its answer is within 1e-4; then every contender is
   timed ``--repeat`` times, interleaved, and the median with its range is printed. The
   speed-up is against PyHessian's best mode, with the bound set by the products: at equal
   cost per product no method can beat another by more than the ratio of HVP counts;
3. trace at equal standard error: the Hutch++ budget whose standard error is at most that of
   plain Hutchinson with 120 HVPs, and the ratio of HVPs;
4. peak memory of Lanczos: the basis bound and the measured increase of the resident memory.

PyHessian is given a deep copy (it calls ``model.eval()`` and accumulates ``.grad``).
Requires ``pip install pyhessian==0.1`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import threading
import time

import psutil
import torch
from _common import gemm_gflops, interleaved, median, spread
from pyhessian import hessian as PyHessian
from torch.utils.flop_counter import FlopCounterMode

import quantlens as ql
from quantlens.hessian import HessianOperator, hutchinson, hutchpp, lanczos

TARGET = 1e-4
# the module (``pyhessian.hessian`` the attribute is the class of the same name)
ph_module = importlib.import_module("pyhessian.hessian")


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


class Counted:
    """Count PyHessian's products in both modes (its full-batch mode calls the module-level
    ``hessian_vector_product``; its dataloader mode calls ``dataloader_hv_product``)."""

    def __init__(self, ph):
        self.n = 0
        inner_full, inner_loader = ph_module.hessian_vector_product, ph.dataloader_hv_product

        def full(*args, **kwargs):
            self.n += 1
            return inner_full(*args, **kwargs)

        def loader(v):
            self.n += 1
            return inner_loader(v)

        self._restore = inner_full
        ph_module.hessian_vector_product = full
        ph.dataloader_hv_product = loader

    def close(self):
        ph_module.hessian_vector_product = self._restore


def quantlens_top(model, loader, tol):
    op = HessianOperator(model, loader)
    res = lanczos(op, 1, tol=tol, seed=1)
    return float(res.eigenvalues[0]), res.n_hvp


def pyhessian_top(model, tol, data=None, loader=None):
    m = copy.deepcopy(model)
    torch.manual_seed(1)
    ph = PyHessian(m, torch.nn.CrossEntropyLoss(), data=data, dataloader=loader, cuda=False)
    counter = Counted(ph)
    try:
        top, _ = ph.eigenvalues(maxIter=1000, tol=tol, top_n=1)
    finally:
        counter.close()
    return float(top[0]), counter.n


def calibrate(run, ref):
    """The loosest tolerance whose answer is within TARGET of ``ref``: (tol, HVPs, error)."""
    for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
        value, n = run(tol)
        err = abs(value - ref) / abs(ref)
        if err <= TARGET:
            break
    return tol, n, err


def hvp_costs(model, loader, data, peak, repeat):
    """ms per product of each way, and GFLOP/s against the GEMM roofline."""
    op = HessianOperator(model, loader)
    fr = HessianOperator(model, loader, method="forward_over_reverse")
    v = torch.randn(op.n)
    with FlopCounterMode(display=False) as fc:
        op.matvec(v)
    flops = fc.get_total_flops()
    ph = PyHessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=data, cuda=False)
    phl = PyHessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), dataloader=loader,
                    cuda=False)
    vs = [torch.randn_like(p) for p in ph.params]
    runs = {"quantlens double_backward": lambda: op.matvec(v),
            "quantlens forward_over_reverse": lambda: fr.matvec(v),
            "PyHessian full-batch": lambda: ph_module.hessian_vector_product(
                ph.gradsH, ph.params, vs),
            "PyHessian dataloader": lambda: phl.dataloader_hv_product(vs)}
    for fn in runs.values():
        fn()  # warm-up
    times = interleaved(runs, repeat)
    print(f"one HVP: {flops / 1e9:.2f} GFLOP (FlopCounterMode); float32 GEMM roofline "
          f"{peak:.0f} GFLOP/s")
    for name, t in times.items():
        rate = flops / median(t) / 1e9
        print(f"  {name:31s} {spread(t, 'ms', 1e3)}  {rate:6.1f} GFLOP/s "
              f"({rate / peak:.0%} of the roofline)")
    return {k: median(t) for k, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, _ = ql.digits_loaders(batch_size=128, shuffle_train=False)
    data = (torch.cat([b[0] for b in train]), torch.cat([b[1] for b in train]))
    peak = gemm_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(train)} batches, {len(train.dataset)} examples; float32 GEMM "
          f"{peak:.0f} GFLOP/s; {args.repeat} interleaved runs, median [min-max]")
    summary = []
    for name, model in models().items():
        n = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {n:,} parameters")
        ref_op = HessianOperator(model, train)
        ref = float(lanczos(ref_op, 1, tol=1e-9, max_iter=200).eigenvalues[0])
        print(f"reference λ_max = {ref:.6f} (Lanczos, tol 1e-9)")
        per_hvp = hvp_costs(model, train, data, peak, args.repeat)

        contenders = {
            "quantlens Lanczos": lambda tol, m=model: quantlens_top(m, train, tol),
            "PyHessian full-batch": lambda tol, m=model: pyhessian_top(m, tol, data=data),
            "PyHessian dataloader": lambda tol, m=model: pyhessian_top(m, tol, loader=train),
        }
        calibrated = {k: calibrate(fn, ref) for k, fn in contenders.items()}
        times = interleaved({k: (lambda fn=fn, tol=calibrated[k][0]: fn(tol))
                             for k, fn in contenders.items()}, args.repeat)
        print(f"top eigenvalue to rel. accuracy {TARGET:g}:")
        for k, t in times.items():
            tol, hvps, err = calibrated[k]
            print(f"  {k:22s} {spread(t)}  {hvps:4d} HVPs  error {err:.1e}  (tol {tol:g})")
        ours = median(times["quantlens Lanczos"])
        peers = {k: median(t) for k, t in times.items() if k != "quantlens Lanczos"}
        best = min(peers, key=peers.get)
        ratio = peers[best] / ours
        hvp_ratio = calibrated[best][1] / calibrated["quantlens Lanczos"][1]
        cost_ratio = per_hvp[best] / per_hvp["quantlens double_backward"]
        print(f"  speed-up vs the peer's best mode ({best}): {ratio:.1f}x "
              f"(target >= 3x: {'met' if ratio >= 3 else 'MISSED'}); "
              f"vs {', '.join(f'{k} {v / ours:.1f}x' for k, v in peers.items())}")
        print(f"  bound: {hvp_ratio:.1f}x fewer HVPs x {cost_ratio:.2f}x cheaper per HVP "
              f"= {hvp_ratio * cost_ratio:.1f}x")
        summary.append((name, best, ratio))

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
    print("\nλ_max speed-up against each model's best PyHessian mode (target >= 3x): "
          + "; ".join(f"{n} {r:.1f}x vs {b}" for n, b, r in summary))

if __name__ == "__main__":
    main()
