"""What ``ledger work`` shows while it runs: a rich live view on a terminal, plain log lines elsewhere.

Both go to stderr; the final summary goes to stdout (the CLI prints it).
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .models import utcnow
from .store import JobRow
from .work.types import MILESTONES, EventKind

MAX_ROWS = 12


class PlainView:
    """One timestamped line per event: for logs, pipes and ``--no-progress``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()

    def __enter__(self) -> "PlainView":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def event(self, job: JobRow, kind: EventKind, text: str) -> None:
        with self._lock:
            self.console.print(f"{datetime.now():%H:%M:%S} {job.label} {text}", markup=False, highlight=False)

    def tick(self, worker: Any) -> None:
        return None


class LiveView:
    """An overall progress bar with ETA, counts, and a table of the jobs in flight."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("[bold]ledger work"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("jobs", total=None)
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self._last = 0.0

    def __enter__(self) -> "LiveView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def event(self, job: JobRow, kind: EventKind, text: str) -> None:
        # Only the milestones scroll above the live view; progress shows in the table.
        if kind in MILESTONES:
            self.live.console.print(f"{job.label} {text}", markup=False, highlight=False)

    def tick(self, worker: Any) -> None:
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        summary = worker.summary
        finished = summary.done + summary.failed + summary.skipped_existing
        self.progress.update(self.task, total=max(worker.expected_total, finished) or None, completed=finished)
        counts = (f"done {summary.done} · on disk already {summary.skipped_existing} · failed {summary.failed} · "
                  f"in flight {len(worker.active)} · paid {summary.creates} · polls {summary.polls}")
        if worker.stopping:
            counts += " · [yellow]stopping (Ctrl+C again aborts downloads)[/yellow]"
        table = Table(box=None, pad_edge=False, expand=False)
        for column in ("storyboard", "seg", "v", "state", "progress", "elapsed"):
            table.add_column(column, justify="right" if column in ("seg", "v", "progress", "elapsed") else "left")
        wall = utcnow()
        actives = sorted(worker.active.values(), key=lambda a: a.job.id)
        for active in actives[:MAX_ROWS]:
            job = active.job
            since = job.submitted_at or job.submitting_at
            elapsed = f"{(wall - since).total_seconds():.0f}s" if since else "-"
            table.add_row(job.storyboard_path, str(job.segment_index), str(job.version), job.state.value,
                          f"{active.progress}%", elapsed)
        if len(actives) > MAX_ROWS:
            table.add_row(f"… and {len(actives) - MAX_ROWS} more", "", "", "", "", "")
        self.live.update(Group(self.progress, counts, table))


def make_view(console: Console, plain: bool = False, stdout_is_terminal: bool = True) -> Any:
    """A live view when both stdout and ``console`` (stderr) are terminals; plain lines when
    output is redirected or ``plain`` is asked for."""
    if plain or not (stdout_is_terminal and console.is_terminal):
        return PlainView(console)
    return LiveView(console)
