"""Leave the caller's model exactly as it was.

:class:`ModelSnapshot` records everything an analysis could disturb: every parameter and
buffer (bitwise copy), each parameter's ``requires_grad``, each module's ``training`` flag,
and the device and dtype of every tensor. :func:`preserved` restores all of it on exit, also
when the body raises; :meth:`ModelSnapshot.differences` says what changed (used by
:func:`quantlens.testing.assert_model_unchanged`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSnapshot:
    """A bitwise copy of a model's state, flags and placement."""

    tensors: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    placement: dict[str, tuple[torch.device, torch.dtype]]

    @classmethod
    def take(cls, model: nn.Module) -> ModelSnapshot:
        """Record the state of ``model``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        tensors = _tensors(model)
        return cls(
            tensors={k: v.detach().clone() for k, v in tensors.items()},
            requires_grad={k: p.requires_grad for k, p in model.named_parameters()},
            training={k: m.training for k, m in model.named_modules()},
            placement={k: (v.device, v.dtype) for k, v in tensors.items()},
        )

    def differences(self, model: nn.Module) -> list[str]:
        """Human-readable list of what differs between ``model`` and this snapshot."""
        out = []
        now = _tensors(model)
        if set(now) != set(self.tensors):
            out.append(f"tensor names changed: {sorted(set(now) ^ set(self.tensors))}")
        for k in sorted(set(now) & set(self.tensors)):
            t, ref = now[k], self.tensors[k]
            if (t.device, t.dtype) != self.placement[k]:
                out.append(f"{k}: placement {self.placement[k]} -> {(t.device, t.dtype)}")
            elif t.shape != ref.shape or not _bitwise_equal(t, ref):
                out.append(f"{k}: values changed")
        for k, p in model.named_parameters():
            if k in self.requires_grad and p.requires_grad != self.requires_grad[k]:
                out.append(f"{k}: requires_grad {self.requires_grad[k]} -> {p.requires_grad}")
        for k, m in model.named_modules():
            if k in self.training and m.training != self.training[k]:
                out.append(f"module {k or '<root>'}: training {self.training[k]} -> {m.training}")
        return out

    def restore(self, model: nn.Module) -> None:
        """Put ``model`` back to this snapshot (values, flags, device, dtype) in place."""
        now = _tensors(model)
        with torch.no_grad():
            for k, ref in self.tensors.items():
                t = now.get(k)
                if t is None:
                    continue
                if (t.device, t.dtype) != self.placement[k] or t.shape != ref.shape:
                    t.data = ref.clone()
                else:
                    t.copy_(ref)
        for k, p in model.named_parameters():
            if k in self.requires_grad:
                p.requires_grad_(self.requires_grad[k])
        for k, m in model.named_modules():
            if k in self.training:
                m.training = self.training[k]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {f"param:{k}": p for k, p in model.named_parameters(remove_duplicate=False)}
    out.update({f"buffer:{k}": b for k, b in model.named_buffers(remove_duplicate=False)})
    return out


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        # compare raw bits so that NaN == NaN and -0.0 != 0.0
        # (reshape(-1) first: a 0-dim tensor, e.g. an observer's running max, cannot be viewed)
        a = a.detach().reshape(-1).contiguous().view(torch.uint8)
        b = b.detach().reshape(-1).contiguous().view(torch.uint8)
    return bool(torch.equal(a.cpu(), b.cpu()))


@contextmanager
def preserved(model: nn.Module) -> Iterator[ModelSnapshot]:
    """Context manager that restores ``model`` on exit, also after an exception.

    Analyses that must touch the model (``eval()`` for the analysis, perturbing weights in
    place) run inside ``with preserved(model):`` so the caller's model comes back bitwise.
    """
    snap = ModelSnapshot.take(model)
    try:
        yield snap
    finally:
        snap.restore(model)


@contextmanager
def swapped(tensor: torch.Tensor, value: torch.Tensor) -> Iterator[torch.Tensor]:
    """Context manager that copies ``value`` into ``tensor`` (one parameter or buffer) for
    the block and puts the old values back bitwise on exit, also after an exception.

    The cheap form of :func:`preserved` for a step that changes one tensor, e.g. one layer's
    weight swapped for its quantized version: it copies that tensor, not the whole model
    (on all-MiniLM-L6-v2, 30 ms a snapshot).
    """
    for name, t in (("tensor", tensor), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if value.shape != tensor.shape:
        raise ValueError(f"value has shape {tuple(value.shape)}, tensor {tuple(tensor.shape)}")
    saved = tensor.detach().clone()
    with torch.no_grad():
        tensor.copy_(value)
    try:
        yield tensor
    finally:
        with torch.no_grad():
            tensor.copy_(saved)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's flag afterwards."""
    flags = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        yield model
    finally:
        for name, m in model.named_modules():
            if name in flags:
                m.training = flags[name]
