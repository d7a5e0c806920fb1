"""Team mode: a worker frozen (SIGSTOP) or killed -9 while its paid jobs hold every slot of the only
key. A worker started next holds jobs that wait for a key; they must not keep it from taking over
the stalled worker's jobs in flight (which are what would free the key) — before, it waited for a
key forever and never claimed them."""
from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import leftovers, segments, spawn
from tests.integration.test_team import KEY_A, pg_query, team_env, wait_or_tell
from tests.integration.test_work import videos

JOBS = 6


def _submitted(pg_url: str) -> int:
    return pg_query(pg_url, "SELECT count(*) FROM jobs WHERE state = 'submitted'")[0][0]


def _waiting(pg_url: str, pid: int) -> int:
    """Pending jobs the worker with ``pid`` holds (owners are host:pid:start)."""
    return pg_query(pg_url, f"SELECT count(*) FROM jobs WHERE state = 'pending' AND lease_owner LIKE '%:{pid}:%'")[0][0]


@pytest.mark.postgres
@pytest.mark.parametrize("stall", ["frozen", "killed"])
def test_a_worker_waiting_for_a_key_takes_over_the_stalled_workers_jobs_that_hold_it(
        stall, ws, make_sim, work_env, pg_url):
    sim = make_sim(gen_seconds=2.0, api_key=None, keys={KEY_A: 2})
    env = team_env(sim, work_env, f"{KEY_A}@2", LEDGER_DATABASE_URL=pg_url, MAX_CONCURRENT_TASKS="3",
                   LEASE_SECONDS="6")
    ws.storyboard("storyboard_stall.json", segments(*[f"stalled shot {i}" for i in range(JOBS)]))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    # A holds both of the key's slots (and a third job waiting for one) and freezes; B, started
    # next, claims the jobs left, which wait for a key; A stays frozen, or is killed.
    wait_or_tell(lambda: _submitted(pg_url) == 2, [a], "A's two generations")
    os.kill(a.pid, signal.SIGSTOP)
    b = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: _waiting(pg_url, b.pid) > 0, [a, b], "B's jobs waiting for a key")
    if stall == "killed":
        os.kill(a.pid, signal.SIGKILL)
    try:
        out, err = b.communicate(timeout=30)  # before: B waited for a key until killed here
    except Exception:
        b.kill()
        raise AssertionError("B never finished: " + b.communicate()[1][-1500:]) from None
    finally:
        if stall == "frozen":
            os.kill(a.pid, signal.SIGCONT)
    assert b.returncode == 0, err[-1500:]
    a_err = a.communicate(timeout=60)[1]
    if stall == "frozen":  # back, it finds its jobs taken over and lets them go
        assert a.returncode == 0, a_err[-1500:]
    assert pg_query(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", JOBS)]
    stats = sim.stats()
    assert stats["tasks_created"] == JOBS and set(stats["creates_per_prompt"].values()) == {1}  # none paid twice
    assert stats["peak_running_by_key"][KEY_A] <= 2 and stats["key_limit_refusals"] == 0
    assert len(videos(ws.root)) == JOBS and leftovers(ws.root) == []
    assert KEY_A not in out + err
