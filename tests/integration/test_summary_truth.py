"""The run's summary says what is true: a stopped run with jobs under way is not "no job to work
on", the storyboards skipped as invalid are named again at the end, and a storyboard paid for in an
interrupted run shows what it cost in all, not only this run's $0.00."""
from __future__ import annotations

import signal

from tests.helpers import segments, spawn
from tests.integration.test_paid_once import wait_for


def test_a_run_stopped_with_jobs_under_way_says_so_and_the_next_shows_the_storyboards_total(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=2.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "MAX_CONCURRENT_TASKS": "2"}
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    proc = spawn(ws.root, env, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] == 2, timeout=30, what="two creates")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    (head,) = [line for line in out.splitlines() if line.startswith("Stopped after")]
    assert "no job to work on" not in head and "nothing finished yet" in head, out
    assert "2 jobs still generating" in out, out
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("input/storyboard_a.json")]
    assert row.split()[-2:] == ["$0.30", "$0.90"], result.output  # this run paid one, the storyboard three


def test_storyboards_skipped_as_invalid_are_named_again_after_the_run(ws, sim, work_env):
    ws.storyboard("storyboard_good.json", segments("fine"))
    ws.storyboard("storyboard_bad.json", {"segments": [{"segment_index": 1}, {"segment_index": 2}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    finished = next(i for i, line in enumerate(lines) if line.startswith("Finished in"))
    repeated = [line for line in lines[finished:] if line.startswith("skipped as invalid:")]
    assert len(repeated) == 1 and "storyboard_bad.json" in repeated[0] and "other problem" in repeated[0], lines
