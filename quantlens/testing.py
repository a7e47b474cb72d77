"""Test helpers shared by quantlens' own tests and by users testing their analyses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from .guard import ModelSnapshot


@contextmanager
def model_unchanged(model: nn.Module) -> Iterator[ModelSnapshot]:
    """Assert that the block leaves ``model`` unchanged, even if the block raises.

    Checked: every parameter and buffer bitwise, ``requires_grad``, each module's
    ``training`` flag, device and dtype. If the block raised, the exception propagates after
    the check (an AssertionError about the model takes precedence and chains it).
    """
    snap = ModelSnapshot.take(model)
    try:
        yield snap
    except BaseException as err:
        diff = snap.differences(model)
        if diff:
            raise AssertionError(_message(diff) + f" (while raising {err!r})") from err
        raise
    diff = snap.differences(model)
    if diff:
        raise AssertionError(_message(diff))


def assert_model_unchanged(model: nn.Module, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Call ``fn(*args, **kwargs)`` and assert that ``model`` is unchanged afterwards.

    Returns ``fn``'s result; if ``fn`` raises, the model is checked and the exception is
    re-raised, so ``pytest.raises`` can wrap this call.
    """
    with model_unchanged(model):
        return fn(*args, **kwargs)


def _message(diff: list[str]) -> str:
    head = "; ".join(diff[:8])
    more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
    return f"model was changed: {head}{more}"
