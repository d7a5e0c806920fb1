"""What each error means for the job, step by step: the table of decide.py, and the budget's lock."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import exc as sa_exc

from ledger.errors import (
    ApiError,
    AuthError,
    BadParameters,
    DownloadError,
    DownloadTooLarge,
    InsufficientBalance,
    Interrupted,
    InvalidTaskId,
    OutputError,
    RateLimited,
    RemoteTaskFailed,
    TaskNotFound,
    TransientError,
    UrlExpired,
)
from ledger.store import LeaseLost
from ledger.work.budget import Budget, Hold
from ledger.work.decide import Verdict, decide
from ledger.work.types import Action

LOCKED = sa_exc.OperationalError("UPDATE jobs", {}, Exception("database is locked"))
DUPLICATE = sa_exc.IntegrityError("UPDATE jobs", {}, Exception("UNIQUE constraint failed: jobs.remote_task_id"))
LOST = TransientError("POST /create: timed out", maybe_created=True)
REFUSED = TransientError("POST /create: connection refused", unreachable=True)

# (step, the POST went out, exception, verdict)
TABLE = [
    # before the POST: nothing can have been paid
    (Action.SUBMIT, False, LOCKED, Verdict.LEDGER_DOWN),
    (Action.SUBMIT, False, LeaseLost("moved"), Verdict.LET_GO),
    (Action.SUBMIT, False, OSError("disk"), Verdict.RETRY),
    # after the POST: only a proof of "not created" leads back to pending
    (Action.SUBMIT, True, AuthError("401"), Verdict.STOP_AUTH),
    (Action.SUBMIT, True, InsufficientBalance("1012"), Verdict.STOP_BALANCE),
    (Action.SUBMIT, True, RateLimited("429"), Verdict.RATE_LIMITED),
    (Action.SUBMIT, True, BadParameters("1001"), Verdict.FAIL),
    (Action.SUBMIT, True, ApiError("code 1500"), Verdict.NOT_CREATED),
    (Action.SUBMIT, True, TransientError("502 before"), Verdict.NOT_CREATED),
    (Action.SUBMIT, True, REFUSED, Verdict.OUT_OF_REACH),
    (Action.SUBMIT, True, LOST, Verdict.RECONCILE),
    (Action.SUBMIT, True, InvalidTaskId("NUL"), Verdict.FAIL),
    (Action.SUBMIT, True, ValueError("a bug"), Verdict.RECONCILE),
    (Action.SUBMIT, True, DUPLICATE, Verdict.RECONCILE),
    # the id is known and paid: record it, never send again
    (Action.RECORD, True, LOCKED, Verdict.LEDGER_DOWN),
    (Action.RECORD, True, DUPLICATE, Verdict.RECONCILE),
    (Action.RECORD, True, ValueError("a bug"), Verdict.WAIT),
    (Action.RECORD, False, LeaseLost("taken over"), Verdict.LET_GO),
    # the look-up
    (Action.RECONCILE, False, TransientError("list failed"), Verdict.UNRESOLVED),
    (Action.RECONCILE, False, RateLimited("429"), Verdict.WAIT),
    (Action.RECONCILE, False, DUPLICATE, Verdict.WAIT),
    (Action.RECONCILE, False, ValueError("a bug"), Verdict.UNRESOLVED),
    # polling and downloading a paid task
    (Action.POLL, False, TransientError("502"), Verdict.WAIT),
    (Action.POLL, False, RateLimited("429"), Verdict.WAIT),
    (Action.POLL, False, TaskNotFound("404"), Verdict.FAIL),
    (Action.POLL, False, RemoteTaskFailed("内容审核未通过"), Verdict.FAIL),
    (Action.POLL, False, KeyError("a bug"), Verdict.RETRY),
    (Action.DOWNLOAD, False, UrlExpired("403"), Verdict.FRESH_URL),
    (Action.DOWNLOAD, False, DownloadError("truncated"), Verdict.RETRY),
    (Action.DOWNLOAD, False, DownloadTooLarge("5 GiB"), Verdict.FAIL),
    (Action.DOWNLOAD, False, OutputError("ENOSPC", kind="disk_full"), Verdict.FAIL),
    (Action.DOWNLOAD, False, Interrupted("Ctrl+C"), Verdict.RELEASE),
    (Action.DOWNLOAD, False, LOCKED, Verdict.LEDGER_DOWN),
    (Action.DOWNLOAD, False, AuthError("401"), Verdict.STOP_AUTH),
]


@pytest.mark.parametrize("step,sent,exc,verdict", TABLE,
                         ids=[f"{s.value}-{'sent' if p else 'unsent'}-{type(e).__name__}" for s, p, e, _ in TABLE])
def test_each_error_of_each_step_has_one_verdict(step, sent, exc, verdict):
    assert decide(step, exc, sent=sent) is verdict


def test_nothing_after_a_sent_post_ever_leads_back_to_submit():
    """Whatever goes wrong once the POST is out, the verdict is never a plain retry of the submit."""
    errors = [LOCKED, DUPLICATE, LOST, ValueError(), OSError(), KeyError(), RuntimeError(), TransientError("x"),
              ApiError("x"), InvalidTaskId("x"), LeaseLost("x")]
    for exc in errors:
        assert decide(Action.SUBMIT, exc, sent=True) is not Verdict.RETRY, exc


def test_the_budget_turns_a_reservation_into_spend_under_one_lock():
    """30-cent creates from 16 threads against a 300-cent cap, each settling slowly: the cap holds at
    every moment, and exactly 10 creates fit."""
    budget = Budget(300)
    seen = []
    created = []

    def worker() -> None:
        while budget.reserve(30) is Hold.GO:
            time.sleep(0.002)  # the create is in flight
            created.append(1)
            budget.spend(30, 30)
            seen.append(budget.spent + budget.reserved)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.spent == 300 and budget.reserved == 0 and len(created) == 10
    assert max(seen) <= 300
