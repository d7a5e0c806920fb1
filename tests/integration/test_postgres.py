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
