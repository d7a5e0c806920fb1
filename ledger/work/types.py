"""The small types a run is made of: what to do next (``Action``), how a job left the run
(``Outcome``), why a run stopped early (``Stop``), what the live view hears (``EventKind``), the
options of a run and its summary."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Dict, List, Optional, Tuple

from ..client import RemoteTask
from ..errors import ExitStatus
from ..money import Money
from ..policy import PollPolicy, RetryPolicy
from ..states import State
from ..store import JobRow, JobScope


class Action(enum.Enum):
    """The step a job needs next."""

    SUBMIT = "submit"  # pending: write-ahead, then the paid POST /create
    RECORD = "record"  # the create answered: store its task id (retried until it is stored)
    RECONCILE = "reconcile"  # the create may have happened unanswered: look it up, never resend
    POLL = "poll"
    DOWNLOAD = "download"


FIRST_ACTION = {State.PENDING: Action.SUBMIT, State.SUBMITTING: Action.RECONCILE, State.SUBMITTED: Action.POLL,
                State.DOWNLOADING: Action.DOWNLOAD}


class Outcome(enum.Enum):
    """How a job left this run."""

    DONE = "done"
    SKIPPED = "skipped"  # its video was already on disk: no API call
    FAILED = "failed"
    RELEASED = "released"  # back in the queue (a retry later, or the run is stopping)
    PARKED = "parked"  # left for a later run: still generating after the poll timeout, or unresolved
    LOST = "lost"  # another worker (or a scan) moved it first


class Stop(enum.Enum):
    """Why a run stopped before the queue was empty."""

    INTERRUPTED = "interrupted"
    AUTH = "auth"
    BALANCE = "balance"
    BUDGET = "budget"
    UNREACHABLE = "unreachable"
    DATABASE = "database"

    @property
    def exit_status(self) -> ExitStatus:
        return {Stop.INTERRUPTED: ExitStatus.INTERRUPTED, Stop.AUTH: ExitStatus.CONFIG,
                Stop.BALANCE: ExitStatus.BALANCE, Stop.BUDGET: ExitStatus.BALANCE,
                Stop.UNREACHABLE: ExitStatus.CONFIG, Stop.DATABASE: ExitStatus.DATABASE}[self]


class EventKind(enum.Enum):
    """What an event line says, for views that show only some of them."""

    CREATED = "created"
    FOUND = "found"  # a lost create's task found in the task list
    SAVED = "saved"
    SKIPPED = "skipped"
    FAILED = "failed"
    RETRY = "retry"
    PARKED = "parked"
    NOTE = "note"  # everything else worth a line in the plain log


MILESTONES = frozenset({EventKind.CREATED, EventKind.FOUND, EventKind.SAVED, EventKind.SKIPPED, EventKind.FAILED,
                        EventKind.PARKED})


@dataclass
class WorkOptions:
    """How one ``ledger work`` run behaves; built from the settings and flags by the CLI."""

    concurrency: int = 8
    limit: Optional[int] = None
    scope: JobScope = field(default_factory=JobScope)
    max_spend: Dict[str, int] = field(default_factory=dict)  # --max-spend: minor units by currency
    poll: PollPolicy = field(default_factory=PollPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    polls_per_second: float = 10.0
    # Jobs of one API being polled at once before one list read answers for them all (``board.py``).
    batch_min: int = 4
    lease_seconds: float = 120.0
    reconcile_grace: float = 30.0
    # How far the service's task timestamps may be off ours, and how long a create may take to reach
    # the service (connect + read timeout): together they bound the time window a lost create's task
    # can have been made in.
    reconcile_skew: float = 120.0
    create_timeout: float = 70.0
    poll_timeout: float = 45 * 60.0
    shutdown_grace: float = 5.0
    # Stop the run (nothing lost) when the ledger or the API stay out of reach this long.
    database_patience: float = 120.0  # the CLI sets 4 x LEDGER_BUSY_TIMEOUT (at least 10 s)
    api_patience: float = 60.0

    @property
    def rescue_every(self) -> float:
        """How often a live worker frees the jobs of dead workers on this machine."""
        return min(10.0, self.lease_seconds / 4)

    @property
    def io_threads(self) -> int:
        # Threads only wait on sockets and disks; a few dozen serve hundreds of generations (and
        # as many downloads besides, which hold no generation slot).
        return max(2, min(2 * self.concurrency, 32))


@dataclass
class Active:
    """A job this run holds, and what to do with it next."""

    job: JobRow
    action: Action
    due: float = 0.0
    running: bool = False
    polls: int = 0
    last_delay: Optional[float] = None
    readings: List[Tuple[float, int]] = field(default_factory=list)  # (elapsed, progress) of its polls, oldest first
    progress: int = 0
    url_refreshes: int = 0
    tries: int = 0  # record / reconcile tries in this run (they never count as the job's attempts)
    reserved: int = 0  # cents held against --max-spend from the write-ahead until the create settles
    kind: Optional[Tuple[str, str, str]] = None  # what the reservation is for (``steps.cost_kind``)
    sent_at: Optional[datetime] = None  # when this run sent the paid POST (None: not sent by this run)
    answered_at: Optional[datetime] = None  # when that POST ended, answered or not
    created: Optional[RemoteTask] = None  # a created task whose id is not in the ledger yet
    found: bool = False  # ``created`` came from the task list, not from the create's answer
    journaled: bool = False
    retry_note: str = ""  # "retrying in 30 s": shown by the live view
    # When the list read that showed this job's task finished began (a read made for another job's
    # poll): the next poll takes that read's answer instead of waiting for its own time.
    seen_finished_at: Optional[float] = None
    waiting_for_key: bool = False  # every key it may use is at its limit (team mode): woken when one frees


@dataclass(frozen=True)
class Next:
    """What a step asks of the scheduler: run the job's action again after ``delay``, or let go."""

    delay: Optional[float] = None  # None: the job is no longer ours (``outcome`` says why)
    outcome: Optional[Outcome] = None


@dataclass
class BoardTally:
    """What one run did to the jobs of one storyboard, and where its videos went."""

    done: int = 0
    skipped_existing: int = 0
    failed: int = 0
    creates: int = 0
    collected: int = 0
    unresolved: int = 0
    spent: Money = field(default_factory=Money)
    total: Money = field(default_factory=Money)  # what its jobs cost, every run counted
    folder: str = ""  # the storyboard's output folder (the parent of its Segment_i folders)


@dataclass
class WorkSummary:
    """What one run did. ``exit_status`` is the documented exit code."""

    done: int = 0
    skipped_existing: int = 0
    failed: int = 0
    creates: int = 0  # paid creates this run sent (answered, or found after a lost answer)
    collected: int = 0  # tasks paid by an earlier run, found and adopted by this one
    polls: int = 0
    spent: Money = field(default_factory=Money)  # what this run's creates cost, by currency
    still_generating: int = 0
    pending_left: int = 0
    unresolved: int = 0  # lost creates whose look-up could not cover its time window
    # Paid jobs left for a key this machine does not use: (jobs, fingerprint, key as shown, why it is out).
    waiting_for_keys: List[Tuple[int, str, str, Optional[str]]] = field(default_factory=list)
    stopped: Optional[Stop] = None
    stop_detail: str = ""
    failures: List[Tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    boards: Dict[str, BoardTally] = field(default_factory=dict)  # by storyboard path, in first-seen order
    # Seconds from this run's create to the saved video, per job: what the live view's ETA is made of.
    generation_seconds: List[float] = field(default_factory=list)

    def add(self, job: Optional[JobRow] = None, took: Optional[float] = None, **amounts: Any) -> None:
        """Count ``amounts`` (field names of this summary), also against ``job``'s storyboard;
        ``took``: the job's generation time. The caller holds the run's lock."""
        for name, amount in amounts.items():
            setattr(self, name, getattr(self, name) + amount)
        if took is not None:
            self.generation_seconds.append(took)
        if job is None:
            return
        board = self.boards.setdefault(job.storyboard_path, BoardTally())
        for name, amount in amounts.items():
            if hasattr(board, name):
                setattr(board, name, getattr(board, name) + amount)
        if not board.folder and (amounts.get("done") or amounts.get("skipped_existing")):
            board.folder = str(PurePosixPath(job.target_dir).parent)

    @property
    def exit_status(self) -> ExitStatus:
        if self.stopped is not None:
            return self.stopped.exit_status
        return ExitStatus.JOBS_FAILED if self.failed else ExitStatus.OK
