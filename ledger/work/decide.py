"""The one place that says what an error in a step means for the job: (step, exception) → verdict.

Read it top to bottom like httpie's single except ladder. The steps only raise; ``steps.settle``
carries the verdict out in the ledger.
"""
from __future__ import annotations

import enum

from sqlalchemy import exc as sa_exc

from ..errors import (
    ApiError,
    AuthError,
    ContentExpired,
    InsufficientBalance,
    Interrupted,
    InvalidTaskId,
    RateLimited,
    TaskNotFound,
    TransientError,
    UrlExpired,
)
from ..store import LeaseLost
from .types import Action


class Verdict(enum.Enum):
    """What happens to a job after its step raised."""

    LET_GO = "let_go"  # someone else moved the job first: drop it from this run
    LEDGER_DOWN = "ledger_down"  # the database is unavailable: the same step again later, nothing counted
    STOP_AUTH = "stop_auth"  # the key was refused: stop the run (a refused create was not made)
    STOP_BALANCE = "stop_balance"  # 1012: stop submitting (that create was not made)
    RELEASE = "release"  # the run is being cut short: give the job back as it is
    RATE_LIMITED = "rate_limited"  # a 429 on the create: not made; pending again after Retry-After
    NOT_CREATED = "not_created"  # the create provably did not happen: pending, one attempt counted
    OUT_OF_REACH = "out_of_reach"  # no connection to the API at all: nothing counted, nothing sent
    RECONCILE = "reconcile"  # the create may have happened: look it up, never send it again
    FAIL = "fail"  # terminal: the job ends failed with the error's kind and message
    RETRY = "retry"  # one attempt counted; the step runs again after the retry policy's delay
    WAIT = "wait"  # the same step again soon, nothing counted (a poll that failed, a look-up)
    UNRESOLVED = "unresolved"  # a look-up that could not finish: tried again, then left for a later run
    FRESH_URL = "fresh_url"  # the video URL expired: poll the task for a new one


def is_ledger_trouble(exc: BaseException) -> bool:
    """The database could not be used (locked past its timeout, gone, read-only): not the job's fault."""
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated)


def decide(step: Action, exc: BaseException, *, sent: bool) -> Verdict:
    """The verdict for ``exc`` raised by ``step``; ``sent``: this run's paid POST went out."""
    if isinstance(exc, LeaseLost):
        return Verdict.LET_GO
    if is_ledger_trouble(exc):
        return Verdict.LEDGER_DOWN
    if isinstance(exc, Interrupted):
        return Verdict.RELEASE
    if isinstance(exc, AuthError):
        return Verdict.STOP_AUTH
    if step is Action.SUBMIT and sent:
        # After the POST went out, only an answer that proves nothing was made leads back to
        # pending; everything else — a lost answer, a bug, a database error — means "look it up".
        if isinstance(exc, InsufficientBalance):
            return Verdict.STOP_BALANCE
        if isinstance(exc, RateLimited):
            return Verdict.RATE_LIMITED
        if isinstance(exc, TransientError):
            if exc.maybe_created:
                return Verdict.RECONCILE
            return Verdict.OUT_OF_REACH if exc.unreachable else Verdict.NOT_CREATED
        if isinstance(exc, InvalidTaskId):
            return Verdict.FAIL  # made and billed, but unusable: it ends, with its cost booked
        if isinstance(exc, ApiError):
            return Verdict.FAIL if exc.terminal else Verdict.NOT_CREATED
        return Verdict.RECONCILE
    if step is Action.RECORD:
        # The task exists and is paid for; its id is only ever recorded. An id another job took a
        # moment ago (a twin of the same prompt adopted it) sends this one looking for its own.
        return Verdict.RECONCILE if isinstance(exc, sa_exc.IntegrityError) else Verdict.WAIT
    if step is Action.RECONCILE:
        return Verdict.WAIT if isinstance(exc, (sa_exc.IntegrityError, RateLimited)) else Verdict.UNRESOLVED
    if step is Action.POLL:
        if isinstance(exc, (TaskNotFound, ContentExpired)):  # gone on the service: nothing left to poll
            return Verdict.FAIL
        if isinstance(exc, TransientError):
            return Verdict.WAIT
    if step is Action.DOWNLOAD and isinstance(exc, UrlExpired):
        return Verdict.FRESH_URL
    if isinstance(exc, ApiError) and exc.terminal:
        return Verdict.FAIL
    if isinstance(exc, TransientError) and exc.unreachable:
        return Verdict.OUT_OF_REACH
    # Transient trouble, and anything unforeseen: one attempt, bounded by MAX_ATTEMPTS.
    return Verdict.RETRY
