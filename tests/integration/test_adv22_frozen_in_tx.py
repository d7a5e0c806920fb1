"""Adversarial (issue 22): a worker frozen (SIGSTOP) *inside* a ledger write transaction on
PostgreSQL. Its backend stays ``idle in transaction`` holding the row locks it took (a job's row,
a key's row chosen under ``FOR UPDATE``); nothing sets ``idle_in_transaction_session_timeout`` or
``lock_timeout``, so those locks are never given back while it is frozen, and the live workers
cannot finish — the contract asks them to finish within about a lease of losing a peer."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import segments, spawn
from tests.integration.test_team import KEY_A, KEY_B, pg_query, team_env, wait_or_tell

IN_WRITE_TX = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
               "AND state = 'idle in transaction' AND backend_xid IS NOT NULL")


def freeze_inside_a_write(proc, url: str) -> None:
    """SIGSTOP ``proc`` at a moment it holds a ledger transaction that has written (so holds row locks)."""
    for _ in range(5000):
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.01)  # let a statement already sent finish: the backend then waits, idle in transaction
        if pg_query(url, IN_WRITE_TX)[0][0]:
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError("never caught the worker inside a write transaction")


@pytest.mark.postgres
def test_a_worker_frozen_inside_a_write_transaction_does_not_stop_the_others(ws, make_sim, work_env, pg_url):
    sim = make_sim(gen_seconds=0.3, api_key=None, keys={KEY_A: 2, KEY_B: 3})
    env = team_env(sim, work_env, f"{KEY_A}@2,{KEY_B}@3", LEDGER_DATABASE_URL=pg_url, MAX_CONCURRENT_TASKS="4",
                   LEASE_SECONDS="3", LEDGER_BUSY_TIMEOUT="5",  # a transaction left idle dies after 5 s
                   CONNECT_TIMEOUT="1", READ_TIMEOUT="3")  # a taken-over write-ahead waits out its create timeout
    ws.storyboard("storyboard_tx.json", segments(*[f"locked shot {i}" for i in range(40)]))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["tasks_created"] >= 3, [a], "A under way")
    freeze_inside_a_write(a, pg_url)
    b = spawn(ws.root, env, "work", "--no-progress")
    try:
        try:
            b_out, b_err = b.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            b.kill()
            b_out, b_err = b.communicate()
            states = pg_query(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY 1")
            raise AssertionError(f"B did not finish within 20 s (lease 3 s) while A is frozen inside a "
                                 f"write transaction: {states}; {b_err[-1500:]}") from None
        assert b.returncode == 0, b_err[-2000:]
    finally:
        os.kill(a.pid, signal.SIGCONT)
        a.kill()
        a.communicate()
