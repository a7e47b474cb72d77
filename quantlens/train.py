"""Seeded training and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import (
    BatchLoss,
    _device,
    check_loader,
    iterate_batches,
    resolve_loss,
    to_device,
    totals,
)
from .guard import eval_mode
from .sam import SAM

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | BatchLoss


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and accuracy of a model over a DataLoader; ``n`` is the number (or total
    weight) of examples read. ``accuracy`` is ``nan`` where undefined."""

    loss: float
    accuracy: float
    n: float

    def __repr__(self) -> str:
        return f"Evaluation(loss={self.loss:.4f}, accuracy={100 * self.accuracy:.2f}%, n={self.n})"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn = nn.functional.cross_entropy,
    progress: bool = False,
    max_batches: int | None = None,
) -> Evaluation:
    """Average loss ``Σ_b w_b L_b / Σ_b w_b`` and top-1 accuracy over ``loader``.

    ``w_b`` is the number (or total weight) of the batch's examples and ``L_b`` its mean
    loss, so with ``(x, y)`` batches the loss is ``(1/N) Σ_i ℓ(f(x_i), y_i)`` whatever the
    batch sizes. Batches and ``loss_fn`` as in :mod:`quantlens.batches` (a criterion
    returning the batch *mean*, or a :class:`~quantlens.BatchLoss`); accuracy is ``nan``
    where it is undefined (no classification labels). At most ``max_batches`` batches are
    read (required for a loader without a length). The model is evaluated in eval mode; its
    modes are restored afterwards. Raises ValueError for an empty loader.
    """
    batches = iterate_batches(loader, max_batches)
    resolve_loss(loss_fn)
    with eval_mode(model):
        batches = tqdm(batches, desc="evaluate", disable=not progress, leave=False)
        total, correct, n = totals(model, batches, loss_fn)
    if n == 0:
        raise ValueError("loader is empty (or all its examples have weight 0)")
    return Evaluation(loss=total / n, accuracy=correct / n, n=int(n) if n.is_integer() else n)


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
    max_batches: int | None = None,
    optimizer: str = "adam",
    momentum: float = 0.9,
    rho: float | None = None,
    adaptive: bool = False,
) -> pd.DataFrame:
    """Train ``model`` in place (seeded), returning the per-epoch history.

    ``optimizer`` is ``"adam"`` or ``"sgd"`` (with ``momentum``). With ``rho`` the step is
    sharpness-aware (:class:`quantlens.SAM` around that optimizer; ``adaptive=True`` for
    ASAM), two forward/backward passes per batch, BatchNorm statistics updated by the first
    only. ``rho=None`` (default) is the plain optimizer.

    Training is the one operation in quantlens that changes the model it is given. The RNG
    state of torch is restored afterwards, so the seed does not leak into the caller.
    Batches and ``loss_fn`` as in :mod:`quantlens.batches`; an epoch reads at most
    ``max_batches`` batches (required for a loader without a length).

    Returns
    -------
    pandas.DataFrame
        Columns ``epoch, train_loss`` and, with ``test_loader``, ``test_loss, test_accuracy``.
    """
    iterate_batches(train_loader, max_batches, "train_loader")  # checks, reads nothing
    if test_loader is not None:
        check_loader(test_loader, "test_loader")
    objective = resolve_loss(loss_fn)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameter (requires_grad) to fit")
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    device = _device(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sam = None if rho is None else SAM(opt, rho=rho, adaptive=adaptive, model=model)
    history = []
    try:
        model.train()
        for epoch in tqdm(range(1, epochs + 1), desc="train", disable=not progress):
            total, n = 0.0, 0.0
            for batch in iterate_batches(train_loader, max_batches, "train_loader"):
                batch = to_device(batch, device)
                if sam is not None:
                    terms = []

                    def closure(batch=batch, terms=terms):
                        opt.zero_grad(set_to_none=True)
                        t = objective(model, batch)
                        t.loss.backward()
                        terms.append(t)
                        return t.loss

                    sam.step(closure)
                    term = terms[0]
                    if term.weight == 0:
                        continue
                else:
                    opt.zero_grad(set_to_none=True)
                    term = objective(model, batch)
                    if term.weight == 0:
                        continue
                    term.loss.backward()
                    opt.step()
                total += float(term.loss.detach()) * term.weight
                n += term.weight
            if n == 0:
                raise ValueError("train_loader is empty (or all its examples have weight 0)")
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
    max_batches: int | None = None,
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

    base = evaluate(model, loader, loss_fn, max_batches=max_batches)
    rows = [{"bits": 32, "granularity": "fp32", "accuracy": base.accuracy, "loss": base.loss}]
    settings = [(b, g) for b in bits for g in granularities]
    for b, g in tqdm(settings, desc="PTQ sweep", disable=not progress, leave=False):
        spec = QuantSpec(b, symmetric, g, group_size=group_size)
        ev = evaluate(quantize_model(model, spec), loader, loss_fn, max_batches=max_batches)
        rows.append({"bits": b, "granularity": g, "accuracy": ev.accuracy, "loss": ev.loss})
    return pd.DataFrame(rows)
