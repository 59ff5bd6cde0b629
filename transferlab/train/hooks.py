"""Per-epoch validation figures for whoever listens: the search's pruner stops hopeless trials with them.

A context variable, not a parameter threaded through every paradigm: the loop calls
`epoch_done` after each epoch; outside `listening_to_epochs` it does nothing. A listener may raise (Optuna's
`TrialPruned`) to stop training; the exception leaves the run like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

EpochListener = Callable[[dict[str, Any]], None]
_listener: ContextVar[EpochListener | None] = ContextVar("epoch_listener", default=None)


@contextmanager
def listening_to_epochs(listener: EpochListener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def epoch_done(figures: dict[str, Any]) -> None:
    """Tell the listener, if any, one epoch's figures (val_loss, and val_accuracy or val_micro_f1)."""
    listener = _listener.get()
    if listener is not None:
        listener(figures)
