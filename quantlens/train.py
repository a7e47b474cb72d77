"""Seeded training and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import check_loader
from .guard import eval_mode

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and accuracy of a model over a whole DataLoader."""

    loss: float
    accuracy: float
    n: int

    def __repr__(self) -> str:
        return f"Evaluation(loss={self.loss:.4f}, accuracy={100 * self.accuracy:.2f}%, n={self.n})"


def _batch_sums(model: nn.Module, batches, loss_fn: LossFn) -> tuple[float, int, int]:
    """``(Σ_b n_b · loss_b, correct top-1 predictions, Σ_b n_b)`` over ``batches``.

    Correct predictions are counted for classification outputs (2-D logits, integer labels)
    only. Changes no mode and no gradient setting: callers do that.
    """
    device = next(model.parameters()).device
    total, correct, n = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total += float(loss_fn(out, y)) * len(y)
        if out.ndim == 2 and y.ndim == 1 and not y.is_floating_point():
            correct += int((out.argmax(dim=1) == y).sum())
        n += len(y)
    return total, correct, n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn = nn.functional.cross_entropy,
    progress: bool = False,
) -> Evaluation:
    """Average loss ``(1/N) sum_i l(f(x_i), y_i)`` and top-1 accuracy over ``loader``.

    The model is evaluated in eval mode; its modes are restored afterwards. ``loss_fn`` must
    return the batch *mean*. Raises ValueError for an empty loader.
    """
    check_loader(loader)
    with eval_mode(model):
        batches = tqdm(loader, desc="evaluate", disable=not progress, leave=False)
        total, correct, n = _batch_sums(model, batches, loss_fn)
    if n == 0:
        raise ValueError("loader is empty")
    return Evaluation(loss=total / n, accuracy=correct / n, n=n)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    epochs: int = 30,
    lr: float = 3e-3,
    seed: int = 0,
    loss_fn: LossFn = nn.functional.cross_entropy,
    test_loader: DataLoader | None = None,
    weight_decay: float = 0.0,
    progress: bool = False,
) -> pd.DataFrame:
    """Train ``model`` in place with Adam (seeded), returning the per-epoch history.

    Training is the one operation in quantlens that changes the model it is given. The RNG
    state of torch is restored afterwards, so the seed does not leak into the caller.

    Returns
    -------
    pandas.DataFrame
        Columns ``epoch, train_loss`` and, with ``test_loader``, ``test_loss, test_accuracy``.
    """
    check_loader(train_loader, "train_loader")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    try:
        model.train()
        for epoch in tqdm(range(1, epochs + 1), desc="train", disable=not progress):
            total, n = 0.0, 0
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(y)
                n += len(y)
            if n == 0:
                raise ValueError("train_loader is empty")
            row = {"epoch": epoch, "train_loss": total / n}
            if test_loader is not None:
                ev = evaluate(model, test_loader, loss_fn)
                row.update(test_loss=ev.loss, test_accuracy=ev.accuracy)
            history.append(row)
    finally:
        torch.random.set_rng_state(rng)
    model.eval()
    return pd.DataFrame(history)


_TRAINED: dict = {}


def trained_digits_model(
    name: str = "cnn", epochs: int = 30, seed: int = 0, lr: float = 3e-3
) -> tuple[nn.Module, pd.DataFrame]:
    """A digits model trained with :func:`fit` on the default split (cached per process).

    Returns a fresh copy of the trained model (in eval mode) and its training history, so
    callers may modify what they get without touching the cache.
    """
    import copy

    from .data import digits_loaders
    from .models import make_model

    key = (name, epochs, seed, lr)
    if key not in _TRAINED:
        model = make_model(name, seed=seed)
        train, test = digits_loaders(seed=seed)
        history = fit(model, train, epochs=epochs, lr=lr, seed=seed, test_loader=test)
        _TRAINED[key] = (model, history)
    model, history = _TRAINED[key]
    return copy.deepcopy(model), history.copy()


def quantization_sweep(
    model: nn.Module,
    loader: DataLoader,
    bits: tuple[int, ...] = (8, 6, 5, 4, 3, 2),
    granularities: tuple[str, ...] = ("tensor", "channel", "group"),
    symmetric: bool = True,
    group_size: int = 32,
    loss_fn: LossFn = nn.functional.cross_entropy,
    progress: bool = True,
) -> pd.DataFrame:
    """Post-training weight quantization of ``model`` at each bit width and granularity.

    For every ``(b, granularity)`` the weights of all quantizable layers are replaced by
    ``Q(W)`` in a copy (:func:`quantlens.quantize.quantize_model`) which is evaluated on
    ``loader``. ``model`` itself is not modified.

    Returns
    -------
    pandas.DataFrame
        One row per setting: ``bits, granularity, accuracy, loss`` (plus the FP32 row with
        ``bits = 32`` and ``granularity = "fp32"``).
    """
    from .quantize import QuantSpec, quantize_model

    base = evaluate(model, loader, loss_fn)
    rows = [{"bits": 32, "granularity": "fp32", "accuracy": base.accuracy, "loss": base.loss}]
    settings = [(b, g) for b in bits for g in granularities]
    for b, g in tqdm(settings, desc="PTQ sweep", disable=not progress, leave=False):
        spec = QuantSpec(b, symmetric, g, group_size=group_size)
        ev = evaluate(quantize_model(model, spec), loader, loss_fn)
        rows.append({"bits": b, "granularity": g, "accuracy": ev.accuracy, "loss": ev.loss})
    return pd.DataFrame(rows)
