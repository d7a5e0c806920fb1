"""Choosing takes: `ledger pick`, `pick --clear`, `pick --from-file`, `ledger picks`, and how
`status` and `show` report them. One pick per segment, stored in the ledger, history in events."""
from __future__ import annotations

import json

import pytest
from alembic import command

from ledger.db import _alembic_config, open_ledger, write_tx
from ledger.store import PickRefused, Store, record_pick
from tests.helpers import query
from tests.integration.takes import BOARD, generate, picks, take


@pytest.fixture
def done(ws, work_env):
    generate(ws, work_env)
    return ws


def test_pick_stores_one_take_per_segment_and_another_pick_replaces_it(done):
    ws = done
    first = ws.cli("pick", "storyboard_a#1v2", "ep1/storyboard_a.json#2v1")
    assert first.exit_code == 0, first.output
    assert "picked input/ep1/storyboard_a.json#1v2" in first.output
    assert picks(ws) == [(BOARD, 1, 2), (BOARD, 2, 1)]
    again = ws.cli("pick", "storyboard_a#1v1")
    assert again.exit_code == 0 and "(replaces v2)" in again.output
    assert picks(ws) == [(BOARD, 1, 1), (BOARD, 2, 1)]
    same = ws.cli("pick", "storyboard_a#1v1")
    assert "was already the pick" in same.output
    v1, v2 = take(ws, 1, 1)[0], take(ws, 1, 2)[0]
    history = query(ws.root, "SELECT job_id, from_state, to_state, detail FROM events WHERE detail LIKE '%pick%' "
                             "AND job_id IN (?, ?) ORDER BY id", v1, v2)
    assert history == [
        (v2, "done", "done", "picked for segment 1 (cli)"),
        (v1, "done", "done", "picked for segment 1, replacing v2 (cli)"),
        (v2, "done", "done", "no longer the pick: v1 was chosen instead (cli)"),
    ]


def test_only_done_takes_can_be_picked_and_one_bad_reference_writes_nothing(done):
    ws = done
    result = ws.cli("pick", "storyboard_a#1v1", "storyboard_a#3v1")
    assert result.exit_code == 2
    assert "input/ep1/storyboard_a.json#3v1 is failed" in result.output
    typo = ws.cli("pick", "storyboard_a#1v1", "storyboard_zz#1v1")
    assert typo.exit_code == 2 and "storyboard_zz" in typo.output
    both = ws.cli("pick", "storyboard_a#1v1", "storyboard_a#1v2")
    assert both.exit_code == 2 and "takes of one segment" in both.output
    assert picks(ws) == []


def test_clear_forgets_the_pick_of_a_segment(done):
    ws = done
    ws.cli("pick", "storyboard_a#2v2")
    result = ws.cli("pick", "--clear", "storyboard_a#2")
    assert result.exit_code == 0, result.output
    assert "cleared the pick of input/ep1/storyboard_a.json#2 (was v2)" in result.output
    assert picks(ws) == []
    assert "had no pick" in ws.cli("pick", "--clear", "storyboard_a#2").output
    assert query(ws.root, "SELECT detail FROM events WHERE job_id = ? ORDER BY id DESC LIMIT 1",
                 take(ws, 2, 2)[0]) == [("pick cleared (cli)",)]


def test_picks_status_and_show_report_the_choices(done):
    ws = done
    ws.cli("pick", "storyboard_a#2v2")
    listed = json.loads(ws.cli("picks", "--json").output)
    assert [(p["ref"], p["state"], p["source"]) for p in listed] == [(f"{BOARD}#2v2", "done", "cli")]
    assert listed[0]["video_path"] == take(ws, 2, 2)[2]
    status = json.loads(ws.cli("status", "--json").output)
    assert status["storyboards"][0]["picked_segments"] == 1 and status["storyboards"][0]["segments"] == 3
    assert (status["picked_segments"], status["segments"]) == (1, 3)
    assert "1/3" in ws.cli("status").output
    chosen = json.loads(ws.cli("show", "storyboard_a#2v2", "--json").output)
    other = json.loads(ws.cli("show", "storyboard_a#2v1", "--json").output)
    assert chosen["picked"] is True and other["picked"] is False and other["segment_pick_version"] == 2
    assert "no (v2 is the pick)" in ws.cli("show", "storyboard_a#2v1").output
    assert chosen["history"][-1]["detail"] == "picked for segment 2 (cli)"


def test_picks_json_from_the_static_page_is_imported(done):
    ws = done
    ws.cli("pick", "storyboard_a#2v1")
    (ws.root / "picks.json").write_text(json.dumps({"format": "ledger-picks/1", "picks": [
        {"storyboard": BOARD, "segment_index": 1, "version": 2, "job_id": 999, "ref": "ignored"},
        {"ref": "storyboard_a#2v2"},
        {"storyboard": BOARD, "segment_index": 3, "version": 1},  # failed: refused
        {"storyboard": "input/gone.json", "segment_index": 1, "version": 1},
    ], "cleared": []}), encoding="utf-8")
    result = ws.cli("pick", "--from-file", "picks.json")
    assert result.exit_code == 2
    assert "picked input/ep1/storyboard_a.json#1v2" in result.output and "(replaces v1)" in result.output
    assert "picks.json: /picks/2: cannot pick input/ep1/storyboard_a.json#3v1: it is failed" in result.output
    assert "/picks/3: no take input/gone.json#1v1" in result.output
    assert picks(ws) == [(BOARD, 1, 2), (BOARD, 2, 2)]
    (ws.root / "clear.json").write_text(json.dumps({"picks": [], "cleared": [{"storyboard": BOARD, "segment_index": 1}]}))
    assert ws.cli("pick", "--from-file", "clear.json").exit_code == 0
    assert picks(ws) == [(BOARD, 2, 2)]


def test_a_malformed_picks_file_is_refused_with_pointers_and_writes_nothing(done):
    ws = done
    (ws.root / "bad.json").write_text(json.dumps({"picks": [{"storyboard": BOARD, "segment_index": "1", "version": 1},
                                                            {"storyboard": BOARD, "segment_index": 2, "version": 1}],
                                                  "cleared": [7]}))
    result = ws.cli("pick", "--from-file", "bad.json")
    assert result.exit_code == 2
    assert "bad.json: /picks/0: expected storyboard (text), segment_index and version (integers)" in result.output
    assert "bad.json: /cleared/0: expected an object" in result.output
    (ws.root / "notjson.json").write_text("{nope")
    assert "not a JSON file" in ws.cli("pick", "--from-file", "notjson.json").output
    assert picks(ws) == []


def test_picks_survive_upgrading_a_0002_ledger(tmp_path):
    """A ledger written before picks existed migrates in place and can take picks afterwards."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = open_ledger(url, migrate=False)
    with write_tx(engine) as conn:
        command.upgrade(_alembic_config(conn), "0002")
        conn.exec_driver_sql("INSERT INTO storyboards (id, path, path_key, segment_count, present, first_seen_at, "
                             "scanned_at) VALUES (1, 'input/storyboard_a.json', 'k', 1, 1, '2026-01-01', '2026-01-01')")
        conn.exec_driver_sql("INSERT INTO jobs (id, storyboard_id, segment_index, version, state, params, params_sha, "
                             "is_pro, target_dir, spent_cents, progress, attempts, created_at, updated_at) VALUES "
                             "(1, 1, 1, 1, 'done', '{}', 'x', 0, 'output/a', 30, 100, 0, '2026-01-01', '2026-01-01')")
    engine.dispose()
    store = Store(open_ledger(url), cwd=tmp_path)
    assert record_pick(store, 1, "cli").changed
    with pytest.raises(PickRefused, match="no job 2"):
        record_pick(store, 2, "cli")
    assert query(tmp_path, "SELECT storyboard_id, segment_index, job_id FROM picks") == [(1, 1, 1)]
    with write_tx(store.engine) as conn:
        command.downgrade(_alembic_config(conn), "0002")
    assert query(tmp_path, "SELECT count(*) FROM sqlite_master WHERE name = 'picks'") == [(0,)]


@pytest.mark.postgres
def test_picks_and_short_references_on_postgres(ws, work_env, pg_url):
    env = {**work_env, "LEDGER_DATABASE_URL": pg_url}
    generate(ws, env)
    assert ws.cli("pick", "ep1/storyboard_a#1v2", "storyboard_a.json#2v1", env=env).exit_code == 0
    replaced = ws.cli("pick", "storyboard_a#1v1", env=env)
    assert replaced.exit_code == 0 and "(replaces v2)" in replaced.output
    listed = json.loads(ws.cli("picks", "--json", env=env).output)
    assert [(p["segment_index"], p["version"]) for p in listed] == [(1, 1), (2, 1)]
    status = json.loads(ws.cli("status", "--json", env=env).output)
    assert (status["picked_segments"], status["segments"]) == (2, 3)
    ambiguous = ws.cli("show", "storyboard_a#1", env=env)
    assert ambiguous.exit_code == 2 and "2 versions" in ambiguous.output
    assert ws.cli("export", "--format", "otio", env=env).exit_code == 0
    assert not (ws.root / "ledger.db").exists()
