"""Team mode: several API keys (each with its limit of generations at once), several workers on one
ledger — PostgreSQL where machines share it — workers that die or are cut off, `ledger workers`,
`ledger migrate` and `ledger copy-ledger`.

The simulator runs in keys mode: a task belongs to the key that made it (another key's request
does not see it, as with a reseller's per-key accounts), and it records the most generations each
key ever had running at once."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from ledger.keys import fingerprint
from tests.helpers import leftovers, query, segments, spawn
from tests.integration.test_paid_once import wait_for
from tests.integration.test_work import sha, videos

KEY_A = "sora-teamkeyaaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "sora-teamkeybbbbbbbbbbbbbbbbbbbbbbbb"
KEY_X = "sora-teamkeyxxxxxxxxxxxxxxxxxxxxxxxx"  # not the account's: 401
KEY_Z = "sora-teamkeyzzzzzzzzzzzzzzzzzzzzzzzz"  # the account's, but out of money


def team_env(sim, work_env, keys: str, **extra: str):
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "SORA_API_KEY": "", "SORA_API_KEYS": keys, **extra}
    return env


def wait_or_tell(predicate, procs, what: str, timeout: float = 30.0) -> None:
    """``wait_for``, and on a timeout the workers are stopped and their output shown."""
    try:
        wait_for(predicate, timeout=timeout, what=what)
    except AssertionError:
        for proc in procs:
            proc.kill()
        raise AssertionError(f"timed out waiting for {what}: " + " | ".join(
            (proc.communicate()[1] or "")[-1500:] for proc in procs)) from None


def pg_query(url: str, sql: str):
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.postgres
def test_three_workers_two_keys_200_jobs_one_worker_killed(ws, make_sim, work_env, pg_url):
    """The acceptance run: 3 worker processes on one PostgreSQL ledger, 2 keys with limits 2 and 3,
    200 jobs, one worker killed -9 mid-run. Every job is done once, no key ever ran more
    generations at once than its limit (counted by the API), nothing was paid twice."""
    sim = make_sim(gen_seconds=0.3, api_key=None, keys={KEY_A: 2, KEY_B: 3})
    env = team_env(sim, work_env, f"{KEY_A}@2,{KEY_B}@3", LEDGER_DATABASE_URL=pg_url, MAX_CONCURRENT_TASKS="4",
                   LEASE_SECONDS="6")
    prompts = [f"team shot {i}" for i in range(200)]
    ws.storyboard("storyboard_team.json", segments(*prompts))
    assert ws.cli("scan", env=env).exit_code == 0
    procs = [spawn(ws.root, env, "work", "--no-progress") for _ in range(3)]
    wait_or_tell(lambda: sim.stats()["tasks_created"] >= 40, procs, "the run under way", timeout=60)
    procs[0].kill()
    procs[0].wait()
    outputs = [p.communicate(timeout=240) for p in procs[1:]]
    assert [p.returncode for p in procs[1:]] == [0, 0], outputs
    stats = sim.stats()
    assert pg_query(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 200)]
    assert stats["tasks_created"] == 200 and set(stats["creates_per_prompt"].values()) == {1}  # 0 paid twice
    assert stats["peak_running_by_key"][KEY_A] <= 2 and stats["peak_running_by_key"][KEY_B] <= 3, stats
    assert stats["key_limit_refusals"] == 0
    # both keys worked, and each job names the key its task belongs to (fingerprints, never keys)
    by_key = dict(pg_query(pg_url, "SELECT key_fp, count(*) FROM jobs GROUP BY key_fp"))
    assert by_key == {fingerprint(KEY_A): stats["tasks_by_key"][KEY_A], fingerprint(KEY_B): stats["tasks_by_key"][KEY_B]}
    files = videos(ws.root)
    assert len(files) == 200 and all(sha(f) == stats["video_sha256"] for f in files)
    assert leftovers(ws.root) == []
    for stdout, stderr in outputs:
        assert KEY_A not in stdout + stderr and KEY_B not in stdout + stderr


def test_per_key_limits_hold_and_each_job_is_polled_with_its_own_key(ws, make_sim, work_env):
    """Two workers on one SQLite ledger, keys limited to 1 and 2: never more at once than that, even
    though each worker could run 4; a job's polls and download go with the key that created it (the
    API hides a task from every other key, so any other key would fail the job)."""
    sim = make_sim(gen_seconds=0.4, api_key=None, keys={KEY_A: 1, KEY_B: 2})
    env = team_env(sim, work_env, f"{KEY_A}@1, {KEY_B}@2", MAX_CONCURRENT_TASKS="4")
    ws.storyboard("storyboard_k.json", segments(*[f"key shot {i}" for i in range(18)]))
    assert ws.cli("scan", env=env).exit_code == 0
    procs = [spawn(ws.root, env, "work", "--no-progress") for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    stats = sim.stats()
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 18)]
    assert stats["peak_running_by_key"] == {KEY_A: 1, KEY_B: 2}  # used to the limit, never past it
    assert stats["key_limit_refusals"] == 0 and stats["tasks_created"] == 18
    assert {fp for (fp,) in query(ws.root, "SELECT DISTINCT key_fp FROM jobs")} == {fingerprint(KEY_A),
                                                                                   fingerprint(KEY_B)}


def test_a_refused_key_leaves_the_rotation_with_one_line_and_the_others_go_on(ws, make_sim, work_env):
    """A key the API refuses (401) and one without balance are taken out of rotation, each with one
    line that never shows the key; the jobs go with the key that works."""
    sim = make_sim(gen_seconds=0.2, api_key=None, keys={KEY_A: None, KEY_Z: None}, broke_keys=(KEY_Z,))
    env = team_env(sim, work_env, f"{KEY_A},{KEY_X},{KEY_Z}", MAX_CONCURRENT_TASKS="3")
    ws.storyboard("storyboard_r.json", segments(*[f"rotation shot {i}" for i in range(9)]))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 9)], result.output[-1500:]
    assert sim.stats()["tasks_by_key"] == {KEY_A: 9}
    lines = [line for line in result.output.splitlines() if "taken out of rotation" in line]
    assert len(lines) == 2, result.output
    assert any(fingerprint(KEY_X) in line and "401" in line for line in lines)
    assert any(fingerprint(KEY_Z) in line and "balance" in line for line in lines)
    assert KEY_X not in result.output and KEY_Z not in result.output
    # every machine goes by it: the ledger says which keys are out, and why
    out = dict(query(ws.root, "SELECT fingerprint, out_reason IS NOT NULL FROM api_keys"))
    assert out == {fingerprint(KEY_A): 0, fingerprint(KEY_X): 1, fingerprint(KEY_Z): 1}
    shown = ws.cli("workers", "--all", env=env)
    assert shown.exit_code == 0 and f"key {fingerprint(KEY_X)} out of rotation since" in shown.output, shown.output
    assert "refused (401)" in shown.output and KEY_X not in shown.output


@pytest.mark.postgres
def test_a_worker_cut_off_after_its_post_is_taken_over_and_nothing_is_paid_twice(ws, make_sim, work_env, pg_url):
    """Worker A sends a create and is frozen (SIGSTOP: cut off from everything) before the answer
    arrives. Worker B, already running, takes A's job over once A's lease lapses — it finds A's
    task and adopts it — and finishes it. When A comes back, the answer it reads is not
    recorded a second time: it lets the job go. One task, paid once."""
    sim = make_sim(gen_seconds=0.3, create_latency=1.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "LEDGER_DATABASE_URL": pg_url, "LEASE_SECONDS": "3",
           "RECONCILE_GRACE_SECONDS": "0.5"}
    ws.storyboard("storyboard_c.json", segments("cut off shot"))
    assert ws.cli("scan", env=env).exit_code == 0
    a = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["creates_received"] >= 1, [a], "A's create")
    os.kill(a.pid, signal.SIGSTOP)
    started = time.monotonic()
    b = spawn(ws.root, env, "work", "--no-progress")
    try:
        assert b.wait(timeout=60) == 0, b.communicate()
        took = time.monotonic() - started
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=60)
    assert a.returncode == 0, a_err
    assert pg_query(pg_url, "SELECT state FROM jobs") == [("done",)]
    assert sim.stats()["tasks_created"] == 1 and sim.stats()["creates_received"] == 1
    found = pg_query(pg_url, "SELECT worker FROM events WHERE detail LIKE 'found the lost create%'")
    assert len(found) == 1
    assert took < 3 * 3 + 10  # within a lease period or so, not at some later start
    assert len(videos(ws.root)) == 1 and leftovers(ws.root) == []


def test_ledger_workers_lists_live_workers_and_status_shows_them(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=3.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "MAX_CONCURRENT_TASKS": "2"}
    ws.storyboard("storyboard_w.json", segments("w1", "w2", "w3"))
    assert ws.cli("scan", env=env).exit_code == 0
    worker = spawn(ws.root, env, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["tasks_created"] >= 2, [worker], "two generations running")
    time.sleep(0.3)
    listed = ws.cli("workers", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["workers"]
    assert [(r["pid"], r["status"], r["jobs_held"]) for r in rows] == [(worker.pid, "live", 2)]
    assert rows[0]["host"] == os.uname().nodename
    text = ws.cli("workers", env=env).output
    assert str(worker.pid) in text and "2/2" in text
    status = ws.cli("status", "--json", env=env)
    assert [w["pid"] for w in json.loads(status.output.replace("\n", ""))["workers"]] == [worker.pid]
    assert "Workers: 1 live" in ws.cli("status", env=env).output
    assert worker.wait(timeout=60) == 0
    assert json.loads(ws.cli("workers", "--json", env=env).output)["workers"] == []
    after = json.loads(ws.cli("workers", "--json", "--all", env=env).output)["workers"]
    assert [(r["pid"], r["status"]) for r in after] == [(worker.pid, "stopped")]


@pytest.mark.postgres
def test_a_sqlite_ledger_moves_to_postgres_with_copy_ledger(ws, sim, work_env, pg_url):
    """`ledger migrate` prepares the shared database; `ledger copy-ledger --to URL` copies every
    job, event and pick; work goes on there without paying again for what was done."""
    ws.storyboard("storyboard_m.json", segments("m1", "m2", "m3"))
    assert ws.cli("run", "--no-progress", "--limit", "2", env=work_env).exit_code == 0
    migrated = ws.cli("migrate", env={**work_env, "LEDGER_DATABASE_URL": pg_url})
    assert migrated.exit_code == 0 and "up to date" in migrated.output
    copied = ws.cli("copy-ledger", "--to", pg_url, env=work_env)
    assert copied.exit_code == 0, copied.output
    assert f"LEDGER_DATABASE_URL={pg_url}" in copied.output
    local = query(ws.root, "SELECT id, state, remote_task_id FROM jobs ORDER BY id")
    assert pg_query(pg_url, "SELECT id, state, remote_task_id FROM jobs ORDER BY id") == local
    assert pg_query(pg_url, "SELECT count(*) FROM events") == query(ws.root, "SELECT count(*) FROM events")
    again = ws.cli("copy-ledger", "--to", pg_url, env=work_env)
    assert again.exit_code != 0 and "already holds 3 job(s)" in again.output
    pg_env = {**work_env, "LEDGER_DATABASE_URL": pg_url}
    assert ws.cli("work", "--no-progress", env=pg_env).exit_code == 0
    assert pg_query(pg_url, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 3)]
    assert sim.stats()["tasks_created"] == 3  # the two done before the move were not made again
    ws.storyboard("storyboard_n.json", segments("n1"))  # new rows get ids after the copied ones
    assert ws.cli("scan", env=pg_env).exit_code == 0
    assert pg_query(pg_url, "SELECT count(*) FROM jobs") == [(4,)]


def test_keys_never_reach_the_ledger(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.1, api_key=None, keys={KEY_A: 1, KEY_B: 1})
    env = team_env(sim, work_env, f"{KEY_A}@1,{KEY_B}@1")
    ws.storyboard("storyboard_s.json", segments("s1", "s2"))
    assert ws.cli("run", "--no-progress", env=env).exit_code == 0
    raw = (ws.root / "ledger.db").read_bytes()
    assert KEY_A.encode() not in raw and KEY_B.encode() not in raw
    assert fingerprint(KEY_A).encode() in raw
    with sqlite3.connect(ws.root / "ledger.db") as conn:
        shown = [s for (s,) in conn.execute("SELECT shown FROM api_keys")]
    assert shown and all("…" in s for s in shown)


@pytest.mark.postgres
def test_two_machines_registering_the_same_key_at_once_both_start(pg_url):
    """Machine B inserts the key's row while machine A is between its look for the row and its own
    insert (held there on purpose: B's transaction stays open until A waits on it). A must not
    fail on the duplicate: it takes the row B made."""
    import threading

    import psycopg

    from ledger.db import open_ledger
    from ledger.store import Store

    store = Store(open_ledger(pg_url))
    fp = fingerprint(KEY_A)
    other = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    other.execute("INSERT INTO api_keys (fingerprint, provider, shown, seen_at) VALUES (%s, 'sora_hk', 'B', now())",
                  (fp,))  # not committed: A's UPDATE does not see it, A's INSERT waits for it
    errors = []
    thread = threading.Thread(target=lambda: _register(store, fp, errors))
    thread.start()
    wait_for(lambda: pg_query(pg_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] >= 1,
             what="A waiting on B's row")
    other.commit()
    other.close()
    thread.join(timeout=30)
    assert errors == []
    assert pg_query(pg_url, "SELECT provider, shown, concurrency FROM api_keys") == [("sora_hk", "sora-…aaaa", 2)]
    store.engine.dispose()


def _register(store, fp, errors) -> None:
    try:
        store.register_keys([(fp, "sora_hk", "sora-…aaaa", 2, None)])
    except Exception as exc:  # noqa: BLE001 - the test reports it
        errors.append(exc)


def test_a_key_with_a_spend_cap_stops_taking_creates_at_its_cap(ws, make_sim, work_env):
    """config.yaml gives key A a cap of $0.60 (two generations at $0.30): the third and later go
    with key B, and nothing waits for A."""
    sim = make_sim(gen_seconds=0.1, api_key=None, keys={KEY_A: None, KEY_B: None})
    (ws.root / "config.yaml").write_text(
        f"keys:\n  - {{provider: sora_hk, key: {KEY_A}, max_spend: $0.60}}\n"
        f"  - {{provider: sora_hk, key: {KEY_B}, concurrency: 1}}\n", encoding="utf-8")
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "SORA_API_KEY": "", "MAX_CONCURRENT_TASKS": "2"}
    ws.storyboard("storyboard_cap.json", segments(*[f"capped shot {i}" for i in range(7)]))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 7)]
    assert sim.stats()["tasks_by_key"] == {KEY_A: 2, KEY_B: 5}
    listed = json.loads(ws.cli("workers", "--json", env=env).output)["keys"]
    assert {(k["fingerprint"], k["spent"], k["max_spend"]) for k in listed} == {
        (fingerprint(KEY_A), "$0.60", "$0.60"), (fingerprint(KEY_B), "$1.50", None)}


def test_a_refused_first_key_leaves_the_rotation_at_the_pre_flight_and_the_team_goes_on(ws, make_sim, work_env):
    """`SORA_API_KEYS=BAD@2,GOOD@3`: the pre-flight used to try only the first key and stop the whole
    run (exit 3, 0 of 6 made), naming SORA_API_KEY, which was not set. Every key is pre-flighted; the
    refused one leaves rotation with one masked line and the good one makes all six."""
    sim = make_sim(gen_seconds=0.1, api_key=None, keys={KEY_B: 3})
    env = team_env(sim, work_env, f"{KEY_X}@2,{KEY_B}@3", MAX_CONCURRENT_TASKS="3")
    ws.storyboard("storyboard_p.json", segments(*[f"pre-flight shot {i}" for i in range(6)]))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["tasks_by_key"] == {KEY_B: 6}
    lines = [line for line in result.output.splitlines() if fingerprint(KEY_X) in line]
    assert len(lines) == 1 and "SORA_API_KEYS" in lines[0] and "taken out of rotation" in lines[0], result.output
    assert KEY_X not in result.output and KEY_X[5:] not in result.output


def test_when_no_key_is_usable_the_message_names_the_setting_the_keys_came_from(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.1, api_key=None, keys={KEY_B: 3})
    ws.storyboard("storyboard_p.json", segments("never made"))
    result = ws.cli("run", "--no-progress", env=team_env(sim, work_env, f"{KEY_X}@2"))
    assert result.exit_code == 3, result.output
    assert "SORA_API_KEYS" in result.output and "SORA_API_KEY " not in result.output + " ", result.output
    assert KEY_X not in result.output and sim.stats()["tasks_created"] == 0
    result = ws.cli("run", "--no-progress", env=team_env(sim, work_env, f"{KEY_X}@2,{KEY_A}@1"))
    assert result.exit_code == 3, result.output
    assert "every sora_hk key is refused" in result.output and fingerprint(KEY_A) in result.output


def test_a_key_removed_between_runs_parks_its_paid_jobs_until_it_is_back(ws, make_sim, work_env):
    """Run with keys A and B, stopped while B's generations run; run again with A only: B's tasks
    used to be polled with A, answer 404 and fail as task_not_found (and `requeue` paid again).
    They wait, untouched, and the run says so once; with B back they are collected, paid once."""
    sim = make_sim(gen_seconds=2.5, api_key=None, keys={KEY_A: 2, KEY_B: 2})
    ws.storyboard("storyboard_g.json", segments(*[f"gone key shot {i}" for i in range(4)]))
    both = team_env(sim, work_env, f"{KEY_A}@2,{KEY_B}@2", MAX_CONCURRENT_TASKS="4")
    assert ws.cli("scan", env=both).exit_code == 0
    first = spawn(ws.root, both, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["tasks_created"] == 4, [first], "four creates")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert sim.stats()["tasks_by_key"] == {KEY_A: 2, KEY_B: 2}
    only_a = {**team_env(sim, work_env, "", MAX_CONCURRENT_TASKS="4"), "SORA_API_KEY": KEY_A}  # one plain key
    result = ws.cli("work", "--no-progress", env=only_a)
    assert result.exit_code == 0, result.output
    states = dict(query(ws.root, "SELECT key_fp, group_concat(state) FROM jobs GROUP BY key_fp"))
    assert states == {fingerprint(KEY_A): "done,done", fingerprint(KEY_B): "submitted,submitted"}, result.output
    waiting = [line for line in result.output.splitlines() if fingerprint(KEY_B) in line]
    assert len(waiting) == 1 and "2 paid jobs wait for" in waiting[0] and "add it back" in waiting[0], result.output
    assert "run `ledger work` again to collect" not in result.output
    assert KEY_B not in result.output
    result = ws.cli("work", "--no-progress", env=both)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 4)]
    assert sim.stats()["tasks_created"] == 4  # nothing paid twice
