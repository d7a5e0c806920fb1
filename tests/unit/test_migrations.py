"""The schema comes only from Alembic migrations, and they agree with the models."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from ledger.cli import cli
from ledger.db import _alembic_config, current_revision, head_revision, open_ledger, write_tx
from ledger.models import Base, path_key


def tables(path: Path):
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_first_use_migrates_an_empty_file_to_head(tmp_path: Path):
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert current_revision(engine) == head_revision()
    assert {"storyboards", "jobs", "events", "alembic_version"} <= tables(tmp_path / "ledger.db")
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_migrations_match_the_models(tmp_path: Path):
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_to_empty_and_back(tmp_path: Path):
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with write_tx(engine) as conn:
        command.downgrade(_alembic_config(conn), "base")
    assert tables(tmp_path / "ledger.db") == {"alembic_version"}
    engine.dispose()
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert {"storyboards", "jobs", "events"} <= tables(tmp_path / "ledger.db")


def test_db_upgrade_command(tmp_path: Path):
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert "jobs" in tables(tmp_path / "ledger.db")


def test_unreachable_database_is_a_configuration_error(tmp_path: Path):
    result = CliRunner().invoke(cli, ["--database", f"sqlite:///{tmp_path}/no/such/dir/ledger.db", "status"])
    assert result.exit_code == 3
    assert "the ledger's folder does not exist" in result.output


def test_upgrade_from_0001_keeps_rows_and_keys_every_path(tmp_path: Path):
    """A ledger written by the first release migrates in place: rows kept, path keys filled in,
    task ids and paths no longer length-limited."""
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", migrate=False)
    with write_tx(engine) as conn:
        command.upgrade(_alembic_config(conn), "0001")
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("INSERT INTO storyboards (id, path, segment_count, present, first_seen_at, scanned_at) "
                     "VALUES (1, 'input/storyboard_a.json', 1, 1, '2026-01-01', '2026-01-01')")
        conn.execute("INSERT INTO jobs (storyboard_id, segment_index, version, state, params, params_sha, is_pro, "
                     "target_dir, spent_cents, progress, attempts, created_at, updated_at) VALUES "
                     "(1, 1, 1, 'done', '{}', 'x', 0, 'output/a', 30, 100, 0, '2026-01-01', '2026-01-01')")
    engine.dispose()
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert current_revision(engine) == head_revision()
    long_id = "t" * 600
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        key = conn.execute("SELECT path_key FROM storyboards WHERE id = 1").fetchone()[0]
        conn.execute("UPDATE jobs SET remote_task_id = ? WHERE id = 1", (long_id,))
        assert conn.execute("SELECT state, spent_cents, remote_task_id FROM jobs").fetchall() == [("done", 30, long_id)]
    assert key == path_key("input/storyboard_a.json")


def test_upgrade_to_0005_remembers_each_storyboards_output_mode_from_where_its_videos_went(tmp_path: Path):
    """A ledger from before 0005 learns each storyboard's mode from its jobs' folders; a job that
    was paid for decides over pending ones that a later scan already moved elsewhere."""
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", migrate=False)
    with write_tx(engine) as conn:
        command.upgrade(_alembic_config(conn), "0004")
    boards = [(1, "input/ep1/storyboard_a.json"), (2, "input/storyboard_b.json"), (3, "input/storyboard_c.json"),
              (4, "/abs/storyboard_d.json")]
    jobs = [(1, 1, "done", None, "input/ep1/storyboard_a_assets/Segment_1"),
            (1, 2, "pending", None, "output/ep1/storyboard_a/Segment_2"),  # moved by a later scan
            (2, 1, "pending", None, "output/storyboard_b/Segment_1"),
            (4, 1, "failed", "task-1", "/abs/storyboard_d_assets/Segment_1")]
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.executemany("INSERT INTO storyboards (id, path, path_key, segment_count, present, first_seen_at, "
                         "scanned_at) VALUES (?, ?, ?, 1, 1, '2026-01-01', '2026-01-01')",
                         [(i, p, path_key(p)) for i, p in boards])
        conn.executemany("INSERT INTO jobs (storyboard_id, segment_index, version, state, remote_task_id, params, "
                         "params_sha, is_pro, target_dir, spent_cents, progress, attempts, created_at, updated_at) "
                         "VALUES (?, ?, 1, ?, ?, '{}', 'x', 0, ?, 0, 0, 0, '2026-01-01', '2026-01-01')", jobs)
    engine.dispose()
    open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}").dispose()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        modes = conn.execute("SELECT id, output_mode FROM storyboards ORDER BY id").fetchall()
    assert modes == [(1, "in-place"), (2, "centralized"), (3, None), (4, "in-place")]


def test_the_cheap_head_revision_is_alembics_own():
    from alembic.script import ScriptDirectory

    assert head_revision() == ScriptDirectory.from_config(_alembic_config()).get_current_head()


def test_upgrade_to_providers_makes_every_earlier_job_a_sora_hk_job_at_its_old_price(tmp_path: Path):
    """Jobs from before providers existed were sent to the one API there was: sora_hk, at the
    configured base URL (none recorded), priced normal or Pro as before."""
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", migrate=False)
    with write_tx(engine) as conn:
        command.upgrade(_alembic_config(conn), "0005")
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("INSERT INTO storyboards (id, path, path_key, segment_count, present, first_seen_at, scanned_at) "
                     "VALUES (1, 'input/storyboard_a.json', 'k', 2, 1, '2026-01-01', '2026-01-01')")
        for index, pro in ((1, 0), (2, 1)):
            conn.execute("INSERT INTO jobs (storyboard_id, segment_index, version, state, params, params_sha, is_pro, "
                         "target_dir, spent_cents, progress, attempts, created_at, updated_at) VALUES "
                         "(1, ?, 1, 'submitted', '{}', 'x', ?, 'output/a', 30, 0, 0, '2026-01-01', '2026-01-01')",
                         (index, pro))
    engine.dispose()
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert current_revision(engine) == head_revision()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        rows = conn.execute("SELECT segment_index, provider, api_base, price_key FROM jobs ORDER BY id").fetchall()
    assert rows == [(1, "sora_hk", None, "normal"), (2, "sora_hk", None, "pro")]
