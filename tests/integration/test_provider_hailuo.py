"""The hailuo provider (MiniMax H3 on the v2 API, Hailuo 2.3 on v1) against the simulator speaking
its protocol: whole runs on both versions, every row of the error table, lost creates found (v2,
list showing prompts) or left unresolved and never sent again (v2 list without prompts; v1, which
has no list), sensitive content refused at the create or failing the task, the balance stop, rate
limits, a refused key, an unknown status word, and the prices."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ledger.providers import RULES, Request
from ledger.providers.hailuo import Hailuo
from ledger.sim.hailuo import INPUT_SENSITIVE, OUTPUT_SENSITIVE, PROTOCOL
from ledger.sim.server import GENERATION_FAILED_MESSAGE
from tests.helpers import api_env, job_price, query, segments, spawn
from tests.integration.conftest import API_KEY
from tests.integration.test_work import assert_all_done_and_whole, assert_every_job_paid_once

V1 = "MiniMax-Hailuo-2.3"
IMAGE = "https://example.com/frames/harbour.jpg"


@pytest.fixture
def protocol() -> str:
    return "hailuo"


def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def details(ws) -> list:
    return [d for (d,) in query(ws.root, "SELECT detail FROM events")]


def charged(sim) -> int:
    return sim.config.balance - sim.stats()["balance"]


def test_a_storyboard_runs_to_done_files_on_both_minimax_apis_billed_to_the_fen(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"segments": [
        {"segment_index": 1, "prompt_text": "harbour at dawn"},
        {"segment_index": 2, "prompt_text": "gulls over the pier", "resolution": "vertical", "duration_seconds": 10,
         "is_pro": True, "image_url": IMAGE},
        {"segment_index": 3, "prompt_text": "the ferry leaves", "model": V1, "duration_seconds": 10,
         "hailuo": {"prompt_optimizer": False}},
        {"segment_index": 4, "prompt_text": "night falls", "model": V1, "quality": "high", "image_url": IMAGE}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    # H3 6 s x ¥0.50 + H3 2K 10 s x ¥0.80 + Hailuo 2.3 768P 10 s ¥4.00 + 1080P 6 s ¥3.50
    assert "4 saved; paid ¥18.50 for 4 generations." in result.output
    assert charged(sim) == 1850 == query(ws.root, "SELECT sum(spent_cents) FROM jobs")[0][0]
    assert_every_job_paid_once(ws, sim, 4)
    assert_all_done_and_whole(ws, sim, 4)
    made = {t["task_id"]: t for t in sim.tasks()}
    rows = query(ws.root, "SELECT segment_index, remote_task_id, price_key FROM jobs ORDER BY segment_index")
    assert [key for _, _, key in rows] == ["MiniMax-H3@768P:6", "MiniMax-H3@2K:10", f"{V1}@768P:10", f"{V1}@1080P:6"]
    # From a first frame H3 is sent ratio "adaptive" and the task shows the frame's shape.
    assert {k: made[rows[1][1]][k] for k in ("model", "duration", "resolution", "ratio")} == {
        "model": "MiniMax-H3", "duration": 10, "resolution": "2K", "ratio": "16:9"}
    assert made[rows[3][1]]["status"] == "Success" and made[rows[3][1]]["video_height"] == 1080  # a v1 task
    routes = sim.stats()["requests_by_route"]
    assert routes["create"] == 4 and routes["file"] == 4 and routes["query"] >= 2 and routes["retrieve"] == 2


def test_a_v1_job_picked_up_by_a_later_run_is_found_on_v1_and_fetched_through_its_file(ws, make_sim, work_env):
    """A later run knows only the task id: v2 does not know it, so the v1 query answers, then
    files/retrieve gives the download URL."""
    sim = make_sim(gen_seconds=1.0)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", {"segments": [{"segment_index": 1, "prompt_text": "rain on tin roofs",
                                                      "model": V1}]})
    first = ws.cli("run", "--no-progress", env={**env, "POLL_TIMEOUT_SECONDS": "0.1"})
    assert first.exit_code == 0, first.output
    assert query(ws.root, "SELECT state FROM jobs") == [("submitted",)]
    assert "task" not in sim.stats()["requests_by_route"]  # the run that created it knew its version
    second = ws.cli("work", "--no-progress", env=env)
    assert second.exit_code == 0, second.output
    routes = sim.stats()["requests_by_route"]
    assert routes["task"] == 1 and routes["query"] >= 2 and routes["retrieve"] == 1 and routes["file"] == 1
    assert_every_job_paid_once(ws, sim, 1)
    assert_all_done_and_whole(ws, sim, 1)
    assert charged(sim) == 200


def test_a_lost_v2_create_is_found_in_the_task_list_and_paid_once(ws, sim, work_env, monkeypatch):
    """The undocumented reading: listed tasks show their prompt, and a lost create is found by it."""
    monkeypatch.setattr(PROTOCOL, "shows_prompt", True)
    ws.storyboard("storyboard_a.json", segments("the answer to this create is lost", "another shot"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_received"] == 2
    assert_every_job_paid_once(ws, sim, 2)
    assert_all_done_and_whole(ws, sim, 2)
    assert any("found the lost create's task" in d for d in details(ws))
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(charged(sim),)] == [(2 * job_price(sim),)]


def test_when_the_list_hides_prompts_a_lost_v2_create_stays_unresolved_and_is_never_sent_again(ws, sim, work_env):
    """As documented, listed tasks do not show their prompt. The task made in the window may be the
    create's: the job waits, unresolved, and nothing is paid again."""
    env = {**work_env, "MAX_ATTEMPTS": "2"}
    ws.storyboard("storyboard_a.json", segments("lost, and the list cannot say"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert "could not be looked up" in result.output
    assert query(ws.root, "SELECT state, error_kind, remote_task_id FROM jobs") == [("submitting", "unresolved", None)]
    shown = json.loads(ws.cli("show", "1", "--json", env=env).output)
    assert "the list shows 1 task(s) of that time without their prompt" in shown["error_message"]
    assert ws.cli("work", "--no-progress", env=env).exit_code == 0
    assert sim.stats()["creates_received"] == 1 and sim.stats()["tasks_created"] == 1


def test_an_oldest_first_list_is_read_from_its_end_and_a_lost_create_is_still_found(ws, sim, work_env,
                                                                                    monkeypatch):
    """The other reading of the order ([I]): oldest first. Read from page 1 on, a search would stop
    among old tasks and take "not found" for "not created"; read from the last page back, it finds
    the create's task (by its prompt: the undocumented reading of what a listed task shows)."""
    monkeypatch.setattr(PROTOCOL, "newest_first", False)
    monkeypatch.setattr(PROTOCOL, "shows_prompt", True)
    for i in range(150):  # two pages of the account's tasks, made long before ours
        made = sim.create_external("", body={"model": "MiniMax-H3", "ratio": "16:9",
                                          "content": [{"type": "text", "text": f"old {i}"}]})
        sim.get_task(made, poll=False).created_wall -= timedelta(hours=1)
    ws.storyboard("storyboard_a.json", segments("the lost create, on the last page"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_per_prompt"]["the lost create, on the last page"] == 1
    assert any("found the lost create's task" in d for d in details(ws))
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)]


def test_a_lost_v1_create_stays_unresolved_with_its_reason_and_is_never_sent_again(ws, sim, work_env):
    # Looking again cannot settle it: the job is left unresolved at its first look-up, not after
    # MAX_ATTEMPTS growing pauses (with these, 30 + 60 + 120 + 240 s before the run could end).
    env = {**work_env, "MAX_ATTEMPTS": "5", "RETRY_BASE_DELAY": "30"}
    ws.storyboard("storyboard_a.json", {"segments": [{"segment_index": 1, "prompt_text": "a v1 create, lost",
                                                      "model": V1}]})
    sim.inject("create", "lost_create")
    run = spawn(ws.root, env, "run", "--no-progress")
    out, errors = run.communicate(timeout=100)  # with the pauses above it would still be waiting
    assert run.returncode == 0, (out, errors)
    assert "still generating remotely" not in out  # an unresolved job has no task to collect
    assert query(ws.root, "SELECT state, error_kind, remote_task_id FROM jobs") == [("submitting", "unresolved", None)]
    status = ws.cli("status", env=env).output
    assert "1 job(s) are unresolved" in status
    # MiniMax bills at the create: the job may be paid for already, and is not called unpaid.
    assert "for 1 job maybe paid (hailuo bills at the create" in status and "not yet paid" not in status
    shown = json.loads(ws.cli("show", "1", "--json", env=env).output)
    assert "the MiniMax v1 API has no task list to look it up in" in shown["error_message"]
    again = ws.cli("work", "--no-progress", env=env)
    assert again.exit_code == 0, again.output
    assert sim.stats()["creates_received"] == 1 and sim.stats()["tasks_created"] == 1
    assert query(ws.root, "SELECT count(*) FROM events WHERE detail LIKE 'unresolved:%'") == [(2,)]  # once a run


def test_a_prompt_the_api_finds_sensitive_is_refused_at_the_create_with_its_words(ws, sim, work_env):
    """1026 (input sensitive): nothing is made or billed; the job ends failed with the API's message
    (without the code v2's envelope ends it with)."""
    ws.storyboard("storyboard_a.json", segments("[policy-reject] a forbidden scene", "a fine scene"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT segment_index, state, error_kind, error_message FROM jobs ORDER BY 1") == [
        (1, "failed", "refused", INPUT_SENSITIVE), (2, "done", None, None)]
    assert sim.stats()["tasks_created"] == 1 and charged(sim) == job_price(sim)


@pytest.mark.parametrize("model", ["MiniMax-H3", V1])
def test_a_video_the_api_finds_sensitive_fails_with_its_words_and_stays_paid(ws, sim, work_env, monkeypatch, model):
    """1027 (output sensitive): the task was made and billed, then failed — said in the v2 task's
    error{code, message}, or in the v1 query's base_resp."""
    monkeypatch.setattr(PROTOCOL, "policy_check", "output")
    ws.storyboard("storyboard_a.json", {"segments": [{"segment_index": 1, "prompt_text": "[policy-reject] x",
                                                      "model": model}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    said = OUTPUT_SENSITIVE if model == V1 else f"1027: {OUTPUT_SENSITIVE}"
    assert query(ws.root, "SELECT state, error_kind, error_message FROM jobs") == [("failed", "refused", said)]
    assert OUTPUT_SENSITIVE in result.output
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(charged(sim),)] and charged(sim) > 0


@pytest.mark.parametrize("model, route", [("MiniMax-H3", "task"), (V1, "query")])
def test_a_sensitive_verdict_in_a_poll_answer_fails_the_task_with_its_words(ws, sim, work_env, model, route):
    """1026/1027 in the base_resp of a task query (with no task object beside it) is the task's
    failure, not trouble to poll through until the poll timeout."""
    ws.storyboard("storyboard_a.json", {"segments": [{"segment_index": 1, "prompt_text": "x", "model": model}]})
    sim.inject(route, "envelope", code=1026, message="input new_sensitive")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT state, error_kind, error_message FROM jobs") == [
        ("failed", "refused", "input new_sensitive")]


def test_insufficient_balance_stops_submitting_with_exit_4(ws, make_sim, work_env):
    sim = make_sim(balance=700)  # two default generations of ¥3.00
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "1"}
    ws.storyboard("storyboard_a.json", segments("one", "two", "three", "four"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 4, result.output
    assert "lack of balance (code 1008)" in result.output and "this API does not tell the balance" in result.output
    assert dict(query(ws.root, "SELECT segment_index, state FROM jobs")) == {1: "done", 2: "done", 3: "pending",
                                                                             4: "pending"}
    assert charged(sim) == 600 == query(ws.root, "SELECT sum(spent_cents) FROM jobs")[0][0]


def test_a_rate_limit_pauses_every_call_and_the_job_still_completes(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("create", "rate_limit", retry_after=1)  # 1002 with Retry-After: not created
    sim.inject("task", "envelope", code=1002, message="rate limit exceeded(RPM)")  # a poll refused too
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    creates = [t for route, t in sim.request_times() if route == "create"]
    assert len(creates) == 2 and creates[1] - creates[0] >= 0.9
    assert_every_job_paid_once(ws, sim, 1)
    assert_all_done_and_whole(ws, sim, 1)


@pytest.mark.parametrize("code, exit_code, state, kind, creates", [
    (1000, 0, "done", None, 2),  # unknown error: may have been made; not in the list, so sent again
    (1001, 0, "done", None, 2),  # timeout: the same
    (1013, 0, "done", None, 2),  # internal service error: the same
    (1002, 0, "done", None, 2),  # rate limited: not made; sent again after the pause
    (2013, 1, "failed", "bad_parameters", 1),
    (1026, 1, "failed", "refused", 1),
    (1027, 1, "failed", "refused", 1),
    (1008, 4, "pending", None, 1),
    (1004, 3, "pending", None, 1),
    (1234, 0, "done", None, 2),  # an undocumented code: an attempt counted, tried again
])
def test_every_code_of_the_error_table_at_the_create_ends_as_documented(ws, sim, work_env, code, exit_code, state,
                                                                         kind, creates):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("create", "envelope", code=code, message=f"said with code {code}")
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == exit_code, result.output
    assert query(ws.root, "SELECT state, error_kind FROM jobs") == [(state, kind)]
    assert sim.stats()["creates_received"] == creates
    assert sim.stats()["tasks_created"] == (1 if state == "done" else 0)
    if code in (1026, 1027):
        assert query(ws.root, "SELECT error_message FROM jobs") == [(f"said with code {code}",)]


def test_a_refused_key_is_one_line_exit_3_and_never_printed(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    wrong = "sk-api-WrongWrongWrongWrong0123456789abcdef"
    result = ws.cli("run", "--no-progress", env={**work_env, "MINIMAX_API_KEY": wrong})
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if "rejected" in line]
    assert len(errors) == 1 and "check MINIMAX_API_KEY" in errors[0]
    assert wrong not in result.output and wrong[8:] not in result.output
    assert API_KEY not in result.output
    missing = ws.cli("run", "--no-progress", env={k: v for k, v in work_env.items() if k != "MINIMAX_API_KEY"})
    assert missing.exit_code == 3 and "MINIMAX_API_KEY is not set" in missing.output
    assert sim.stats()["creates_received"] == 0


def test_an_unknown_status_word_is_logged_once_and_the_job_still_completes(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=1.0, status_words={"running": "rendering"})
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    proc = spawn(ws.root, {**work_env, **api_env(sim)}, "run", "--no-progress")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, errors)
    assert errors.count("unknown status 'rendering'; taken as not finished and polled again") == 1
    assert_all_done_and_whole(ws, sim, 3)


def test_a_task_the_api_no_longer_knows_ends_task_not_found(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=2.0)
    ws.storyboard("storyboard_a.json", segments("forgotten"))
    proc = spawn(ws.root, {**work_env, **api_env(sim)}, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] == 1, what="the create")
    sim.forget(sim.tasks()[0]["task_id"])  # neither version knows it now
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, errors)
    assert query(ws.root, "SELECT state, error_kind FROM jobs") == [("failed", "task_not_found")]


def test_values_a_model_cannot_take_are_refused_at_scan_naming_the_allowed_ones(ws, sim, work_env):
    ws.storyboard("storyboard_h.json", {
        "defaults": {"provider": "hailuo", "hailuo": {"ratio": "1:1"}},
        "segments": [
            {"segment_index": 1, "prompt_text": "a", "duration_seconds": 20},
            {"segment_index": 2, "prompt_text": "b", "model": V1, "hailuo": {"ratio": "16:9"}},
            {"segment_index": 3, "prompt_text": "c", "hailuo": {"seed": 7}},
        ]})
    result = ws.cli("scan", env=work_env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("invalid: ")]
    assert "invalid: input/storyboard_h.json: /segments/0/duration_seconds: duration 20s is not offered by " \
           "MiniMax-H3 at 768P on the hailuo provider; use one of 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15" in lines
    assert "invalid: input/storyboard_h.json: /segments/1/hailuo: hailuo.ratio is not taken by MiniMax-Hailuo-2.3 " \
           "(a v1 model); drop it" in lines
    assert any("/segments/2/hailuo" in line and "seed" in line and "prompt_optimizer" in line for line in lines), lines
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(0,)]


def test_a_dry_run_prices_h3_by_the_second_and_hailuo_2_3_by_the_video(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 15},  # 15 x ¥0.50
        {"segment_index": 2, "prompt_text": "b", "is_pro": True, "duration_seconds": 4},  # 4 x ¥0.80
        {"segment_index": 3, "prompt_text": "c", "model": V1, "duration_seconds": 10},  # ¥4.00 a video
        {"segment_index": 4, "prompt_text": "d", "model": V1, "resolution": "1080P"}]})  # ¥3.50 a video
    result = ws.cli("run", "--dry-run", env=work_env)
    assert result.exit_code == 0, result.output
    assert "A run would submit 4 jobs (2 normal, 2 Pro): estimated ¥18.20 at hailuo MiniMax-H3-768P ¥0.50/s" \
           in result.output
    assert "Balance unknown (the hailuo API has no balance endpoint)" in result.output
    assert sim.stats()["creates_received"] == 0
    assert sim.stats()["requests_by_route"] == {"tasks": 1}  # the pre-flight: one list call of one task


def test_the_demo_storyboard_is_valid_with_the_default_settings(ws, sim, work_env):
    demo = Path(__file__).resolve().parents[2] / "docs" / "providers" / "storyboard_hailuo.json"
    document = json.loads(demo.read_text(encoding="utf-8"))
    ws.storyboard("storyboard_hailuo.json", document)
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    segments_ = document["segments"]
    assert len(segments_) == 3 and any(s.get("image_url") for s in segments_)
    assert len({s.get("duration_seconds") for s in segments_}) == 3
    assert_all_done_and_whole(ws, sim, 3)


def test_an_account_without_real_name_verification_stops_submitting_in_one_line(ws, sim, work_env):
    """2038 (real-name verification required) is the account's, not the job's: like a refused key,
    the run stops at the first create, says so in one line without the key, and nothing is made."""
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    sim.inject("create", "envelope", code=2038, message="real-name verification required")
    result = ws.cli("run", "--no-progress", env={**work_env, "MAX_CONCURRENT_TASKS": "1"})
    assert result.exit_code == 3, result.output
    said = [line for line in result.output.splitlines() if "real-name verification" in line]
    assert len(said) == 1 and "platform.minimaxi.com" in said[0], result.output
    assert API_KEY not in result.output and API_KEY[8:] not in result.output
    assert query(ws.root, "SELECT state FROM jobs") == [("pending",), ("pending",)]
    assert sim.stats()["creates_received"] == 1 and sim.stats()["tasks_created"] == 0


def test_a_failed_v2_task_keeps_its_error_code_and_message_as_the_jobs_error(ws, make_sim, work_env):
    sim = make_sim(fail_rate=1.0)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT state, error_kind, error_message FROM jobs") == [
        ("failed", "remote_failed", f"1000: {GENERATION_FAILED_MESSAGE}")]


def test_an_expired_v2_task_fails_with_its_reason_and_is_not_polled_on(ws, make_sim, work_env, monkeypatch):
    """``expired`` is a final status: the job fails at once with that reason (it was polled until
    the poll timeout while the word was unknown)."""
    monkeypatch.setattr(PROTOCOL, "failure_status", "expired")
    sim = make_sim(fail_rate=1.0)
    env = {**work_env, **api_env(sim), "POLL_TIMEOUT_SECONDS": "600"}
    ws.storyboard("storyboard_a.json", segments("one"))
    started = time.monotonic()
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    assert time.monotonic() - started < 60
    assert query(ws.root, "SELECT state, error_kind, error_message FROM jobs") == [
        ("failed", "remote_failed", "the task expired on the service before it finished (status expired)")]
    assert "unknown status" not in result.output


def test_a_lost_v2_create_older_than_the_apis_7_days_stays_unresolved_without_reading_the_list(sim):
    """v2 keeps a task 7 days: past that an empty list proves nothing, so the look-up says so at
    once (final: never sent again) instead of reading the list and concluding 'not created'."""
    client = Hailuo(sim.base_url, API_KEY)
    try:
        params = RULES["hailuo"].map(Request(prompt="made long ago", model=None, is_pro=False, duration=None,
                                             resolution="horizontal", quality="normal", remove_watermark=True,
                                             image_url=None)).params
        old = datetime.now(timezone.utc) - timedelta(days=8)
        search = client.find_tasks(params, "ledger-1-1", old, old + timedelta(seconds=5))
        assert (search.covered, search.final, search.pages) == (False, True, 0)
        assert "more than 7 days ago" in search.reason
        assert sim.stats()["requests_by_route"].get("tasks", 0) == 0
        recent = client.find_tasks(params, "ledger-1-1", datetime.now(timezone.utc) - timedelta(minutes=1))
        assert recent.covered and sim.stats()["requests_by_route"]["tasks"] == 1
    finally:
        client.close()
