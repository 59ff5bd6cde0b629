"""Per-epoch validation figures for whoever listens: the search's pruner stops hopeless trials with them, and
experiment tracking (`tracking.py`) logs them as the run trains.

A context variable, not a parameter threaded through every paradigm: the loop calls `epoch_done` after each
epoch; outside `listening_to_epochs` it does nothing. Listeners nest (a tracked search trial has two) and are
told in the order they started listening, outermost first, so the tracker has logged an epoch before the pruner
stops on it. A listener may raise (Optuna's `TrialPruned`) to stop training; the exception leaves the run like
any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

EpochListener = Callable[[dict[str, Any]], None]
_listeners: ContextVar[tuple[EpochListener, ...]] = ContextVar("epoch_listeners", default=())


@contextmanager
def listening_to_epochs(listener: EpochListener) -> Iterator[None]:
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield
    finally:
        _listeners.reset(token)


def epoch_done(figures: dict[str, Any]) -> None:
    """Tell each listener one epoch's figures (epoch, train_loss, val_loss, val_accuracy or val_micro_f1, lr, ...)."""
    for listener in _listeners.get():
        listener(figures)
