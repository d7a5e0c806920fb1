"""Team mode under a frozen worker and slow creates: a `ledger work` process stopped (SIGSTOP) past
its lease with a create written ahead or on its way, other workers taking its jobs over, the frozen
one resumed; and creates whose answers the API holds while a key's spend cap is near. No create may
go out twice, and no key may run past its limit or its spend cap.

Each freeze is placed on purpose — a write-ahead waiting out a 429's Retry-After, or a create the
API holds — and made only at a moment the worker holds no ledger transaction: a worker frozen
inside one would hold the others up, which is another matter."""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import closing

import pytest

from tests.helpers import query, segments, spawn
from tests.integration.test_team import KEY_A, KEY_B, pg_query, team_env, wait_or_tell

LEDGERS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Ledger:
    """The test's view of the workers' ledger: SQLite in the workspace, or a PostgreSQL database."""

    def __init__(self, ws, url=None) -> None:
        self.ws, self.url = ws, url

    def env(self) -> dict:
        return {"LEDGER_DATABASE_URL": self.url} if self.url else {}

    def rows(self, sql: str):
        return pg_query(self.url, sql) if self.url else query(self.ws.root, sql)

    def idle(self) -> bool:
        """Whether no other process is inside a ledger transaction now (so none holds a lock)."""
        if self.url:
            busy = pg_query(self.url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND pid <> pg_backend_pid() AND state <> 'idle'")
            return busy[0][0] == 0
        with closing(sqlite3.connect(self.ws.root / "ledger.db", timeout=0, isolation_level=None)) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            conn.execute("ROLLBACK")
            return True


@pytest.fixture
def ledger(request, ws):
    return Ledger(ws, request.getfixturevalue("pg_url") if request.param == "postgres" else None)


def freeze(proc, ledger: Ledger) -> None:
    """SIGSTOP ``proc`` at a moment it holds no ledger transaction (stopped again a moment later
    otherwise)."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        if ledger.idle():
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the worker never left the ledger alone long enough to be frozen")


def submitting_under(ledger: Ledger, count: int = 1) -> bool:
    return ledger.rows("SELECT count(*) FROM jobs WHERE state = 'submitting' AND lease_owner IS NOT NULL")[0][0] \
        >= count


@pytest.mark.parametrize("ledger", LEDGERS, indirect=True)
def test_a_worker_frozen_while_waiting_out_a_429_sends_nothing_after_a_takeover(ws, sim, work_env, ledger):
    """Worker A (one slot) meets a 429 with Retry-After on its first create; its next job's
    write-ahead is committed and waits out the pause. A is frozen there past its lease. Worker B
    takes the job over, finds no task (none was sent), sends it and finishes everything. A, resumed
    after its pause ended, must not send that create: its lease is gone. One create per job."""
    sim.inject("create", "rate_limit", retry_after=8)
    env = {**work_env, **ledger.env(), "MAX_CONCURRENT_TASKS": "1", "LEASE_SECONDS": "2", "CONNECT_TIMEOUT": "2",
           "READ_TIMEOUT": "3"}
    ws.storyboard("storyboard_f.json", segments("frozen shot 1", "frozen shot 2"))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["faults_injected"].get("rate_limit") == 1 and submitting_under(ledger),
                 [a], "A's second job waiting out the 429 with its write-ahead committed")
    freeze(a, ledger)
    try:
        assert sim.stats()["creates_received"] == 1, "A was frozen only after its pause: nothing tested"
        b = spawn(ws.root, env, "work", "--no-progress")
        b_out, b_err = b.communicate(timeout=60)
        assert b.returncode == 0, b_err[-2000:]
        assert ledger.rows("SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 2)]
        assert sim.stats()["creates_received"] == 3  # A's refused one, and B's two
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=60)
    assert a.returncode == 0, a_err[-2000:]
    stats = sim.stats()
    assert stats["creates_per_prompt"] == {"frozen shot 1": 1, "frozen shot 2": 1}, a_err[-2000:]
    assert stats["creates_received"] == 3 and stats["tasks_created"] == 2
    assert ledger.rows("SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 2)]


@pytest.mark.parametrize("ledger", LEDGERS, indirect=True)
def test_a_key_cap_counts_the_creates_awaiting_their_answer(ws, make_sim, work_env, ledger):
    """Key A is capped at 30 c and, having no limit of its own, is every create's first choice; a
    generation costs 10 c and the API holds each create's answer 1.5 s, so every slot of two
    workers has written its create ahead before any cost is known. What A's creates awaiting their
    answer hold counts against its cap: the API bills A 30 c, not a create more."""
    sim = make_sim(gen_seconds=0.3, api_key=None, keys={KEY_A: None, KEY_B: 4}, normal_price=10,
                   create_latency=1.5)
    (ws.root / "config.yaml").write_text(
        f"keys:\n  - {{provider: sora_hk, key: {KEY_A}, max_spend: $0.30}}\n"
        f"  - {{provider: sora_hk, key: {KEY_B}, concurrency: 4}}\n", encoding="utf-8")
    env = {**team_env(sim, work_env, ""), **ledger.env(), "MAX_CONCURRENT_TASKS": "4"}
    ws.storyboard("storyboard_cap.json", segments(*[f"capped shot {i}" for i in range(8)]))
    assert ws.cli("scan", env=env).exit_code == 0
    procs = [spawn(ws.root, env, "work", "--no-progress") for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    stats = sim.stats()
    assert stats["tasks_by_key"] == {KEY_A: 3, KEY_B: 5}, stats["tasks_by_key"]
    assert stats["tasks_created"] == 8 and set(stats["creates_per_prompt"].values()) == {1}
    assert ledger.rows("SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 8)]


@pytest.mark.parametrize("ledger", LEDGERS, indirect=True)
def test_a_takeover_keeps_counting_a_frozen_workers_create_still_on_its_way(ws, make_sim, work_env, ledger):
    """Worker A sends a create with key A (limited to 1) and is frozen; the API holds that create
    4 s before it makes the task. Worker B takes the job over when A's lease lapses (2 s) and finds
    no task yet: the create may still be on its way (it could be for the client's whole timeout,
    here 7 s), so the job keeps its key's slot and nothing is sent again until the task shows up
    or that time and the grace are over. The API sees one create, and the key never past its limit."""
    sim = make_sim(gen_seconds=3.0, api_key=None, keys={KEY_A: 1})
    sim.inject("create", "delay", seconds=4)
    env = {**team_env(sim, work_env, f"{KEY_A}@1"), **ledger.env(), "LEASE_SECONDS": "2",
           "CONNECT_TIMEOUT": "2", "READ_TIMEOUT": "5"}
    ws.storyboard("storyboard_h.json", segments("held shot"))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["creates_received"] == 1, [a], "A's create at the API")
    freeze(a, ledger)
    try:
        b = spawn(ws.root, env, "work", "--no-progress")
        b_out, b_err = b.communicate(timeout=60)
        assert b.returncode == 0, b_err[-2000:]
        assert ledger.rows("SELECT state FROM jobs") == [("done",)]
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=60)
    assert a.returncode == 0, a_err[-2000:]
    stats = sim.stats()
    assert stats["key_limit_refusals"] == 0 and stats["peak_running_by_key"] == {KEY_A: 1}, stats
    assert stats["creates_received"] == 1 and stats["tasks_created"] == 1
    found = ledger.rows("SELECT count(*) FROM events WHERE detail LIKE 'found the lost create%'")
    assert found == [(1,)]
