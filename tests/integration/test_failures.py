"""Failures and money: every failure class ends in its documented state and exit code, nothing is
paid twice, the balance is never burnt in a loop, and the key never shows."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from tests.helpers import as_generation_failures, both_protocols, leftovers, query, segments, spawn
from tests.integration.conftest import API_KEY
from tests.integration.test_work import assert_all_done_and_whole, assert_every_job_paid_once

REJECT = "[policy-reject]"


def exported_path(result) -> str:
    """The path export-failed prints last (older click mixes the stderr count line into stdout)."""
    return result.stdout.strip().splitlines()[-1]


def states(ws):
    return dict(query(ws.root, "SELECT segment_index, state FROM jobs"))


def test_a_policy_rejection_is_terminal_verbatim_and_never_resubmitted(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments(f"something forbidden {REJECT}", "a calm lake"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    (rejected,) = [t for t in sim.tasks() if REJECT in t["prompt"]]
    assert query(ws.root, "SELECT state, error_kind, error_message, remote_task_id FROM jobs WHERE segment_index = 1") == [
        ("failed", "refused", rejected["error_msg"], rejected["task_id"])]
    assert re.search(r"[\u4e00-\u9fff]", rejected["error_msg"])  # Chinese, kept as it came
    assert rejected["error_msg"] in result.output
    assert states(ws)[2] == "done"
    again = ws.cli("work", "--no-progress", env=work_env)
    assert again.exit_code == 0
    assert sim.stats()["creates_received"] == 2


def test_bad_parameters_are_terminal_at_once(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("create", "envelope", code=1001, message="参数错误：duration 不支持")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1
    assert query(ws.root, "SELECT state, error_kind, attempts, remote_task_id FROM jobs") == [
        ("failed", "bad_parameters", 1, None)]
    assert "参数错误：duration 不支持" in query(ws.root, "SELECT error_message FROM jobs")[0][0]
    assert sim.stats()["creates_received"] == 1


def test_transient_errors_retry_with_backoff_then_give_up_with_the_last_reason(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("flaky", "hopeless"))
    # well-formed error envelopes: provably nothing was created, so a resend is safe
    sim.inject("create", "envelope", count=2, code=1500, message="服务繁忙")
    env = {**work_env, "MAX_ATTEMPTS": "3", "MAX_CONCURRENT_TASKS": "1"}
    assert ws.cli("scan", env=env).exit_code == 0
    result = ws.cli("work", "--no-progress", "--limit", "1", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, attempts FROM jobs WHERE segment_index = 1") == [("done", 0)]
    retries = query(ws.root, "SELECT detail FROM events WHERE job_id = 1 AND detail LIKE 'attempt %'")
    assert len(retries) == 2 and "服务繁忙" in retries[0][0]
    sim.inject("create", "envelope", count=5, code=1500, message="服务繁忙")
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 1
    assert query(ws.root, "SELECT state, attempts, error_kind FROM jobs WHERE segment_index = 2") == [("failed", 3, "api")]
    assert sim.stats()["tasks_created"] == 1


def test_a_truncated_download_retries_the_download_only(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("file", "truncate", count=7)  # more than one download call resumes
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_received"] == 1
    assert_all_done_and_whole(ws, sim, 1)


def test_an_expired_video_url_is_refreshed_by_polling_never_by_paying(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("file", "expired", count=2)
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_received"] == 1
    assert_all_done_and_whole(ws, sim, 1)
    assert query(ws.root, "SELECT count(*) FROM events WHERE detail LIKE 'video URL expired%'") == [(2,)]


def test_a_download_that_keeps_failing_ends_failed_and_requeue_only_downloads(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("file", "http_502_html", count=100)
    env = {**work_env, "MAX_ATTEMPTS": "2"}
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1
    assert query(ws.root, "SELECT state, error_kind FROM jobs") == [("failed", "download")]
    sim.clear_faults()  # the object store comes back
    requeued = ws.cli("requeue", "--failed", env=env)
    assert "1 to download again (already paid for), 0 to generate again" in requeued.output
    assert query(ws.root, "SELECT state, attempts, remote_task_id IS NOT NULL FROM jobs") == [("submitted", 0, 1)]
    assert ws.cli("work", "--no-progress", env=env).exit_code == 0
    assert sim.stats()["creates_received"] == 1
    assert_all_done_and_whole(ws, sim, 1)


def test_a_rejected_key_stops_everything_with_exit_3_and_is_never_printed(ws, make_sim, work_env):
    sim = make_sim(api_key="sora-theRightKey000000000000000000000")
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    wrong = "sora-wrongKeyZZZZZZZZZZZZZZZZZZZZZZZZZ"
    assert ws.cli("scan", env=work_env).exit_code == 0
    result = ws.cli("-vv", "run", "--no-progress", env={**work_env, "SORA_BASE_URL": sim.base_url, "SORA_API_KEY": wrong})
    assert result.exit_code == 3
    assert "rejected" in result.output
    assert wrong not in result.output and "wrongKeyZZZZ" not in result.output
    assert sim.stats()["tasks_created"] == 0
    assert set(states(ws).values()) == {"pending"}  # nothing failed: the key was the problem
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL") == [(0,)]
    everything = "\n".join(str(v) for row in query(ws.root, "SELECT * FROM events") for v in row)
    assert wrong not in everything


def test_the_key_never_appears_in_any_output_at_any_verbosity(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one", f"two {REJECT}"))
    sim.inject("create", "http_502_html")
    for flags in ([], ["-v"], ["-vv"]):
        result = ws.cli(*flags, "run", "--no-progress", env=work_env)
        assert result.exit_code in (0, 1), result.output
        assert API_KEY not in result.output and API_KEY[5:] not in result.output
        assert ws.cli(*flags, "status", env=work_env).output.count(API_KEY) == 0
    export = exported_path(ws.cli("export-failed", env=work_env))
    assert API_KEY not in Path(export).read_text(encoding="utf-8")


def test_insufficient_balance_stops_submitting_and_finishes_what_was_paid(ws, make_sim, work_env):
    sim = make_sim(balance=60, gen_seconds=0.5)  # two normal generations
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "MAX_CONCURRENT_TASKS": "2"}
    ws.storyboard("storyboard_a.json", segments("one", "two", "three", "four"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 4, result.output
    assert "lack of balance (code 1012)" in result.output and "the balance is $0.00" in result.output
    assert "2 jobs not submitted: still pending." in result.output
    assert sorted(states(ws).values()) == ["done", "done", "pending", "pending"]
    assert_every_job_paid_once(ws, sim, 2)
    assert leftovers(ws.root) == []


@both_protocols
def test_rate_limiting_pauses_the_whole_worker(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one", "two", "three", "four"))
    sim.inject("create", "rate_limit", retry_after=1)
    result = ws.cli("run", "--no-progress", env={**work_env, "MAX_CONCURRENT_TASKS": "4"})
    assert result.exit_code == 0, result.output
    times = sim.request_times()
    creates = sorted(t for route, t in times if route == "create")
    first_create = creates[0]
    # The 429 answered the first create. The four jobs' first creates were sent together, before
    # any answer came back: those already on their way may arrive during the pause (on a loaded
    # machine, more than 0.1 s late), and nothing else may — no poll, and not the retry, which is
    # the fifth create and comes after the pause.
    paused = [route for route, t in times if first_create < t < first_create + 0.9]
    assert set(paused) <= {"create"} and len(paused) <= 3, paused
    assert len(creates) == 5 and creates[4] >= first_create + 0.9, creates
    assert_every_job_paid_once(ws, sim, 4)


def test_max_spend_caps_what_a_run_submits(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("a", "b", "c", "d", "e"))
    result = ws.cli("run", "--no-progress", "--max-spend", "70c", env={**work_env, "MAX_CONCURRENT_TASKS": "5"})
    assert result.exit_code == 4, result.output
    assert "--max-spend $0.70 reached" in result.output
    assert sim.stats()["tasks_created"] == 2  # 3 x 30 cents would pass 70
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(60,)]
    assert sorted(states(ws).values()) == ["done", "done", "pending", "pending", "pending"]


def test_dry_run_prices_the_work_and_pays_nothing(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"segments": [{"segment_index": 1, "prompt_text": "a"},
                                                     {"segment_index": 2, "prompt_text": "b", "is_pro": True}]})
    result = ws.cli("run", "--dry-run", env=work_env)
    assert result.exit_code == 0, result.output
    assert "A run would submit 2 jobs (1 normal, 1 Pro): estimated $1.80" in result.output
    assert "(GET /pricing, " in result.output
    assert "Balance $1,000.00 covers it" in result.output
    assert not (ws.root / "ledger.db").exists()
    assert ws.cli("scan", env=work_env).exit_code == 0
    work = ws.cli("work", "--dry-run", env=work_env)
    assert "A run would submit 2 jobs" in work.output
    assert sim.stats()["creates_received"] == 0
    offline = ws.cli("work", "--dry-run", env={**work_env, "SORA_BASE_URL": "http://127.0.0.1:9/v1"})
    assert offline.exit_code == 3  # the pre-flight: a dry run against nothing is not a plan
    assert "cannot reach http://127.0.0.1:9/v1: connection refused" in offline.output


def test_export_failed_writes_every_reason_atomically(ws, sim, work_env):
    ws.storyboard("ep/storyboard_a.json", segments("fine", f"bad {REJECT}"))
    ws.cli("run", "--no-progress", env=work_env)
    result = ws.cli("export-failed", env=work_env)
    assert result.exit_code == 0
    path = Path(exported_path(result))
    assert re.fullmatch(r"failed_tasks_\d{8}_\d{6}\.json", path.name) and path.parent == ws.root / "output"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["count"] == 1
    (entry,) = data["failed"]
    assert entry["storyboard"] == "input/ep/storyboard_a.json" and entry["segment_index"] == 2
    assert entry["version"] == 1 and entry["prompt"] == f"bad {REJECT}"
    assert entry["parameters"]["duration"] == 10 and entry["error_kind"] == "refused"
    assert entry["error_message"] and entry["attempts"] == 1 and entry["remote_task_id"]
    assert entry["failed_at"] and entry["submitted_at"]
    custom = ws.cli("export-failed", "--output", "mine.json", env=work_env)
    assert exported_path(custom) == "mine.json" and json.loads((ws.root / "mine.json").read_text())["count"] == 1
    assert leftovers(ws.root) == []


def _three_failures(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments(f"a1 {REJECT}", f"a2 {REJECT}", "a3"))
    ws.storyboard("storyboard_b.json", segments(f"b1 {REJECT}"))
    assert ws.cli("run", "--no-progress", env=work_env).exit_code == 1
    as_generation_failures(ws.root)


def test_requeue_selects_by_storyboard_segment_and_error_text(ws, sim, work_env):
    _three_failures(ws, sim, work_env)
    ws.cli("requeue", "--failed", "--storyboard", "*_b.json", env=work_env)
    assert query(ws.root, "SELECT s.path, j.segment_index FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                          "WHERE j.state = 'pending'") == [("input/storyboard_b.json", 1)]
    ws.cli("requeue", "--failed", "--segment", "2", env=work_env)
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'pending'") == [(2,)]
    assert ws.cli("requeue", "--failed", "--error-contains", "no such text", env=work_env).output.startswith(
        "Requeued 0 failed job(s)")
    message = query(ws.root, "SELECT error_message FROM jobs WHERE state = 'failed'")[0][0]
    ws.cli("requeue", "--failed", "--error-contains", message[:6], env=work_env)
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'failed'") == [(0,)]
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'pending' AND remote_task_id IS NULL "
                          "AND attempts = 0 AND error_message IS NULL") == [(3,)]
    assert ws.cli("requeue", env=work_env).exit_code == 2  # say what to requeue


def test_work_retry_failed_requeues_that_file_and_works_only_those(ws, sim, work_env):
    _three_failures(ws, sim, work_env)
    export = Path(exported_path(ws.cli("export-failed", env=work_env)))
    data = json.loads(export.read_text(encoding="utf-8"))
    data["failed"] = [e for e in data["failed"] if e["storyboard"].endswith("storyboard_a.json")]
    export.write_text(json.dumps(data), encoding="utf-8")
    ws.storyboard("storyboard_c.json", segments("c1"))
    assert ws.cli("scan", env=work_env).exit_code == 0
    before = sim.stats()["creates_received"]
    result = ws.cli("work", "--no-progress", "--retry-failed", str(export), env=work_env)
    assert "Requeued 2 failed job(s): 0 to download again (already paid for), 2 to generate again" in result.output
    assert sim.stats()["creates_received"] == before + 2  # the two from the file, not c1, not b1
    assert query(ws.root, "SELECT s.path, j.state FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                          "WHERE s.path LIKE '%_c.json' OR s.path LIKE '%_b.json' ORDER BY s.path") == [
        ("input/storyboard_b.json", "failed"), ("input/storyboard_c.json", "pending")]


def test_requeue_from_the_earlier_tools_list(ws, sim, work_env):
    _three_failures(ws, sim, work_env)
    legacy = ws.root / "output" / "failed_tasks_20240101_000000.json"
    legacy.write_text(json.dumps([{"storyboard_path": str(ws.input / "storyboard_a.json"), "segment_index": 1},
                                  {"storyboard_path": "input/storyboard_zzz.json", "segment_index": 9}]))
    result = ws.cli("requeue", "--from-file", str(legacy), env=work_env)
    assert "Requeued 1 failed job(s)" in result.output
    assert "not in the ledger: input/storyboard_zzz.json segment 9" in result.output


def test_a_refusal_stays_failed_through_a_plain_requeue_and_is_listed_apart(ws, sim, work_env):
    """Before: `requeue --failed` sent the refused prompt to the API again, paid, to be refused again."""
    forbidden = f"something forbidden {REJECT}"
    ws.storyboard("storyboard_a.json", segments(forbidden))
    assert ws.cli("run", "--no-progress", env=work_env).exit_code == 1
    sim.config = replace(sim.config, fail_rate=1.0)  # the next generation breaks: an ordinary failure
    ws.storyboard("storyboard_b.json", segments("a calm lake"))
    assert ws.cli("run", "--no-progress", env=work_env).exit_code == 1
    sim.config = replace(sim.config, fail_rate=0.0)
    result = ws.cli("requeue", "--failed", env=work_env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Requeued 1 failed job(s): 0 to download again (already paid for), 1 to generate again."
    assert lines[1] == ("Left failed: 1 job the API refused for its content (change the prompt, or add "
                        "--include-refused to pay for them again):")
    message = query(ws.root, "SELECT error_message FROM jobs WHERE state = 'failed'")[0][0]
    assert lines[2:] == [f"  refused: input/storyboard_a.json#1v1: {message}"]
    assert ws.cli("work", "--no-progress", env=work_env).exit_code == 0
    assert sim.stats()["creates_per_prompt"] == {forbidden: 1, "a calm lake": 2}
    assert query(ws.root, "SELECT s.path, j.state, j.error_kind FROM jobs j JOIN storyboards s "
                          "ON s.id = j.storyboard_id ORDER BY s.path") == [
        ("input/storyboard_a.json", "failed", "refused"), ("input/storyboard_b.json", "done", None)]
    # a ledger written before the `refused` kind: the API's words tell the refusal
    with closing(sqlite3.connect(ws.root / "ledger.db")) as conn, conn:
        conn.execute("UPDATE jobs SET error_kind = 'remote_failed' WHERE state = 'failed'")
    assert "Requeued 0 failed job(s)" in ws.cli("requeue", "--failed", env=work_env).output
    included = ws.cli("requeue", "--failed", "--include-refused", env=work_env)
    assert included.output.splitlines() == [
        "Requeued 1 failed job(s): 0 to download again (already paid for), 1 to generate again."]
    assert ws.cli("work", "--no-progress", env=work_env).exit_code == 1  # refused again, as asked
    assert sim.stats()["creates_per_prompt"] == {forbidden: 2, "a calm lake": 2}


def test_show_prints_parameters_task_and_history(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    ws.cli("run", "--no-progress", env=work_env)
    (task,) = sim.tasks()
    for ident in ("1", "input/storyboard_a.json#1v1"):
        result = ws.cli("show", ident, env=work_env)
        assert result.exit_code == 0, result.output
        assert task["task_id"] in result.output and '"prompt": "one"' in result.output
        for state in ("submitting", "submitted", "downloading", "done"):
            assert state in result.output
    assert ws.cli("status", "--job", "1", env=work_env).output == ws.cli("show", "1", env=work_env).output
    assert ws.cli("show", "99", env=work_env).exit_code == 2


def test_an_api_out_of_reach_mid_run_stops_the_run_and_delays_nothing_for_the_next(ws, make_sim, work_env, unused_port):
    """The API goes away while generations run: the run stops after API_PATIENCE_SECONDS with one
    line (exit 3), counts no attempt and sets no back-off, so the next run starts at once."""
    sim = make_sim(port=unused_port, gen_seconds=2.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "API_PATIENCE_SECONDS": "2", "RETRY_BASE_DELAY": "600",
           "CONNECT_TIMEOUT": "1"}
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    assert ws.cli("scan", env=env).exit_code == 0
    proc = spawn(ws.root, env, "work", "--no-progress")
    deadline = time.monotonic() + 20
    while sim.stats()["tasks_created"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sim.stop()  # nothing listens on its port any more: connection refused
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 3, (out, errors)
    assert f"cannot reach http://127.0.0.1:{unused_port}/v1" in errors and "Traceback" not in errors
    assert query(ws.root, "SELECT state, attempts, next_attempt_at FROM jobs") == [("submitted", 0, None)] * 2
    sim.start()  # the same simulator, back on the same port, its tasks intact
    started = time.monotonic()
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30  # no 600-second back-off left behind
    assert sim.stats()["tasks_created"] == 2
    assert query(ws.root, "SELECT DISTINCT state FROM jobs") == [("done",)]


def test_a_key_refused_mid_run_is_one_line_not_one_per_job(ws, make_sim, work_env):
    sim = make_sim(create_latency=0.3)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "MAX_CONCURRENT_TASKS": "6"}
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(6)]))
    assert ws.cli("scan", env=env).exit_code == 0
    sim.inject("create", "envelope", count=6, code=401, message="API密钥无效或已禁用")  # revoked after the pre-flight
    proc = spawn(ws.root, env, "work", "--no-progress")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 3, (out, errors)
    assert (out + errors).count("was rejected") == 1, (out, errors)
    assert set(states(ws).values()) == {"pending"} and sim.stats()["tasks_created"] == 0
    assert sim.stats()["creates_received"] >= 2  # several creates met the refusal at once


def test_an_outage_is_shown_while_it_lasts_and_ends_in_one_plain_line(ws, make_sim, work_env, unused_port):
    """Before: the live view showed nothing for the whole patience, then "stopping (Ctrl+C again
    aborts downloads)" though nobody pressed Ctrl+C, then urllib3's repr of the failure."""
    import threading

    from tests.terminal import run_in_terminal

    sim = make_sim(port=unused_port, gen_seconds=3.0)
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "API_PATIENCE_SECONDS": "8", "CONNECT_TIMEOUT": "1"}
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    done = {}
    runner = threading.Thread(target=lambda: done.update(result=run_in_terminal(ws.root, env, "run", columns=120)))
    runner.start()
    deadline = time.monotonic() + 20
    while sim.stats()["tasks_created"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sim.stop()
    runner.join(timeout=90)
    code, written = done["result"]
    assert code == 3, written
    assert re.search(r"API unreachable for \d+ s — retrying \(gives up after 8 s\)", written), written
    assert "Ctrl+C again" not in written
    (line,) = [l for l in written.splitlines() if "error:" in l]
    line = line[line.index("error:"):]
    assert f"cannot reach http://127.0.0.1:{unused_port}/v1: connection refused" in line, line
    assert "2 paid job(s) keep their task ids" in line and "run `ledger work` again" in line, line
    assert "HTTPConnection" not in written and "Errno" not in written
