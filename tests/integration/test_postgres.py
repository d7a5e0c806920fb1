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
