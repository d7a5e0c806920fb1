"""`ledger scan` and `ledger status` as a user runs them: real files, a real SQLite ledger."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.helpers import segments


def rows(ws, sql, *args):
    with sqlite3.connect(ws.root / "ledger.db") as conn:
        return conn.execute(sql, args).fetchall()


def jobs(ws):
    return {(Path(p).name, s, v): st for p, s, v, st in rows(
        ws, "SELECT s.path, j.segment_index, j.version, j.state FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id")}


def set_state(ws, state, segment, version=1, **cols):
    sets = ", ".join(["state = ?"] + [f"{k} = ?" for k in cols])
    rows(ws, f"UPDATE jobs SET {sets} WHERE segment_index = ? AND version = ?", state, *cols.values(), segment, version)


def test_first_scan_records_one_pending_row_per_segment_version(ws):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    ws.storyboard("ep/storyboard_b.json", segments("three"))
    result = ws.cli("scan")
    assert result.exit_code == 0, result.output
    assert "Jobs: 6 new." in result.output
    assert jobs(ws) == {(n, s, v): "pending" for n, s in [("storyboard_a.json", 1), ("storyboard_a.json", 2),
                                                           ("storyboard_b.json", 1)] for v in (1, 2)}
    target, params = rows(ws, "SELECT target_dir, params FROM jobs WHERE segment_index = 1 AND version = 2 "
                              "AND storyboard_id = (SELECT id FROM storyboards WHERE path LIKE '%ep/storyboard_b.json')")[0]
    assert target == "output/ep/storyboard_b/Segment_1"
    assert json.loads(params) == {"prompt": "three", "is_pro": False, "duration": 10, "resolution": "horizontal",
                                  "quality": "normal", "remove_watermark": True}
    # a birth is recorded by created_at; events only record what happens afterwards
    assert rows(ws, "SELECT count(*) FROM jobs WHERE created_at IS NOT NULL") == [(6,)]
    assert rows(ws, "SELECT count(*) FROM events") == [(0,)]


def test_rescan_of_an_unchanged_tree_writes_nothing(ws):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    ws.cli("scan")
    before = rows(ws, "SELECT id, state, updated_at FROM jobs"), rows(ws, "SELECT count(*) FROM events")
    board_before = rows(ws, "SELECT scanned_at FROM storyboards")
    result = ws.cli("scan")
    assert result.exit_code == 0 and "Scanned 1 storyboard file in input: no change." in result.output
    assert "Jobs" not in result.output  # nothing happened to any job: nothing said about them
    assert (rows(ws, "SELECT id, state, updated_at FROM jobs"), rows(ws, "SELECT count(*) FROM events")) == before
    assert rows(ws, "SELECT scanned_at FROM storyboards") == board_before


def test_gen_count_up_adds_versions_and_down_removes_pending_ones(ws):
    ws.storyboard("storyboard_a.json", segments("one"))
    ws.cli("scan")
    ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "4"})
    assert sorted(v for (_, _, v) in jobs(ws)) == [1, 2, 3, 4]
    set_state(ws, "done", 1, 4, video_path="output/x.mp4")
    (ws.root / "output").mkdir()
    (ws.root / "output" / "x.mp4").write_bytes(b"video")
    result = ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    assert "2 removed" in result.output
    assert jobs(ws) == {("storyboard_a.json", 1, 1): "pending", ("storyboard_a.json", 1, 2): "removed",
                        ("storyboard_a.json", 1, 3): "removed", ("storyboard_a.json", 1, 4): "done"}
    # rows are never deleted, and the removal is in the history
    assert rows(ws, "SELECT count(*) FROM events WHERE to_state = 'removed'") == [(2,)]


def test_deleted_segment_and_file_leave_the_queue_and_come_back(ws):
    path = ws.storyboard("storyboard_a.json", segments("one", "two"))
    other = ws.storyboard("storyboard_b.json", segments("x"))
    ws.cli("scan")
    ws.storyboard("storyboard_a.json", segments("one"))
    other_text = other.read_text()
    other.unlink()
    result = ws.cli("scan")
    assert "1 gone" in result.output
    state = jobs(ws)
    assert state[("storyboard_a.json", 2, 1)] == "removed" and state[("storyboard_a.json", 1, 1)] == "pending"
    assert state[("storyboard_b.json", 1, 1)] == "removed"
    ws.storyboard("storyboard_b.json", other_text)
    path.write_text(json.dumps(segments("one", "two")))
    ws.cli("scan")
    assert set(jobs(ws).values()) == {"pending"}


def test_changed_prompt_updates_unsubmitted_jobs_and_reports_paid_ones(ws):
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    video = ws.root / "output" / "storyboard_a" / "Segment_2" / "2_v1_abcdef12.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"paid for")
    set_state(ws, "done", 2, video_path=str(video.relative_to(ws.root)), remote_task_id="abcdef12-task", spent_cents=30)
    set_state(ws, "submitted", 3, remote_task_id="in-flight-task")
    ws.storyboard("storyboard_a.json", segments("ONE", "TWO", "THREE"))
    result = ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    assert result.exit_code == 0
    assert "1 updated" in result.output
    assert "segment 2 v1 is done; left alone" in result.output
    assert "segment 3 v1 is submitted; left alone" in result.output
    prompts = dict(rows(ws, "SELECT segment_index, json_extract(params, '$.prompt') FROM jobs"))
    assert prompts == {1: "ONE", 2: "two", 3: "three"}

    result = ws.cli("scan", "--requeue-changed", env={"GEN_COUNT_PER_SEGMENT": "1"})
    assert "1 back in the queue (changed, --requeue-changed)" in result.output
    assert jobs(ws)[("storyboard_a.json", 2, 1)] == "pending"
    assert jobs(ws)[("storyboard_a.json", 3, 1)] == "submitted"  # in flight: never abandoned
    # the finished video is kept, moved aside, never overwritten
    assert not video.exists()
    assert (video.parent / "superseded" / video.name).read_bytes() == b"paid for"
    assert rows(ws, "SELECT remote_task_id, spent_cents FROM jobs WHERE segment_index = 2") == [(None, 30)]


def test_failed_job_with_edited_prompt_is_tried_again(ws):
    ws.storyboard("storyboard_a.json", segments("bad words"))
    ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    set_state(ws, "failed", 1, error_kind="remote_failed", error_message="内容审核未通过", attempts=1)
    ws.storyboard("storyboard_a.json", segments("kind words"))
    ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    assert rows(ws, "SELECT state, error_message, attempts FROM jobs") == [("pending", None, 0)]


def test_done_job_whose_video_was_deleted_goes_back_to_pending(ws):
    ws.storyboard("storyboard_a.json", segments("one"))
    ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    video = ws.root / "output" / "storyboard_a" / "Segment_1" / "1_v1_aaaaaaaa.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"v")
    set_state(ws, "done", 1, video_path="output/storyboard_a/Segment_1/1_v1_aaaaaaaa.mp4", remote_task_id="aaaaaaaa-1")
    assert "back in the queue" not in ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"}).output
    video.unlink()
    result = ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "1"})
    assert "Jobs: 1 back in the queue (video deleted)." in result.output
    assert "Pending: 1 job," in result.output
    assert rows(ws, "SELECT state, remote_task_id, video_path FROM jobs") == [("pending", None, None)]


def test_dry_run_prints_count_and_cost_and_writes_nothing(ws):
    ws.storyboard("storyboard_a.json", segments("one", "two", is_pro=True))
    ws.storyboard("storyboard_b.json", segments("three"))
    result = ws.cli("scan", "--dry-run")
    assert result.exit_code == 0
    assert "Jobs (dry run, nothing recorded): 6 new." in result.output
    assert "Pending after this scan: 6 jobs, estimated $6.60" in result.output  # 4 Pro x $1.50 + 2 x $0.30
    assert not (ws.root / "ledger.db").exists()  # a dry run in a folder without a ledger creates none


def test_invalid_files_are_reported_and_the_valid_ones_still_recorded(ws):
    ws.storyboard("storyboard_good.json", segments("fine"))
    ws.storyboard("sub/storyboard_bad.json", {"segments": [{"segment_index": 1, "prompt_text": "x", "duration_seconds": 25}]})
    ws.storyboard("storyboard_broken.json", '{"segments": [')
    result = ws.cli("scan")
    assert result.exit_code == 2
    assert "input/sub/storyboard_bad.json: /segments/0/duration_seconds: duration 25s needs the Pro model" in result.output
    assert "input/storyboard_broken.json: /: invalid JSON at line 1" in result.output
    assert "Traceback" not in result.output
    assert "2 storyboard file(s) are invalid" in result.output
    assert set(jobs(ws)) == {("storyboard_good.json", 1, 1), ("storyboard_good.json", 1, 2)}


def test_a_file_that_turns_invalid_keeps_its_jobs(ws):
    ws.storyboard("storyboard_a.json", segments("one"))
    ws.cli("scan")
    ws.storyboard("storyboard_a.json", '{"segments": [}')
    assert ws.cli("scan").exit_code == 2
    assert set(jobs(ws).values()) == {"pending"}


def test_in_place_mode_targets_the_assets_folder(ws):
    ws.storyboard("ep1/storyboard_a.json", segments("one"))
    ws.cli("scan", "--output-mode", "in-place")
    assert {t for (t,) in rows(ws, "SELECT target_dir FROM jobs")} == {"input/ep1/storyboard_a_assets/Segment_1"}


def test_output_tree_inside_input_is_not_scanned(ws):
    ws.storyboard("storyboard_a.json", segments("one"))
    ws.storyboard("out/storyboard_copy.json", segments("copy"))
    ws.cli("scan", "--output-dir", "input/out")
    assert {n for (n, _, _) in jobs(ws)} == {"storyboard_a.json"}


def test_status_json_lists_every_state_and_money(ws):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    ws.cli("scan")
    set_state(ws, "done", 1, 1, spent_cents=30, remote_task_id="t1")
    set_state(ws, "failed", 1, 2, spent_cents=30, remote_task_id="t2")
    result = ws.cli("status", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["counts"] == {"pending": 2, "submitting": 0, "submitted": 0, "downloading": 0, "done": 1,
                              "failed": 1, "removed": 0}
    assert data["total"] == 4
    assert data["money"] == {"spent_cents": 60, "estimated_remaining_cents": 60, "spent": {"USD": 60},
                             "estimated_remaining": {"USD": 60}}
    assert data["storyboards"][0]["path"] == "input/storyboard_a.json"


def test_status_table_on_an_empty_ledger(ws):
    assert ws.cli("scan").exit_code == 0  # an empty input folder: a ledger with no jobs
    result = ws.cli("status")
    assert result.exit_code == 0 and "Spent $0.00" in result.output


def test_missing_input_folder_is_a_usage_error(ws):
    result = ws.cli("scan", "--input-dir", "nowhere")
    assert result.exit_code == 2 and "input folder not found" in result.output


def test_status_of_many_storyboards_lists_those_with_work_left_and_sums_up_the_rest(ws):
    for i in range(45):
        ws.storyboard(f"storyboard_{i:02d}.json", segments(*[f"shot {i}-{s}" for s in range(1 + i % 3)]))
    assert ws.cli("scan").exit_code == 0
    table = ws.cli("status").output
    listed = [line for line in table.splitlines() if line.startswith("input/storyboard_")]
    assert len(listed) == 40 and "… 5 more (--all lists them)" in table
    # the ones with the most work left come first; the hidden ones are among the smallest
    assert all(f"storyboard_{i:02d}" in table for i in range(45) if i % 3 == 2)
    every = ws.cli("status", "--all").output
    assert len([line for line in every.splitlines() if line.startswith("input/storyboard_")]) == 45
    assert "more (--all" not in every
