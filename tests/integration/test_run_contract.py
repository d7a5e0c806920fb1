"""The contract the README documents for `ledger run` and the output mode, through the CLI against
the simulator: `run` takes every scan and work option, and a storyboard's takes stay in one place."""
from __future__ import annotations

import json
from pathlib import Path

from ledger.pricing import money
from tests.helpers import as_generation_failures, job_price, query, segments

POLICY = "[policy-reject] a forbidden scene"


def videos(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4") if "superseded" not in p.parts)


def target_dirs(root: Path):
    return sorted({d for (d,) in query(root, "SELECT target_dir FROM jobs WHERE state != 'removed'")})


def dump(root: Path):
    """Every row of the ledger's tables, to tell that a refused command wrote nothing."""
    return {t: query(root, f"SELECT * FROM {t} ORDER BY 1") for t in ("storyboards", "jobs", "events", "meta")}


# --- run takes every scan and work option --------------------------------------------------------


def test_run_requeue_changed_regenerates_a_done_job_whose_prompt_changed(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("a calm sea"))
    assert ws.cli("run", "--no-progress", env=work_env).exit_code == 0
    ws.storyboard("storyboard_a.json", segments("a stormy sea"))
    result = ws.cli("run", "--no-progress", "--requeue-changed", env=work_env)
    assert result.exit_code == 0, result.output
    assert "1 back in the queue (changed, --requeue-changed)" in result.output
    assert sim.stats()["creates_per_prompt"] == {"a calm sea": 1, "a stormy sea": 1}
    [(state, params)] = query(ws.root, "SELECT state, params FROM jobs")
    assert state == "done" and json.loads(params)["prompt"] == "a stormy sea"
    assert len(list((ws.output / "storyboard_a" / "Segment_1" / "superseded").glob("*.mp4"))) == 1


def test_run_retry_failed_requeues_the_listed_jobs_and_works_only_those(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments(POLICY))
    first = ws.cli("run", "--no-progress", env=work_env)
    assert first.exit_code == 1, first.output
    as_generation_failures(ws.root)  # a refusal would stay failed (see below)
    exported = ws.cli("export-failed", "--output", "failed.json", env=work_env)
    assert exported.exit_code == 0, exported.output
    ws.storyboard("storyboard_b.json", segments("a red fox"))  # new since: scanned, not worked
    result = ws.cli("run", "--no-progress", "--retry-failed", "failed.json", env=work_env)
    assert result.exit_code == 1, result.output  # the policy refuses it again
    assert "Requeued 1 failed job(s)" in result.output
    assert sim.stats()["creates_per_prompt"] == {POLICY: 2}
    assert query(ws.root, "SELECT s.path, j.state FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                          "ORDER BY s.path") == [("input/storyboard_a.json", "failed"),
                                                 ("input/storyboard_b.json", "pending")]


def test_retry_failed_leaves_a_refusal_failed_and_says_so(ws, sim, work_env):
    """Before: `run --retry-failed` on an export paid for the refused prompt again."""
    ws.storyboard("storyboard_a.json", segments(POLICY, "a calm lake"))
    assert ws.cli("run", "--no-progress", env=work_env).exit_code == 1
    assert ws.cli("export-failed", "--output", "failed.json", env=work_env).exit_code == 0
    hint = ("Left failed: 1 job the API refused for its content (change the prompt, or `ledger requeue "
            "--from-file FILE --include-refused` to pay for them again):")
    preview = ws.cli("run", "--dry-run", "--retry-failed", "failed.json", env=work_env)
    assert preview.exit_code == 0, preview.output
    assert "A run would requeue 0 failed jobs from failed.json" in flat(preview.output) and hint in preview.output
    result = ws.cli("run", "--no-progress", "--retry-failed", "failed.json", env=work_env)
    assert "Requeued 0 failed job(s)" in result.output and hint in result.output
    assert "  refused: input/storyboard_a.json#1v1: " in result.output
    assert sim.stats()["creates_per_prompt"] == {POLICY: 1, "a calm lake": 1}


def flat(output: str) -> str:
    """The output with its line wrapping undone."""
    return " ".join(output.split())


def test_a_dry_run_with_retry_failed_prices_only_what_the_file_would_requeue(ws, sim, work_env):
    """Before: the dry run ignored the file and priced every pending job (here the new storyboard's
    two), saying nothing of the one the file names."""
    ws.storyboard("storyboard_a.json", segments(POLICY))
    assert ws.cli("run", "--no-progress", env=work_env).exit_code == 1
    as_generation_failures(ws.root)
    assert ws.cli("export-failed", "--output", "failed.json", env=work_env).exit_code == 0
    ws.storyboard("storyboard_b.json", segments("a red fox", "a grey wolf"))  # new: pending, not in the file
    assert ws.cli("scan", env=work_env).exit_code == 0
    before = query(ws.root, "SELECT id, state, attempts, error_kind FROM jobs ORDER BY id")
    result = ws.cli("run", "--dry-run", "--retry-failed", "failed.json", env=work_env)
    assert result.exit_code == 0, result.output
    assert ("A run would requeue 1 failed job from failed.json: 0 to download again (already paid for), "
            "1 to generate again") in flat(result.output)
    price = job_price(sim)
    assert f"A run would submit 1 job (1 normal): estimated {money(price)}" in flat(result.output)
    assert query(ws.root, "SELECT id, state, attempts, error_kind FROM jobs ORDER BY id") == before  # nothing moved
    assert sim.stats()["creates_received"] == 1
    work = ws.cli("work", "--dry-run", "--retry-failed", "failed.json", env=work_env)
    assert work.exit_code == 0, work.output
    assert f"A run would submit 1 job (1 normal): estimated {money(price)}" in flat(work.output)
    plain = ws.cli("work", "--dry-run", env=work_env)  # without the file: the new storyboard's jobs
    assert f"A run would submit 2 jobs (2 normal): estimated {money(2 * price)}" in flat(plain.output)


# --- the output mode is remembered ------------------------------------------------------------


def test_a_later_run_without_the_flag_keeps_the_storyboards_videos_in_one_place(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("a calm sea"))
    first = ws.cli("run", "--no-progress", "--output-mode", "in-place", env=work_env)
    assert first.exit_code == 0, first.output
    ws.storyboard("storyboard_a.json", segments("a calm sea", "a red fox"))  # a new segment later
    again = ws.cli("run", "--no-progress", env=work_env)  # OUTPUT_MODE's default says centralized
    assert again.exit_code == 0, again.output
    assert [v.rsplit("_", 1)[0] for v in videos(ws.root)] == [
        "input/storyboard_a_assets/Segment_1/1_v1", "input/storyboard_a_assets/Segment_2/2_v1"]
    assert query(ws.root, "SELECT output_mode FROM storyboards") == [("in-place",)]


def test_a_changed_output_mode_setting_applies_to_new_storyboards_only(ws):
    ws.storyboard("storyboard_a.json", segments("a calm sea"))
    assert ws.cli("scan").exit_code == 0
    ws.storyboard("storyboard_b.json", segments("a red fox"))
    result = ws.cli("-v", "scan", env={"OUTPUT_MODE": "in-place"})
    assert result.exit_code == 0, result.output
    assert "1 storyboard(s) keep the output mode they were first recorded with" in result.output
    assert query(ws.root, "SELECT path, output_mode FROM storyboards ORDER BY path") == [
        ("input/storyboard_a.json", "centralized"), ("input/storyboard_b.json", "in-place")]
    assert target_dirs(ws.root) == ["input/storyboard_b_assets/Segment_1", "output/storyboard_a/Segment_1"]


def test_an_explicit_other_mode_moves_a_storyboard_that_has_no_video_yet(ws):
    ws.storyboard("storyboard_a.json", segments("a calm sea"))
    assert ws.cli("scan", "--output-mode", "in-place").exit_code == 0
    result = ws.cli("scan", "--output-mode", "centralized")
    assert result.exit_code == 0, result.output
    assert target_dirs(ws.root) == ["output/storyboard_a/Segment_1"]
    assert query(ws.root, "SELECT output_mode FROM storyboards") == [("centralized",)]


def test_an_explicit_other_mode_is_refused_once_videos_exist_and_nothing_is_written(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("a calm sea"))
    ws.storyboard("storyboard_b.json", segments("a red fox"))
    assert ws.cli("run", "--no-progress", "--output-mode", "in-place", "--storyboard", "*_a.json",
                  env=work_env).exit_code == 0
    ws.storyboard("storyboard_a.json", segments("a calm sea", "a grey heron"))
    before, creates = dump(ws.root), sim.stats()["creates_received"]
    for command in (["scan"], ["scan", "--dry-run"], ["run", "--no-progress"]):
        result = ws.cli(*command, "--output-mode", "centralized", env=work_env)
        assert result.exit_code == 2, result.output
        assert ("--output-mode centralized: 1 storyboard(s) already have videos in the other output mode" in result.output
                and "input/storyboard_a.json (in-place, 1 job(s) generated or under way)" in result.output)
        assert "storyboard_b" not in result.output  # no video yet: it could have moved
        assert dump(ws.root) == before and sim.stats()["creates_received"] == creates
    # The same mode again is no change at all.
    same = ws.cli("run", "--no-progress", "--output-mode", "in-place", env=work_env)
    assert same.exit_code == 0, same.output
    assert [v.rsplit("_", 1)[0] for v in videos(ws.root)] == [
        "input/storyboard_a_assets/Segment_1/1_v1", "input/storyboard_a_assets/Segment_2/2_v1",
        "input/storyboard_b_assets/Segment_1/1_v1"]
