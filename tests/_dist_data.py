"""The model and data the 2-process tests share with their single-process reference."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantlens as ql


def model_and_data():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    x = torch.randn(45, 6, generator=g)
    y = torch.randint(0, 3, (45,), generator=g)
    return model, TensorDataset(x, y)


def sweeps(model, data) -> dict:
    """Landscapes and sweeps on the full data (each rank passes all of it; the work is split)."""
    loader = DataLoader(data, batch_size=9)
    d1 = ql.random_direction(model, seed=0)
    d2 = ql.orthogonalize(ql.random_direction(model, seed=1), d1)
    plane = ql.loss_plane(model, loader, d1, d2, distance=1.0, steps=5, progress=False)
    line = ql.loss_line(model, loader, d1, distance=1.0, steps=7, progress=False)
    widths = ql.basin_widths(model, loader, n_directions=3, distance=2.0, steps=9,
                             progress=False)
    oracle = ql.sensitivity.oracle(model, loader, bits=(2, 4), granularity="channel")
    sizes = {"0": 48, "2": 24}
    optimum = ql.mixed_precision.measured_optimum(model, loader, sizes, (2, 4, 8), (3.0, 5.0))
    g = torch.Generator().manual_seed(1)
    wide = nn.Sequential(nn.Linear(96, 80), nn.Linear(80, 64), nn.Linear(64, 72))
    with torch.no_grad():
        for p in wide.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    alpha = ql.alpha.alpha_sweep(wide, bits=(4, 8), granularities=("channel",),
                                 progress=False).layers
    return {"plane": (plane.loss, plane.accuracy), "line": (line.loss, line.accuracy),
            "widths": widths, "oracle": oracle, "optimum": optimum, "alpha": alpha}


def built_on_the_operator(model, loader) -> dict:
    """SLQ density, per-layer sharpness and HAWQ block traces: all built on the operator."""
    op = ql.HessianOperator(model, loader)
    density = ql.spectral_density(op, n_iter=8, n_runs=2, seed=1)
    sharp = ql.layer_sharpness(model, loader, tol=1e-8, progress=False)
    blocks = ql.sensitivity.block_traces(model, loader, n_hvp=6, seed=2)
    return {"density_nodes": [float(x) for x in density.nodes],
            "layer_lambda": [float(x) for x in sharp["lambda_max"]],
            "layer_trace": [float(x) for x in sharp["trace"]],
            "block_traces": [float(x) for x in blocks["trace"]]}
