"""What the terminal shows: the live view of ``ledger work`` (a plain line per event elsewhere),
log lines printed through the same console, and paths shortened in the middle to fit a width.

Everything here writes to one rich ``Console`` (stderr) under one lock per console: a log line from
any thread is printed *above* the live view instead of tearing it, and the view is redrawn only by
the thread that holds that lock. The final summary goes to stdout (the CLI prints it).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections import Counter
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .i18n import ntr, tr
from .models import utcnow
from .states import State
from .store import JobRow
from .work.types import MILESTONES, Action, Active, EventKind, Stop, WorkSummary

ELLIPSIS = "…"
MIN_PATH_CELLS = 16  # a path column narrower than this says nothing; the table gives way elsewhere
REFRESH_SECONDS = 0.25
NOTICE_SECONDS = 5.0  # how long an API notice (a 429 pause) stays in the view's status line

_locks: "weakref.WeakKeyDictionary[Console, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()
_views: "weakref.WeakKeyDictionary[Console, LiveView]" = weakref.WeakKeyDictionary()


def output_lock(console: Console) -> "threading.RLock":
    """The lock every writer to ``console`` holds while it prints (re-entrant: a signal handler
    may print while the interrupted thread holds it)."""
    with _locks_guard:
        lock = _locks.get(console)
        if lock is None:
            lock = _locks[console] = threading.RLock()
        return lock


# --- paths that fit -----------------------------------------------------------------------------


def _cut_cells(text: str, width: int, from_end: bool = False) -> str:
    """The longest head (or tail) of ``text`` that takes at most ``width`` cells."""
    chars = reversed(text) if from_end else iter(text)
    kept: List[str] = []
    used = 0
    for char in chars:
        used += cell_len(char)
        if used > width:
            break
        kept.append(char)
    return "".join(reversed(kept) if from_end else kept)


def shorten_path(path: str, width: int, keep: Optional[Tuple[int, int]] = None) -> str:
    """``path`` in at most ``width`` terminal cells, shortened in the middle so that its start and
    its file name stay: ``input/…/ep1/storyboard_x.json``, then ``…/storyboard_x.json``, then a
    file name cut in its middle (``stor…ard_x.json``). ``keep``: the span of ``path`` that tells it
    from its neighbours (``distinct_spans``), kept whole whenever it fits."""
    if cell_len(path) <= width:
        return path
    if width <= 1:
        return ELLIPSIS[:max(0, width)]
    core = path[keep[0]:keep[1]] if keep else ""
    parts = path.split("/")
    name = parts[-1]
    candidates: List[str] = []
    if len(parts) > 1:
        head = parts[0]
        # as many trailing folders as fit after "head/…/", then the name alone
        candidates += ["/".join([head, ELLIPSIS, *parts[-keep_n - 1:]]) for keep_n in range(len(parts) - 2, 0, -1)]
        candidates += [f"{head}/{ELLIPSIS}/{name}", f"{ELLIPSIS}/{name}"]
    for candidate in candidates:
        if cell_len(candidate) <= width and (not core or _shows(candidate, path, keep)):
            return candidate
    if core and cell_len(core) + 2 <= width:
        return _around(path, keep, width)  # type: ignore[arg-type]
    room = width - 1
    tail = _cut_cells(name, (room + 1) // 2, from_end=True)
    return _cut_cells(name, room - cell_len(tail)) + ELLIPSIS + tail


def _shows(candidate: str, path: str, keep: Optional[Tuple[int, int]]) -> bool:
    """Does a head/…/tail shortening of ``path`` show the span ``keep`` whole?"""
    if keep is None:
        return True
    head, _, tail = candidate.partition(ELLIPSIS)
    return keep[1] <= len(head) or keep[0] >= len(path) - len(tail)


def _around(path: str, keep: Tuple[int, int], width: int) -> str:
    """The span ``keep`` whole, with as much of what is before and after it as fits."""
    left, core, right = path[:keep[0]], path[keep[0]:keep[1]], path[keep[1]:]
    budget = width - cell_len(core)
    right_room = min(cell_len(right), budget // 2)
    left_room = budget - right_room
    if cell_len(left) <= left_room:
        shown_left = left
        right_room = budget - cell_len(left)
    else:
        shown_left = ELLIPSIS + _cut_cells(left, left_room - 1, from_end=True)
    if cell_len(right) <= right_room:
        shown_right = right
    else:
        shown_right = ELLIPSIS + _cut_cells(right, right_room - 1, from_end=True) if right_room > 0 else ""
    return shown_left + core + shown_right


def distinct_spans(paths: Sequence[str]) -> List[Optional[Tuple[int, int]]]:
    """For each path, the span that is not shared with any other path's start or end (its longest
    common prefix and suffix with another path are found among its neighbours once sorted)."""
    def longest_shared(texts: Sequence[str]) -> List[int]:
        order = sorted(range(len(texts)), key=lambda i: texts[i])
        shared = [0] * len(texts)
        for a, b in zip(order, order[1:]):
            n = len(os.path.commonprefix([texts[a], texts[b]]))
            shared[a], shared[b] = max(shared[a], n), max(shared[b], n)
        return shared

    prefixes = longest_shared(paths)
    suffixes = longest_shared([p[::-1] for p in paths])
    spans: List[Optional[Tuple[int, int]]] = []
    for path, start, end_shared in zip(paths, prefixes, suffixes):
        end = len(path) - end_shared
        spans.append((start, end) if start < end and (start or end < len(path)) else None)
    return spans


class _PathColumn:
    """The paths of one table column, shortened together: a path is shortened plainly unless that
    makes it look like another one; then it keeps the part that tells it apart."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.spans = dict(zip(self.paths, distinct_spans(self.paths)))
        self._shown: Dict[int, Dict[str, str]] = {}

    def shown(self, path: str, width: int) -> str:
        if width not in self._shown:
            plain = {p: shorten_path(p, width) for p in self.paths}
            clashes = Counter(plain.values())
            self._shown[width] = {p: text if clashes[text] == 1 else shorten_path(p, width, self.spans[p])
                                  for p, text in plain.items()}
        return self._shown[width][path]


class PathCell:
    """A path that takes the width a table gives it: shortened in the middle, never wrapped.
    ``suffix`` (``#2v1``) is always shown whole after it."""

    def __init__(self, path: str, suffix: str = "", style: str = "", column: Optional[_PathColumn] = None) -> None:
        self.path = path
        self.suffix = suffix
        self.style = style
        self.group = column

    @classmethod
    def column(cls, paths: Sequence[str], suffixes: Optional[Sequence[str]] = None) -> List["PathCell"]:
        """Cells for the paths of one table column: however narrow, rows that name different
        paths stay different."""
        group = _PathColumn(paths)
        return [cls(path, suffixes[i] if suffixes else "", column=group) for i, path in enumerate(paths)]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        full = cell_len(self.path) + cell_len(self.suffix)
        return Measurement(min(full, MIN_PATH_CELLS + cell_len(self.suffix)), full)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = max(1, options.max_width - cell_len(self.suffix))
        shown = self.group.shown(self.path, room) if self.group else shorten_path(self.path, room)
        yield Text(shown + self.suffix, style=self.style, no_wrap=True, overflow="crop")

    def __str__(self) -> str:
        return self.path + self.suffix


# --- log lines through the console --------------------------------------------------------------


class ConsoleHandler(logging.Handler):
    """Log records printed through ``console``. While a live view runs on it, the lines appear
    above the view, and the API's rate-limit notices become the view's status line instead
    (printed as well when ``echo_notices``, i.e. at ``-v``)."""

    def __init__(self, console: Console, echo_notices: bool = False) -> None:
        super().__init__()
        self.console = console
        self.echo_notices = echo_notices

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            view = _views.get(self.console)
            if view is not None and view.absorb(record) and not self.echo_notices:
                return
            style = "red" if record.levelno >= logging.ERROR else "yellow" if record.levelno >= logging.WARNING else ""
            with output_lock(self.console):
                self.console.print(Text(text, style=style), highlight=False, emoji=False)
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)


def is_api_notice(record: logging.LogRecord) -> bool:
    """The client's WARNINGs say the API asked to slow down: a state of the run, not news."""
    return record.name == "ledger.client" and record.levelno == logging.WARNING


# --- the ETA ------------------------------------------------------------------------------------


def estimate_eta(durations: Sequence[float], running: Sequence[float], queued: int, slots: int,
                 starting: Sequence[float] = ()) -> Optional[float]:
    """Seconds until the last job is done, from the generation times measured so far (None before
    the first one): a job takes the mean of the recent ones. ``running``: how long each job in flight
    has been generating; ``starting``: how long each job that has yet to start its generation (a
    retry's pause, a look-up's grace) must wait first; ``queued`` jobs start as ``slots`` free up."""
    if not durations:
        return None
    recent = durations[-20:]
    typical = sum(recent) / len(recent)
    # A job past the typical time is about to finish rather than done: it still holds its slot.
    busy = [max(1.0, typical - elapsed) for elapsed in running] + [wait + typical for wait in starting]
    free_at = sorted(busy + [0.0] * max(0, slots - len(busy)))[:max(1, slots)]
    # Equal durations fill the earliest free slots round-robin, in the order they free up.
    rounds, extra = divmod(max(0, queued), len(free_at))
    ends = [t + (rounds + (1 if i < extra else 0)) * typical for i, t in enumerate(free_at)]
    return max(ends + busy)


def clock(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plural(count: int, word: str, many: Optional[str] = None) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


# --- the views ----------------------------------------------------------------------------------


class PlainView:
    """One timestamped line per event: for logs, pipes and ``--no-progress``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = output_lock(console)

    def __enter__(self) -> "PlainView":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def event(self, job: JobRow, kind: EventKind, text: str) -> None:
        with self._lock:
            line = Text(f"{datetime.now():%H:%M:%S} {job.label} ")
            if kind is EventKind.FAILED:
                line.append(tr("failed:"), style="red")
                line.append(" ")
            line.append(text)
            self.console.print(line, highlight=False, emoji=False, soft_wrap=True)  # a log line: whole, for grep

    def tick(self, worker: Any) -> None:
        return None


_COUNTDOWN = re.compile(r"\bin \d+ s$")
OUTAGE_SHOWN_AFTER = 3.0  # seconds without any answer from an API before the view says so


def _outage(worker: Any) -> Tuple[float, float]:
    """How long the API new jobs go to has not answered at all, and how long the run waits for it."""
    providers = getattr(worker, "providers", None)
    if providers is None or not hasattr(providers, "outage"):
        return 0.0, 0.0
    return providers.outage()[0], float(getattr(worker.options, "api_patience", 0.0))


def _first_clause(text: str) -> str:
    return text.split("; ")[0]


class LiveView:
    """A progress bar with a measured ETA, the run's counts, and a table of the jobs in flight and
    of those waiting to retry. Its last frame is drawn from the run's final state."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = output_lock(console)
        # No refresh thread: the view is redrawn by ticks and prints, all under the console's lock.
        self.live = Live(console=console, auto_refresh=False, transient=False, redirect_stderr=False)
        self.worker: Any = None
        self.waiting: Dict[int, JobRow] = {}  # released for a retry at next_attempt_at
        self.notice: Tuple[str, float] = ("", 0.0)
        self._started = time.monotonic()
        self._last = 0.0

    def __enter__(self) -> "LiveView":
        with self._lock:
            self.live.start()
            _views[self.console] = self
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            _views.pop(self.console, None)
            if self.worker is not None:
                self.live.update(self.frame(self.worker, final=True))
            self.live.stop()

    def absorb(self, record: logging.LogRecord) -> bool:
        """Take an API notice into the status line; True when the record was one."""
        if not is_api_notice(record):
            return False
        with self._lock:
            self.notice = (record.getMessage(), time.monotonic() + NOTICE_SECONDS)
        return True

    def event(self, job: JobRow, kind: EventKind, text: str) -> None:
        with self._lock:
            if kind is EventKind.RETRY and job.next_attempt_at is not None:
                self.waiting[job.id] = job
            elif kind in MILESTONES:
                self.waiting.pop(job.id, None)
            if kind in MILESTONES:  # only the milestones scroll above the view; the rest is in its table
                label = tr("failed:")
                line = self.event_line(job, f"{label} {text}" if kind is EventKind.FAILED else text)
                if kind is EventKind.FAILED:
                    line.stylize("red", len(line.plain) - len(text) - len(label) - 1, len(line.plain) - len(text) - 1)
                self.console.print(line, soft_wrap=False, no_wrap=True, overflow="ellipsis")

    def event_line(self, job: JobRow, text: str) -> Text:
        """``input/…/storyboard_x.json#2v1 saved …``: the job stays recognisable; the line fits."""
        width = self.console.width
        suffix = _suffix(job)
        # The job's name keeps at least half the line; the text after it is cut at the end.
        room = max(MIN_PATH_CELLS, width // 2 - cell_len(suffix), width - cell_len(suffix) - 1 - cell_len(text))
        label = shorten_path(job.storyboard_path, room) + suffix if suffix else job.label
        return Text(f"{label} {text}", no_wrap=True, overflow="ellipsis")

    def tick(self, worker: Any) -> None:
        now = time.monotonic()
        if now - self._last < REFRESH_SECONDS and self.worker is not None:
            return
        self._last = now
        with self._lock:
            self.worker = worker
            self.live.update(self.frame(worker), refresh=True)

    # --- the frame ----------------------------------------------------------------------------------

    def frame(self, worker: Any, final: bool = False) -> Group:
        summary: WorkSummary = worker.summary
        finished = summary.done + summary.failed + summary.skipped_existing
        total = max(worker.expected_total, finished)
        actives: List[Active] = [] if final else sorted(worker.active.values(), key=lambda a: a.job.id)
        for active in actives:
            self.waiting.pop(active.job.id, None)
        if final:
            self.waiting.clear()
        parts: List[Any] = [self._bar(worker, summary, finished, total, actives, final),
                            Text(self._counts(worker, summary, actives, final), no_wrap=True, overflow="ellipsis")]
        table = self._table(actives)
        if table is not None:
            parts.append(table)
        return Group(*parts)

    def _bar(self, worker: Any, summary: WorkSummary, finished: int, total: int, actives: Sequence[Active],
             final: bool) -> Table:
        elapsed = summary.seconds if final and summary.seconds else time.monotonic() - self._started
        if final:
            tail = tr("stopped") if summary.stopped is not None else tr("finished")
        elif worker.stopping:
            tail = tr("stopping")
        else:
            now, wall = time.monotonic(), utcnow()
            started = [a for a in actives if a.job.remote_task_id]
            running = [self._elapsed(a) for a in started]
            starting = [max(0.0, a.due - now) for a in actives if not a.job.remote_task_id]
            starting += [max(0.0, (job.next_attempt_at - wall).total_seconds())
                         for job in self.waiting.values() if job.next_attempt_at]
            queued = max(0, total - finished - len(actives) - len(self.waiting))
            eta = estimate_eta(list(summary.generation_seconds), running, queued, worker.options.concurrency,
                               starting)
            tail = tr("ETA estimating") if eta is None else tr("ETA {time}").format(time=clock(eta))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        for _ in range(3):
            grid.add_column(no_wrap=True, justify="right")
        grid.add_row(Text("ledger work", style="bold"),
                     ProgressBar(total=total or None, completed=finished, pulse=not total and not final),
                     f"{finished}/{total}", clock(elapsed), tail)
        return grid

    def _counts(self, worker: Any, summary: WorkSummary, actives: Sequence[Active], final: bool) -> str:
        parts = [f"{label} {value}" for label, value in (
            (tr("done"), summary.done), (tr("on disk already"), summary.skipped_existing), (tr("failed"), summary.failed),
            (tr("in flight"), len(actives)), (tr("waiting to retry"), len(self.waiting)),
            (tr("collected"), summary.collected), (tr("unresolved"), summary.unresolved),
            (tr("still generating"), summary.still_generating if final else 0)) if value]
        parts.append(ntr("paid {money} for {n} generation", "paid {money} for {n} generations", summary.creates,
                         money=summary.spent) if summary.creates else tr("paid {money}").format(money=summary.spent))
        line = " · ".join(parts)
        if final:
            return line
        if worker.stopping:
            stop = worker.summary.stopped
            if stop is not None and stop is not Stop.INTERRUPTED:  # not the user's Ctrl+C: say what stopped it
                return line + " · " + tr("stopping: {why}").format(why=_first_clause(worker.summary.stop_detail))
            return line + " · " + tr("stopping (Ctrl+C again aborts downloads)")
        out_for, patience = _outage(worker)
        if out_for >= OUTAGE_SHOWN_AFTER:
            return line + " · " + tr("API unreachable for {seconds} s — retrying (gives up after {patience} s)").format(
                seconds=f"{out_for:.0f}", patience=f"{patience:.0f}")
        paused = self._paused_for(worker)
        text, until = self.notice
        if paused > 0.5:
            return line + " · " + tr("API asked to slow down: pausing {seconds} s").format(seconds=f"{paused:.0f}")
        if text and time.monotonic() < until:
            return line + f" · {text}"
        return line

    @staticmethod
    def _paused_for(worker: Any) -> float:
        backoff = getattr(getattr(worker, "client", None), "backoff", None)
        until = getattr(backoff, "paused_until", 0.0) if backoff is not None else 0.0
        return max(0.0, until - time.monotonic()) if until else 0.0

    def _table(self, actives: Sequence[Active]) -> Optional[Table]:
        waiting = sorted(self.waiting.values(), key=lambda job: job.id)
        jobs = [a.job for a in actives] + waiting
        if not jobs:
            return None
        cells = PathCell.column([job.storyboard_path for job in jobs], [_suffix(job) for job in jobs])
        rows = [(cells[i], *self._active_row(a)) for i, a in enumerate(actives)]
        rows += [(cells[len(actives) + i], *self._waiting_row(job)) for i, job in enumerate(waiting)]
        room = max(3, (self.console.height or 24) - 6)  # the frame must fit the screen or it scrolls away
        table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
        table.add_column("job", ratio=None)
        table.add_column("state", no_wrap=True, overflow="ellipsis", max_width=32)
        table.add_column("progress", no_wrap=True, justify="right")
        table.add_column("elapsed", no_wrap=True, justify="right")
        for row in rows[:room]:
            table.add_row(*row)
        if len(rows) > room:
            table.add_row(Text(f"… and {len(rows) - room} more"), "", "", "")
        return table

    def _active_row(self, a: Active) -> Tuple[Any, ...]:
        job = a.job
        state = "looking up its task" if a.action is Action.RECONCILE else job.state.value
        if a.retry_note and not a.running:
            left = max(0, round(a.due - time.monotonic()))
            state = _COUNTDOWN.sub(f"in {left} s", a.retry_note)
        elapsed = self._elapsed(a)
        return (state, f"{a.progress}%" if job.state is not State.PENDING else "",
                f"{elapsed:.0f} s" if elapsed else "")

    @staticmethod
    def _waiting_row(job: JobRow) -> Tuple[Any, ...]:
        left = max(0.0, (job.next_attempt_at - utcnow()).total_seconds()) if job.next_attempt_at else 0.0
        return f"retrying in {left:.0f} s", "", ""

    @staticmethod
    def _elapsed(a: Active) -> float:
        job = a.job
        since = a.sent_at or job.submitted_at or job.submitting_at
        return max(0.0, (utcnow() - since).total_seconds()) if since else 0.0


def _suffix(job: JobRow) -> str:
    """``#2v1``: what a job's label adds to its storyboard's path."""
    return job.label[len(job.storyboard_path):] if job.label.startswith(job.storyboard_path) else ""


def make_view(console: Console, plain: bool = False, stdout_is_terminal: bool = True) -> Any:
    """A live view when both stdout and ``console`` (stderr) are terminals that can move the
    cursor; plain lines when output is redirected, the terminal is dumb, or ``plain`` is asked for."""
    if plain or not (stdout_is_terminal and console.is_terminal and console.is_interactive):
        return PlainView(console)
    return LiveView(console)
