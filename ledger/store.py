"""Every ledger query lives here: the scan upsert, status and counts, claims, leases, transitions.

Writes go through ``write_tx`` (SQLite: ``BEGIN IMMEDIATE``); every state change inserts an
``events`` row in the same transaction, so the history can never disagree with the state.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from functools import lru_cache
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, Row

from .db import db_now, read_tx, write_tx
from .models import api_keys, events, jobs, meta, path_key, storyboards, utcnow, workers
from .outputs import existing_videos, supersede
from .errors import LedgerError, is_refusal
from .money import Money
from .keys import KeyChoice
from .leases import owner_is_dead
from .states import ALL_STATES, CLAIMABLE, IN_FLIGHT, State, check_transition
from .storyboard import JobSpec, ParsedStoryboard, SegmentSpec

if TYPE_CHECKING:  # for annotations: the price lists are the caller's
    from .pricing import Prices

log = logging.getLogger(__name__)

class NoFreeKey(LedgerError):
    """Every key that could create this job is at its limit, over its cap or out of rotation."""


class LeaseLost(LedgerError):
    """A guarded write found the job no longer as expected (another worker took it over, or a scan
    or requeue moved it first): this worker must let it go."""


@dataclass(frozen=True)
class JobScope:
    """Which jobs a ``ledger work`` run may touch: some storyboards, some job ids, or all."""

    storyboard_ids: Optional[Sequence[int]] = None
    job_ids: Optional[Sequence[int]] = None
    paid_only: bool = False  # only jobs that already have (or may have) a remote task
    # (provider, API base URL) pairs out of reach this run: the jobs sent there are left alone.
    skip_apis: Sequence[Tuple[str, str]] = ()
    # Team mode: the fingerprints of the keys this machine has (in rotation). A job created with
    # another key is left to a machine that has it (None: every job, the keys are not checked).
    own_keys: Optional[Sequence[str]] = None

    def apply(self, query):  # type: ignore[no-untyped-def]
        if self.storyboard_ids is not None:
            query = query.where(jobs.c.storyboard_id.in_(list(self.storyboard_ids)))
        if self.job_ids is not None:
            query = query.where(jobs.c.id.in_(list(self.job_ids)))
        if self.paid_only:
            query = query.where(jobs.c.state != State.PENDING.value)
        for provider, base in self.skip_apis:  # a pending job goes where the settings say, not where it once went
            query = query.where(or_(jobs.c.provider != provider, jobs.c.api_base.is_(None), jobs.c.api_base != base,
                                    jobs.c.state == State.PENDING.value))
        if self.own_keys is not None:
            query = query.where(or_(jobs.c.state == State.PENDING.value, jobs.c.key_fp.is_(None),
                                    jobs.c.key_fp.in_(list(self.own_keys))))
        return query


# In-flight jobs are claimed before pending ones: they are paid for. Downloads first (nearest done).
_IN_FLIGHT_ORDER = (State.DOWNLOADING, State.SUBMITTED, State.SUBMITTING)
# Failures after which the remote task holds no video to fetch: requeue generates them again.
NO_VIDEO_KINDS = frozenset({"remote_failed", "refused", "task_not_found", "content_expired"})
CHUNK = 500  # ids per IN (...) list: far below every database's bound-parameter limit


def _download_only(row: Any, regenerate: bool) -> bool:
    """Whether ``requeue`` sends a failed job back to its download alone (its remote task exists
    and holds a video: nothing is paid again) rather than to a new generation."""
    return bool(row.remote_task_id) and row.error_kind not in NO_VIDEO_KINDS and not regenerate


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def path_in_scope(path: str, scope: str) -> bool:
    """Is the stored storyboard ``path`` inside the scanned folder ``scope`` (both ledger paths)?"""
    if scope in (".", ""):
        return not path.startswith("/") and not path.startswith("..")
    return path.startswith(scope.rstrip("/") + "/")


@dataclass(frozen=True)
class JobRow:
    """A frozen copy of one ``jobs`` row plus its storyboard's path."""

    id: int
    storyboard_id: int
    storyboard_path: str
    segment_index: int
    version: int
    state: State
    params: Mapping[str, Any]
    params_sha: str
    is_pro: bool
    target_dir: str
    remote_task_id: Optional[str]
    cost_cents: Optional[int]
    spent_cents: int
    progress: int
    video_url: Optional[str]
    video_path: Optional[str]
    attempts: int
    next_attempt_at: Optional[datetime]
    lease_owner: Optional[str]
    lease_expires_at: Optional[datetime]
    error_kind: Optional[str]
    error_message: Optional[str]
    submitting_at: Optional[datetime]
    submitted_at: Optional[datetime]
    finished_at: Optional[datetime]
    created_at: datetime
    updated_at: datetime
    provider: str = "sora_hk"
    api_base: Optional[str] = None
    price_key: str = "normal"
    key_fp: Optional[str] = None

    @classmethod
    def from_row(cls, row: Row) -> "JobRow":
        data = dict(row._mapping)
        data["state"] = State(data["state"])
        return cls(**data)

    @property
    def label(self) -> str:
        return f"{self.storyboard_path}#{self.segment_index}v{self.version}"


JOB_COLUMNS = [c for c in jobs.c] + [storyboards.c.path.label("storyboard_path")]


def job_select():  # type: ignore[no-untyped-def]
    return select(*JOB_COLUMNS).join_from(jobs, storyboards, jobs.c.storyboard_id == storyboards.c.id)


@dataclass(frozen=True)
class Requeued:
    """What ``Store.requeue`` did: jobs sent back to their download, jobs to generate again, and the
    content refusals it left failed."""

    downloads: int
    generations: int
    refused: List[JobRow]


# The worker runs these thousands of times: statements built once skip SQLAlchemy's per-call
# construction and cache-key work, which costs more than SQLite itself here.
_JOB_BY_ID = job_select().where(jobs.c.id == bindparam("t_id"))
_EVENT_INSERT = insert(events)


@lru_cache(maxsize=64)
def _guarded_update(columns: Tuple[str, ...]):  # type: ignore[no-untyped-def]
    """``UPDATE jobs SET <columns> WHERE id = :g_id AND state = :g_old``: the write of every change a
    scan or requeue makes. Matching no row means someone else moved the job first."""
    return (update(jobs)
            .where(jobs.c.id == bindparam("g_id"), jobs.c.state == bindparam("g_old"))
            .values({name: bindparam(name) for name in columns}))


@lru_cache(maxsize=64)
def _transition_update(columns: Tuple[str, ...]):  # type: ignore[no-untyped-def]
    """``UPDATE jobs SET state, updated_at, <columns> WHERE id, state and lease owner match``."""
    return (update(jobs)
            .where(jobs.c.id == bindparam("t_id"), jobs.c.state == bindparam("t_old"),
                   jobs.c.lease_owner == bindparam("t_owner"))
            .values({name: bindparam(name) for name in ("state", "updated_at", *columns)}))


# --- scan --------------------------------------------------------------------------------------


@dataclass
class JobChange:
    """One planned write to one job row; a state change also writes an event."""

    job_id: int
    from_state: State
    to_state: State
    values: Dict[str, Any]
    detail: str
    supersede: Optional[Tuple[str, int, int]] = None  # (target_dir, segment, version) to move aside
    storyboard_id: Optional[int] = None
    label: Optional[Tuple[str, int, int]] = None  # (storyboard path, segment, version) for messages
    counter: str = ""  # the ScanOutcome counter this change added to (taken back if it cannot apply)


@dataclass(frozen=True)
class ChangedJob:
    """A job whose storyboard entry changed after it was paid for; left alone unless asked."""

    storyboard_path: str
    segment_index: int
    version: int
    state: State


@dataclass
class ScanOutcome:
    """What a scan did (or, with ``dry_run``, would do) to the ledger."""

    dry_run: bool = False
    storyboards_new: int = 0
    storyboards_changed: int = 0
    storyboards_unchanged: int = 0
    storyboards_missing: List[str] = field(default_factory=list)
    added: int = 0
    added_pro: int = 0
    # New jobs by (provider, price key, is_pro): what they will cost.
    added_by_price: "Counter[Tuple[str, str, bool]]" = field(default_factory=Counter)
    # Jobs put back in the queue (revived, video deleted, --requeue-changed), by the same key.
    back_by_price: "Counter[Tuple[str, str, bool]]" = field(default_factory=Counter)
    updated: int = 0
    revived: int = 0
    removed: int = 0
    regenerate: int = 0
    requeued_changed: int = 0
    changed: List[ChangedJob] = field(default_factory=list)
    # Jobs a worker (or another scan) moved between this scan's read and its write: left alone.
    moved_meanwhile: List[ChangedJob] = field(default_factory=list)

    @property
    def to_generate(self) -> "Counter[Tuple[str, str, bool]]":
        """The jobs this scan adds to the queue, new or back, by (provider, price key, is_pro):
        what a dry run adds to the ledger's pending jobs."""
        return self.added_by_price + self.back_by_price

    @property
    def writes(self) -> int:
        return (self.storyboards_new + self.storyboards_changed + len(self.storyboards_missing) + self.added
                + self.updated + self.revived + self.removed + self.regenerate + self.requeued_changed)


_RESET_REMOTE = {
    "remote_task_id": None, "cost_cents": None, "progress": 0, "video_url": None, "video_path": None,
    "attempts": 0, "next_attempt_at": None, "error_kind": None, "error_message": None,
    "submitting_at": None, "submitted_at": None, "finished_at": None, "api_base": None,
}


_NEW_JOB_COLUMNS = ("storyboard_id", "segment_index", "version", "state", "params", "params_sha", "is_pro",
                    "provider", "price_key", "target_dir", "spent_cents", "progress", "attempts", "created_at",
                    "updated_at")


def _db_value(column: Any, value: Any, dialect: Any) -> Any:
    """``value`` as the driver expects it for ``column`` (what SQLAlchemy would send)."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


def _spec_values(spec: JobSpec) -> Dict[str, Any]:
    return {"params": spec.params, "params_sha": spec.params_sha, "is_pro": spec.is_pro, "target_dir": spec.target_dir,
            "provider": spec.provider, "price_key": spec.price_key}


def _diff_jobs(
    path: str,
    specs: Sequence[JobSpec],
    existing: Mapping[Tuple[int, int], Row],
    requeue_changed: bool,
    outcome: ScanOutcome,
) -> Tuple[List[JobSpec], List[JobChange]]:
    """The upsert rules for one storyboard: which specs are new and which rows change.

    Jobs in flight (``submitting``, ``submitted``, ``downloading``) are never changed: their
    generation is (or may be) paid for. A job leaves the queue (``removed``) only if it was never paid.
    """
    new: List[JobSpec] = []
    changes: List[JobChange] = []
    wanted = set()

    def change(row: Row, to_state: State, values: Dict[str, Any], detail: str, **extra: Any) -> None:
        changes.append(JobChange(row.id, State(row.state), to_state, values, detail, storyboard_id=row.storyboard_id,
                                 label=(path, row.segment_index, row.version), **extra))

    for spec in specs:
        key = (spec.segment_index, spec.version)
        wanted.add(key)
        row = existing.get(key)
        if row is None:
            new.append(spec)
            continue
        state = State(row.state)
        same_params = row.params_sha == spec.params_sha
        if state is State.REMOVED:
            change(row, State.PENDING, {**_RESET_REMOTE, **_spec_values(spec)}, "back in the storyboard",
                   counter="revived")
            outcome.revived += 1
            outcome.back_by_price[(spec.segment.provider, spec.segment.price_key, spec.is_pro)] += 1
        elif same_params:
            if row.target_dir != spec.target_dir and state in (State.PENDING, State.FAILED):
                change(row, state, {"target_dir": spec.target_dir}, "output folder changed", counter="updated")
                outcome.updated += 1
        elif state is State.PENDING:
            change(row, state, _spec_values(spec), "parameters changed before submission", counter="updated")
            outcome.updated += 1
        elif state is State.FAILED:
            # The user edited a failed segment: that is the fix they want tried, not a surprise cost.
            change(row, State.PENDING, {**_RESET_REMOTE, **_spec_values(spec)}, "parameters changed after failure",
                   counter="updated")
            outcome.updated += 1
        elif state is State.DONE and requeue_changed:
            change(row, State.PENDING, {**_RESET_REMOTE, **_spec_values(spec)},
                   "parameters changed; regenerating (--requeue-changed)",
                   supersede=(row.target_dir, row.segment_index, row.version), counter="requeued_changed")
            outcome.requeued_changed += 1
            outcome.back_by_price[(spec.segment.provider, spec.segment.price_key, spec.is_pro)] += 1
        else:
            outcome.changed.append(ChangedJob(path, spec.segment_index, spec.version, state))
    for key, row in existing.items():
        state = State(row.state)
        if key not in wanted and state in (State.PENDING, State.FAILED) and row.remote_task_id is None:
            change(row, State.REMOVED, {"lease_owner": None, "lease_expires_at": None}, "no longer in the storyboard",
                   counter="removed")
            outcome.removed += 1
    return new, changes



# --- team mode: keys and workers ----------------------------------------------------------------------

# A key's generations "in flight" at the API: from the write-ahead until the task is seen finished.
_AT_THE_API = (State.SUBMITTING.value, State.SUBMITTED.value)
_BILLED = tuple(s.value for s in (*IN_FLIGHT, State.DONE, State.FAILED))


def _upsert_into(dialect: str, table: Any):  # type: ignore[no-untyped-def]
    """``INSERT`` in the ledger's dialect, which can say ``ON CONFLICT``."""
    if dialect == "postgresql":  # loaded here: every SQLite command would pay for PostgreSQL's dialect
        from sqlalchemy.dialects.postgresql import insert as upsert_into
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert_into
    return upsert_into(table)


def _in_flight_by_key(conn: Connection, fps: Optional[Sequence[str]] = None, but: Optional[int] = None
                      ) -> Dict[str, int]:
    """Each key's generations at the API now (``fps``: only these keys; None: every key; ``but``:
    not counting that job, whose create is being chosen a key again)."""
    query = select(jobs.c.key_fp, func.count()).where(jobs.c.state.in_(_AT_THE_API))
    query = query.where(jobs.c.key_fp.in_(list(fps)) if fps is not None else jobs.c.key_fp.is_not(None))
    if but is not None:
        query = query.where(jobs.c.id != but)
    return dict(conn.execute(query.group_by(jobs.c.key_fp)).all())


def _held_by_key(conn: Connection, fps: Sequence[str], holds: Callable[[str], int], but: Optional[int] = None
                 ) -> Dict[str, int]:
    """What each key's creates awaiting their answer hold against its cap (``submitting``: no cost is
    booked yet, and the API may bill any moment): ``holds(price_key)`` each, as ``--max-spend``
    holds them; ``but``: not counting that job."""
    query = (select(jobs.c.key_fp, jobs.c.price_key, func.count())
             .where(jobs.c.state == State.SUBMITTING.value, jobs.c.key_fp.in_(list(fps))))
    if but is not None:
        query = query.where(jobs.c.id != but)
    held: Dict[str, int] = {}
    for fp, price_key, count in conn.execute(query.group_by(jobs.c.key_fp, jobs.c.price_key)):
        held[fp] = held.get(fp, 0) + count * holds(price_key)
    return held


def _spent_by_key(conn: Connection, fps: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """What each key's jobs cost (the booked cost of each one's latest attempt)."""
    query = select(jobs.c.key_fp, func.coalesce(func.sum(jobs.c.cost_cents), 0)).where(jobs.c.state.in_(_BILLED))
    query = query.where(jobs.c.key_fp.in_(list(fps)) if fps is not None else jobs.c.key_fp.is_not(None))
    return {fp: int(spent) for fp, spent in conn.execute(query.group_by(jobs.c.key_fp)).all()}


def _choose_key(conn: Connection, choice: KeyChoice, job_id: Optional[int] = None) -> str:
    """The key with the most room for job ``job_id``'s create among ``choice``'s, counted in the
    ledger under a lock on the keys' rows (PostgreSQL: ``FOR UPDATE``; SQLite: the write transaction
    is already the only one). A capped key's spending counts what its jobs cost and what its creates
    awaiting an answer hold."""
    fps = [fp for fp, _, _ in choice.candidates]
    rows = conn.execute(select(api_keys.c.fingerprint, api_keys.c.out_reason).where(api_keys.c.fingerprint.in_(fps))
                        .order_by(api_keys.c.fingerprint).with_for_update()).all()
    out = {fp for fp, reason in rows if reason}
    busy = _in_flight_by_key(conn, fps, but=job_id)
    capped = [fp for fp, _, cap in choice.candidates if cap is not None]
    spent: Dict[str, int] = {}
    if capped:
        spent = _spent_by_key(conn, capped)
        held = _held_by_key(conn, capped, choice.holds or (lambda price_key: choice.price), but=job_id)
        spent = {fp: spent.get(fp, 0) + held.get(fp, 0) for fp in capped}
    best, room = None, (-1.0, 0)
    for fp, limit, cap in choice.candidates:
        if fp in out or (cap is not None and spent.get(fp, 0) + choice.price > cap):
            continue
        free = float("inf") if limit is None else limit - busy.get(fp, 0)
        # the most room; between keys without a limit, the least busy (the first given on a tie)
        if free > 0 and (free, -busy.get(fp, 0)) > room:
            best, room = fp, (free, -busy.get(fp, 0))
    if best is None:
        raise NoFreeKey("every key is at its limit of generations at once, over its spend cap or out of rotation")
    return best


@dataclass(frozen=True)
class KeyRow:
    fingerprint: str
    provider: str
    shown: str
    concurrency: Optional[int]
    max_spend: Optional[int]
    out_reason: Optional[str]
    out_at: Optional[datetime]
    in_flight: int = 0
    spent: int = 0


@dataclass(frozen=True)
class WorkerRow:
    owner: str
    host: str
    pid: int
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    jobs_held: int
    lease_seconds: float
    stopped_at: Optional[datetime]
    dead: bool = False  # ran on this machine and its process is gone (killed): known without waiting

    def live(self, now: datetime) -> bool:
        """Running and heard from within a lease period (a dead worker's leases lapse by then).
        ``now``: the database's clock (``Store.db_now``), which heartbeats are written by."""
        return (self.stopped_at is None and not self.dead
                and (now - self.heartbeat_at).total_seconds() <= self.lease_seconds)

    def status(self, now: datetime) -> str:
        if self.stopped_at is not None:
            return "stopped"
        if self.dead:
            return "dead"
        return "live" if self.live(now) else "silent"


@dataclass(frozen=True)
class FromNow:
    """A time ``seconds`` after now by the database's clock, for a value ``Store.transition``
    writes: times other workers compare (a write-ahead's, a retry's) go by the one clock all share."""
    seconds: float = 0.0


DB_NOW = FromNow()


@dataclass(frozen=True)
class Claim:
    """What ``Store.claim`` leased: the jobs, and how many of them were taken over from each other
    worker (its lease had lapsed, or its process on this machine is gone)."""
    rows: List["JobRow"]
    taken_over: Dict[str, int]


class TeamQueries:
    """The keys every machine goes by and the workers that run (mixed into ``Store``)."""

    engine: Engine

    def register_keys(self, keys: Iterable[Tuple[str, str, str, Optional[int], Optional[int]]]) -> None:
        """Record this machine's keys ((fingerprint, provider, shown, limit, cap) each): a key given
        again is back in rotation (a new run after a top-up), with the limit and cap it was given."""
        now = utcnow()
        for fp, provider, shown, limit, cap in keys:
            values = {"provider": provider, "shown": shown, "concurrency": limit, "max_spend": cap,
                      "out_reason": None, "out_at": None, "seen_at": now}
            try:
                with write_tx(self.engine) as conn:
                    if not conn.execute(update(api_keys).where(api_keys.c.fingerprint == fp).values(**values)).rowcount:
                        conn.execute(insert(api_keys).values(fingerprint=fp, **values))
            except sa_exc.IntegrityError:  # another machine starting with the same key inserted it first
                with write_tx(self.engine) as conn:
                    conn.execute(update(api_keys).where(api_keys.c.fingerprint == fp).values(**values))

    def retire_key(self, fingerprint: str, reason: str) -> bool:
        """Take a key out of rotation for every machine; True when this call did it (not another)."""
        with write_tx(self.engine) as conn:
            return bool(conn.execute(update(api_keys).where(api_keys.c.fingerprint == fingerprint)
                                     .where(api_keys.c.out_reason.is_(None))
                                     .values(out_reason=reason, out_at=utcnow())).rowcount)

    def retired_keys(self, fingerprints: Iterable[str]) -> Dict[str, str]:
        """Which of ``fingerprints`` are out of rotation, and why."""
        wanted = list(fingerprints)
        with read_tx(self.engine) as conn:
            return {fp: why for fp, why in conn.execute(
                select(api_keys.c.fingerprint, api_keys.c.out_reason).where(api_keys.c.fingerprint.in_(wanted))
                .where(api_keys.c.out_reason.is_not(None)))}

    def keys(self) -> List[KeyRow]:
        """Every key recorded, with its generations in flight now and what its jobs cost."""
        with read_tx(self.engine) as conn:
            busy, spent = _in_flight_by_key(conn), _spent_by_key(conn)
            rows = conn.execute(select(api_keys).order_by(api_keys.c.provider, api_keys.c.seen_at)).all()
        return [KeyRow(r.fingerprint, r.provider, r.shown, r.concurrency, r.max_spend, r.out_reason, r.out_at,
                       busy.get(r.fingerprint, 0), spent.get(r.fingerprint, 0)) for r in rows]

    def worker_started(self, owner: str, host: str, pid: int, concurrency: int, lease_seconds: float) -> None:
        with write_tx(self.engine) as conn:
            now = db_now(conn)
            values = {"host": host, "pid": pid, "concurrency": concurrency, "started_at": now, "heartbeat_at": now,
                      "jobs_held": 0, "lease_seconds": lease_seconds, "stopped_at": None}
            if not conn.execute(update(workers).where(workers.c.owner == owner).values(**values)).rowcount:
                conn.execute(insert(workers).values(owner=owner, **values))

    def heartbeat(self, owner: str, jobs_held: int) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(update(workers).where(workers.c.owner == owner)
                         .values(heartbeat_at=db_now(conn), jobs_held=jobs_held))

    def worker_stopped(self, owner: str) -> None:
        with write_tx(self.engine) as conn:
            now = db_now(conn)
            conn.execute(update(workers).where(workers.c.owner == owner)
                         .values(stopped_at=now, heartbeat_at=now, jobs_held=0))

    def db_now(self) -> datetime:
        """The database's clock now (naive UTC): what leases and heartbeats are measured by."""
        with read_tx(self.engine) as conn:
            return db_now(conn)

    def clock_offset(self) -> float:
        """Seconds this machine's clock is ahead of the database's (negative: behind): the database's
        reading against the middle of the round trip, from the quickest of three."""
        samples = []
        with read_tx(self.engine) as conn:
            for _ in range(3):
                sent = utcnow()
                theirs = db_now(conn)
                back = utcnow()
                samples.append((back - sent, (sent + (back - sent) / 2 - theirs).total_seconds()))
        return min(samples)[1]

    def workers(self, *, within: Optional[timedelta] = None) -> Tuple[datetime, List[WorkerRow]]:
        """The database's clock now, and the workers recorded (those heard from ``within`` of it),
        newest first, with the jobs each holds a lease on now. A worker of this machine whose process
        is gone is ``dead`` at once (its jobs are taken over at the next claim), not a lease later."""
        query = select(workers).order_by(workers.c.started_at.desc())
        with read_tx(self.engine) as conn:
            now = db_now(conn)
            if within is not None:
                query = query.where(workers.c.heartbeat_at >= now - within)
            held = dict(conn.execute(select(jobs.c.lease_owner, func.count()).where(jobs.c.lease_owner.is_not(None))
                                     .where(jobs.c.lease_expires_at >= now).group_by(jobs.c.lease_owner)).all())
            rows = conn.execute(query).all()
        found = []
        for r in rows:
            dead = r.stopped_at is None and owner_is_dead(r.owner)
            found.append(WorkerRow(r.owner, r.host, r.pid, r.concurrency, r.started_at, r.heartbeat_at,
                                   held.get(r.owner, 0) if r.stopped_at is None and not dead else 0,
                                   r.lease_seconds, r.stopped_at, dead))
        return now, found

    def held_elsewhere(self, owner: str, scope: "JobScope") -> Tuple[int, Optional[float]]:
        """Unfinished jobs in ``scope`` another worker holds a live lease on, and the seconds until
        the first of those leases ends (by the database's clock): a worker that finds nothing to
        claim waits for them (it takes over a dead worker's jobs when its leases lapse) rather than
        leaving them behind."""
        with read_tx(self.engine) as conn:
            now = db_now(conn)
            count, first = conn.execute(
                scope.apply(select(func.count(), func.min(jobs.c.lease_expires_at)).select_from(jobs)
                            .where(jobs.c.state.in_([s.value for s in CLAIMABLE]))
                            .where(jobs.c.lease_owner.is_not(None)).where(jobs.c.lease_owner != owner)
                            .where(jobs.c.lease_expires_at >= now))).one()
        return int(count), (first - now).total_seconds() if first is not None else None


class Store(TeamQueries):
    """The ledger's queries over one engine."""

    def __init__(self, engine: Engine, cwd: Optional[Path] = None) -> None:
        self.engine = engine
        self.cwd = cwd or Path.cwd()

    def describe(self) -> str:
        """The ledger for messages: the SQLite file, or the URL with its password hidden."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database:
            return url.database
        return url.render_as_string(hide_password=True)

    def resolve(self, ledger_path: str) -> Path:
        """A stored (possibly relative) path as a real path for this process."""
        path = Path(ledger_path)
        return path if path.is_absolute() else self.cwd / path

    # scan ----------------------------------------------------------------------------------

    def fingerprints(self, scope: str) -> Dict[str, str]:
        """Stored fingerprints of the present storyboards inside ``scope``."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(select(storyboards.c.path, storyboards.c.fingerprint).where(storyboards.c.present.is_(True)))
            return {r.path: r.fingerprint for r in rows if r.fingerprint and path_in_scope(r.path, scope)}

    def output_modes(self, scope: str) -> Dict[str, str]:
        """The remembered output mode of each present storyboard inside ``scope`` that has one."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(select(storyboards.c.path, storyboards.c.output_mode)
                                .where(storyboards.c.present.is_(True), storyboards.c.output_mode.is_not(None)))
            return {r.path: r.output_mode for r in rows if path_in_scope(r.path, scope)}

    def started_jobs(self, paths: Sequence[str]) -> Dict[str, int]:
        """For each storyboard path, how many of its jobs have a video or a generation paid for
        (in flight, done, or holding a task id): those jobs' folders can no longer move."""
        started = or_(jobs.c.state.in_([State.DONE.value, *(s.value for s in IN_FLIGHT)]),
                      jobs.c.remote_task_id.is_not(None))
        found: Dict[str, int] = {}
        with read_tx(self.engine) as conn:
            for chunk in _chunks(list(paths)):
                keys = {path_key(p): p for p in chunk}
                query = (select(storyboards.c.path_key, func.count(jobs.c.id))
                         .join_from(jobs, storyboards, jobs.c.storyboard_id == storyboards.c.id)
                         .where(storyboards.c.path_key.in_(list(keys)), started)
                         .group_by(storyboards.c.path_key))
                found.update({keys[key]: count for key, count in conn.execute(query)})
        return found

    def apply_scan(self, batches: Iterable[Sequence[ParsedStoryboard]], discovered: Set[str], scope: str, *,
                   dry_run: bool = False, requeue_changed: bool = False) -> ScanOutcome:
        """Bring the ledger in step with the storyboards of one input folder, in one transaction.

        ``batches`` may still be being parsed in other processes: each batch is applied as it
        arrives. Invalid files are left exactly as the ledger knew them; files gone from ``scope``
        (not in ``discovered``) take their not-yet-done jobs out of the queue; done jobs whose video
        the user deleted go back to pending.
        """
        outcome = ScanOutcome(dry_run=dry_run)
        now = utcnow()
        tx = read_tx if dry_run else write_tx
        with tx(self.engine) as conn:
            known = {r.path: r for r in conn.execute(select(storyboards))}
            changed_jobs: Set[int] = set()
            for batch in batches:
                changed_jobs.update(self._apply_batch(conn, batch, known, now, outcome, dry_run, requeue_changed))
            missing = [r for path, r in known.items() if r.present and path not in discovered and path_in_scope(path, scope)]
            outcome.storyboards_missing = [r.path for r in missing]
            existing = self._jobs_by_board(conn, [r.id for r in missing])
            changes: List[JobChange] = []
            for row in missing:
                changes.extend(_diff_jobs(row.path, [], existing.get(row.id, {}), requeue_changed, outcome)[1])
            changed_jobs.update(c.job_id for c in changes)
            changes.extend(self._deleted_videos(conn, scope, changed_jobs, {r.id for r in missing}, outcome))
            if dry_run:
                return outcome
            if missing:
                conn.execute(update(storyboards).where(storyboards.c.id.in_([r.id for r in missing]))
                             .values(present=False, scanned_at=now))
            self._skip_moved(self._apply_changes(conn, changes, now, worker=None), outcome)
        return outcome

    @staticmethod
    def _skip_moved(moved: Sequence[JobChange], outcome: ScanOutcome) -> Set[int]:
        """Account for changes whose job moved on before the write; returns their storyboards."""
        for change in moved:
            if change.counter:
                setattr(outcome, change.counter, getattr(outcome, change.counter) - 1)
            if change.label:
                path, segment, version = change.label
                outcome.moved_meanwhile.append(ChangedJob(path, segment, version, change.from_state))
        return {c.storyboard_id for c in moved if c.storyboard_id is not None}

    def _apply_batch(self, conn: Connection, batch: Sequence[ParsedStoryboard], known: Mapping[str, Row],
                     now: datetime, outcome: ScanOutcome, dry_run: bool, requeue_changed: bool) -> Set[int]:
        """Upsert one batch of parsed files; returns the ids of the jobs it changed."""
        usable = [item for item in batch if item.valid]
        # A concurrent scan may have moved a fingerprint on; such a file waits for the next scan.
        outcome.storyboards_unchanged += sum(1 for item in usable if item.unchanged)
        fresh = [item for item in usable if not item.unchanged and item.path not in known]
        revisited = [(known[item.path], item) for item in usable if not item.unchanged and item.path in known]
        ids: Dict[str, int] = {}
        if not dry_run:
            # Another machine may be scanning the same files now: the storyboards it records first
            # come with their jobs (its one transaction), and one it is changing is read after it
            # is done (the row's lock) — this scan adds only what is still missing then.
            ids = self._insert_boards(conn, fresh, now)
            revisited, settled = self._lock_boards(conn, revisited)
            outcome.storyboards_unchanged += len(fresh) - len(ids) + settled
            fresh = [item for item in fresh if item.path in ids]
        outcome.storyboards_new += len(fresh)
        existing = self._jobs_by_board(conn, [row.id for row, _ in revisited])
        new_specs: List[Tuple[int, JobSpec]] = []
        changes: List[JobChange] = []
        board_updates = []
        for row, item in revisited:
            reported = len(outcome.changed)
            specs, diff = _diff_jobs(item.path, item.jobs, existing.get(row.id, {}), requeue_changed, outcome)
            # With changes left outstanding the file is not "in step": no fingerprint, so the next
            # scan reads it again and reports them again instead of forgetting them.
            values = {"project_name": item.project_name, "segment_count": item.segment_count, "present": True,
                      "output_mode": item.output_mode,
                      "fingerprint": None if len(outcome.changed) > reported else item.fingerprint}
            if specs or diff or any(getattr(row, k) != v for k, v in values.items()):
                board_updates.append({"b_id": row.id, "scanned_at": now, **values})
                outcome.storyboards_changed += 1
            else:
                outcome.storyboards_unchanged += 1
            new_specs.extend((row.id, spec) for spec in specs)
            changes.extend(diff)
        priced = outcome.added_by_price
        for item in fresh:
            for segment in item.segments:
                outcome.added += segment.versions
                outcome.added_pro += segment.versions if segment.is_pro else 0
                priced[(segment.provider, segment.price_key, segment.is_pro)] += segment.versions
        outcome.added += len(new_specs)
        outcome.added_pro += sum(1 for _, spec in new_specs if spec.is_pro)
        priced.update((spec.provider, spec.price_key, spec.is_pro) for _, spec in new_specs)
        if dry_run:
            return {c.job_id for c in changes}
        inserts = [(board_id, spec.segment, spec.version) for board_id, spec in new_specs]
        inserts.extend((ids[item.path], segment, version) for item in fresh for segment in item.segments
                       for version in range(1, segment.versions + 1))
        self._insert_jobs(conn, inserts, now)
        unsettled = self._skip_moved(self._apply_changes(conn, changes, now, worker=None), outcome)
        for values in board_updates:
            if values["b_id"] in unsettled:  # read again by the next scan, which reports them again
                values["fingerprint"] = None
        if board_updates:
            conn.execute(update(storyboards).where(storyboards.c.id == bindparam("b_id")), board_updates)
        return {c.job_id for c in changes}

    def _insert_boards(self, conn: Connection, fresh: Sequence[ParsedStoryboard], now: datetime) -> Dict[str, int]:
        """Record new storyboards; returns the id of each this scan recorded, by path. One that
        another scan recorded since this one read the ledger is left out (``INSERT … ON CONFLICT
        DO NOTHING`` waits for that scan to end, then leaves its row as it is)."""
        if not fresh:
            return {}
        rows = [{"path": item.path, "path_key": path_key(item.path), "project_name": item.project_name,
                 "fingerprint": item.fingerprint, "segment_count": item.segment_count, "present": True,
                 "first_seen_at": now, "scanned_at": now, "output_mode": item.output_mode} for item in fresh]
        stmt = _upsert_into(conn.dialect.name, storyboards).on_conflict_do_nothing(
            index_elements=[storyboards.c.path_key])
        if conn.dialect.insert_executemany_returning:
            # The ids come back with the insert: a look-up instead would be planned, inside this
            # one transaction, on statistics from when the table was empty (a full scan per batch
            # on PostgreSQL: 3 ms per batch at first, 240 ms at 400,000 jobs).
            return dict(conn.execute(stmt.returning(storyboards.c.path, storyboards.c.id), rows).all())
        # SQLite before 3.35, whose write lock (taken before the ledger was read) leaves no conflict
        conn.execute(stmt, rows)
        return self._board_ids(conn, [item.path for item in fresh])

    @staticmethod
    def _lock_boards(conn: Connection, revisited: Sequence[Tuple[Row, ParsedStoryboard]]
                     ) -> Tuple[List[Tuple[Row, ParsedStoryboard]], int]:
        """Lock the rows of the storyboards a scan changes (PostgreSQL; SQLite's write lock already
        keeps every other writer out) and read them again: another scan may have changed them since
        this one read the ledger. Returns what still needs this scan, and how many another scan
        already brought in step with the same file."""
        if not revisited:
            return [], 0
        current: Dict[int, Row] = {}
        for chunk in _chunks([row.id for row, _ in revisited]):
            current.update((r.id, r) for r in conn.execute(
                select(storyboards).where(storyboards.c.id.in_(list(chunk))).order_by(storyboards.c.id)
                .with_for_update()))
        # A present row with this file's fingerprint is in step with it: the scan that parsed the
        # file would have found it unchanged had it read the row now.
        left = [(current[row.id], item) for row, item in revisited
                if not (current[row.id].present and current[row.id].fingerprint == item.fingerprint)]
        return left, len(revisited) - len(left)

    def _board_ids(self, conn: Connection, paths: Sequence[str]) -> Dict[str, int]:
        ids: Dict[str, int] = {}
        for chunk in _chunks(list(paths)):
            keys = {path_key(p): p for p in chunk}
            ids.update({keys[r.path_key]: r.id for r in conn.execute(
                select(storyboards.c.id, storyboards.c.path_key).where(storyboards.c.path_key.in_(list(keys))))})
        return ids

    def _jobs_by_board(self, conn: Connection, board_ids: Sequence[int]) -> Dict[int, Dict[Tuple[int, int], Row]]:
        found: Dict[int, Dict[Tuple[int, int], Row]] = {}
        cols = (jobs.c.id, jobs.c.storyboard_id, jobs.c.segment_index, jobs.c.version, jobs.c.state,
                jobs.c.params_sha, jobs.c.target_dir, jobs.c.remote_task_id)
        for chunk in _chunks(list(board_ids)):
            for r in conn.execute(select(*cols).where(jobs.c.storyboard_id.in_(chunk))):
                found.setdefault(r.storyboard_id, {})[(r.segment_index, r.version)] = r
        return found

    def _deleted_videos(self, conn: Connection, scope: str, skip_jobs: Set[int], skip_boards: Set[int],
                        outcome: ScanOutcome) -> List[JobChange]:
        """Done jobs whose video file is gone: the user's way of asking for a regeneration."""
        changes = []
        rows = conn.execute(
            select(jobs.c.id, jobs.c.storyboard_id, jobs.c.video_path, jobs.c.target_dir, jobs.c.segment_index,
                   jobs.c.version, jobs.c.provider, jobs.c.price_key, jobs.c.is_pro, storyboards.c.path)
            .join_from(jobs, storyboards, jobs.c.storyboard_id == storyboards.c.id)
            .where(jobs.c.state == State.DONE.value)
        )
        for r in rows:
            if r.id in skip_jobs or r.storyboard_id in skip_boards or not path_in_scope(r.path, scope):
                continue
            if r.video_path:
                if self.resolve(r.video_path).is_file():
                    continue
            elif existing_videos(self.resolve(r.target_dir), r.segment_index, r.version):
                continue
            changes.append(JobChange(r.id, State.DONE, State.PENDING, dict(_RESET_REMOTE),
                                     f"video file deleted ({r.video_path}); regenerating", storyboard_id=r.storyboard_id,
                                     label=(r.path, r.segment_index, r.version), counter="regenerate"))
            outcome.regenerate += 1
            outcome.back_by_price[(r.provider, r.price_key, bool(r.is_pro))] += 1
        return changes

    def _insert_jobs(self, conn: Connection, specs: Sequence[Tuple[int, SegmentSpec, int]], now: datetime) -> None:
        """Insert new pending jobs in one driver-level executemany.

        A job's birth is its ``created_at``; the events table records what happens to it afterwards.

        A first scan inserts 100,000 rows; SQLAlchemy's per-row parameter processing costs more than
        the database itself there, so the statement is compiled once and fed ready-made values: the
        canonical JSON text computed during expansion and one pre-processed timestamp.
        """
        if not specs:
            return
        dialect = conn.dialect
        stamp = _db_value(jobs.c.created_at, now, dialect)
        compiled = insert(jobs).compile(dialect=dialect, column_keys=list(_NEW_JOB_COLUMNS))
        rows = [(board_id, segment.segment_index, version, State.PENDING.value, segment.params_json, segment.params_sha,
                 segment.is_pro, segment.provider, segment.price_key, segment.target_dir, 0, 0, 0, stamp, stamp)
                for board_id, segment, version in specs]
        if compiled.positional:
            # The columns are listed in table order, which is the order a positional statement binds.
            assert tuple(compiled.positiontup or ()) == _NEW_JOB_COLUMNS, compiled.positiontup
            conn.exec_driver_sql(compiled.string, rows)
        else:
            conn.exec_driver_sql(compiled.string, [dict(zip(_NEW_JOB_COLUMNS, row)) for row in rows])

    def _apply_changes(self, conn: Connection, changes: Sequence[JobChange], now: datetime,
                       worker: Optional[str]) -> List[JobChange]:
        """Apply each change as one guarded write (``WHERE id AND state = expected``) with its event.

        Returns the changes that found their job no longer in the expected state — a worker or
        another scan moved it after it was read — and so were not applied."""
        moved: List[JobChange] = []
        applied: List[JobChange] = []
        for change in changes:
            if change.from_state is not change.to_state:
                check_transition(change.from_state, change.to_state)
            values = {**change.values, "state": change.to_state, "updated_at": now}
            stmt = _guarded_update(tuple(sorted(values)))
            if conn.execute(stmt, {**values, "g_id": change.job_id, "g_old": change.from_state.value}).rowcount != 1:
                moved.append(change)
                continue
            if change.supersede:
                target, segment, version = change.supersede
                supersede(self.resolve(target), segment, version)
            applied.append(change)
        if applied:
            conn.execute(insert(events), [
                {"job_id": c.job_id, "at": now, "from_state": c.from_state, "to_state": c.to_state,
                 "detail": c.detail, "worker": worker}
                for c in applied
            ])
        return moved

    def _apply_changes_now(self, changes: Sequence[JobChange]) -> List[JobChange]:
        """``_apply_changes`` in a transaction of its own (for tests and one-off repairs)."""
        with write_tx(self.engine) as conn:
            return self._apply_changes(conn, changes, utcnow(), worker=None)

    # work ----------------------------------------------------------------------------------

    def spent_by_storyboard(self, paths: Sequence[str]) -> Dict[str, List[Tuple[str, int]]]:
        """What the jobs of each storyboard of ``paths`` cost so far, every run counted, per provider."""
        spent: Dict[str, List[Tuple[str, int]]] = {}
        wanted = list(paths)
        with read_tx(self.engine) as conn:
            for start in range(0, len(wanted), CHUNK):
                rows = conn.execute(
                    select(storyboards.c.path, jobs.c.provider, func.coalesce(func.sum(jobs.c.spent_cents), 0))
                    .join_from(jobs, storyboards, jobs.c.storyboard_id == storyboards.c.id)
                    .where(storyboards.c.path.in_(wanted[start:start + CHUNK]))
                    .group_by(storyboards.c.path, jobs.c.provider))
                for path, provider, cents in rows:
                    spent.setdefault(path, []).append((provider, int(cents)))
        return spent

    def unfinished_targets(self, scope: "JobScope") -> List[Tuple[int, str, int, str, State, Optional[str]]]:
        """Jobs in ``scope`` without their video that no worker holds: (id, storyboard path,
        segment, target folder, state, the storyboard's remembered output mode)."""
        states = [State.PENDING.value, State.SUBMITTING.value, State.SUBMITTED.value, State.FAILED.value]
        query = (select(jobs.c.id, storyboards.c.path, jobs.c.segment_index, jobs.c.target_dir, jobs.c.state,
                        storyboards.c.output_mode)
                 .join_from(jobs, storyboards, jobs.c.storyboard_id == storyboards.c.id)
                 .where(jobs.c.state.in_(states), jobs.c.lease_owner.is_(None), jobs.c.video_path.is_(None)))
        with read_tx(self.engine) as conn:
            return [(r[0], r[1], r[2], r[3], State(r[4]), r[5]) for r in conn.execute(scope.apply(query)).all()]

    def retarget(self, moves: Sequence[Tuple[int, State, str, str]]) -> int:
        """Send jobs ((id, state, old folder, new folder) each) to another output folder; a job that
        moved on meanwhile is left as it is. Returns how many moved."""
        changes = [JobChange(job_id, state, state, {"target_dir": new}, f"output folder changed: {old} -> {new}")
                   for job_id, state, old, new in moves]
        moved = 0
        for start in range(0, len(changes), CHUNK):
            batch = changes[start:start + CHUNK]
            moved += len(batch) - len(self._apply_changes_now(batch))
        return moved

    def storyboard_ids(self, pattern: str) -> List[int]:
        """Ids of the storyboards whose stored path (or file name) matches the glob ``pattern``."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(select(storyboards.c.id, storyboards.c.path)).all()
        return [r.id for r in rows if fnmatch(r.path, pattern) or fnmatch(PurePosixPath(r.path).name, pattern)]

    def release_dead_owners(self) -> int:
        """End at once the leases held by processes of this machine that no longer exist (a crash
        or a kill -9): their jobs can be resumed now rather than when the leases expire. The owner
        stays on them, so the claim that takes them says whose they were."""
        with read_tx(self.engine) as conn:
            owners = [o for (o,) in conn.execute(select(jobs.c.lease_owner).where(jobs.c.lease_owner.is_not(None))
                                                 .where(jobs.c.lease_expires_at >= db_now(conn)).distinct())]
        dead = [o for o in owners if owner_is_dead(o)]
        if not dead:
            return 0
        with write_tx(self.engine) as conn:
            now = db_now(conn)
            released = conn.execute(update(jobs).where(jobs.c.lease_owner.in_(dead))
                                    .where(jobs.c.lease_expires_at >= now)
                                    .values(lease_expires_at=now - timedelta(microseconds=1))).rowcount
        if released:
            log.info("ended the leases of %d job(s) held by %d dead worker(s): %s", released, len(dead),
                     ", ".join(dead))
        return released

    def _unleased(self, query, now: datetime, scope: "JobScope", exclude: Sequence[int]):  # type: ignore[no-untyped-def]
        """``query`` narrowed to jobs in ``scope`` a worker could take: in a claimable state and
        leased by nobody (or by a lease that expired), ``exclude`` left out."""
        # (the claim adds ``state = X`` per state; the IN here is then implied and costs nothing)
        query = (scope.apply(query)
                 .where(jobs.c.state.in_([s.value for s in CLAIMABLE]))
                 .where(or_(jobs.c.lease_owner.is_(None), jobs.c.lease_expires_at < now)))
        return query.where(jobs.c.id.not_in(list(exclude))) if exclude else query

    @staticmethod
    def _due(now: datetime):  # type: ignore[no-untyped-def]
        return or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now)

    def claim(self, owner: str, limit: int, lease_seconds: float, scope: "JobScope",
              exclude: Iterable[int] = ()) -> Claim:
        """Atomically lease up to ``limit`` claimable jobs to ``owner``: jobs already paid for
        (in flight) first, then pending ones in ledger order. Leases are timed by the database's
        clock: a worker whose own clock runs ahead cannot end another's lease early.

        One ordered walk of the ``(state, id)`` index per state, stopping at ``limit``: a claim
        costs the same in a ledger of a thousand jobs or of a million (no sort of every claimable row
        inside the write lock)."""
        if limit <= 0:
            return Claim([], {})
        excluded = list(exclude)
        found: Dict[int, Optional[str]] = {}
        with write_tx(self.engine) as conn:
            now = db_now(conn)
            for state in (*_IN_FLIGHT_ORDER, State.PENDING):
                query = (self._unleased(select(jobs.c.id, jobs.c.lease_owner), now, scope, excluded)
                         .where(self._due(now)).where(jobs.c.state == state.value).order_by(jobs.c.id)
                         .limit(limit - len(found)))
                found.update((r.id, r.lease_owner) for r in conn.execute(query.with_for_update(skip_locked=True)))
                if len(found) >= limit:
                    break
            if not found:
                return Claim([], {})
            ids = list(found)
            conn.execute(update(jobs).where(jobs.c.id.in_(ids))
                         .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds)))
            rows = conn.execute(job_select().where(jobs.c.id.in_(ids)).order_by(jobs.c.id)).all()
        # A lease another worker still had on the job (lapsed, or ended because its process is gone).
        taken = Counter(prev for prev in found.values() if prev is not None and prev != owner)
        return Claim([JobRow.from_row(r) for r in rows], dict(taken))

    def pending_outlook(self, scope: "JobScope", exclude: Iterable[int] = ()) -> Tuple[int, Optional[float]]:
        """How many jobs in ``scope`` could be claimed now, and in how many seconds the next delayed
        one is due (a retry waiting out its backoff), by the database's clock. Jobs leased by live
        workers count for neither."""
        excluded = list(exclude)
        with read_tx(self.engine) as conn:
            now = db_now(conn)
            ready = self._unleased(select(func.count()).select_from(jobs), now, scope, excluded).where(self._due(now))
            later = self._unleased(select(func.min(jobs.c.next_attempt_at)), now, scope, excluded) \
                .where(jobs.c.next_attempt_at > now)
            count, first = conn.execute(ready).scalar_one(), conn.execute(later).scalar_one()
        return count, (first - now).total_seconds() if first is not None else None

    def pending_by_price(self, scope: "JobScope") -> Dict[Tuple[str, str, bool], int]:
        """Pending jobs in ``scope`` (the ones a run would pay for), counted by (provider, price
        key, is_pro)."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(scope.apply(
                select(jobs.c.provider, jobs.c.price_key, jobs.c.is_pro, func.count())
                .where(jobs.c.state == State.PENDING.value)
                .group_by(jobs.c.provider, jobs.c.price_key, jobs.c.is_pro))).all()
        return {(provider, key, bool(pro)): n for provider, key, pro, n in rows}

    def apis_in_use(self, scope: "JobScope") -> Set[Tuple[str, Optional[str]]]:
        """The (provider, API base URL) pairs the unfinished jobs in ``scope`` need: where each
        paid-for job was sent, and (base None) each provider pending jobs go to."""
        with read_tx(self.engine) as conn:
            sent = conn.execute(scope.apply(
                select(jobs.c.provider, jobs.c.api_base).where(jobs.c.state.in_([s.value for s in IN_FLIGHT]))
                .distinct())).all()
            waiting = conn.execute(scope.apply(
                select(jobs.c.provider).where(jobs.c.state == State.PENDING.value).distinct())).all()
        return {(provider, base) for provider, base in sent} | {(provider, None) for (provider,) in waiting}

    def count_in_flight(self, scope: "JobScope") -> int:
        """Jobs in ``scope`` whose generation is paid for (or may be) and not yet downloaded; an
        unresolved one (a lost create no look-up could settle) is not counted: it has no task."""
        unresolved = and_(jobs.c.state == State.SUBMITTING.value, func.coalesce(jobs.c.error_kind, "") == "unresolved")
        with read_tx(self.engine) as conn:
            return conn.execute(scope.apply(select(func.count()).select_from(jobs)
                                            .where(jobs.c.state.in_([s.value for s in IN_FLIGHT]))
                                            .where(~unresolved))).scalar_one()

    def waiting_for_keys(self, scope: "JobScope", own: Sequence[str]) -> List[Tuple[int, str, str, Optional[str]]]:
        """Paid jobs in ``scope`` that wait for a key this machine does not use — not given here
        (``own``: the keys in rotation), or out of rotation — as (jobs, fingerprint, the key as
        shown, why it is out) per key; an unresolved lost create is not counted: it has no task."""
        unresolved = and_(jobs.c.state == State.SUBMITTING.value, func.coalesce(jobs.c.error_kind, "") == "unresolved")
        query = (select(func.count(), jobs.c.key_fp, api_keys.c.shown, api_keys.c.out_reason)
                 .select_from(jobs.outerjoin(api_keys, api_keys.c.fingerprint == jobs.c.key_fp))
                 .where(jobs.c.state.in_([s.value for s in IN_FLIGHT])).where(~unresolved)
                 .where(jobs.c.key_fp.is_not(None))
                 .where(or_(jobs.c.key_fp.not_in(list(own)), api_keys.c.out_reason.is_not(None)))
                 .group_by(jobs.c.key_fp, api_keys.c.shown, api_keys.c.out_reason).order_by(jobs.c.key_fp))
        with read_tx(self.engine) as conn:
            return [(int(n), fp, shown or "", why) for n, fp, shown, why in conn.execute(scope.apply(query)).all()]

    def renew(self, owner: str, ids: Iterable[int], lease_seconds: float) -> Set[int]:
        """Extend ``owner``'s leases on ``ids``; returns the ids it still holds."""
        ids = list(ids)
        held: Set[int] = set()
        if not ids:
            return held
        with write_tx(self.engine) as conn:
            expires = db_now(conn) + timedelta(seconds=lease_seconds)
            for chunk in _chunks(ids):
                conn.execute(update(jobs).where(jobs.c.id.in_(chunk)).where(jobs.c.lease_owner == owner)
                             .values(lease_expires_at=expires))
                held.update(i for (i,) in conn.execute(select(jobs.c.id).where(jobs.c.id.in_(chunk))
                                                       .where(jobs.c.lease_owner == owner)))
        return held

    def clear_to_send(self, job: JobRow, owner: str, lease_seconds: float) -> JobRow:
        """The last ledger word before a paid create goes out, after every wait: one guarded write
        that finds ``job`` still ``submitting`` under ``owner``'s unexpired lease and extends that
        lease. Its attempt starts now (``submitting_at``: the reference sent with the create and the
        start of the window a look-up reads). ``LeaseLost`` when another worker may have the job —
        then nothing may be sent: it may have found no task yet and sent the create itself."""
        with write_tx(self.engine) as conn:
            now = db_now(conn)  # the database's clock, as every lease is (a worker's own may be off)
            values = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "submitting_at": now}
            changed = conn.execute(update(jobs).where(jobs.c.id == job.id, jobs.c.state == State.SUBMITTING.value,
                                                      jobs.c.lease_owner == owner, jobs.c.lease_expires_at >= now)
                                   .values(**values)).rowcount
        if changed != 1:
            raise LeaseLost(f"job {job.id}: its lease lapsed before its create was sent; another worker may "
                            "have it")
        return dataclasses.replace(job, **values)

    def release(self, owner: str, ids: Optional[Iterable[int]] = None) -> int:
        """Give up ``owner``'s leases (all of them, or on ``ids``); states and task ids stay."""
        stmt = update(jobs).where(jobs.c.lease_owner == owner)
        if ids is not None:
            stmt = stmt.where(jobs.c.id.in_(list(ids)))
        with write_tx(self.engine) as conn:
            return conn.execute(stmt.values(lease_owner=None, lease_expires_at=None)).rowcount

    def transition(self, job_id: int, owner: str, old: State, new: State, detail: str, *,
                   current: Optional[JobRow] = None, key: Optional[KeyChoice] = None, **values: Any) -> JobRow:
        """Move one job ``old`` -> ``new`` (or update it in place when they are equal), only while
        ``owner`` holds its lease; records an event in the same transaction (for an update in place
        only when there is a ``detail`` to record). ``key``: a write-ahead that records the key the
        create goes out with, chosen in the same transaction from the keys' counts in the ledger (so
        no key's limit is passed by all machines together); ``NoFreeKey`` when none may take it.
        A value given as ``FromNow`` is written as that time by the database's clock.

        Returns the row as it now is: ``current`` with the changes applied when given (the caller's
        copy is known to be in step: only the lease holder writes), else read back."""
        if old is not new:
            check_transition(old, new)
        now = utcnow()
        with write_tx(self.engine) as conn:
            if any(isinstance(v, FromNow) for v in values.values()):
                clock = db_now(conn)
                values = {k: clock + timedelta(seconds=v.seconds) if isinstance(v, FromNow) else v
                          for k, v in values.items()}
            if key is not None:
                values["key_fp"] = key.free_choice or _choose_key(conn, key, job_id)
            changed = conn.execute(_transition_update(tuple(sorted(values))), {
                **values, "t_id": job_id, "t_old": old.value, "t_owner": owner, "state": new, "updated_at": now,
            }).rowcount
            if not changed:
                raise LeaseLost(f"job {job_id} is no longer {old.value} under this worker's lease")
            if old is not new or detail:
                conn.execute(_EVENT_INSERT, {"job_id": job_id, "at": now, "from_state": old, "to_state": new,
                                             "detail": detail, "worker": owner})
            if current is not None:
                return dataclasses.replace(current, state=new, updated_at=now, **values)
            row = conn.execute(_JOB_BY_ID, {"t_id": job_id}).one()
        return JobRow.from_row(row)

    def adopt_journaled(self, job_id: int, task_id: str, cost: Callable[[str, str], int]) -> str:
        """Give a job the task a worker journaled when the ledger could not take it. Applied only while
        the job still waits in ``submitting`` without a task; returns what needs saying ("" when the
        task is already the job's)."""
        now = utcnow()
        with write_tx(self.engine) as conn:
            row = conn.execute(select(jobs.c.state, jobs.c.remote_task_id, jobs.c.spent_cents, jobs.c.provider,
                                      jobs.c.price_key).where(jobs.c.id == job_id)).one_or_none()
            if row is None:
                return f"task {task_id} from the journal belongs to no job in this ledger"
            if row.remote_task_id == task_id:
                return ""
            owner = conn.execute(select(jobs.c.id).where(jobs.c.remote_task_id == task_id)).scalar_one_or_none()
            if owner is not None or row.state != State.SUBMITTING.value or row.remote_task_id is not None:
                return (f"task {task_id} from the journal was not adopted: the job is {row.state}"
                        + (f" with task {row.remote_task_id}" if row.remote_task_id else "")
                        + (f" and the task belongs to job {owner}" if owner is not None else ""))
            price = cost(row.provider, row.price_key)
            values = {"remote_task_id": task_id, "cost_cents": price, "spent_cents": row.spent_cents + price,
                      "submitted_at": now, "lease_owner": None, "lease_expires_at": None, "attempts": 0,
                      "error_kind": None, "error_message": None, "next_attempt_at": None,
                      "state": State.SUBMITTED, "updated_at": now}
            stmt = _guarded_update(tuple(sorted(values))).where(jobs.c.remote_task_id.is_(None))
            if conn.execute(stmt, {**values, "g_id": job_id, "g_old": State.SUBMITTING.value}).rowcount != 1:
                return f"task {task_id} from the journal was not adopted: the job moved on meanwhile"
            conn.execute(_EVENT_INSERT, {"job_id": job_id, "at": now, "from_state": State.SUBMITTING,
                                         "to_state": State.SUBMITTED, "worker": None,
                                         "detail": f"adopted task {task_id}, journaled while the ledger was unavailable"})
        return f"adopted task {task_id}, journaled while the ledger was unavailable"

    def linked_task_ids(self, task_ids: Iterable[str]) -> Set[str]:
        """Which of ``task_ids`` already belong to a job (a remote task is never adopted twice)."""
        wanted = list(task_ids)
        if not wanted:
            return set()
        with read_tx(self.engine) as conn:
            return {t for (t,) in conn.execute(select(jobs.c.remote_task_id).where(jobs.c.remote_task_id.in_(wanted)))}

    def job(self, job_id: int) -> Optional[JobRow]:
        with read_tx(self.engine) as conn:
            row = conn.execute(job_select().where(jobs.c.id == job_id)).one_or_none()
        return JobRow.from_row(row) if row else None

    # facts about the ledger ----------------------------------------------------------------

    def get_meta(self, key: str) -> Optional[Dict[str, Any]]:
        """The value kept under ``key`` in the ``meta`` table, or None."""
        with read_tx(self.engine) as conn:
            return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()

    def put_meta(self, key: str, value: Dict[str, Any]) -> None:
        """Keep ``value`` under ``key`` (replacing what was there)."""
        now = utcnow()
        # One statement, so two workers starting at once cannot both insert the key.
        stmt = _upsert_into(self.engine.dialect.name, meta).values(key=key, value=value, updated_at=now) \
            .on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value, "updated_at": now})
        with write_tx(self.engine) as conn:
            conn.execute(stmt)

    # failures ------------------------------------------------------------------------------

    def failed_jobs(self, *, storyboard_ids: Optional[Sequence[int]] = None, segment: Optional[int] = None,
                    error_contains: Optional[str] = None, job_ids: Optional[Sequence[int]] = None) -> List[JobRow]:
        """Failed jobs, optionally narrowed to storyboards, a segment index, an error text or ids."""
        query = job_select().where(jobs.c.state == State.FAILED.value).order_by(jobs.c.id)
        query = JobScope(storyboard_ids, job_ids).apply(query)
        if segment is not None:
            query = query.where(jobs.c.segment_index == segment)
        with read_tx(self.engine) as conn:
            rows = [JobRow.from_row(r) for r in conn.execute(query)]
        if error_contains:
            needle = error_contains.casefold()
            rows = [r for r in rows if needle in (r.error_message or "").casefold()]
        return rows

    def find_jobs(self, keys: Iterable[Tuple[str, int, Optional[int]]]) -> List[JobRow]:
        """Jobs by (storyboard path, segment index, version or None for every version), in id order.

        Looked up through the storyboards' path keys and the (storyboard, segment, version) index:
        never a scan of every job."""
        wanted: Dict[str, List[Tuple[int, Optional[int]]]] = {}
        for path, segment, version in keys:
            wanted.setdefault(path, []).append((segment, version))
        found: Dict[int, JobRow] = {}
        with read_tx(self.engine) as conn:
            boards = self._board_ids(conn, list(wanted))
            for path, board_id in boards.items():
                pairs = wanted[path]
                for chunk in _chunks(sorted({segment for segment, _ in pairs})):
                    query = job_select().where(jobs.c.storyboard_id == board_id, jobs.c.segment_index.in_(list(chunk)))
                    for row in conn.execute(query):
                        job = JobRow.from_row(row)
                        if any(job.segment_index == i and v in (None, job.version) for i, v in pairs):
                            found[job.id] = job
        return [found[i] for i in sorted(found)]

    def requeue(self, job_ids: Sequence[int], *, regenerate: bool = False, include_refused: bool = False
                ) -> "Requeued":
        """Failed jobs back to work, attempts reset. One whose remote task exists and did not fail
        only needs its download: it resumes from ``submitted`` (polled for a fresh URL) and nothing
        is paid again, unless ``regenerate``. A content refusal stays failed (the same prompt would
        be refused, and paid, again) unless ``include_refused``: it is named in ``refused``."""
        now = utcnow()
        changes: List[JobChange] = []
        refused: List[JobRow] = []
        with write_tx(self.engine) as conn:
            for chunk in _chunks(list(job_ids)):
                for row in conn.execute(job_select().where(jobs.c.id.in_(list(chunk)))
                                        .where(jobs.c.state == State.FAILED.value).order_by(jobs.c.id)):
                    if not include_refused and is_refusal(row.error_kind, row.error_message):
                        refused.append(JobRow.from_row(row))
                        continue
                    reset = {"attempts": 0, "next_attempt_at": None, "error_kind": None, "error_message": None,
                             "finished_at": None, "lease_owner": None, "lease_expires_at": None}
                    if _download_only(row, regenerate):
                        changes.append(JobChange(row.id, State.FAILED, State.SUBMITTED, {**reset, "video_url": None},
                                                 "requeued: download again (the generation is paid for)",
                                                 counter="download"))
                    else:
                        changes.append(JobChange(row.id, State.FAILED, State.PENDING, {**_RESET_REMOTE, **reset},
                                                 "requeued: generate again", counter="generate"))
            moved = {c.job_id for c in self._apply_changes(conn, changes, now, worker=None)}
        applied = [c for c in changes if c.job_id not in moved]
        downloads = sum(1 for c in applied if c.counter == "download")
        return Requeued(downloads, len(applied) - downloads, refused)

    def requeue_preview(self, job_ids: Sequence[int], *, regenerate: bool = False, include_refused: bool = False
                        ) -> Tuple[int, Dict[Tuple[str, str, bool], int], List[JobRow]]:
        """What ``requeue`` would make of ``job_ids``, changing nothing: how many failed jobs would
        only be downloaded again, the ones to generate again counted by (provider, price key,
        is_pro), as ``pending_by_price`` counts them, and the refusals it would leave failed."""
        downloads = 0
        generate: "Counter[Tuple[str, str, bool]]" = Counter()
        refused: List[JobRow] = []
        with read_tx(self.engine) as conn:
            for chunk in _chunks(list(job_ids)):
                for row in conn.execute(job_select().where(jobs.c.id.in_(list(chunk)))
                                        .where(jobs.c.state == State.FAILED.value).order_by(jobs.c.id)):
                    if not include_refused and is_refusal(row.error_kind, row.error_message):
                        refused.append(JobRow.from_row(row))
                    elif _download_only(row, regenerate):
                        downloads += 1
                    else:
                        generate[(row.provider, row.price_key, bool(row.is_pro))] += 1
        return downloads, dict(generate), refused

    def history(self, job_id: int) -> List[Row]:
        """Every recorded transition of one job, oldest first."""
        with read_tx(self.engine) as conn:
            return conn.execute(select(events).where(events.c.job_id == job_id).order_by(events.c.id)).all()

    # status --------------------------------------------------------------------------------

    def status(self, prices: "Prices") -> "StatusReport":
        """Counts per state, overall, per storyboard and per provider, and money spent / still to
        spend, each in its provider's currency (``prices``: every provider's price list).

        Grouped by storyboard id (an integer the jobs' unique index already orders by), then named:
        a million jobs in 50,000 storyboards cost about the counting query itself."""
        report = StatusReport()
        unpaid = (State.PENDING.value, State.SUBMITTING.value)
        price: Dict[Tuple[str, str], Money] = {}
        boards: Dict[int, BoardStatus] = {}
        with read_tx(self.engine) as conn:
            paths = dict(conn.execute(select(storyboards.c.id, storyboards.c.path)).all())
            rows = conn.execute(
                select(jobs.c.storyboard_id, jobs.c.state, jobs.c.provider, jobs.c.price_key, jobs.c.api_base,
                       func.count(jobs.c.id), func.coalesce(func.sum(jobs.c.spent_cents), 0))
                .group_by(jobs.c.storyboard_id, jobs.c.state, jobs.c.provider, jobs.c.price_key, jobs.c.api_base))
            for board_id, state, provider, price_key, api_base, count, spent in rows:
                board = boards.get(board_id)
                if board is None:
                    board = boards[board_id] = BoardStatus(paths[board_id])
                by_provider = report.providers.get(provider)
                if by_provider is None:
                    by_provider = report.providers[provider] = ProviderStatus(provider, prices.currency(provider))
                if api_base is not None and api_base not in by_provider.api_bases:
                    by_provider.api_bases.append(api_base)
                remaining = Money()
                if state in unpaid:
                    key = (provider, price_key)
                    if key not in price:
                        price[key] = prices.cost(provider, price_key)
                    remaining = Money.of(count * price[key].get(by_provider.currency), by_provider.currency)
                paid = Money.of(spent, by_provider.currency)
                for target in (board, by_provider):
                    target.counts[state] += count
                    target.total += count
                    target.spent += paid
                    target.remaining += remaining
            for provider, count in conn.execute(
                    select(jobs.c.provider, func.count()).where(jobs.c.state == State.SUBMITTING.value)
                    .where(jobs.c.error_kind == "unresolved").group_by(jobs.c.provider)):
                report.providers[provider].unresolved = count
                report.unresolved += count
        for board in sorted(boards.values(), key=lambda b: b.path):
            report.storyboards[board.path] = board
            for state, count in board.counts.items():
                report.counts[state] += count
            report.total += board.total
            report.spent += board.spent
            report.remaining += board.remaining
        return report


def _zero_counts() -> Dict[str, int]:
    return {s.value: 0 for s in ALL_STATES}


@dataclass
class BoardStatus:
    path: str
    counts: Dict[str, int] = field(default_factory=_zero_counts)
    total: int = 0
    spent: Money = field(default_factory=Money)
    remaining: Money = field(default_factory=Money)  # estimated, for the jobs not yet paid for


@dataclass
class ProviderStatus:
    """The jobs of one provider, and the API base URLs they were sent to."""

    provider: str
    currency: str
    counts: Dict[str, int] = field(default_factory=_zero_counts)
    total: int = 0
    spent: Money = field(default_factory=Money)
    remaining: Money = field(default_factory=Money)
    api_bases: List[str] = field(default_factory=list)
    unresolved: int = 0  # of its ``submitting`` jobs, the lost creates no look-up could settle


@dataclass
class StatusReport:
    counts: Dict[str, int] = field(default_factory=_zero_counts)
    total: int = 0
    spent: Money = field(default_factory=Money)
    remaining: Money = field(default_factory=Money)
    storyboards: Dict[str, BoardStatus] = field(default_factory=dict)
    providers: Dict[str, ProviderStatus] = field(default_factory=dict)
    unresolved: int = 0  # lost creates whose look-up could not settle them (``submitting``)

    def to_json(self) -> Dict[str, Any]:
        """Amounts in minor units (cents, fen): ``spent`` and ``estimated_remaining`` by currency;
        ``spent_cents`` and ``estimated_remaining_cents`` the amount itself while one currency is in
        play (None when several are)."""
        return {
            "counts": self.counts,
            "total": self.total,
            "money": _money_json(self.spent, self.remaining),
            "unresolved": self.unresolved,
            "storyboards": [
                {"path": b.path, "counts": b.counts, "total": b.total, **_money_json(b.spent, b.remaining)}
                for b in self.storyboards.values()
            ],
            "providers": [
                {"provider": p.provider, "api_bases": sorted(p.api_bases), "counts": p.counts, "total": p.total,
                 "currency": p.currency, **_money_json(p.spent, p.remaining)}
                for p in sorted(self.providers.values(), key=lambda p: p.provider)
            ],
        }


def _money_json(spent: Money, remaining: Money) -> Dict[str, Any]:
    both = spent + remaining
    single = len(both.currencies) <= 1
    return {"spent_cents": spent.single() if single else None,
            "estimated_remaining_cents": remaining.single() if single else None,
            "spent": spent.to_json(), "estimated_remaining": remaining.to_json()}


# --- picks, review, export and short references (issue 10) ------------------------------------
# One section, appended, so the queries of the review/pick/export commands stay in this module
# without touching the ones above. Functions take the ``Store`` they query.

from sqlalchemy import distinct  # noqa: E402 - kept with the section that uses them

from .errors import UsageError  # noqa: E402
from .models import picks  # noqa: E402


class PickRefused(UsageError):
    """The take cannot be chosen: it does not exist, or it has no finished video."""


@dataclass(frozen=True)
class Take:
    """One job as the review page and the export see it: the row, whether it is its segment's
    pick, and whether its storyboard file is still there."""

    job: JobRow
    picked: bool
    storyboard_present: bool
    project_name: Optional[str]


@dataclass(frozen=True)
class PickRow:
    """One stored pick with the take it points at."""

    storyboard_id: int
    storyboard_path: str
    segment_index: int
    job_id: int
    version: int
    state: State
    video_path: Optional[str]
    source: str
    picked_at: datetime

    @property
    def label(self) -> str:
        return f"{self.storyboard_path}#{self.segment_index}v{self.version}"


@dataclass(frozen=True)
class PickOutcome:
    """What recording (or clearing) one pick did: ``replaced`` is the version it displaced."""

    job: JobRow
    changed: bool
    replaced: Optional[int] = None


_TAKE_SELECT = (select(*JOB_COLUMNS, storyboards.c.present.label("storyboard_present"),
                       storyboards.c.project_name.label("storyboard_project"),
                       picks.c.job_id.label("pick_job_id"))
                .select_from(jobs.join(storyboards, jobs.c.storyboard_id == storyboards.c.id)
                             .outerjoin(picks, picks.c.job_id == jobs.c.id)))
_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRow))


def takes(store: Store, storyboard_ids: Optional[Sequence[int]] = None) -> List[Take]:
    """Every take that is still part of its storyboard (not ``removed``), in story order:
    storyboard path, segment index, version."""
    query = _TAKE_SELECT.where(jobs.c.state != State.REMOVED.value)
    if storyboard_ids is not None:
        query = query.where(jobs.c.storyboard_id.in_(list(storyboard_ids)))
    query = query.order_by(storyboards.c.path, jobs.c.segment_index, jobs.c.version)
    found: List[Take] = []
    with read_tx(store.engine) as conn:
        for row in conn.execute(query):
            data = row._mapping
            found.append(Take(_job_from_mapping(data), data["pick_job_id"] is not None,
                              bool(data["storyboard_present"]), data["storyboard_project"]))
    return found


def _job_from_mapping(data: Mapping[str, Any]) -> JobRow:
    values = {k: data[k] for k in _JOB_FIELDS}
    values["state"] = State(values["state"])
    return JobRow(**values)


def storyboards_by_suffix(store: Store, names: Sequence[str], limit: int = 50) -> List[Tuple[int, str]]:
    """(id, path) of the storyboards whose stored path is one of ``names`` or ends with
    ``/`` + one of them, in path order, at most ``limit``. An empty ``names`` matches every one.

    Exact paths go through the unique ``path_key``; suffixes compare the path's tail with ``=``
    (case-sensitive, no LIKE wildcards to escape) over the storyboards table only, never the jobs."""
    query = select(storyboards.c.id, storyboards.c.path)
    if names:
        conditions = []
        for name in names:
            tail = "/" + name
            conditions.append(storyboards.c.path_key == path_key(name))
            conditions.append(and_(func.length(storyboards.c.path) > len(tail),
                                   func.substr(storyboards.c.path, func.length(storyboards.c.path) - len(tail) + 1)
                                   == tail))
        query = query.where(or_(*conditions))
    with read_tx(store.engine) as conn:
        return [(r.id, r.path) for r in conn.execute(query.order_by(storyboards.c.path).limit(limit))]


def segment_jobs(store: Store, storyboard_id: int, segment_index: int, version: Optional[int] = None) -> List[JobRow]:
    """The jobs of one segment (one version, or all of them by version), through the unique
    (storyboard, segment, version) index."""
    query = job_select().where(jobs.c.storyboard_id == storyboard_id, jobs.c.segment_index == segment_index)
    if version is not None:
        query = query.where(jobs.c.version == version)
    with read_tx(store.engine) as conn:
        return [JobRow.from_row(r) for r in conn.execute(query.order_by(jobs.c.version))]


def job_by_key(store: Store, storyboard_path: str, segment_index: int, version: int) -> Optional[JobRow]:
    """One job by its stored storyboard path, segment and version (the path through ``path_key``)."""
    query = job_select().where(storyboards.c.path_key == path_key(storyboard_path),
                               jobs.c.segment_index == segment_index, jobs.c.version == version)
    with read_tx(store.engine) as conn:
        row = conn.execute(query).one_or_none()
    return JobRow.from_row(row) if row else None


def _pick_event(conn: Connection, job_id: int, state: Any, detail: str, now: datetime) -> None:
    conn.execute(_EVENT_INSERT, {"job_id": job_id, "at": now, "from_state": state, "to_state": state,
                                 "detail": detail, "worker": None})


def record_pick(store: Store, job_id: int, source: str) -> PickOutcome:
    """Make ``job_id`` the chosen take of its segment, replacing any earlier pick, in one write
    transaction with an event on each take concerned. Only a ``done`` take can be chosen."""
    now = utcnow()
    with write_tx(store.engine) as conn:
        job = conn.execute(job_select().where(jobs.c.id == job_id)).one_or_none()
        if job is None:
            raise PickRefused(f"no job {job_id} in this ledger")
        row = JobRow.from_row(job)
        if row.state is not State.DONE:
            raise PickRefused(f"cannot pick {row.label}: it is {row.state.value}; only a done take can be chosen")
        # PostgreSQL: one picker per storyboard at a time, so two first picks of one segment do not
        # both insert. SQLite's BEGIN IMMEDIATE already serialises writers.
        conn.execute(select(storyboards.c.id).where(storyboards.c.id == row.storyboard_id).with_for_update())
        current = conn.execute(
            select(picks.c.id, picks.c.job_id, jobs.c.version, jobs.c.state)
            .join_from(picks, jobs, picks.c.job_id == jobs.c.id)
            .where(picks.c.storyboard_id == row.storyboard_id, picks.c.segment_index == row.segment_index)
        ).one_or_none()
        if current is not None and current.job_id == row.id:
            return PickOutcome(row, changed=False)
        values = {"job_id": row.id, "source": source, "picked_at": now}
        if current is None:
            conn.execute(insert(picks).values(storyboard_id=row.storyboard_id, segment_index=row.segment_index,
                                              **values))
            _pick_event(conn, row.id, row.state, f"picked for segment {row.segment_index} ({source})", now)
            return PickOutcome(row, changed=True)
        conn.execute(update(picks).where(picks.c.id == current.id).values(**values))
        _pick_event(conn, row.id, row.state,
                    f"picked for segment {row.segment_index}, replacing v{current.version} ({source})", now)
        _pick_event(conn, current.job_id, current.state,
                    f"no longer the pick: v{row.version} was chosen instead ({source})", now)
        return PickOutcome(row, changed=True, replaced=current.version)


def clear_pick(store: Store, storyboard_id: int, segment_index: int, source: str) -> Optional[PickOutcome]:
    """Forget the pick of one segment (an event on the take it pointed at); None when there was none."""
    now = utcnow()
    with write_tx(store.engine) as conn:
        current = conn.execute(
            job_select().add_columns(picks.c.id.label("pick_id"))
            .join(picks, picks.c.job_id == jobs.c.id)
            .where(picks.c.storyboard_id == storyboard_id, picks.c.segment_index == segment_index)
        ).one_or_none()
        if current is None:
            return None
        conn.execute(picks.delete().where(picks.c.id == current.pick_id))
        row = _job_from_mapping(current._mapping)
        _pick_event(conn, row.id, row.state, f"pick cleared ({source})", now)
    return PickOutcome(row, changed=True)


def pick_rows(store: Store, storyboard_ids: Optional[Sequence[int]] = None) -> List[PickRow]:
    """Every stored pick, in story order."""
    query = (select(picks.c.storyboard_id, storyboards.c.path, picks.c.segment_index, picks.c.job_id,
                    jobs.c.version, jobs.c.state, jobs.c.video_path, picks.c.source, picks.c.picked_at)
             .select_from(picks.join(jobs, picks.c.job_id == jobs.c.id)
                          .join(storyboards, picks.c.storyboard_id == storyboards.c.id)))
    if storyboard_ids is not None:
        query = query.where(picks.c.storyboard_id.in_(list(storyboard_ids)))
    with read_tx(store.engine) as conn:
        rows = conn.execute(query.order_by(storyboards.c.path, picks.c.segment_index)).all()
    return [PickRow(r.storyboard_id, r.path, r.segment_index, r.job_id, r.version, State(r.state), r.video_path,
                    r.source, r.picked_at) for r in rows]


def segment_pick(store: Store, storyboard_id: int, segment_index: int) -> Optional[PickRow]:
    """The pick of one segment, if it has one."""
    query = (select(picks.c.storyboard_id, storyboards.c.path, picks.c.segment_index, picks.c.job_id,
                    jobs.c.version, jobs.c.state, jobs.c.video_path, picks.c.source, picks.c.picked_at)
             .select_from(picks.join(jobs, picks.c.job_id == jobs.c.id)
                          .join(storyboards, picks.c.storyboard_id == storyboards.c.id))
             .where(picks.c.storyboard_id == storyboard_id, picks.c.segment_index == segment_index))
    with read_tx(store.engine) as conn:
        r = conn.execute(query).one_or_none()
    return None if r is None else PickRow(r.storyboard_id, r.path, r.segment_index, r.job_id, r.version,
                                          State(r.state), r.video_path, r.source, r.picked_at)


def pick_counts(store: Store) -> Dict[str, Tuple[int, int]]:
    """Per storyboard path: (segments with a pick, segments that still have a take)."""
    segments = (select(jobs.c.storyboard_id, func.count(distinct(jobs.c.segment_index)).label("n"))
                .where(jobs.c.state != State.REMOVED.value).group_by(jobs.c.storyboard_id).subquery())
    chosen = select(picks.c.storyboard_id, func.count().label("n")).group_by(picks.c.storyboard_id).subquery()
    query = (select(storyboards.c.path, func.coalesce(chosen.c.n, 0), segments.c.n)
             .select_from(segments.join(storyboards, storyboards.c.id == segments.c.storyboard_id)
                          .outerjoin(chosen, chosen.c.storyboard_id == segments.c.storyboard_id)))
    with read_tx(store.engine) as conn:
        return {path: (int(picked), int(total)) for path, picked, total in conn.execute(query)}

