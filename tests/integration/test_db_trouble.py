"""Database trouble is one line naming the ledger and the cause, with a documented exit code.

Each condition is made for real: a second connection holding SQLite's write lock, an immutable
file or folder (``chattr +i``, which binds root too) and SQLite's own read-only open, a page of a
real ledger overwritten with garbage, a PostgreSQL URL whose port is closed or whose database
refuses writes.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import uuid
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.helpers import query, segments, spawn

DATABASE_TROUBLE = 5
CONFIG = 3
SERVER = "postgresql://root@127.0.0.1:5432"


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: even root cannot write the file, or create files in the folder."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def recorded(ws):
    """A workspace whose ledger holds jobs, written by a process that has exited (no -wal left)."""
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i} " + "x" * 400 for i in range(150)]))
    proc = spawn(ws.root, {}, "scan")
    assert proc.wait(timeout=60) == 0, proc.communicate()
    assert not (ws.root / "ledger.db-wal").exists()
    return ws


def test_a_lock_held_past_the_busy_timeout_is_one_line_and_exit_5(recorded):
    ws = recorded
    ws.storyboard("storyboard_b.json", segments("new shot"))
    with closing(sqlite3.connect(ws.root / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        result = ws.cli("scan", env={"LEDGER_BUSY_TIMEOUT": "0.3"})
        requeue = ws.cli("requeue", "--failed", env={"LEDGER_BUSY_TIMEOUT": "0.3"})
        other.execute("ROLLBACK")
    assert result.exit_code == DATABASE_TROUBLE
    assert one_line(result.output) == ("error: the ledger ./ledger.db is locked by another process (waited 0.3 s, "
                                       "LEDGER_BUSY_TIMEOUT): try again when it has finished")
    assert requeue.exit_code == DATABASE_TROUBLE and "is locked by another process" in requeue.output
    # nothing was half-done: once the lock is gone the same scan records the new storyboard
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(150 * 2,)]
    assert ws.cli("scan").exit_code == 0
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(151 * 2,)]


def test_work_on_a_locked_ledger_stops_with_one_line_and_pays_nothing(recorded, sim, work_env):
    ws = recorded
    with closing(sqlite3.connect(ws.root / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        proc = spawn(ws.root, {**work_env, "LEDGER_BUSY_TIMEOUT": "0.3"}, "work", "--no-progress")
        out, err = proc.communicate(timeout=120)
        other.execute("ROLLBACK")
    assert proc.returncode == DATABASE_TROUBLE, (out, err)
    assert one_line(err) == ("error: the ledger ./ledger.db is locked by another process (waited 0.3 s, "
                             "LEDGER_BUSY_TIMEOUT): try again when it has finished")
    assert sim.stats()["creates_received"] == 0
    assert query(ws.root, "SELECT DISTINCT state FROM jobs") == [("pending",)]


def test_the_traceback_of_database_trouble_shows_only_with_vv(recorded):
    ws = recorded
    ws.storyboard("storyboard_b.json", segments("new shot"))
    with closing(sqlite3.connect(ws.root / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        quiet = ws.cli("-v", "scan", env={"LEDGER_BUSY_TIMEOUT": "0.1"})
        loud = ws.cli("-vv", "scan", env={"LEDGER_BUSY_TIMEOUT": "0.1"})
        other.execute("ROLLBACK")
    assert quiet.exit_code == loud.exit_code == DATABASE_TROUBLE
    assert "Traceback" not in quiet.output and "is locked" in quiet.output
    assert "Traceback" in loud.output and "sqlite3.OperationalError: database is locked" in loud.output


def test_a_read_only_ledger_file_is_one_line_and_exit_5(recorded):
    ws = recorded
    ws.storyboard("storyboard_b.json", segments("new shot"))
    before = fingerprint(ws.root / "ledger.db")
    with immutable(ws.root / "ledger.db"):
        result = ws.cli("scan")
        status = ws.cli("status")  # reading still works
    assert result.exit_code == DATABASE_TROUBLE
    assert one_line(result.output) == "error: the ledger ./ledger.db is read-only: make the file and its folder writable"
    assert status.exit_code == 0 and "300 jobs not yet paid for" in status.output
    assert fingerprint(ws.root / "ledger.db") == before


def test_sqlites_own_read_only_open_is_the_same_line(recorded):
    ws = recorded
    ws.storyboard("storyboard_b.json", segments("new shot"))
    url = f"sqlite:///file:{(ws.root / 'ledger.db').as_posix()}?mode=ro&uri=true"
    result = ws.cli("--database", url, "scan")
    assert result.exit_code == DATABASE_TROUBLE
    assert one_line(result.output) == "error: the ledger ./ledger.db is read-only: make the file and its folder writable"


def test_a_read_only_ledger_folder_is_one_line_and_exit_5(recorded):
    ws = recorded
    with immutable(ws.root):
        # a separate process, as a user would run it: nothing of this test process holds the file open
        proc = spawn(ws.root, {}, "status")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == DATABASE_TROUBLE, (out, err)
    assert out == ""
    assert one_line(err) == (f"error: the ledger ./ledger.db cannot be opened: its folder {ws.root.resolve()} is "
                             f"read-only (SQLite writes its journal beside the file)")


def jobs_pages(db: Path) -> List[int]:
    with closing(sqlite3.connect(db)) as conn:
        try:
            return [page for (page,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'jobs' AND pagetype = 'leaf' ORDER BY pageno")]
        except sqlite3.OperationalError:  # built without dbstat: any page in the middle
            return [os.path.getsize(db) // 4096 // 2]


def test_a_corrupt_page_inside_the_ledger_is_one_line_and_exit_5(recorded):
    ws = recorded
    db = ws.root / "ledger.db"
    pages = jobs_pages(db)
    total = os.path.getsize(db) // 4096
    page = min(pages, key=lambda p: abs(p - total // 2))  # a page of job rows near the middle
    with open(db, "r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(os.urandom(4096))
    before = fingerprint(db)
    message = ("error: the ledger ./ledger.db is corrupt (database disk image is malformed): restore it from a "
               "backup (or try `sqlite3 ledger.db .recover`)")
    status = ws.cli("status")
    assert status.exit_code == DATABASE_TROUBLE and one_line(status.output) == message
    scan = ws.cli("scan")  # prints what it compared before it meets the page
    assert scan.exit_code == DATABASE_TROUBLE
    assert scan.output.splitlines()[-1] == message and "Traceback" not in scan.output
    assert fingerprint(db) == before  # nothing was written over what is left


def test_a_postgres_server_on_a_closed_port_is_one_line_with_the_password_hidden(ws, unused_port):
    url = f"postgresql://root:hunter2@127.0.0.1:{unused_port}/test"
    for command in ("status", "scan"):
        result = ws.cli("--database", url, command)
        assert result.exit_code == DATABASE_TROUBLE
        assert one_line(result.output) == (f"error: cannot reach the ledger database postgresql://root:***@127.0.0.1:"
                                           f"{unused_port}/test: connection refused (is the server running?)")
    assert not (ws.root / "ledger.db").exists()


def test_a_postgres_host_that_does_not_exist_is_a_configuration_error(ws):
    result = ws.cli("--database", "postgresql://root@no-such-host.invalid/test", "status")
    assert result.exit_code == CONFIG
    assert one_line(result.output) == ("error: cannot reach the ledger database postgresql://root@no-such-host.invalid/"
                                       "test: unknown host (check LEDGER_DATABASE_URL)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{SERVER}/test", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{SERVER}/{name}"
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_postgres_ledger_that_refuses_writes_is_one_line_and_exit_5(ws, pg_url):
    import psycopg

    ws.storyboard("storyboard_a.json", segments("one", "two"))
    assert ws.cli("--database", pg_url, "scan").exit_code == 0
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{pg_url.rsplit("/", 1)[1]}" SET default_transaction_read_only = on')
    ws.storyboard("storyboard_b.json", segments("three"))
    proc = spawn(ws.root, {"LEDGER_DATABASE_URL": pg_url}, "scan")  # a new connection sees the setting
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == DATABASE_TROUBLE, (out, err)
    assert one_line(err) == f"error: the ledger database {pg_url} is read-only"
