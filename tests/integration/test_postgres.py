"""The same code on PostgreSQL: migrations, scan, and two workers sharing one ledger."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ledger.db import open_ledger
from ledger.models import Base
from tests.helpers import segments, spawn
from tests.helpers import leftovers
from tests.integration.test_work import sha, videos

pytestmark = pytest.mark.postgres


def test_migrations_match_the_models_on_postgres(pg_url):
    engine = open_ledger(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    engine.dispose()


def test_two_workers_share_a_postgres_ledger(ws, sim, work_env, pg_url):
    env = {**work_env, "LEDGER_DATABASE_URL": pg_url, "MAX_CONCURRENT_TASKS": "4"}
    ws.storyboard("storyboard_a.json", segments(*[f"pg shot {i}" for i in range(16)]))
    result = ws.cli("scan", env=env)
    assert result.exit_code == 0, result.output
    procs = [spawn(ws.root, env, "work", "--no-progress") for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    status = ws.cli("status", "--json", env=env)
    assert '"done": 16' in status.output
    # the workspace's SQLite file was never created: everything went to PostgreSQL
    assert not (ws.root / "ledger.db").exists()
    assert sim.stats()["tasks_created"] == 16
    assert all(n == 1 for n in sim.stats()["creates_per_prompt"].values())
    files = videos(ws.root)
    assert len(files) == 16 and all(sha(f) == sim.stats()["video_sha256"] for f in files)
    assert leftovers(ws.root) == []


def test_three_workers_on_postgres_one_killed_while_its_posts_are_in_flight(ws, make_sim, work_env, pg_url):
    """Three `ledger work` processes share a PostgreSQL ledger; one is killed -9 while its creates are
    made but not yet answered. Every job ends done and each was paid exactly once."""
    from tests.integration.test_paid_once import wait_for

    sim = make_sim(gen_seconds=1.0, create_latency=0.8)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_DATABASE_URL": pg_url, "MAX_CONCURRENT_TASKS": "4"}
    prompts = [f"pg three {i}" for i in range(36)]
    ws.storyboard("storyboard_a.json", segments(*prompts))
    assert ws.cli("scan", env=env).exit_code == 0
    procs = [spawn(ws.root, env, "work", "--no-progress") for _ in range(3)]
    wait_for(lambda: sim.stats()["tasks_created"] >= 6, what="creates in flight")
    procs[0].kill()
    procs[0].wait()
    outputs = [p.communicate(timeout=120) for p in procs[1:]]
    assert [p.returncode for p in procs[1:]] == [0, 0], outputs
    again = spawn(ws.root, env, "work", "--no-progress")  # whatever the survivors left (none expected)
    assert again.wait(timeout=120) == 0
    per_prompt = sim.stats()["creates_per_prompt"]
    assert all(per_prompt[p] == 1 for p in prompts), {p: n for p, n in per_prompt.items() if n != 1}
    assert sim.stats()["tasks_created"] == 36
    status = ws.cli("status", "--json", env=env)
    assert '"done": 36' in status.output
    files = videos(ws.root)
    assert len(files) == 36 and all(sha(f) == sim.stats()["video_sha256"] for f in files)
    assert leftovers(ws.root) == []


# Before: remote_task_id was VARCHAR(128) on PostgreSQL; a longer id failed the write after the create
# and the submit step ran again: 32 paid creates for 4 jobs. Now any id up to 1,000 UTF-8 bytes is stored
# (CJK ones too: 333 characters are 999 bytes), and a longer one ends its job after one create.
# Varied characters, since PostgreSQL compresses an index entry of one character repeated.
def cjk(n: int) -> str:
    return "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(n))


@pytest.mark.parametrize("task_id, stored", [
    pytest.param("t" * 1000, True, id="1000-ascii"),
    pytest.param(cjk(333), True, id="999-bytes-cjk"),
    pytest.param(cjk(1000), False, id="3000-bytes-cjk"),
])
def test_long_task_ids_on_postgres_are_stored_or_end_the_job_after_one_create(ws, sim, work_env, pg_url,
                                                                               task_id, stored):
    from tests.integration.test_paid_once import charged

    env = {**work_env, "LEDGER_DATABASE_URL": pg_url}
    ws.storyboard("storyboard_a.json", segments("long id", "plain id"))
    assert ws.cli("scan", env=env).exit_code == 0
    sim.inject("create", "task_id", task_id=task_id)
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == (0 if stored else 1), result.output
    assert sim.stats()["creates_received"] == 2 and sim.stats()["tasks_created"] == 2
    engine = open_ledger(pg_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT state, error_kind, remote_task_id, spent_cents FROM jobs").all()
    engine.dispose()
    ids = [r.remote_task_id for r in rows]
    assert (task_id in ids) == stored
    assert sorted(r.state for r in rows) == (["done", "done"] if stored else ["done", "failed"])
    if not stored:
        assert [r.error_kind for r in rows if r.state == "failed"] == ["invalid_task_id"]
    assert sum(r.spent_cents for r in rows) == charged(sim)
    assert len(videos(ws.root)) == (2 if stored else 1)
