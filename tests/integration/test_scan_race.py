"""Several machines scanning the same storyboards at one instant (`ledger scan` or `ledger run` in
three processes on one ledger): every one ends well, and the ledger has one row per storyboard and per job.

The processes are released together by a lock the test holds: on PostgreSQL a SHARE lock on the
storyboards and jobs tables, which lets every scan read the ledger (all find the same storyboards
new, or the same segments new) and stops each at its first write until the test lets go; on SQLite
the write lock, which every scan's write transaction queues for."""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing

import pytest

from tests.helpers import query, segments, spawn
from tests.integration.test_team import pg_query, wait_or_tell

BOARDS = 4
SCANS = 3


def _write(ws, grown: bool) -> None:
    for b in range(BOARDS):
        count = 5 if grown else 3
        ws.storyboard(f"race/storyboard_{b}.json", segments(*[f"race {b} shot {i}" for i in range(count)]))


def _check(outputs, procs, rows, new: str) -> None:
    assert [p.returncode for p in procs] == [0] * SCANS, [err[-1500:] for _, err in outputs]
    boards, jobs, distinct = rows
    assert boards == BOARDS and jobs == distinct == BOARDS * (5 if new == "segments" else 3)
    # the jobs are told as new by the one scan that added them; the others found them there
    told = [line for out, _ in outputs for line in out.splitlines() if line.startswith("Jobs:")]
    assert told == [f"Jobs: {BOARDS * (2 if new == 'segments' else 3)} new."], told


@pytest.mark.postgres
@pytest.mark.parametrize("command,new", [("scan", "storyboards"), ("scan", "segments"), ("run", "storyboards")])
def test_three_scans_at_one_instant_on_postgres_all_end_well_with_one_row_each(command, new, ws, sim, work_env,
                                                                                pg_url):
    env = {**work_env, "LEDGER_DATABASE_URL": pg_url, "GEN_COUNT_PER_SEGMENT": "1"}
    assert ws.cli("scan", env=env).exit_code == 0  # the schema, made once (no storyboards yet)
    _write(ws, grown=False)
    if new == "segments":  # the storyboards are known; each file has two segments more now
        assert ws.cli("scan", env=env).exit_code == 0
        _write(ws, grown=True)
    import psycopg

    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as gate:
        gate.execute("LOCK TABLE storyboards, jobs IN SHARE MODE")
        procs = [spawn(ws.root, env, command, *(["--no-progress"] if command == "run" else [])) for _ in range(SCANS)]
        # (a scan may wait for another one's row instead: each waits for a lock)
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND wait_event_type = 'Lock'")
        wait_or_tell(lambda: pg_query(pg_url, waiting)[0][0] == SCANS, procs, "every scan at its first write")
    outputs = [p.communicate(timeout=60) for p in procs]
    rows = pg_query(pg_url, "SELECT (SELECT count(*) FROM storyboards), (SELECT count(*) FROM jobs), "
                            "(SELECT count(DISTINCT (storyboard_id, segment_index, version)) FROM jobs)")[0]
    _check(outputs, procs, rows, new)
    if command == "run":  # and then the three worked the jobs together, each paid once
        assert pg_query(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", BOARDS * 3)]
        assert set(sim.stats()["creates_per_prompt"].values()) == {1} and sim.stats()["tasks_created"] == BOARDS * 3


@pytest.mark.parametrize("new", ["storyboards", "segments"])
def test_three_scans_at_one_instant_on_sqlite_all_end_well_with_one_row_each(new, ws):
    env = {"GEN_COUNT_PER_SEGMENT": "1"}
    assert ws.cli("scan", env=env).exit_code == 0
    _write(ws, grown=False)
    if new == "segments":
        assert ws.cli("scan", env=env).exit_code == 0
        _write(ws, grown=True)
    with closing(sqlite3.connect(ws.root / "ledger.db", isolation_level=None)) as gate:
        gate.execute("BEGIN IMMEDIATE")
        procs = [spawn(ws.root, env, "scan") for _ in range(SCANS)]
        # Each has the ledger open, and has parsed its few small files by far, a moment later: the
        # scans then queue for the write lock and go as soon as it is free.
        wait_or_tell(lambda: all(_has_open(p.pid, ws.root / "ledger.db") for p in procs), procs, "every scan")
        time.sleep(1.0)
        gate.execute("COMMIT")
    outputs = [p.communicate(timeout=60) for p in procs]
    rows = query(ws.root, "SELECT (SELECT count(*) FROM storyboards), (SELECT count(*) FROM jobs), "
                          "(SELECT count(*) FROM (SELECT DISTINCT storyboard_id, segment_index, version FROM jobs))")[0]
    _check(outputs, procs, rows, new)


def _has_open(pid: int, path) -> bool:
    fds = f"/proc/{pid}/fd"
    try:
        return any(os.readlink(os.path.join(fds, fd)) == str(path) for fd in os.listdir(fds))
    except OSError:
        return False
