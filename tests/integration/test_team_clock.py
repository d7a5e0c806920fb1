"""Team mode and clocks: leases, claims, heartbeats and the reconcile grace go by the ledger
database's clock, so a worker whose own clock is off cannot end another's lease early or judge a
lost create "not created" early; `ledger work` refuses to start on a clock far off the database's.
And a worker killed on this machine is seen dead at once, its jobs taken over with one line.

One worker's clock is skewed with ``LEDGER_TEST_CLOCK_OFFSET`` (a test-only hook on ledger's own
``utcnow``); ``MAX_CLOCK_SKEW_SECONDS`` is raised where such a worker must be let start, as if its
clock had drifted after the start-up check."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from tests.helpers import leftovers, query, segments, spawn
from tests.integration.test_team import pg_query, wait_or_tell
from tests.integration.test_work import videos

AHEAD = {"LEDGER_TEST_CLOCK_OFFSET": "150", "MAX_CLOCK_SKEW_SECONDS": "1000"}


def _events_by(pid: int, url=None, root=None):
    sql = f"SELECT count(*) FROM events WHERE worker LIKE '%:{pid}:%'"
    return (pg_query(url, sql) if url else query(root, sql))[0][0]


@pytest.mark.postgres
def test_a_worker_whose_clock_runs_150_s_ahead_cannot_take_a_live_workers_leases(ws, make_sim, work_env, pg_url):
    """Worker A holds two generations under its lease (120 s); worker B starts with its clock 150 s
    ahead. By B's own clock A's leases ended 30 s ago — by the database's they have nearly two
    minutes left: B takes nothing, A finishes its jobs, B leaves when there is nothing more."""
    sim = make_sim(gen_seconds=12.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_DATABASE_URL": pg_url, "MAX_CONCURRENT_TASKS": "2"}
    ws.storyboard("storyboard_s.json", segments("skew one", "skew two"))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["tasks_created"] >= 2, [a], "A's two generations")
    b = spawn(ws.root, {**env, **AHEAD}, "work", "--no-progress")
    # B has joined (it claims right after): A's generations are still running then.
    wait_or_tell(lambda: pg_query(pg_url, f"SELECT count(*) FROM workers WHERE pid = {b.pid}")[0][0] == 1, [a, b],
                 "B joining")
    assert pg_query(pg_url, "SELECT count(*) FROM jobs WHERE state = 'done'") == [(0,)]
    try:
        a_out, a_err = a.communicate(timeout=60)
        b_out, b_err = b.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        leases = pg_query(pg_url, "SELECT id, state, lease_owner FROM jobs ORDER BY id")
        a.kill(), b.kill()
        raise AssertionError(f"the run did not finish; B is pid {b.pid}; jobs: {leases}; "
                             f"A said: {a.communicate()[1][-600:]}") from None
    assert (a.returncode, b.returncode) == (0, 0), (a_err, b_err)
    assert "lease lost" not in a_err, a_err
    assert _events_by(b.pid, pg_url) == 0, b_err  # B never moved (or held) one of A's jobs
    assert _events_by(a.pid, pg_url) > 0
    assert pg_query(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 2)]
    assert sim.stats()["tasks_created"] == 2 and sim.stats()["creates_received"] == 2
    assert len(videos(ws.root)) == 2 and leftovers(ws.root) == []


@pytest.mark.postgres
def test_a_worker_ahead_waits_the_reconcile_grace_by_the_database_clock_before_judging_a_lost_create(
        ws, make_sim, work_env, pg_url):
    """Worker A's create makes a task but its answer is lost, and A is frozen while it waits to look
    the task up; the task shows in the API's list only 6 s after it was made (a relay's index
    catching up). Worker B, its clock 150 s ahead, takes the job over once A's lease ends by the
    database's clock, and looks the create up only when the 10 s grace from A's write-ahead has
    passed by that clock too (by its own it passed long ago): it finds A's task and adopts it — one
    task, paid once, and B says whose job it took over."""
    sim = make_sim(gen_seconds=0.3, list_lag=6.0)
    sim.inject("create", "lost_create")
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_DATABASE_URL": pg_url, "LEASE_SECONDS": "3",
           "RECONCILE_GRACE_SECONDS": "10"}
    ws.storyboard("storyboard_g.json", segments("grace shot"))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["creates_received"] >= 1, [a], "A's create")
    os.kill(a.pid, signal.SIGSTOP)
    b = spawn(ws.root, {**env, **AHEAD}, "work", "--no-progress")
    try:
        b_out, b_err = b.communicate(timeout=60)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=60)
    assert (a.returncode, b.returncode) == (0, 0), (a_err, b_err)
    assert sim.stats()["creates_received"] == 1 and sim.stats()["tasks_created"] == 1, b_err  # paid once
    assert pg_query(pg_url, "SELECT state FROM jobs") == [("done",)]
    found = pg_query(pg_url, "SELECT worker FROM events WHERE detail LIKE 'found the lost create%'")
    assert len(found) == 1 and f":{b.pid}:" in found[0][0]
    assert f"took over 1 job of worker {socket.gethostname()}/{a.pid}" in b_err, b_err
    assert len(videos(ws.root)) == 1 and leftovers(ws.root) == []


@pytest.mark.postgres
def test_a_worker_whose_clock_is_far_off_the_databases_refuses_to_start_with_one_line(ws, make_sim, work_env, pg_url):
    sim = make_sim(gen_seconds=0.2)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_DATABASE_URL": pg_url}
    ws.storyboard("storyboard_r.json", segments("refused shot"))
    assert ws.cli("scan", env=env).exit_code == 0
    worker = spawn(ws.root, {**env, "LEDGER_TEST_CLOCK_OFFSET": "150"}, "work", "--no-progress")
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "150." in lines[0] and "ahead of" in lines[0] and "MAX_CLOCK_SKEW_SECONDS=5" in lines[0] \
        and "NTP" in lines[0], lines[0]
    assert sim.stats()["creates_received"] == 0
    assert pg_query(pg_url, "SELECT state FROM jobs") == [("pending",)]
    # behind is refused the same way; a few seconds off is within the allowance
    behind = spawn(ws.root, {**env, "LEDGER_TEST_CLOCK_OFFSET": "-30"}, "work", "--no-progress")
    assert behind.wait(timeout=60) == 3 and "30." in behind.communicate()[1]
    near = spawn(ws.root, {**env, "LEDGER_TEST_CLOCK_OFFSET": "2"}, "work", "--no-progress")
    assert near.wait(timeout=60) == 0, near.communicate()
    assert pg_query(pg_url, "SELECT state FROM jobs") == [("done",)]


def test_a_worker_killed_on_this_machine_is_dead_at_once_and_its_jobs_are_taken_over_with_one_line(
        ws, make_sim, work_env):
    """kill -9 of a worker on this machine: `ledger workers` shows it dead at once (not "live" for
    up to a lease), and the next worker takes its jobs over at once, saying so."""
    sim = make_sim(gen_seconds=3.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "MAX_CONCURRENT_TASKS": "2"}
    ws.storyboard("storyboard_k.json", segments("killed one", "killed two"))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["tasks_created"] >= 2, [a], "A's two generations")
    a.kill()
    a.wait()
    shown = json.loads(ws.cli("workers", "--json", "--all", env=env).output)["workers"]
    assert [(w["pid"], w["status"], w["jobs_held"]) for w in shown] == [(a.pid, "dead", 0)]
    assert json.loads(ws.cli("workers", "--json", env=env).output)["workers"] == []
    assert "Workers:" not in ws.cli("status", env=env).output
    b = spawn(ws.root, env, "work", "--no-progress")
    b_out, b_err = b.communicate(timeout=60)
    assert b.returncode == 0, b_err
    assert f"took over 2 jobs of worker {socket.gethostname()}/{a.pid}" in b_err, b_err
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 2)]
    assert sim.stats()["tasks_created"] == 2  # collected, not paid again
