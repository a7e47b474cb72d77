"""quantlens.landscape against loss-landscapes 3.0.6 on the same model, data and grid.

The digits CNN, the 450 test images as one batch, a 25x25 plane and a 25-point line with
filter-normalized directions. Both evaluate one grid point at a time with in-place
parameter updates; quantlens' optional ``vmap`` path is timed too. Both times and the ratio
are printed, and the two surfaces are compared in shape. loss-landscapes draws *uniform*
directions and its grid spans ``±||θ||/(2·distance)`` in parameter norm; a filter-normalized
direction has norm ``≈ ||θ||`` (1-D parameters excluded), so its ``distance=0.5`` matches
quantlens' ``distance=1``. The directions differ (different random draws and laws), so the
surfaces agree in shape, not point by point.
Requires ``pip install loss-landscapes==3.0.6`` (the ``bench`` extra).
"""

from __future__ import annotations

import time

import loss_landscapes
import loss_landscapes.metrics
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql
from quantlens import landscape as ls

STEPS = 25


def main() -> None:
    cnn, _ = ql.trained_digits_model("cnn")
    split = ql.load_digits_split()
    x, y = split.x_test, split.y_test
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    metric = loss_landscapes.metrics.Loss(torch.nn.CrossEntropyLoss(), x, y)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits CNN "
          f"({sum(p.numel() for p in cnn.parameters()):,} params), {len(y)} images")

    t0 = time.perf_counter()
    theirs = loss_landscapes.random_plane(cnn, metric, distance=0.5, steps=STEPS,
                                          normalization="filter", deepcopy_model=True)
    t_theirs = time.perf_counter() - t0

    d1 = ls.random_direction(cnn, seed=0)
    d2 = ls.orthogonalize(ls.random_direction(cnn, seed=1), d1)
    t0 = time.perf_counter()
    ours = ls.loss_plane(cnn, loader, d1, d2, distance=1.0, steps=STEPS, progress=False)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ls.loss_plane(cnn, loader, d1, d2, distance=1.0, steps=STEPS, progress=False,
                  vectorize=True)
    t_vmap = time.perf_counter() - t0

    print(f"{STEPS}x{STEPS} plane:")
    print(f"  loss-landscapes random_plane   {t_theirs:7.2f} s")
    print(f"  quantlens loss_plane (loop)    {t_ours:7.2f} s   -> {t_theirs / t_ours:.1f}x faster")
    print(f"  quantlens loss_plane (vmap)    {t_vmap:7.2f} s   -> {t_theirs / t_vmap:.1f}x")

    t0 = time.perf_counter()
    their_line = loss_landscapes.random_line(cnn, metric, distance=0.5, steps=STEPS,
                                             normalization="filter", deepcopy_model=True)
    t_tl = time.perf_counter() - t0
    t0 = time.perf_counter()
    ls.loss_line(cnn, loader, d1, distance=1.0, steps=STEPS, progress=False)
    t_ol = time.perf_counter() - t0
    print(f"{STEPS}-point line: loss-landscapes {t_tl:.3f} s, quantlens {t_ol:.3f} s "
          f"-> {t_tl / t_ol:.1f}x")

    # agreement in shape
    centre = STEPS // 2
    for name, grid in (("loss-landscapes", np.asarray(theirs)), ("quantlens", ours.loss)):
        i, j = np.unravel_index(np.argmin(grid), grid.shape)
        corners = np.mean([grid[0, 0], grid[0, -1], grid[-1, 0], grid[-1, -1]])
        print(f"  {name:16s} min {grid.min():.4f} at ({i},{j}) [centre ({centre},{centre})], "
              f"max {grid.max():.2f}, corner/centre ratio {corners / grid[centre, centre]:.0f}")
    print(f"  start-point loss: quantlens {ours.loss[centre, centre]:.6f}, "
          f"evaluate() {ql.evaluate(cnn, loader).loss:.6f}; "
          f"loss-landscapes line at its start {float(their_line[0]):.4f}")
    rank = np.corrcoef(np.argsort(np.argsort(np.asarray(theirs).ravel())),
                       np.argsort(np.argsort(ours.loss.ravel())))[0, 1]
    print(f"  Spearman correlation of the two grids: {rank:.2f}")


if __name__ == "__main__":
    main()
