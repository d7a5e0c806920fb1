"""Paid exactly once at the edges: deep and busy task lists, killed workers, two projects on one key,
scans racing workers, hostile task ids and lost tasks — through `ledger` processes, the simulator
over sockets and real ledger files."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.helpers import api_env, both_protocols, job_price, leftovers, query, segments, spawn
from tests.integration.test_work import sha, videos


def charged(sim) -> int:
    """What the simulator billed the account, in cents."""
    return sim.config.balance - sim.stats()["balance"]


def linked(root: Path) -> List[str]:
    return [t for (t,) in query(root, "SELECT remote_task_id FROM jobs WHERE remote_task_id IS NOT NULL")]


def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def finish(proc, timeout: float = 120):
    out, errors = proc.communicate(timeout=timeout)
    return proc.returncode, out, errors


@both_protocols
def test_a_lost_create_pushed_300_tasks_deep_is_found_not_paid_again(ws, make_sim, work_env):
    """Before: the look-up stopped after 5 pages (250 tasks) and took "not found" for "not created"."""
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "2"}
    ws.storyboard("storyboard_a.json", segments("the create whose answer is lost"))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 1, what="the lost create")
    for i in range(300):  # another client of the account, while the worker waits to look it up
        sim.create_external(f"another client's shot {i}")
    code, out, errors = finish(proc)
    assert code == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["the create whose answer is lost"] == 1
    (task,) = [t["task_id"] for t in sim.tasks() if t["prompt"] == "the create whose answer is lost"]
    assert linked(ws.root) == [task]
    assert query(ws.root, "SELECT state, spent_cents FROM jobs") == [("done", job_price(sim))]
    assert any("found the lost create's task" in d for (d,) in query(ws.root, "SELECT detail FROM events"))


@both_protocols
def test_a_busy_account_never_makes_a_lost_create_look_uncreated(ws, make_sim, work_env):
    """Another client keeps creating tasks the whole time; 4 of 16 create answers are lost."""
    sim = make_sim(gen_seconds=0.5, create_latency=0.05)
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "8", "RECONCILE_GRACE_SECONDS": "1"}
    prompts = [f"busy shot {i}" for i in range(16)]
    ws.storyboard("storyboard_a.json", segments(*prompts))
    sim.inject("create", "lost_create", count=4)
    stop = threading.Event()
    external: List[str] = []

    def other_client() -> None:
        while not stop.is_set():
            external.append(sim.create_external(f"someone else {len(external)}"))
            time.sleep(0.005)

    noise = threading.Thread(target=other_client, daemon=True)
    noise.start()
    try:
        code, out, errors = finish(spawn(ws.root, env, "run", "--no-progress"))
    finally:
        stop.set()
        noise.join()
    assert code == 0, (out, errors)
    per_prompt = sim.stats()["creates_per_prompt"]
    assert all(per_prompt[p] == 1 for p in prompts), {p: per_prompt[p] for p in prompts}
    ours = {t["task_id"] for t in sim.tasks() if t["prompt"] in prompts}
    assert sorted(linked(ws.root)) == sorted(ours)
    # the money the ledger records is exactly what the account was billed for our jobs
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(charged(sim) - job_price(sim) * len(external),)]
    assert len(external) > 200


@both_protocols
def test_a_list_that_never_reaches_the_create_leaves_the_job_unresolved_not_resubmitted(ws, make_sim, work_env):
    sim = make_sim(list_ignores_page=True)  # a broken server: every page is page 1
    env = {**work_env, **api_env(sim), "MAX_ATTEMPTS": "2", "RECONCILE_GRACE_SECONDS": "2"}
    ws.storyboard("storyboard_a.json", segments("lost and unfindable"))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 1, what="the lost create")
    for i in range(120):  # push it off page 1 (50 tasks a page on sora.hk, 100 on /v1/videos), the only page shown
        sim.create_external(f"newer shot {i}")
    code, out, errors = finish(proc)
    assert code == 0, (out, errors)
    assert "could not be looked up" in out
    assert sim.stats()["creates_per_prompt"]["lost and unfindable"] == 1
    assert query(ws.root, "SELECT state, error_kind, remote_task_id, lease_owner FROM jobs") == [
        ("submitting", "unresolved", None, None)]
    assert "1 job(s) are unresolved" in ws.cli("status", env=env).output
    show = ws.cli("show", "1", env=env)
    assert "unresolved" in show.output and "repeated itself" in show.output
    # a later run asks again, and still never sends the create twice
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))
    assert code == 0 and sim.stats()["creates_per_prompt"]["lost and unfindable"] == 1


@both_protocols
def test_a_survivor_reconciles_a_killed_workers_create_even_300_tasks_later(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.3, create_latency=1.0)  # the task is made; its answer comes a second later
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("made, then the worker died"))
    assert ws.cli("scan", env=env).exit_code == 0
    victim = spawn(ws.root, env, "work", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 1, what="the create")
    victim.kill()
    victim.wait()
    assert query(ws.root, "SELECT state, remote_task_id FROM jobs") == [("submitting", None)]
    for i in range(300):
        sim.create_external(f"meanwhile {i}")
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))
    assert code == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["made, then the worker died"] == 1
    assert query(ws.root, "SELECT state, spent_cents FROM jobs") == [("done", job_price(sim))]
    assert "1 saved, 1 paid earlier and collected; nothing paid." in out


@both_protocols
def test_two_projects_on_one_key_each_pay_once(tmp_path, make_sim, work_env):
    sim = make_sim(gen_seconds=0.5, create_latency=0.05)
    sim.inject("create", "lost_create", count=8)
    procs, roots = [], []
    for name in ("film_a", "film_b"):
        root = tmp_path / name
        (root / "input").mkdir(parents=True)
        (root / "input" / "storyboard.json").write_text(
            json.dumps(segments(*[f"{name} shot {i}" for i in range(30)])), encoding="utf-8")
        roots.append(root)
        procs.append(spawn(root, {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "8",
                                  "RECONCILE_GRACE_SECONDS": "1"}, "run", "--no-progress"))
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    a, b = (set(linked(root)) for root in roots)
    assert len(a) == len(b) == 30 and not a & b
    assert a | b == {t["task_id"] for t in sim.tasks()}
    assert sim.stats()["tasks_created"] == 60


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_scans_racing_a_worker_never_touch_paid_jobs(ws, make_sim, work_env, backend, request):
    """64 jobs, prompts edited and re-scanned while `ledger work` runs; then the storyboard is deleted
    mid-run. Before: 65 paid creates, paid jobs back to pending, a paid job `removed`."""
    env = dict(work_env)
    if backend == "postgres":
        env["LEDGER_DATABASE_URL"] = request.getfixturevalue("pg_url")
    sim = make_sim(gen_seconds=1.0, create_latency=0.1)
    env.update(api_env(sim), MAX_CONCURRENT_TASKS="8")
    board = ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(64)]))
    assert ws.cli("scan", env=env).exit_code == 0
    worker = spawn(ws.root, env, "work", "--no-progress")
    for edit in range(9):
        ws.storyboard("storyboard_a.json", segments(*[f"shot {i} take {edit}" for i in range(64)]))
        result = ws.cli("scan", env=env)
        assert result.exit_code == 0, result.output
    code, out, errors = finish(worker)
    assert code == 0, (out, errors)
    assert sim.stats()["tasks_created"] == 64
    tasks = {t["task_id"]: t for t in sim.tasks()}
    rows = _rows(ws, env, "SELECT state, remote_task_id, params FROM jobs")
    assert all(state == "done" for state, _, _ in rows)
    for _, task_id, params in rows:  # each job keeps the prompt it was paid for
        assert (params if isinstance(params, dict) else json.loads(params))["prompt"] == tasks[task_id]["prompt"]

    # a storyboard deleted during a run: paid jobs are still collected, never `removed`
    ws.storyboard("storyboard_b.json", segments(*[f"second film {i}" for i in range(8)]))
    assert ws.cli("scan", env=env).exit_code == 0
    worker = spawn(ws.root, env, "work", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 64 + 8, what="the second film's creates")
    (ws.input / "storyboard_b.json").unlink()
    board.unlink()
    assert ws.cli("scan", env=env).exit_code == 0
    code, out, errors = finish(worker)
    assert code == 0, (out, errors)
    states = dict(_rows(ws, env, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert states == {"done": 72}, states
    assert sim.stats()["tasks_created"] == 72


def _rows(ws, env, sql):
    url = env.get("LEDGER_DATABASE_URL")
    if not url:
        return query(ws.root, sql)
    import psycopg

    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def test_a_task_booked_after_a_lost_answer_costs_what_the_api_charged(ws, make_sim, work_env):
    """Before: adopted tasks were booked at the fallback price (30) instead of the API's (3)."""
    sim = make_sim(normal_price=3, list_shows_cost=False)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("cheap", "cheaper"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT sum(spent_cents), count(*) FROM jobs") == [(charged(sim), 2)]
    assert charged(sim) == 6
    # scan and status quote the price the API gave, and say where it came from
    status = ws.cli("status", env=env)
    assert "normal $0.03" in status.output and "GET /pricing" in status.output


def test_max_spend_is_never_exceeded_at_high_concurrency(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.3, create_latency=0.2)
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(40)]))
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "32"}
    result = ws.cli("run", "--no-progress", "--max-spend", "300c", env=env)
    assert result.exit_code == 4, result.output
    assert charged(sim) == 300 and sim.stats()["tasks_created"] == 10
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(300,)]


def test_a_task_the_api_no_longer_knows_ends_the_job(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=3.0)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("vanishes", "stays"))
    proc = spawn(ws.root, env, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 2, what="both creates")
    sim.forget(next(t["task_id"] for t in sim.tasks() if t["prompt"] == "vanishes"))
    started = time.monotonic()
    code, out, errors = finish(proc, timeout=60)
    assert code == 1, (out, errors)
    assert time.monotonic() - started < 30
    assert dict(query(ws.root, "SELECT segment_index, error_kind FROM jobs")) == {1: "task_not_found", 2: None}
    # nothing to download: requeue generates it again rather than polling a task that is gone
    assert "0 to download again" in ws.cli("requeue", "--failed", env=env).output


@pytest.mark.parametrize("task_id", ["nul\x00in\x00the\x00id", "tab\there", "x" * 5000])
def test_an_unusable_task_id_ends_the_job_with_its_cost_booked(ws, sim, work_env, task_id):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("create", "task_id", task_id=task_id)
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT state, error_kind, remote_task_id, spent_cents FROM jobs") == [
        ("failed", "invalid_task_id", None, 30)]
    assert sim.stats()["creates_received"] == 1 and charged(sim) == 30


@pytest.mark.parametrize("task_id", ["../../../escape", "a/b\\c", "t" * 300])
def test_odd_but_usable_task_ids_are_stored_and_never_leave_the_output_folder(ws, sim, work_env, task_id):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("create", "task_id", task_id=task_id)
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, remote_task_id FROM jobs") == [("done", task_id)]
    (video,) = videos(ws.root)
    assert video.parent == ws.root / "output" / "storyboard_a" / "Segment_1"
    assert sha(video) == sim.stats()["video_sha256"]
    assert all(ws.output in p.parents for p in ws.root.rglob("*.mp4"))


def test_a_live_worker_adopts_a_killed_workers_jobs_during_its_run(ws, make_sim, work_env):
    """Before: the survivor only freed dead workers' leases when it started, and could exit 0 leaving
    their jobs behind until the leases (120 s) expired."""
    sim = make_sim(gen_seconds=2.0)
    env = {**work_env, **api_env(sim), "LEASE_SECONDS": "8"}
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(8)]))
    assert ws.cli("scan", env=env).exit_code == 0
    survivor = spawn(ws.root, {**env, "MAX_CONCURRENT_TASKS": "2"}, "work", "--no-progress")
    wait_for(lambda: query(ws.root, "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL")[0][0] >= 2,
             what="the survivor's claims")
    victim = spawn(ws.root, {**env, "MAX_CONCURRENT_TASKS": "6"}, "work", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 8, what="the victim's creates")
    victim.kill()
    victim.wait()
    started = time.monotonic()
    code, out, errors = finish(survivor, timeout=60)
    assert code == 0, (out, errors)
    assert time.monotonic() - started < 8  # well before the victim's leases would have expired
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 8)]
    assert sim.stats()["tasks_created"] == 8 and leftovers(ws.root) == []


@contextmanager
def ledger_locked(root: Path) -> Iterator[None]:
    """Another process's write transaction on the ledger file: SQLite's write lock, held."""
    with closing(sqlite3.connect(root / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def test_a_ledger_locked_when_the_create_answers_pays_once_and_records_it_later(ws, make_sim, work_env):
    """Before: any database error after a successful POST re-ran the submit step (a job created twice
    with SQLite locked by another process for 40 s; 32 creates for 4 jobs on PostgreSQL)."""
    sim = make_sim(gen_seconds=0.3, create_latency=1.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_BUSY_TIMEOUT": "0.5"}
    ws.storyboard("storyboard_a.json", segments("answered while the ledger is locked"))
    assert ws.cli("scan", env=env).exit_code == 0
    proc = spawn(ws.root, env, "work", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 1, what="the create")
    with ledger_locked(ws.root):  # held for 6 s, across the create's answer (1 s after the task was made)
        time.sleep(6)
        journals = {p: p.read_text(encoding="utf-8") for p in ws.root.glob("ledger.db-created/*.jsonl")}
    code, out, errors = finish(proc)
    assert code == 0, (out, errors)
    assert sim.stats()["creates_received"] == 1
    (task,) = [t["task_id"] for t in sim.tasks()]
    assert query(ws.root, "SELECT state, remote_task_id, spent_cents FROM jobs") == [("done", task, 30)]
    assert len(journals) == 1 and task in list(journals.values())[0]  # kept on disk meanwhile
    assert list(ws.root.glob("ledger.db-created/*.jsonl")) == []  # and forgotten once recorded


def test_a_ledger_locked_for_good_stops_the_run_and_the_next_run_adopts_the_journaled_task(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.3, create_latency=1.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_BUSY_TIMEOUT": "0.5"}
    ws.storyboard("storyboard_a.json", segments("paid, and the ledger never came back"))
    assert ws.cli("scan", env=env).exit_code == 0
    proc = spawn(ws.root, env, "work", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 1, what="the create")
    with ledger_locked(ws.root):
        code, out, errors = finish(proc, timeout=60)  # patience: 10 s
    assert code == 5, (out, errors)
    assert "has been unavailable" in errors and "Traceback" not in errors
    assert query(ws.root, "SELECT state, remote_task_id FROM jobs") == [("submitting", None)]
    (journal,) = list(ws.root.glob("ledger.db-created/*.jsonl"))
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))
    assert code == 0, (out, errors)
    assert sim.stats()["creates_received"] == 1 and sim.stats()["requests_by_route"].get("tasks", 0) == 0
    assert query(ws.root, "SELECT state, spent_cents FROM jobs") == [("done", 30)]
    assert any("journaled while the ledger was unavailable" in d for (d,) in query(ws.root, "SELECT detail FROM events"))
    assert not journal.exists()


@both_protocols
def test_a_lost_create_on_an_api_whose_clock_runs_ten_minutes_ahead_is_found_not_paid_again(ws, make_sim, work_env):
    """The look-up's window is in this machine's time, the task's in the API's: with the fixed 120 s
    allowance a task stamped 10 minutes "later" fell outside it and the job was sent again. The API's
    Date header shows the offset, and the allowance widens by it."""
    sim = make_sim(gen_seconds=0.3, clock_offset=600.0)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "1"}
    ws.storyboard("storyboard_a.json", segments("the create whose answer is lost, on a skewed API"))
    sim.inject("create", "lost_create")
    code, out, errors = finish(spawn(ws.root, env, "run", "--no-progress"))
    assert code == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["the create whose answer is lost, on a skewed API"] == 1
    assert query(ws.root, "SELECT state, spent_cents FROM jobs") == [("done", job_price(sim))]


def test_reconcile_skew_is_a_setting(ws, make_sim, work_env):
    """RECONCILE_SKEW_SECONDS widens the window by hand (an API whose answers carry no Date header)."""
    from ledger.settings import load_settings

    assert load_settings(ws.root, {}).reconcile_skew_seconds == 120.0
    assert load_settings(ws.root, {"RECONCILE_SKEW_SECONDS": "900"}).reconcile_skew_seconds == 900.0


def test_a_key_refused_while_a_lost_create_is_looked_up_keeps_the_job_unresolved_not_pending(ws, make_sim, work_env):
    """The create's answer is lost; the look-up that follows meets a 401 (the key revoked meanwhile).
    That says nothing about the create: the job used to go back to `pending` as "not created", and
    the next run, with a key that works, paid for it a second time. It keeps its write-ahead."""
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "0.2"}
    ws.storyboard("storyboard_a.json", segments("created, answer lost, key revoked"))
    sim.inject("create", "lost_create")
    sim.inject("tasks", "envelope", count=50, code=401, message="API密钥无效或已禁用")
    code, out, errors = finish(spawn(ws.root, env, "run", "--no-progress"))
    assert code == 3, (out, errors)
    assert query(ws.root, "SELECT state FROM jobs") == [("submitting",)]
    sim.clear_faults()  # the key is accepted again
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))
    assert code == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["created, answer lost, key revoked"] == 1
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)]
