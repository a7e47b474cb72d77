"""What a batch is: how quantlens turns whatever a DataLoader yields into a loss.

Every function that reads data (:func:`~quantlens.evaluate`, :func:`~quantlens.fit`,
:class:`~quantlens.HessianOperator` and all that is built on it, the landscapes,
:func:`~quantlens.quantization_sweep`, :func:`~quantlens.calibrate_activations`) reads batches
through this module, so all of them accept the same batches and the same ``loss_fn``.

Batches understood out of the box, with ``loss_fn`` a *criterion* ``loss_fn(outputs, targets)``
returning the batch mean (default: cross-entropy):

* ``(x, y)``: loss ``loss_fn(model(x), y)``; the batch counts ``len(y)`` examples.
* ``(x, y, w)``: per-example weights ``w_i >= 0``; loss ``Σ_i w_i ℓ_i / Σ_i w_i`` with the
  per-example losses ``ℓ_i`` from ``loss_fn(..., reduction="none")`` (every
  ``torch.nn.functional`` loss and ``torch.nn`` loss module qualifies); the batch counts
  ``Σ_i w_i``.
* a mapping (a dict, a Hugging Face ``BatchEncoding``) holding ``labels``: ``model(**batch)``.
  If the output carries its own ``loss`` (Hugging Face models do when given ``labels``), that
  is the loss; otherwise ``loss_fn(logits, labels)`` with the output's ``logits`` (or the
  output itself). ``labels`` is passed to the model only if its ``forward`` accepts it. The
  batch counts its number of rows.
* a mapping without ``labels`` whose model output carries a ``loss``.

Anything else, or a loss that is not a function of (outputs, targets), goes through the one
hook :class:`BatchLoss`: ``BatchLoss(lambda model, batch: ...)`` returns the batch mean loss
(or ``(loss, weight)``). :func:`output_distance` is such a loss without labels: the distance of
the model's outputs to a reference model's, e.g. a quantized encoder against its FP32 original.

Over a data set the batches combine as ``L = Σ_b w_b L_b / Σ_b w_b`` (``w_b`` the batch's
count), so ``L`` is the exact example-weighted mean whatever the batch sizes; accuracy is
``Σ_b c_b / Σ_b w_b`` with ``c_b`` the (weighted) number of correct top-1 predictions, defined
for classification outputs (2-D logits, 1-D integer labels) and ``nan`` otherwise.

Reading is bounded: :func:`read_batches` and :func:`iterate_batches` take ``max_batches``; a
loader without a length (an ``IterableDataset``, possibly endless) is refused unless
``max_batches`` is given, and materialising more than :data:`MAX_MATERIALIZED_BYTES` of batch
tensors is refused with a clear error instead of exhausting memory.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from .guard import eval_mode

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
IGNORE_INDEX = -100


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


MAX_MATERIALIZED_BYTES: int = _physical_memory() // 4
"""Largest total size of batch tensors an analysis keeps in memory at once (a quarter of the
machine's physical memory). Analyses that hold the whole data set (Hessian products, landscapes)
refuse a loader beyond it; pass ``max_batches`` to analyse a sample."""


class Term(NamedTuple):
    """One batch's contribution: mean ``loss`` (a scalar tensor, differentiable), ``weight``
    (its count ``w_b`` as a float) and ``correct`` (weighted correct top-1 predictions as a
    float64 tensor, ``nan`` where accuracy is undefined)."""

    loss: torch.Tensor
    weight: float
    correct: torch.Tensor


@dataclass(frozen=True)
class BatchLoss:
    """The hook for any batch and any loss: ``fn(model, batch)`` on a whole batch.

    ``fn`` calls ``model`` however the batch requires and returns the batch's mean loss as a
    scalar tensor, or ``(loss, weight)`` where ``weight > 0`` is what the batch counts for in
    the data-set mean (default: the length of the batch's first tensor). The batch arrives
    already moved to the model's device. ``fn`` must compute the loss through ``model`` (the
    analyses swap its parameters), and must not modify it.

    Examples
    --------
    >>> loss = BatchLoss(lambda model, b: F.mse_loss(model(b["image"]), b["target"]))
    >>> ql.top_eigenvalues(model, loader, loss_fn=loss)
    """

    fn: Callable[[nn.Module, Any], Any]
    name: str = "batch loss"

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"BatchLoss fn must be callable, got {type(self.fn).__name__}")


# ---------------------------------------------------------------------------------------------
# moving and counting
# ---------------------------------------------------------------------------------------------
def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in nested tuples, lists and mappings) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (tuple, list)):
        for v in batch:
            yield from _tensors(v)


def batch_bytes(batch: Any) -> int:
    """Total bytes of the tensors in ``batch``."""
    return sum(t.numel() * t.element_size() for t in _tensors(batch))


def batch_rows(batch: Any) -> int:
    """Number of examples in ``batch``: the leading dimension of its first tensor."""
    for t in _tensors(batch):
        return int(t.shape[0]) if t.ndim else 1
    raise ValueError(f"batch holds no tensor (got {type(batch).__name__})")


# ---------------------------------------------------------------------------------------------
# reading a loader
# ---------------------------------------------------------------------------------------------
def check_loader(loader: Any, name: str = "loader") -> None:
    """Raise TypeError unless ``loader`` is a ``torch.utils.data.DataLoader``."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{name} must be a torch.utils.data.DataLoader, got {type(loader).__name__}"
        )


def check_max_batches(max_batches: Any) -> None:
    """Raise ValueError unless ``max_batches`` is None or an int >= 1."""
    if max_batches is not None and (isinstance(max_batches, bool)
                                    or not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be None or an int >= 1, got {max_batches!r}")


def _limit(loader: DataLoader, max_batches: int | None, name: str) -> int:
    check_loader(loader, name)
    check_max_batches(max_batches)
    try:
        n = len(loader)
    except TypeError:
        n = None
    if n is None:
        if max_batches is None:
            raise ValueError(
                f"{name} has no length (an IterableDataset, possibly endless): pass "
                "max_batches=N to read its first N batches"
            )
        return max_batches
    return n if max_batches is None else min(n, max_batches)


def iterate_batches(loader: DataLoader, max_batches: int | None = None,
                    name: str = "loader") -> Iterator[Any]:
    """Iterate over at most ``max_batches`` batches of ``loader`` (all of a sized loader).

    A loader without a length needs ``max_batches`` (ValueError otherwise): it may never end.
    The arguments are checked at once; the loader is iterated (and a shuffling sampler draws
    from torch's RNG) only when the result is.
    """
    limit = _limit(loader, max_batches, name)

    def batches() -> Iterator[Any]:
        yield from itertools.islice(loader, limit)

    return batches()


def read_batches(loader: DataLoader, device: torch.device, max_batches: int | None = None,
                 name: str = "loader") -> list[Any]:
    """Materialise at most ``max_batches`` batches of ``loader`` on ``device``.

    Raises ValueError for an empty loader, for a loader without a length and no
    ``max_batches``, and once the batches exceed :data:`MAX_MATERIALIZED_BYTES`.
    """
    out, total = [], 0
    for batch in iterate_batches(loader, max_batches, name):
        total += batch_bytes(batch)
        if total > MAX_MATERIALIZED_BYTES:
            raise ValueError(
                f"{name} holds more than {MAX_MATERIALIZED_BYTES / 2**30:.1f} GiB of tensors, "
                f"which this analysis would keep in memory: pass max_batches= (read "
                f"{len(out)} batches so far) or a smaller loader"
            )
        out.append(to_device(batch, device))
    if not out:
        raise ValueError(f"{name} is empty")
    return out


# ---------------------------------------------------------------------------------------------
# batch -> loss
# ---------------------------------------------------------------------------------------------
_NAN = float("nan")


def _correct(out: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if (isinstance(out, torch.Tensor) and out.ndim == 2 and y.ndim == 1
            and not y.is_floating_point() and not y.is_complex() and len(y) == len(out)):
        hit = out.argmax(dim=1) == y
        if w is None:
            return hit.sum().double()
        return (hit.double() * w.double()).sum()
    return torch.tensor(_NAN, dtype=torch.float64)


def _per_example(criterion: Criterion, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if isinstance(criterion, nn.modules.loss._Loss):
        crit = copy.copy(criterion)
        crit.reduction = "none"
        losses = crit(out, y)
    else:
        try:
            losses = criterion(out, y, reduction="none")
        except TypeError as err:
            raise TypeError(
                "loss_fn must accept reduction='none' for weighted (inputs, targets, weights) "
                f"batches ({err}); or pass loss_fn=quantlens.BatchLoss(...)"
            ) from None
    if not isinstance(losses, torch.Tensor) or losses.ndim == 0 or losses.shape[0] != len(y):
        raise ValueError("loss_fn(..., reduction='none') must return one loss per example "
                         "(leading dimension = batch size)")
    return losses.reshape(len(y), -1).mean(dim=1)


def _check_weights(w: Any, n: int) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.is_complex():
        raise TypeError(f"batch weights (third element) must be a real tensor, got "
                        f"{type(w).__name__}")
    if w.shape != (n,):
        raise ValueError(f"batch weights must have shape ({n},) (one per example), got "
                         f"{tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("batch weights must be finite and >= 0")
    return w


def _outputs_tensor(out: Any) -> Any:
    """The prediction tensor of a model output: ``logits`` of a Hugging Face output."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the predictions in a model output of type "
                    f"{type(out).__name__}: pass loss_fn=quantlens.BatchLoss(...)")


def _own_loss(out: Any) -> torch.Tensor | None:
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _scalar(loss: Any, what: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.ndim > 1:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{what} must return a scalar tensor (the batch mean), got {got}")
    return loss.reshape(())


def _criterion_term(model: nn.Module, batch: Any, criterion: Criterion) -> Term:
    if isinstance(batch, Mapping):
        return _mapping_term(model, batch, criterion)
    if isinstance(batch, torch.Tensor) or (isinstance(batch, (tuple, list)) and len(batch) == 1):
        raise ValueError(
            "batch has inputs but no targets: give (inputs, targets) batches, or a label-free "
            "loss_fn such as quantlens.output_distance(reference) or quantlens.BatchLoss(...)"
        )
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        what = f"a {len(batch)}-tuple" if isinstance(batch, (tuple, list)) else \
            type(batch).__name__
        raise TypeError(
            f"cannot read a batch that is {what}: quantlens reads (inputs, targets), "
            "(inputs, targets, weights) and mappings with 'labels'; pass "
            "loss_fn=quantlens.BatchLoss(lambda model, batch: ...) for anything else"
        )
    x, y = batch[0], batch[1]
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"batch targets must be a tensor, got {type(y).__name__}")
    n = len(y) if y.ndim else 1
    out = model(x)
    if len(batch) == 2:
        return Term(_scalar(criterion(out, y), "loss_fn"), float(n), _correct(out, y, None))
    w = _check_weights(batch[2], n)
    total = float(w.double().sum())
    if total == 0:
        return Term(out.sum() * 0.0, 0.0, torch.tensor(0.0, dtype=torch.float64))
    losses = _per_example(criterion, out, y)
    loss = (losses * w.to(losses.dtype)).sum() / w.to(losses.dtype).sum()
    return Term(loss, total, _correct(out, y, w))


def _mapping_term(model: nn.Module, batch: Mapping, criterion: Criterion) -> Term:
    if "labels" not in batch and "label" in batch:
        raise ValueError("batch has a 'label' key; Hugging Face models and quantlens read "
                         "'labels': rename it (e.g. in the collate function)")
    labels = batch.get("labels")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if labels is not None and _accepts(model, "labels"):
        out = model(**inputs, labels=labels)
    else:
        out = model(**inputs)
    n = batch_rows(batch)
    own = _own_loss(out)
    preds = None
    if own is not None:
        loss = _scalar(own, "the model's own loss")
    elif labels is None:
        raise ValueError(
            "batch has no 'labels' and the model returns no loss: give labels, or a label-free "
            "loss_fn such as quantlens.output_distance(reference) or quantlens.BatchLoss(...)"
        )
    else:
        preds = _outputs_tensor(out)
        loss = _scalar(criterion(preds, labels), "loss_fn")
    if labels is None:
        return Term(loss, float(n), torch.tensor(_NAN, dtype=torch.float64))
    if preds is None:
        try:
            preds = _outputs_tensor(out)
        except TypeError:
            return Term(loss, float(n), torch.tensor(_NAN, dtype=torch.float64))
    return Term(loss, float(n), _correct(preds, labels, None))


def _hook_term(model: nn.Module, batch: Any, hook: BatchLoss) -> Term:
    result = hook.fn(model, batch)
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ValueError(f"{hook.name}: fn must return loss or (loss, weight), got a "
                             f"{len(result)}-tuple")
        loss, weight = result
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{hook.name}: weight must be finite and >= 0, got {weight}")
    else:
        loss, weight = result, float(batch_rows(batch))
    return Term(_scalar(loss, hook.name), weight, torch.tensor(_NAN, dtype=torch.float64))


def resolve_loss(loss_fn: Any) -> Callable[[nn.Module, Any], Term]:
    """``(model, batch) -> Term`` for a criterion or a :class:`BatchLoss` (TypeError else)."""
    if isinstance(loss_fn, BatchLoss):
        return lambda model, batch: _hook_term(model, batch, loss_fn)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (a criterion(outputs, targets) or a "
                        f"quantlens.BatchLoss), got {type(loss_fn).__name__}")
    return lambda model, batch: _criterion_term(model, batch, loss_fn)


def batch_term(model: nn.Module, batch: Any, loss_fn: Any = nn.functional.cross_entropy) -> Term:
    """The :class:`Term` (loss, weight, correct) of one batch, e.g. to test a ``loss_fn``."""
    return resolve_loss(loss_fn)(model, batch)


class _Bound(nn.Module):
    """``forward(batch) = objective(model, batch)``, so that ``functional_call`` can swap the
    model's parameters (names prefixed ``model.``) under any loss."""

    def __init__(self, model: nn.Module, objective: Callable[[nn.Module, Any], Term]) -> None:
        super().__init__()
        self.model = model
        self._objective = objective

    def forward(self, batch: Any) -> Term:
        return self._objective(self.model, batch)


def functional_term(model: nn.Module, loss_fn: Any) -> Callable[[dict, Any], Term]:
    """``f(params, batch) -> Term`` evaluating ``model`` with ``params`` swapped in
    (:func:`torch.func.functional_call`; usable under ``torch.func`` transforms)."""
    from torch.func import functional_call

    bound = _Bound(model, resolve_loss(loss_fn))

    def f(params: dict[str, torch.Tensor], batch: Any) -> Term:
        return functional_call(bound, {f"model.{k}": v for k, v in params.items()}, (batch,))

    return f


def static_weight(batch: Any, loss_fn: Any) -> float | None:
    """The weight ``w_b`` of a batch read with a criterion, known without running the model
    (``None`` for a :class:`BatchLoss`, whose ``fn`` may return its own weight)."""
    if isinstance(loss_fn, BatchLoss):
        return None
    if isinstance(batch, Mapping):
        return float(batch_rows(batch))
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3) and \
            isinstance(batch[1], torch.Tensor):
        n = len(batch[1]) if batch[1].ndim else 1
        if len(batch) == 2:
            return float(n)
        return float(_check_weights(batch[2], n).double().sum())
    return None


def batch_weights(model: nn.Module, batches: list, loss_fn: Any) -> list[float]:
    """Weights ``w_b`` of materialised ``batches``: static where possible, otherwise from one
    forward pass without gradients (a :class:`BatchLoss` that returns its own weight)."""
    objective = None
    out = []
    for batch in batches:
        w = static_weight(batch, loss_fn)
        if w is None:
            objective = objective or resolve_loss(loss_fn)
            with torch.no_grad():
                w = objective(model, batch).weight
        out.append(w)
    return out


def totals(model: nn.Module, batches, loss_fn: Any) -> tuple[float, float, float]:
    """``(Σ_b w_b L_b, Σ_b c_b, Σ_b w_b)`` over ``batches`` (moved to the model's device).

    Changes no mode and no gradient setting: callers do that.
    """
    objective = resolve_loss(loss_fn)
    device = _device(model)
    total, correct, n = 0.0, 0.0, 0.0
    for batch in batches:
        t = objective(model, to_device(batch, device))
        if t.weight == 0:
            continue
        total += float(t.loss.detach()) * t.weight
        correct += float(t.correct)
        n += t.weight
    return total, correct, n


def _device(model: nn.Module) -> torch.device:
    for p in itertools.chain(model.parameters(), model.buffers()):
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# a label-free loss
# ---------------------------------------------------------------------------------------------
METRICS = ("mse", "cosine")


def _call_inputs(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k not in ("labels", "label")})
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _embedding(out: Any, batch: Any) -> torch.Tensor:
    """Logits, or the attention-masked mean of ``last_hidden_state`` (sentence embedding)."""
    if isinstance(out, torch.Tensor):
        return out
    hidden = out.get("last_hidden_state") if isinstance(out, Mapping) else \
        getattr(out, "last_hidden_state", None)
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(hidden, torch.Tensor):
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if mask is None:
            return hidden.mean(dim=1)
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)
    return _outputs_tensor(out)


def output_distance(reference: nn.Module, metric: str = "mse") -> BatchLoss:
    """A label-free loss: how far the model's outputs are from ``reference``'s on each batch.

    For outputs ``f(x_i)`` of the analysed model and ``g(x_i)`` of ``reference`` (logits; for
    an encoder, the attention-masked mean of ``last_hidden_state``, i.e. the sentence
    embedding), the batch loss is

    * ``"mse"``: ``(1/n) Σ_i mean_j (f(x_i)_j - g(x_i)_j)²``,
    * ``"cosine"``: ``(1/n) Σ_i (1 - cos(f(x_i), g(x_i)))``.

    At ``model == reference`` the loss and its gradient are 0 and its Hessian is the
    Gauss-Newton matrix of the output map, so the curvature tools apply to a pretrained model
    without labels. ``reference`` is evaluated in eval mode without gradients and is never
    modified; it must be a separate model object (e.g. the FP32 original of a quantized copy).
    Batches are ``(inputs, ...)`` tuples, a tensor of inputs, or mappings of model keywords.
    The reference's outputs are computed once per batch (keyed by the batch's content and the
    reference's tensor versions, so an in-place change of the reference is noticed).
    """
    if not isinstance(reference, nn.Module):
        raise TypeError(f"reference must be a torch.nn.Module, got {type(reference).__name__}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")

    cache: dict = {}

    def reference_output(batch: Any) -> torch.Tensor:
        # the reference's outputs, computed once per batch content and reference state (the
        # version counters of its tensors change with every in-place update)
        digest = hashlib.sha1()
        for t in _tensors(batch):
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                          .tobytes())
        state = tuple(t._version for t in reference.state_dict(keep_vars=True).values())
        key = (digest.hexdigest(), state)
        if key not in cache:
            if len(cache) >= 256:
                cache.clear()
            with torch.no_grad(), eval_mode(reference):
                cache[key] = _embedding(_call_inputs(reference, batch), batch)
        return cache[key]

    def fn(model: nn.Module, batch: Any) -> torch.Tensor:
        if model is reference:
            raise ValueError("output_distance: reference is the analysed model itself; pass a "
                             "separate copy (e.g. copy.deepcopy(model) before quantizing)")
        g = reference_output(batch)
        f = _embedding(_call_inputs(model, batch), batch)
        if f.shape != g.shape:
            raise ValueError(f"output_distance: model outputs {tuple(f.shape)} but reference "
                             f"outputs {tuple(g.shape)}")
        f, g = f.reshape(len(f), -1), g.reshape(len(g), -1).to(f.dtype)
        if metric == "mse":
            return ((f - g) ** 2).mean(dim=1).mean()
        return (1 - nn.functional.cosine_similarity(f, g, dim=1)).mean()

    return BatchLoss(fn, name=f"output_distance({metric})")
