"""Progress bars (rich) with a rate and an ETA, and the project's messages, on stderr so stdout stays for results.

Messages go through the standard `logging` logger "transferlab" (shown on stderr by a rich handler), so a
Python user silences them as any library's: `logging.getLogger("transferlab").setLevel(logging.WARNING)`, which
hides the progress bars too; DEBUG adds what was reused and measured. The CLI's -q / -v set the same level.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Under torchrun only rank 0 speaks (RANK is set by torchrun before this module is imported; read from the
# environment, not torch.distributed, so that commands which need no torch do not import it); the others would
# print the same lines again, or a result of their own. Errors go through print() and still show on every rank.
_QUIET = int(os.environ.get("RANK", "0")) != 0
console = Console(stderr=True, width=None if sys.stderr.isatty() else 150, quiet=_QUIET)  # progress, notes
# What the user asked for (the leaderboard), on stdout; wide enough for the table when piped to a file.
results = Console(width=None if sys.stdout.isatty() else 150, quiet=_QUIET)

log = logging.getLogger("transferlab")
log.setLevel(logging.INFO)
log.propagate = False  # shown once, by this handler (as Optuna does with its own logger)
_handler = RichHandler(console=console, show_time=False, show_level=False, show_path=False, markup=True)
_handler.setFormatter(logging.Formatter("%(message)s"))
log.addHandler(_handler)


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """The CLI's -q (warnings and errors only, no progress bars) and -v (DEBUG: what was reused, measured)."""
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _bars_hidden() -> bool:
    return _QUIET or log.getEffectiveLevel() > logging.INFO


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "", style="cyan")


class Bar:
    """`bar(n)` advances; `bar.note(text)` shows a running figure (loss, accuracy) beside the bar."""

    def __init__(self, progress: Progress, task):
        self._progress, self._task = progress, task

    def __call__(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        self._progress.update(self._task, note=text)


@contextmanager
def progress_bar(label: str, total: int, unit: str = "it") -> Iterator[Bar]:
    """`with progress_bar("features", 1000, "img") as bar: bar(32)`."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(unit),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}")]

    with Progress(*columns, console=console, disable=_bars_hidden()) as progress:
        task = progress.add_task(label, total=total, note="")
        try:
            yield Bar(progress, task)
        except BaseException:
            progress.live.transient = True  # on failure the error line, not a half bar, is what remains
            raise
