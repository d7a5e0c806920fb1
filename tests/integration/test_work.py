"""`ledger work` / `ledger run` against the simulator over real sockets, on real ledger files.

The promises under test: a video is never paid for twice by accident, a finished video is never
lost or half-written, and running `ledger work` again picks up exactly where things stood.
"""
from __future__ import annotations

import hashlib
import json
import random
import signal
import time
from pathlib import Path

import pytest

from ledger.download import video_filename
from ledger.pricing import money
from tests.helpers import api_env, both_protocols, job_price, leftovers, query, segments, spawn


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def videos(root: Path):
    return sorted(p for p in (root / "output").rglob("*.mp4") if "superseded" not in p.parts)


def assert_every_job_paid_once(ws, sim, jobs: int):
    """Every remote task belongs to exactly one job, and every job to one task."""
    linked = [t for (t,) in query(ws.root, "SELECT remote_task_id FROM jobs WHERE remote_task_id IS NOT NULL")]
    created = [t["task_id"] for t in sim.tasks()]
    assert sim.stats()["tasks_created"] == jobs == len(created)
    assert sorted(linked) == sorted(created)


def assert_all_done_and_whole(ws, sim, jobs: int):
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", jobs)]
    files = videos(ws.root)
    assert len(files) == jobs
    served = sim.stats()["video_sha256"]
    assert all(sha(f) == served for f in files)
    assert leftovers(ws.root) == []


@both_protocols
def test_run_generates_every_job_into_the_users_layout(ws, sim, work_env):
    ws.storyboard("ep1/storyboard_city.json", segments("neon city at dusk", "noodle stall"))
    ws.storyboard("storyboard_sea.json", segments("waves on rocks"))
    result = ws.cli("run", "--no-progress", env={**work_env, "GEN_COUNT_PER_SEGMENT": "2"})
    assert result.exit_code == 0, result.output
    assert f"6 saved; paid {money(6 * job_price(sim))} for 6 generations." in result.output
    assert_every_job_paid_once(ws, sim, 6)
    assert_all_done_and_whole(ws, sim, 6)
    by_task = {t["task_id"]: t for t in sim.tasks()}
    rows = query(ws.root, "SELECT j.segment_index, j.version, j.remote_task_id, j.video_path, s.path "
                          "FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id")
    for segment, version, task_id, video_path, board in rows:
        stem = Path(board).stem
        folder = "output/ep1/storyboard_city" if stem == "storyboard_city" else "output/storyboard_sea"
        assert video_path == f"{folder}/Segment_{segment}/{video_filename(segment, version, task_id)}"
        side = json.loads((ws.root / video_path).with_suffix(".json").read_text(encoding="utf-8"))
        assert side["task_id"] == task_id and side["sha256"] == sha(ws.root / video_path)
        assert side["size"] == (ws.root / video_path).stat().st_size
        # each provider's model takes its own default duration: sora.hk 10 s, /v1/videos 4 s
        default_seconds = 4 if sim.config.protocol == "openai" else 10
        assert side["prompt"] == by_task[task_id]["prompt"] and side["parameters"]["duration"] == default_seconds
    history = [r[0] for r in query(ws.root, "SELECT to_state FROM events WHERE job_id = 1 ORDER BY id")]
    assert history == ["submitting", "submitted", "downloading", "done"]
    # nothing left: a second run does nothing and pays nothing
    again = ws.cli("work", "--no-progress", env=work_env)
    assert again.exit_code == 0 and "no job to work on; nothing paid." in again.output
    assert sim.stats()["tasks_created"] == 6


def test_videos_already_on_disk_are_not_generated_again(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    old = ws.root / "output" / "storyboard_a" / "Segment_2" / "2_v1_earlier1.mp4"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"made by the earlier tool")
    empty = ws.root / "output" / "storyboard_a" / "Segment_3" / "3_v1_broken00.mp4"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")  # an empty file is not a video
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert "1 already on disk" in result.output
    assert sim.stats()["tasks_created"] == 2
    assert query(ws.root, "SELECT video_path, remote_task_id FROM jobs WHERE segment_index = 2") == [
        ("output/storyboard_a/Segment_2/2_v1_earlier1.mp4", None)]
    assert old.read_bytes() == b"made by the earlier tool"


def test_limit_and_storyboard_filter(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("a1", "a2", "a3"))
    ws.storyboard("storyboard_b.json", segments("b1"))
    ws.cli("scan", env=work_env)
    result = ws.cli("work", "--no-progress", "--storyboard", "*_a.json", "--limit", "2", env=work_env)
    assert result.exit_code == 0, result.output
    assert sorted(t["prompt"] for t in sim.tasks()) == ["a1", "a2"]


@both_protocols
def test_a_lost_create_answer_is_reconciled_not_paid_twice(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("the answer to this create is lost"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_received"] == 1
    assert_every_job_paid_once(ws, sim, 1)
    assert_all_done_and_whole(ws, sim, 1)
    details = [d for (d,) in query(ws.root, "SELECT detail FROM events")]
    assert any("found the lost create's task" in d for d in details)


@both_protocols
def test_a_dropped_create_that_made_no_task_is_sent_again(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("the connection drops before the server acts"))
    sim.inject("create", "drop")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_received"] == 2  # sent again only after the lookup found nothing
    assert_every_job_paid_once(ws, sim, 1)
    details = [d for (d,) in query(ws.root, "SELECT detail FROM events")]
    assert any("no task was created" in d for d in details)


@both_protocols
def test_poll_timeout_keeps_the_task_for_a_later_run(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=1.5)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("slow one"))
    first = ws.cli("run", "--no-progress", env={**env, "POLL_TIMEOUT_SECONDS": "0.2"})
    assert first.exit_code == 0, first.output
    assert "still generating remotely" in first.output
    (task_id,) = [t["task_id"] for t in sim.tasks()]
    assert query(ws.root, "SELECT state, remote_task_id, lease_owner FROM jobs") == [("submitted", task_id, None)]
    second = ws.cli("work", "--no-progress", env=env)
    assert second.exit_code == 0, second.output
    assert_every_job_paid_once(ws, sim, 1)
    assert_all_done_and_whole(ws, sim, 1)


@both_protocols
def test_kill_9_at_random_moments_then_resume(ws, make_sim, work_env):
    """Crash the worker three times at random moments; the fourth run finishes everything and
    nothing was paid twice or left half-written."""
    # Creates answer 0.3 s after the task is made, like the real service: kills often land between
    # the paid POST and the ledger learning its task id.
    sim = make_sim(gen_seconds=0.6, create_latency=0.3)
    # A job written ahead by a killed worker whose task is not listed is sent again only once its
    # create could no longer be on its way (connect + read timeout + grace): short timeouts here.
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "4", "CONNECT_TIMEOUT": "2", "READ_TIMEOUT": "5"}
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(12)]))
    assert ws.cli("scan", env=work_env).exit_code == 0
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for attempt in range(3):
        proc = spawn(ws.root, env, "work", "--no-progress")
        if attempt == 0:
            # the worst moment first: a task is made and paid for, and its id not yet in the ledger
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sim.stats()["tasks_created"] <= query(
                    ws.root, "SELECT count(*) FROM jobs WHERE remote_task_id IS NOT NULL")[0][0]:
                time.sleep(0.01)
        else:
            time.sleep(rng.uniform(0.3, 1.5))
        proc.kill()
        proc.wait()
    started = time.monotonic()
    final = spawn(ws.root, env, "work", "--no-progress")
    out, errors = final.communicate(timeout=60)
    assert final.returncode == 0, (seed, out, errors)
    # the dead workers' leases (120 s) were adopted at once, not waited out
    assert time.monotonic() - started < 30, seed
    assert_every_job_paid_once(ws, sim, 12)
    assert_all_done_and_whole(ws, sim, 12)


@both_protocols
def test_ctrl_c_stops_promptly_and_the_next_run_collects(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=3.0)
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "3"}
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(5)]))
    assert ws.cli("scan", env=work_env).exit_code == 0
    proc = spawn(ws.root, env, "work", "--no-progress")
    deadline = time.monotonic() + 10
    while sim.stats()["tasks_created"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, errors = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130, (out, errors)
    assert "still generating remotely" in out and "run `ledger work` again" in out
    assert leftovers(ws.root) == []
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL") == [(0,)]
    in_flight = query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'submitted' AND remote_task_id IS NOT NULL")
    assert in_flight == [(3,)]
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'pending'") == [(2,)]
    resumed = ws.cli("work", "--no-progress", env=env)
    assert resumed.exit_code == 0, resumed.output
    assert_every_job_paid_once(ws, sim, 5)
    assert_all_done_and_whole(ws, sim, 5)


@both_protocols
def test_two_workers_on_one_ledger_never_take_the_same_job(ws, sim, work_env):
    env = {**work_env, "MAX_CONCURRENT_TASKS": "4"}
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(24)]))
    assert ws.cli("scan", env=work_env).exit_code == 0
    procs = [spawn(ws.root, env, "work", "--no-progress") for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(n == 1 for n in sim.stats()["creates_per_prompt"].values())
    assert_every_job_paid_once(ws, sim, 24)
    assert_all_done_and_whole(ws, sim, 24)
    workers = {w for (w,) in query(ws.root, "SELECT DISTINCT worker FROM events WHERE to_state = 'submitting'")}
    assert len(workers) == 2  # both really worked
    per_job = query(ws.root, "SELECT job_id, count(DISTINCT worker) FROM events GROUP BY job_id")
    assert all(n == 1 for _, n in per_job)


def test_missing_key_is_a_configuration_error(ws, sim):
    ws.storyboard("storyboard_a.json", segments("x"))
    env = api_env(sim)
    env.pop("SORA_API_KEY", None)
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 3 and "SORA_API_KEY is not set" in result.output
    assert sim.stats()["creates_received"] == 0


@both_protocols
def test_progress_lines_go_to_stderr_and_the_summary_to_stdout(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("x"))
    proc = spawn(ws.root, work_env, "run")  # pipes, not a terminal: plain lines, no live view
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert "saved output/storyboard_a/Segment_1/1_v1_" in errors and "\x1b[" not in errors
    assert "Finished in" in out and "saved output" not in out


@both_protocols
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_a_slow_download_leaves_no_partial_file(ws, make_sim, work_env, presses):
    """One Ctrl+C lets a download finish for a few seconds, then rolls it back; a second one
    aborts it at once. Either way the run ends within seconds and the next run completes it."""
    sim = make_sim(gen_seconds=0.2, video_bytes=8_000_000, file_rate=1.0)  # an 8-second download
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("a big one"))
    assert ws.cli("scan", env=env).exit_code == 0
    proc = spawn(ws.root, env, "work", "--no-progress")
    deadline = time.monotonic() + 15
    while not list((ws.root / "output").rglob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((ws.root / "output").rglob("*.part")), "the download never started"
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    sent = time.monotonic()
    out, errors = proc.communicate(timeout=30)
    waited = time.monotonic() - sent
    assert proc.returncode == 130, (out, errors)
    assert waited < (2 if presses == 2 else 9), waited
    assert leftovers(ws.root) == [] and videos(ws.root) == []
    assert query(ws.root, "SELECT state, remote_task_id IS NOT NULL, lease_owner FROM jobs") == [("downloading", 1, None)]
    resumed = ws.cli("work", "--no-progress", env=env)
    assert resumed.exit_code == 0, resumed.output
    (video,) = videos(ws.root)
    assert sha(video) == sim.stats()["video_sha256"] and sim.stats()["tasks_created"] == 1
