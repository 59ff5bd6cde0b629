"""Progress bars (rich) with a rate and an ETA, on stderr so stdout stays for results."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
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

console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)  # progress, notes, errors
# What the user asked for (the leaderboard), on stdout; wide enough for the table when piped to a file.
results = Console(width=None if sys.stdout.isatty() else 150)


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "", style="cyan")


@contextmanager
def progress_bar(label: str, total: int, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """`with progress_bar("features", 1000, "img") as advance: advance(32)`."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(unit),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=total)
        try:
            yield lambda n=1: progress.advance(task, n)
        except BaseException:
            progress.live.transient = True  # on failure the error line, not a half bar, is what remains
            raise
