"""quantlens.landscape against loss-landscapes 3.0.6 on the same model, data and grid.

The digits CNN, the 450 test images as one batch, a 25x25 plane and a 25-point line.

1. Speed: ``loss_landscapes.random_plane(normalization="filter")`` vs ``ql.loss_plane`` with
   filter-normalized directions, and loss-landscapes' ``planar_interpolation`` through the
   *same* plane as ``ql.loss_plane``, each timed ``--repeat`` times interleaved (median and
   range), with the ratio to the peer's faster API.
2. A roofline bound: the FLOPs of one forward pass (torch's FlopCounterMode) times the grid
   size, divided by this machine's float32 matrix-multiply throughput measured in the same
   run, is the least time any exact point-by-point evaluation can take. The rate quantlens
   reaches is printed as a fraction of it (target 60%), next to the rate of the model's own
   forward pass on the same images alone, which bounds any evaluation that runs it.
3. Agreement where the definitions agree: ``planar_interpolation`` fed the endpoints
   ``θ - D d1 - D d2``, ``+ 2D d1 N/(N-1)``, ``+ 2D d2 N/(N-1)`` evaluates the same points as
   ``ql.loss_plane(distance=D)`` — except that its snake-order loop evaluates columns
   ``1..N`` on even rows and ``0..N-1`` on odd rows (a one-step shift on alternate rows, the
   same loop as ``random_plane``). Both are compared point by point after that shift.
   ``random_plane`` itself draws *uniform* [0, 1) directions (all entries positive) and starts
   its grid at ``θ - (N/2)·step``, so it is not centred on θ: it agrees with quantlens only in
   rough shape, which is printed too.

Requires ``pip install loss-landscapes==3.0.6`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import loss_landscapes
import loss_landscapes.metrics
import numpy as np
import torch
from _common import gemm_gflops, interleaved, median, spread
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import quantlens as ql
from quantlens import landscape as ls

STEPS = 25
DIST = 1.0


PLANE = ("loss-landscapes random_plane", "loss-landscapes planar_interpolation",
         "quantlens loss_plane (loop, default)", "quantlens loss_plane (vmap)")
LINE = ("loss-landscapes random_line", "quantlens loss_line")


def _setup():
    cnn, _ = ql.trained_digits_model("cnn")
    split = ql.load_digits_split()
    x, y = split.x_test, split.y_test
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    metric = loss_landscapes.metrics.Loss(torch.nn.CrossEntropyLoss(), x, y)
    d1 = ls.random_direction(cnn, seed=0)
    d2 = ls.orthogonalize(ls.random_direction(cnn, seed=1), d1)
    step = 2 * DIST / (STEPS - 1)
    start = ls.moved_copy(cnn, [d1, d2], [-DIST, -DIST])
    ends = (ls.moved_copy(start, [d1], [step * STEPS]), ls.moved_copy(start, [d2], [step * STEPS]))
    return cnn, x, y, loader, metric, d1, d2, start, ends


def _contenders(cnn, loader, metric, d1, d2, start, ends, out):
    return {
        PLANE[0]: lambda: out.__setitem__("theirs", loss_landscapes.random_plane(
            cnn, metric, distance=0.5, steps=STEPS, normalization="filter",
            deepcopy_model=True)),
        PLANE[1]: lambda: out.__setitem__("planar", loss_landscapes.planar_interpolation(
            start, *ends, metric, steps=STEPS, deepcopy_model=True)),
        PLANE[2]: lambda: out.__setitem__("ours", ls.loss_plane(
            cnn, loader, d1, d2, distance=DIST, steps=STEPS, progress=False)),
        PLANE[3]: lambda: ls.loss_plane(cnn, loader, d1, d2, distance=DIST, steps=STEPS,
                                        progress=False, vectorize=True),
        LINE[0]: lambda: loss_landscapes.random_line(cnn, metric, distance=0.5, steps=STEPS,
                                                     normalization="filter",
                                                     deepcopy_model=True),
        LINE[1]: lambda: ls.loss_line(cnn, loader, d1, distance=DIST, steps=STEPS,
                                      progress=False),
    }


def _child() -> None:
    """One fresh process: every contender once, the forward pass alone, the GEMM rate."""
    cnn, x, _, loader, metric, d1, d2, start, ends = _setup()
    times = {k: t[0] for k, t in interleaved(
        _contenders(cnn, loader, metric, d1, d2, start, ends, {}), 1).items()}
    with torch.no_grad():
        times["forward"] = median(interleaved({"f": lambda: cnn(x)}, 20)["f"])
    times["gemm"] = gemm_gflops()
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes, each timing every contender once")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child()
    runs = [json.loads(subprocess.run([sys.executable, __file__, "--child"], check=True,
                                      stdout=subprocess.PIPE, text=True).stdout)
            for _ in range(args.processes)]
    times = {k: [r[k] for r in runs] for k in runs[0]}
    cnn, x, y, loader, metric, d1, d2, start, ends = _setup()
    out: dict = {}
    contenders = _contenders(cnn, loader, metric, d1, d2, start, ends, out)
    for k in (PLANE[0], PLANE[1], PLANE[2]):
        contenders[k]()  # untimed, for the agreement check below
    theirs, planar, ours = out["theirs"], out["planar"], out["ours"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits CNN "
          f"({sum(p.numel() for p in cnn.parameters()):,} params), {len(y)} images, "
          f"{STEPS}x{STEPS} grid")

    # 1. speed ---------------------------------------------------------------------------
    # one round per fresh process: on this machine the same oneDNN kernel runs at a speed
    # that differs between processes and stays within one, so repeats in one process would
    # hide it
    best_peer = min(PLANE[:2], key=lambda k: median(times[k]))
    t_ours = median(times[PLANE[2]])
    print(f"plane ({args.processes} fresh processes, each contender once in each, interleaved; "
          "median [min-max]):")
    for k in PLANE:
        print(f"  {k:38s} {spread(times[k])}   {median(times[best_peer]) / median(times[k]):4.1f}x"
              f" vs {best_peer.split()[1]}")
    per_process = [r[best_peer] / r[PLANE[2]] for r in runs]
    print(f"  quantlens vs {best_peer.split()[1]} within each process: "
          + ", ".join(f"{r:.1f}x" for r in per_process))
    t_tl, t_ol = median(times[LINE[0]]), median(times[LINE[1]])
    print(f"line: loss-landscapes random_line {spread(times[LINE[0]])}, quantlens loss_line "
          f"{spread(times[LINE[1]])} -> {t_tl / t_ol:.1f}x")

    # 2. roofline ----------------------------------------------------------------------------
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        cnn(x)
    flops = fc.get_total_flops() * STEPS**2
    peak = median(times["gemm"])
    floor = flops / peak / 1e9
    fwd_rate = fc.get_total_flops() / median(times["forward"]) / 1e9
    rate = flops / t_ours / 1e9
    print(f"roofline: {fc.get_total_flops() / 1e6:.0f} MFLOP per point, {flops / 1e9:.0f} GFLOP "
          f"per plane; float32 GEMM here {peak:.0f} GFLOP/s -> no exact evaluation can "
          f"take less than {floor:.2f} s, i.e. at most "
          f"{median(times[best_peer]) / floor:.1f}x faster than {best_peer.split()[1]}")
    print(f"  quantlens loss_plane runs at {rate:.0f} GFLOP/s ({rate / peak:.0%} of the "
          f"roofline; target >= 60%: {'met' if rate / peak >= 0.6 else 'MISSED'}; per process "
          + ", ".join(f"{flops / t / 1e9 / peak:.0%}" for t in times[PLANE[2]])
          + f"); the model's own forward pass on the 450 images, alone, runs at "
          f"{fwd_rate:.0f} GFLOP/s ({fwd_rate / peak:.0%}): "
          f"{spread(times['forward'], 'ms', 1e3)} per point")

    # 3. agreement ---------------------------------------------------------------------------
    planar = np.asarray(planar)
    odd = np.abs(planar[1::2] - ours.loss[1::2]).max()
    even = np.abs(planar[0::2, :-1] - ours.loss[0::2, 1:]).max()
    unshifted = np.abs(planar[0::2] - ours.loss[0::2]).max()
    print("same plane, point by point (max |difference| of the loss):")
    print(f"  odd rows {odd:.1e}; even rows shifted one column {even:.1e} "
          f"(unshifted: {unshifted:.2f}); loss range {ours.loss.min():.3f}-"
          f"{ours.loss.max():.2f}")
    centre = STEPS // 2
    for name, grid in (("loss-landscapes random_plane", np.asarray(theirs)),
                       ("quantlens loss_plane", ours.loss)):
        i, j = np.unravel_index(np.argmin(grid), grid.shape)
        print(f"  {name:29s} min {grid.min():.4f} at ({i},{j}) [centre ({centre},{centre})], "
              f"max {grid.max():.2f}")
    print(f"  start-point loss: quantlens {ours.loss[centre, centre]:.6f}, "
          f"evaluate() {ql.evaluate(cnn, loader).loss:.6f}")


if __name__ == "__main__":
    main()
