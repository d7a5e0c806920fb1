"""Batch status: one list call answers for many jobs in flight (issue 11, point 6).

Both protocols list an account's tasks with their status, newest first. When several jobs of one
API are being polled, a poll that falls due asks the board instead of the API: the board reads the
list once (a page or two) and every poll due around then takes its answer from that read — one
call for dozens of jobs, and the poll cap (``RateGate``) counts list calls, not jobs. A job the
list does not show (too deep, or the list does not carry it) is asked about alone, as before.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, Optional, Set, Tuple

from ..client import RemoteTask
from ..errors import ApiError, AuthError, TransientError
from ..policy import RateGate
from ..providers import Provider

log = logging.getLogger(__name__)

# Below this many jobs of one API being polled, single GETs cost no more than a list call
# (``WorkOptions.batch_min``).
BATCH_MIN = 4
PAGE_SIZE = 100
# A poll takes a list answer read up to this fraction of its own interval before it fell due
# (at most SLACK_MAX seconds): polls due close together share one read, at the cost of noticing
# a finish that much later.
SLACK_FRACTION = 0.25
SLACK_MAX = 5.0
# A task no poll asked about for this long is no longer looked for in the list.
FORGET_AFTER = 300.0
# How far the service's creation times may be off ours when deciding the list is past a task.
SKEW = timedelta(seconds=120)


def slack(interval: Optional[float]) -> float:
    """How old (seconds before a poll's due time) a list answer that poll accepts may be."""
    return min(SLACK_MAX, SLACK_FRACTION * (interval or 0.0))


@dataclass
class _Listing:
    """What one API's list said last, and which of its tasks are being polled."""

    tasks: Dict[str, RemoteTask] = field(default_factory=dict)
    read_at: float = -math.inf  # when the last read began (its answers are at least that fresh)
    failed_at: float = -math.inf  # when the last read that failed began
    reading: bool = False
    unusable: bool = False  # the API refused its list (a relay without one): every poll asks alone
    wanted: Dict[str, Tuple[float, Optional[datetime]]] = field(default_factory=dict)  # id -> (asked, submitted)


class StatusBoard:
    """Shared by every step of a run; one listing per (provider, base URL)."""

    def __init__(self, gate: RateGate, cancel: threading.Event, clock: Callable[[], float] = time.monotonic,
                 batch_min: int = BATCH_MIN, on_finished: Optional[Callable[[Set[str], float], None]] = None) -> None:
        self.gate = gate
        self.cancel = cancel
        self.clock = clock
        self.batch_min = batch_min
        # Told the ids of polled tasks a read shows finished (and when that read began), so their
        # polls need not wait for their own time: a read made for one job answers for every job
        # it shows done.
        self.on_finished = on_finished or (lambda task_ids, read_at: None)
        self.list_calls = 0
        self._cond = threading.Condition()
        self._listings: Dict[Tuple[str, str], _Listing] = {}

    def lookup(self, api: Provider, task_id: str, submitted_at: Optional[datetime],
               not_before: float) -> Optional[Tuple[RemoteTask, float]]:
        """``task_id`` as a list read begun at or after ``not_before`` shows it, and when that read
        began (``clock`` time); None when the poll must ask the API about it alone (few jobs
        polled, the list does not show it, or the read failed). Raises only a refused key, which
        stops the run."""
        with self._cond:
            listing = self._listings.setdefault((api.name, api.base_url), _Listing())
            now = self.clock()
            listing.wanted[task_id] = (now, submitted_at)
            for stale in [t for t, (asked, _) in listing.wanted.items() if now - asked > FORGET_AFTER]:
                del listing.wanted[stale]
            if len(listing.wanted) < self.batch_min or listing.unusable:
                return None
            while True:
                if listing.failed_at >= not_before:
                    return None
                if listing.read_at >= not_before:
                    return self._shown(listing, task_id)
                if not listing.reading:
                    listing.reading = True
                    wanted = dict(listing.wanted)
                    break
                self._cond.wait(0.5)
                if self.cancel.is_set():
                    return None
        started = self.clock()
        try:
            tasks = self._read(api, wanted)
        except BaseException as exc:
            with self._cond:
                listing.reading, listing.failed_at = False, started
                # A list the API refuses outright will not get better this run; trouble in passing
                # is tried again by a later poll. Either way the polls now ask alone.
                listing.unusable = isinstance(exc, ApiError) and not isinstance(exc, (AuthError, TransientError))
                self._cond.notify_all()
            if isinstance(exc, AuthError) or not isinstance(exc, Exception):
                raise
            log.log(logging.WARNING if listing.unusable else logging.INFO,
                    "%s: the task list could not answer for the jobs in flight (%s); asking about each alone",
                    api.base_url, exc)
            return None
        with self._cond:
            listing.tasks, listing.read_at, listing.reading = tasks, started, False
            self._cond.notify_all()
            finished = {t for t in listing.wanted if t != task_id and t in tasks and tasks[t].is_terminal}
            shown = self._shown(listing, task_id)
        if finished:
            self.on_finished(finished, started)
        return shown

    def forget(self, api: Provider, task_id: str) -> None:
        """The task is finished (or no longer ours): stop looking for it."""
        with self._cond:
            listing = self._listings.get((api.name, api.base_url))
            if listing is not None:
                listing.wanted.pop(task_id, None)
                listing.tasks.pop(task_id, None)

    @staticmethod
    def _shown(listing: _Listing, task_id: str) -> Optional[Tuple[RemoteTask, float]]:
        task = listing.tasks.get(task_id)
        # A finished task whose list entry lacks the video URL is asked about alone for it.
        return None if task is None or (task.is_completed and not task.video_url) else (task, listing.read_at)

    def _read(self, api: Provider, wanted: Dict[str, Tuple[float, Optional[datetime]]]) -> Dict[str, RemoteTask]:
        """Read the list, newest first, until every wanted task was seen, the list is older than the
        oldest of them, or it ends; at most the pages they could fill, plus one."""
        dates = [d for _, d in wanted.values() if d is not None]
        oldest = (min(dates).replace(tzinfo=timezone.utc) - SKEW) if len(dates) == len(wanted) else None
        missing = set(wanted)
        found: Dict[str, RemoteTask] = {}
        cursor: Optional[str] = None
        for _ in range(math.ceil(len(wanted) / PAGE_SIZE) + 1):
            if not self.gate.acquire(self.cancel):
                break
            api.backoff.wait(self.cancel)
            page = api.recent(cursor, PAGE_SIZE)
            with self._cond:
                self.list_calls += 1
            for task in page.tasks:
                found[task.task_id] = task
                missing.discard(task.task_id)
            created = [t.created_at for t in page.tasks if t.created_at is not None]
            if not missing or page.next_cursor is None or (oldest is not None and created and min(created) < oldest):
                break
            cursor = page.next_cursor
        return found
