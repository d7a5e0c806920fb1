"""The ledger's tables: storyboards, jobs and the events that record every state transition.

Written for SQLite and PostgreSQL alike: portable column types, explicit constraint names (so
Alembic's batch mode can rebuild SQLite tables), and naive UTC timestamps everywhere.
"""
from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .states import State

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# TEST-ONLY: seconds added to this process's clock (``utcnow``), so a test can run one worker with
# a skewed clock beside others. Not a setting: nothing outside the test suite sets it.
_TEST_CLOCK_OFFSET = timedelta(seconds=float(os.environ.get("LEDGER_TEST_CLOCK_OFFSET") or 0))


def utcnow() -> datetime:
    """Naive UTC 'now' by this machine's clock: the one time representation stored in the ledger.
    Leases, claims, heartbeats and the reconcile grace go by the database's clock instead
    (``store.db_now``): machines' clocks differ."""
    return datetime.now(timezone.utc).replace(tzinfo=None) + _TEST_CLOCK_OFFSET


def iso_utc(value: Optional[datetime]) -> Optional[str]:
    """A stored (naive UTC) time as ISO 8601 with its offset, for files users read."""
    return value.replace(tzinfo=timezone.utc).isoformat() if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def state_type(name: str) -> Enum:
    """A portable enum column (VARCHAR + CHECK), named so each CHECK constraint is unique."""
    return Enum(
        State,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda states: [s.value for s in states],
        validate_strings=True,
        create_constraint=True,
    )


class Storyboard(Base):
    """One storyboard file the scans have seen."""

    __tablename__ = "storyboards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # POSIX path relative to the working directory when the file lies under it, else absolute:
    # the same project checked out elsewhere (another machine sharing a ledger) keeps its keys.
    # Any length: the uniqueness lives in ``path_key`` (an index entry has a size limit on PostgreSQL).
    path: Mapped[str] = mapped_column(Text)
    path_key: Mapped[str] = mapped_column(String(64), unique=True)
    project_name: Mapped[Optional[str]] = mapped_column(String(512))
    # sha256 of the file bytes plus every setting that shapes its jobs: equal means nothing to do.
    fingerprint: Mapped[Optional[str]] = mapped_column(String(64))
    segment_count: Mapped[int] = mapped_column(Integer, default=0)
    # "centralized" or "in-place": where this storyboard's videos go, fixed by the scan that first
    # recorded it, so later runs with other settings never split its takes between two folders.
    # NULL: not known yet (nothing recorded for it); the next scan's settings decide and are kept.
    output_mode: Mapped[Optional[str]] = mapped_column(String(16))
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    scanned_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    """One (storyboard, segment, version): one paid generation and one video file."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("storyboard_id", "segment_index", "version"),
        Index("ix_jobs_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_jobs_lease_owner", "lease_owner"),
        # A claim walks one state's jobs in id order and stops at its batch size.
        Index("ix_jobs_state_id", "state", "id"),
        # Team mode: a key's generations in flight are counted at every write-ahead.
        Index("ix_jobs_key_fp_state", "key_fp", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The unique (storyboard_id, segment_index, version) index also serves lookups by storyboard.
    storyboard_id: Mapped[int] = mapped_column(ForeignKey("storyboards.id"))
    segment_index: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[State] = mapped_column(state_type("job_state"), default=State.PENDING)
    # The fully resolved request parameters of its provider (what is paid for).
    params: Mapped[Dict[str, Any]] = mapped_column(JSON)
    params_sha: Mapped[str] = mapped_column(String(64))
    is_pro: Mapped[bool] = mapped_column(Boolean, default=False)
    # The video API the job goes to (``ledger/providers``), and the base URL it was sent to, recorded
    # with the write-ahead: resume, reconcile, poll and download go there even if the settings changed.
    provider: Mapped[str] = mapped_column(String(32), default="sora_hk", server_default="sora_hk")
    api_base: Mapped[Optional[str]] = mapped_column(Text)
    # The job's entry in its provider's price list ("pro"/"normal"; "model@size:seconds").
    price_key: Mapped[str] = mapped_column(String(64), default="normal", server_default="normal")
    # The API key the current attempt was created with, by its fingerprint (``ledger.keys``; never
    # the key): polls and the download use that key. Recorded with the write-ahead.
    key_fp: Mapped[Optional[str]] = mapped_column(String(16))
    target_dir: Mapped[str] = mapped_column(Text)
    # Whatever length the API chose; ids are checked before they are stored or used in a file name.
    remote_task_id: Mapped[Optional[str]] = mapped_column(Text, unique=True)
    cost_cents: Mapped[Optional[int]] = mapped_column(Integer)
    # Everything ever paid for this job, across regenerations the user asked for.
    spent_cents: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    video_url: Mapped[Optional[str]] = mapped_column(Text)
    video_path: Mapped[Optional[str]] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(255))
    lease_expires_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    error_kind: Mapped[Optional[str]] = mapped_column(String(64))
    error_message: Mapped[Optional[str]] = mapped_column(Text)
    submitting_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    submitted_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Event(Base):
    """One state transition of one job, with its time and a human-readable detail.

    A job's creation is not an event: its ``created_at`` records it (a first scan creates 100,000
    jobs, and a second row per job would cost a sixth of that scan's time)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    from_state: Mapped[State] = mapped_column(state_type("event_from_state"))
    to_state: Mapped[State] = mapped_column(state_type("event_to_state"))
    detail: Mapped[Optional[str]] = mapped_column(Text)
    worker: Mapped[Optional[str]] = mapped_column(String(255))


class Meta(Base):
    """Small facts about the ledger as a whole, by key: e.g. the last ``GET /pricing`` answer, so
    ``scan``, ``status`` and dry runs quote one price and say where it came from."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def path_key(path: str) -> str:
    """The unique key of a stored storyboard path (sha256 hex of its UTF-8 bytes)."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


storyboards = Storyboard.__table__
jobs = Job.__table__
events = Event.__table__
meta = Meta.__table__


class Pick(Base):
    """The take a person chose for one segment of one storyboard: at most one per segment.

    ``(storyboard_id, segment_index)`` is what makes it one per segment; ``job_id`` is unique as
    well, because a take belongs to exactly one segment. Choosing again replaces the row; every
    change is also an ``events`` row of the jobs concerned."""

    __tablename__ = "picks"
    __table_args__ = (
        UniqueConstraint("storyboard_id", "segment_index"),
        UniqueConstraint("job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    storyboard_id: Mapped[int] = mapped_column(ForeignKey("storyboards.id"))
    segment_index: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    # Where the choice was made: "cli", "review page" or "picks.json".
    source: Mapped[str] = mapped_column(String(32))
    picked_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


picks = Pick.__table__


class ApiKeyRow(Base):
    """An API key some worker was given (team mode), by its fingerprint: its limit of generations in
    flight at once, its spend cap, and whether it is out of rotation (refused: 401, no balance) —
    what every machine sharing the ledger goes by."""

    __tablename__ = "api_keys"

    fingerprint: Mapped[str] = mapped_column(String(16), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    shown: Mapped[str] = mapped_column(String(64))  # masked: ``sora-…abcd``
    concurrency: Mapped[Optional[int]] = mapped_column(Integer)
    max_spend: Mapped[Optional[int]] = mapped_column(Integer)  # minor units of the provider's currency
    out_reason: Mapped[Optional[str]] = mapped_column(Text)
    out_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Worker(Base):
    """One ``ledger work`` process on some machine: when it started, its last heartbeat (every lease
    renewal), the jobs it held then, and when it stopped (NULL: running, or died)."""

    __tablename__ = "workers"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid:start, as leases name it
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    jobs_held: Mapped[int] = mapped_column(Integer, default=0)
    lease_seconds: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[Optional[datetime]] = mapped_column(DateTime)


api_keys = ApiKeyRow.__table__
workers = Worker.__table__
