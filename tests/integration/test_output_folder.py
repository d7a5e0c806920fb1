"""The output folder is proved writable before anything is paid, and a job without its video goes
where the settings say now — also after it failed because the old folder could not be written."""
from __future__ import annotations

import shutil

from tests.helpers import query, segments, spawn
from tests.integration.test_paid_once import wait_for


def test_an_output_folder_through_a_file_stops_the_run_before_any_create(ws, sim, work_env):
    (ws.root / "afile").write_text("not a folder")
    ws.storyboard("storyboard_a.json", segments("never paid for"))
    for command in (("run", "--no-progress"), ("work", "--no-progress")):
        result = ws.cli(*command, env={**work_env, "OUTPUT_DIR": "afile/out"})
        assert result.exit_code == 3, result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert "afile/out" in line and "nothing was sent" in line and "OUTPUT_DIR" in line, line
    assert sim.stats()["creates_received"] == 0
    assert query(ws.root, "SELECT state FROM jobs") == [("pending",)]
    assert list((ws.root).glob("**/.ledger-write-test-*")) == []


def test_a_job_failed_for_an_unwritable_folder_is_saved_in_the_new_one_after_requeue(ws, make_sim, work_env):
    """The folder goes bad after the pre-flight (a file put where it was): the paid jobs fail as
    output_unwritable. The user fixes OUTPUT_DIR and runs `requeue --failed` and `work`: the videos
    are downloaded (not generated again) into the new folder — they used to keep the dead path."""
    sim = make_sim(gen_seconds=1.5)
    env = {**work_env, **{"SORA_BASE_URL": sim.base_url}, "OUTPUT_DIR": "out1"}
    ws.storyboard("storyboard_a.json", segments("first shot", "second shot"))
    proc = spawn(ws.root, env, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] == 2, timeout=30, what="two creates")
    shutil.rmtree(ws.root / "out1")
    (ws.root / "out1").write_text("a file where the folder was")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert query(ws.root, "SELECT DISTINCT state, error_kind FROM jobs") == [("failed", "output_unwritable")]
    fixed = {**env, "OUTPUT_DIR": "out2"}
    assert ws.cli("requeue", "--failed", env=fixed).exit_code == 0
    result = ws.cli("work", "--no-progress", env=fixed)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(ws.root).as_posix().split("/")[0] for p in ws.root.rglob("*.mp4")) == ["out2", "out2"]
    assert sim.stats()["tasks_created"] == 2  # downloaded, not generated again
    assert query(ws.root, "SELECT DISTINCT target_dir LIKE 'out2/%' FROM jobs") == [(1,)]
