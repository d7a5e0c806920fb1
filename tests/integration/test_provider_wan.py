"""The wan provider (Alibaba Wan / HappyHorse on DashScope) through `ledger`, the simulator speaking
its protocol over real sockets, and real ledger files: the async create, the first frame, a lost
create found by the batch query and each task's orig_prompt (or left unresolved when tasks do not
tell it), the error codes, ids that expire after 24 h, and prices per second by resolution."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
import requests

from ledger.errors import (AuthError, BadParameters, ContentRefused, InsufficientBalance, RateLimited, TaskNotFound,
                           TransientError)
from ledger.providers.base import Request
from ledger.providers.wan import RULES, WanClient
from ledger.sim import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE
from ledger.sim.wan import PROTOCOL
from tests.helpers import api_env, job_price, query, segments, spawn
from tests.integration.conftest import API_KEY
from tests.integration.test_work import assert_all_done_and_whole

IMAGE = "https://example.com/frames/first.png"


@pytest.fixture
def protocol() -> str:
    return "wan"


@pytest.fixture
def wan_client(sim) -> Iterator[WanClient]:
    """A client of ``sim`` with tiny backoffs."""
    client = WanClient(sim.base_url, API_KEY, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
    yield client
    client.close()


def charged(sim) -> int:
    """What the simulator billed the account, in fen."""
    return sim.config.balance - sim.stats()["balance"]


def finish(proc, timeout: float = 120):
    out, errors = proc.communicate(timeout=timeout)
    return proc.returncode, out, errors


def params_for(prompt: str, **fields) -> dict:
    """The stored parameters a storyboard segment with ``fields`` maps to."""
    request = Request(prompt=prompt, model=fields.get("model"), is_pro=fields.get("is_pro"),
                      duration=fields.get("duration"), resolution=fields.get("resolution", "horizontal"),
                      quality=fields.get("quality", "normal"), remove_watermark=True,
                      image_url=fields.get("image_url"), options=fields.get("options", {}))
    return RULES.map(request).params


def test_a_run_makes_every_video_asynchronously_with_the_first_frame_and_wan_prices(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"defaults": {"provider": "wan"}, "segments": [
        {"segment_index": 1, "prompt_text": "a lantern over the lake"},
        {"segment_index": 2, "prompt_text": "the lantern in the rain", "image_url": IMAGE, "duration_seconds": 10},
        {"segment_index": 3, "prompt_text": "lanterns rising", "resolution": "vertical", "quality": "high",
         "wan": {"negative_prompt": "text", "seed": 7}}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 3)
    bodies = {t.prompt: t.extra["body"] for t in sim.tasks_newest_first()}
    assert bodies["the lantern in the rain"] == {  # wan2.7 speaks the media protocol: no img_url, no size
        "model": "wan2.7-i2v", "input": {"prompt": "the lantern in the rain",
                                         "media": [{"type": "first_frame", "url": IMAGE}]},
        "parameters": {"resolution": "720P", "duration": 10, "watermark": False}}
    assert bodies["lanterns rising"] == {
        "model": "wan2.7-t2v", "input": {"prompt": "lanterns rising", "negative_prompt": "text"},
        "parameters": {"resolution": "1080P", "ratio": "9:16", "duration": 5, "watermark": False, "seed": 7}}
    # 720P x 5 s x 0.6 + 720P x 10 s x 0.6 + 1080P x 5 s x 1.0 yuan: booked in fen, as billed
    assert dict(query(ws.root, "SELECT segment_index, spent_cents FROM jobs")) == {1: 300, 2: 600, 3: 500}
    assert charged(sim) == 1400 and "paid ¥14.00 for 3 generations" in result.output


def test_wan26_still_speaks_the_legacy_protocol_end_to_end(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"defaults": {"provider": "wan", "model": "wan2.6-t2v"}, "segments": [
        {"segment_index": 1, "prompt_text": "a kite", "duration_seconds": 15, "resolution": "vertical"},
        {"segment_index": 2, "prompt_text": "the kite lands", "image_url": IMAGE, "quality": "high"}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 2)
    bodies = {t.prompt: t.extra["body"] for t in sim.tasks_newest_first()}
    assert bodies == {
        "a kite": {"model": "wan2.6-t2v", "input": {"prompt": "a kite"},
                   "parameters": {"size": "720*1280", "duration": 15, "watermark": False}},
        "the kite lands": {"model": "wan2.6-i2v", "input": {"prompt": "the kite lands", "img_url": IMAGE},
                           "parameters": {"resolution": "1080P", "duration": 5, "watermark": False}}}
    assert dict(query(ws.root, "SELECT segment_index, spent_cents FROM jobs")) == {1: 900, 2: 500}


def test_a_create_without_the_async_header_is_refused_and_costs_nothing(sim, wan_client):
    body = {"model": "wan2.7-t2v", "input": {"prompt": "sync, please"}, "parameters": {"resolution": "720P"}}
    url = sim.base_url + "/services/aigc/video-generation/video-synthesis"
    refused = requests.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
    assert refused.status_code == 403 and refused.json()["code"] == "AccessDenied"
    assert sim.stats()["tasks_created"] == 0 and charged(sim) == 0
    task = wan_client.create(params_for("async, as documented"))  # the client sends X-DashScope-Async
    assert task.status == "pending" and sim.stats()["tasks_created"] == 1


def test_a_lost_create_is_found_by_the_batch_query_and_the_tasks_orig_prompt(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "1"}
    ws.storyboard("storyboard_a.json", segments("the create whose answer is lost"))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    deadline = time.monotonic() + 20
    while not sim.stats()["tasks_created"]:
        assert time.monotonic() < deadline, "the lost create never arrived"
        time.sleep(0.02)
    for i in range(110):  # another client of the account, same model, same minute: two pages of candidates
        sim.create_external(f"another client's shot {i}")
    code, out, errors = finish(proc)
    assert code == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["the create whose answer is lost"] == 1
    (mine,) = [t.task_id for t in sim.tasks_newest_first() if t.prompt == "the create whose answer is lost"]
    assert query(ws.root, "SELECT state, remote_task_id, spent_cents FROM jobs") == [("done", mine, job_price(sim))]
    assert charged(sim) == 111 * job_price(sim)  # ours once, and the other client's
    assert any("found the lost create's task" in d for (d,) in query(ws.root, "SELECT detail FROM events"))


@pytest.mark.parametrize("reading", [{"page_cap": 10}, {"window_zone": timezone.utc}], ids=["capped", "utc"])
def test_a_lost_create_is_found_whatever_page_size_the_batch_query_answers_and_zone_it_reads(
        ws, make_sim, work_env, monkeypatch, reading):
    """Two facts the documentation leaves open: the batch query answers 10 per page though 100
    were asked (it says so in page_size / total_page), or reads start_time / end_time as UTC."""
    for name, value in reading.items():
        monkeypatch.setattr(PROTOCOL, name, value)
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "1"}
    ws.storyboard("storyboard_a.json", segments("lost under 25 newer tasks"))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    deadline = time.monotonic() + 20
    while not sim.stats()["tasks_created"]:
        assert time.monotonic() < deadline, "the lost create never arrived"
        time.sleep(0.02)
    for i in range(25):  # newer: the create's task is on the batch query's last page
        sim.create_external(f"another client's shot {i}")
    code, out, errors = finish(proc)
    assert code == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["lost under 25 newer tasks"] == 1  # found, not paid twice
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)]


def test_a_lost_create_stays_unresolved_when_tasks_do_not_tell_their_prompt(ws, make_sim, work_env, monkeypatch):
    """The other reading of the task API: no orig_prompt. The batch query shows a task of the
    create's time, nothing says whether it is the create's: nothing is sent again."""
    monkeypatch.setattr(PROTOCOL, "shows_orig_prompt", False)
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "MAX_ATTEMPTS": "2"}
    ws.storyboard("storyboard_a.json", segments("lost, and no task tells its prompt"))
    sim.inject("create", "lost_create")
    code, out, errors = finish(spawn(ws.root, env, "run", "--no-progress"))
    assert code == 0, (out, errors)
    assert "could not be looked up" in out
    assert query(ws.root, "SELECT state, error_kind, remote_task_id FROM jobs") == [("submitting", "unresolved", None)]
    (reason,) = query(ws.root, "SELECT error_message FROM jobs")[0]
    assert "do not tell their prompt (no orig_prompt)" in reason, reason
    assert "1 job(s) are unresolved" in ws.cli("status", env=env).output
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))  # a later run asks again …
    assert code == 0, (out, errors)
    assert sim.stats()["creates_received"] == 1 and sim.stats()["tasks_created"] == 1  # … and never pays twice
    assert query(ws.root, "SELECT state, error_kind FROM jobs") == [("submitting", "unresolved")]


def test_a_lost_create_looked_up_after_the_24_hours_dashscope_keeps_tasks_stays_unresolved_never_sent_again(
        ws, make_sim, work_env, monkeypatch):
    """The create's answer was lost and the look-up could not decide; the next look-up comes a day
    later, when DashScope has dropped the task: its time window reads empty, which proves nothing."""
    monkeypatch.setattr(PROTOCOL, "shows_orig_prompt", False)
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "MAX_ATTEMPTS": "2"}
    ws.storyboard("storyboard_a.json", segments("lost, then left for a day"))
    sim.inject("create", "lost_create")
    code, out, errors = finish(spawn(ws.root, env, "run", "--no-progress"))
    assert code == 0, (out, errors)
    assert query(ws.root, "SELECT state, error_kind FROM jobs") == [("submitting", "unresolved")]
    monkeypatch.setattr(PROTOCOL, "shows_orig_prompt", True)
    (made,) = sim.tasks_newest_first()
    sim.forget(made.task_id)  # past its 24 h: the batch query no longer lists it
    with closing(sqlite3.connect(ws.root / "ledger.db")) as ledger, ledger:
        (was,) = ledger.execute("SELECT submitting_at FROM jobs").fetchone()
        earlier = datetime.fromisoformat(was) - timedelta(hours=25)
        ledger.execute("UPDATE jobs SET submitting_at = ?", (earlier.isoformat(sep=" "),))
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))
    assert code == 0, (out, errors)
    assert sim.stats()["creates_received"] == 1 and sim.stats()["tasks_created"] == 1  # never paid twice
    ((state, kind, reason),) = query(ws.root, "SELECT state, error_kind, error_message FROM jobs")
    assert (state, kind) == ("submitting", "unresolved"), reason
    assert "more than 24 h ago" in reason and "DashScope keeps tasks no longer" in reason, reason


def test_a_content_policy_refusal_ends_failed_with_the_apis_message_and_costs_nothing(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("[policy-reject] something the moderation refuses", "a calm sea"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    rows = query(ws.root, "SELECT segment_index, state, error_kind, error_message, remote_task_id FROM jobs")
    assert rows == [(1, "failed", "refused", POLICY_MESSAGE, None), (2, "done", None, None, rows[1][4])]
    assert sim.stats()["tasks_created"] == 1 and charged(sim) == job_price(sim)


def test_failed_generations_keep_the_apis_message_verbatim_also_when_the_batch_query_answers(ws, make_sim,
                                                                                              work_env):
    """Six failing generations at once: their polls go through the batch query, whose entries have
    no message; each job still ends with the task's own words."""
    sim = make_sim(gen_seconds=1.0, fail_rate=1.0)
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "6"}
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(6)]))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT DISTINCT state, error_kind, error_message FROM jobs") == [
        ("failed", "remote_failed", GENERATION_FAILED_MESSAGE)]
    assert sim.stats()["requests_by_route"].get("tasks", 0) >= 1  # the batch query answered polls
    # a failed task is not documented to be free: booked as billed
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(charged(sim),)] == [(6 * job_price(sim),)]


@pytest.mark.parametrize("status", [400, 403])
def test_an_account_in_arrears_stops_submitting_whatever_status_arrearage_comes_with(ws, make_sim, work_env,
                                                                                     monkeypatch, status):
    monkeypatch.setattr(PROTOCOL, "arrearage_status", status)
    sim = make_sim(balance=2 * 300)  # two default generations
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "1"}
    ws.storyboard("storyboard_a.json", segments("one", "two", "three", "four"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 4, result.output
    assert "lack of balance (Arrearage)" in result.output and "this API does not tell the balance" in result.output
    assert dict(query(ws.root, "SELECT segment_index, state FROM jobs")) == {1: "done", 2: "done", 3: "pending",
                                                                            4: "pending"}
    assert sim.stats()["tasks_created"] == 2 and charged(sim) == 600


def test_a_rate_limit_pauses_and_the_job_still_completes(ws, sim, work_env):
    sim.inject("create", "rate_limit", retry_after=1)
    ws.storyboard("storyboard_a.json", segments("asked too often"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert "Throttling.RateQuota" in result.output
    assert sim.stats()["creates_received"] == 2 and sim.stats()["tasks_created"] == 1
    assert_all_done_and_whole(ws, sim, 1)


def test_a_concurrency_limit_pauses_every_call_and_the_job_still_completes(ws, sim, work_env):
    sim.inject("create", "envelope", code="Throttling.AllocationQuota", message="Too many tasks in progress.")
    ws.storyboard("storyboard_a.json", segments("one task too many"))
    started = time.monotonic()
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert "Throttling.AllocationQuota" in result.output
    assert time.monotonic() - started >= 5.0  # no Retry-After: every call paused the default 5 s
    assert sim.stats()["creates_received"] == 2 and sim.stats()["tasks_created"] == 1
    assert_all_done_and_whole(ws, sim, 1)


def test_a_rejected_key_is_one_line_exit_3_and_never_printed(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    wrong = "sk-WrongWrongWrongWrong0123456789abcd"
    result = ws.cli("run", "--no-progress", env={**work_env, "DASHSCOPE_API_KEY": wrong})
    assert result.exit_code == 3, result.output
    assert "was rejected" in result.output and "check DASHSCOPE_API_KEY" in result.output
    assert wrong not in result.output and wrong[3:] not in result.output
    missing = ws.cli("run", "--no-progress", env={k: v for k, v in work_env.items() if k != "DASHSCOPE_API_KEY"})
    assert missing.exit_code == 3 and "DASHSCOPE_API_KEY is not set" in missing.output
    assert sim.stats()["creates_received"] == 0


def test_an_unknown_status_word_is_logged_once_and_the_job_still_completes(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=1.0, status_words={"RUNNING": "SCHEDULING"})
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    code, out, errors = finish(spawn(ws.root, {**work_env, **api_env(sim)}, "run", "--no-progress"))
    assert code == 0, (out, errors)
    assert errors.count("unknown status 'SCHEDULING'; taken as not finished and polled again") == 1
    assert_all_done_and_whole(ws, sim, 2)


def test_a_task_the_api_no_longer_knows_after_24_hours_ends_content_expired_and_requeue_makes_it_again(
        ws, make_sim, work_env):
    first = make_sim(gen_seconds=60.0)
    env = {**work_env, **api_env(first), "POLL_TIMEOUT_SECONDS": "0.5"}
    ws.storyboard("storyboard_a.json", segments("left generating over the weekend"))
    assert ws.cli("run", "--no-progress", env=env).exit_code == 0  # parked: still generating
    ((task_id, submitted),) = query(ws.root, "SELECT remote_task_id, submitted_at FROM jobs")
    first.forget(task_id)  # the id expired: the API answers UNKNOWN for it
    older = datetime.fromisoformat(submitted) - timedelta(hours=25)  # the weekend is over
    with closing(sqlite3.connect(ws.root / "ledger.db")) as ledger, ledger:
        ledger.execute("UPDATE jobs SET submitted_at = ?", (older.isoformat(sep=" "),))
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    ((state, kind, message),) = query(ws.root, "SELECT state, error_kind, error_message FROM jobs")
    assert (state, kind) == ("failed", "content_expired"), message
    assert "answers UNKNOWN" in message and "keeps a task and its video 24 h" in message
    requeued = ws.cli("requeue", "--failed", env=env)
    assert "1 to generate again" in requeued.output, requeued.output
    again = make_sim(gen_seconds=0.3)  # new jobs go to the endpoint configured now
    assert ws.cli("work", "--no-progress", env={**env, **api_env(again)}).exit_code == 0
    assert again.stats()["tasks_created"] == 1
    assert_all_done_and_whole(ws, again, 1)


def test_an_id_the_api_does_not_know_within_the_retention_is_a_task_not_found(sim, wan_client):
    with pytest.raises(TaskNotFound, match="answers UNKNOWN"):
        wan_client.get("0b0e3c52-0000-4000-8000-000000000000")


@pytest.mark.parametrize("code, raised", [
    ("InvalidApiKey", AuthError), ("Arrearage", InsufficientBalance), ("Throttling.RateQuota", RateLimited),
    ("Throttling.AllocationQuota", RateLimited), ("Throttling", RateLimited), ("DataInspectionFailed", ContentRefused),
    ("InvalidParameter", BadParameters), ("InvalidParameter.DataInspection", BadParameters),
    ("AccessDenied", BadParameters), ("InternalError", TransientError)])
def test_every_error_code_of_a_create_maps_to_its_outcome(sim, code, raised):
    client = WanClient(sim.base_url, API_KEY, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
    sim.inject("create", "envelope", code=code, message=f"the API says {code}")
    with pytest.raises(raised) as info:
        client.create(params_for("refused"))
    assert type(info.value) is raised
    assert getattr(info.value, "maybe_created", False) is (code == "InternalError")  # a 500 may have made it
    assert "the API says" in str(info.value) and sim.stats()["tasks_created"] == 0
    client.close()


def test_the_price_is_per_second_by_model_and_resolution(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"defaults": {"provider": "wan"}, "segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 5},
        {"segment_index": 2, "prompt_text": "b", "quality": "high", "duration_seconds": 10},
        {"segment_index": 3, "prompt_text": "c", "is_pro": True, "wan": {"resolution": "480P"}},
        {"segment_index": 4, "prompt_text": "d", "model": "happyhorse-1.1-t2v", "resolution": "1920x1080",
         "duration_seconds": 10}]})
    assert ws.cli("scan", env=work_env).exit_code == 0
    assert query(ws.root, "SELECT price_key FROM jobs ORDER BY segment_index") == [
        ("wan2.7-t2v@720P:5",), ("wan2.7-t2v@1080P:10",), ("wan3.0-video@480P:5",), ("happyhorse-1.1-t2v@1080P:10",)]
    result = ws.cli("run", "--dry-run", env=work_env)
    assert result.exit_code == 0, result.output
    # 5 x 0.6 + 10 x 1.0 + 5 x 0.3 + 10 x 1.2 yuan
    assert "estimated ¥26.50" in result.output, result.output
    assert "wan: Balance unknown" in result.output
    cheaper = ws.cli("run", "--dry-run", env={**work_env, "WAN_PRICES": "wan2.7@720P=50, happyhorse-1.1@1080P=100"})
    assert "estimated ¥24.00" in cheaper.output, cheaper.output  # 5 x 0.5 + 10 + 1.5 + 10 x 1.0
    assert sim.stats()["creates_received"] == 0


def test_values_a_wan_model_does_not_take_are_scan_errors_naming_the_allowed_ones(ws, sim, work_env):
    ws.storyboard("storyboard_w.json", {"defaults": {"provider": "wan"}, "segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 16},
        {"segment_index": 2, "prompt_text": "b", "resolution": "832x480"},
        {"segment_index": 3, "prompt_text": "c", "model": "wan2.7-i2v"},
        {"segment_index": 4, "prompt_text": "d", "wan": {"resolution": "480P"}},
        {"segment_index": 5, "prompt_text": "e", "wan": {"fps": 30}},
        {"segment_index": 6, "prompt_text": "f", "model": "wan9"}]})
    result = ws.cli("scan", env=work_env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("invalid: ")]
    assert lines == [
        "invalid: input/storyboard_w.json: /segments/0/duration_seconds: duration 16s is not offered by wan2.7-t2v on "
        "the wan provider; use one of 2 to 15",
        "invalid: input/storyboard_w.json: /segments/1/resolution: resolution '832x480' is not offered by wan2.7-t2v "
        "on the wan provider; use one of 'horizontal', 'vertical', '1280x720', '720x1280', '960x960', '1088x832', "
        "'832x1088', '1920x1080', '1080x1920', '1440x1440', '1632x1248', '1248x1632'",
        "invalid: input/storyboard_w.json: /segments/2/model: model 'wan2.7-i2v' makes a video from a first frame: "
        "give the segment an image_url, or use a text-to-video model ('wan2.7-t2v')",
        "invalid: input/storyboard_w.json: /segments/3/wan: wan.resolution '480P' is not offered by wan2.7-t2v; use "
        "one of '720P', '1080P'",
        "invalid: input/storyboard_w.json: /segments/4/wan: unknown option 'fps' for the wan provider (it takes "
        "'negative_prompt', 'prompt_extend', 'ratio', 'resolution', 'seed', 'watermark')",
        "invalid: input/storyboard_w.json: /segments/5/model: model 'wan9' is not offered by the wan provider; use "
        "one of 'wan2.6-t2v', 'wan2.6-i2v', 'wan2.7-t2v', 'wan2.7-i2v', 'wan3.0-video', 'happyhorse-1.1-t2v', "
        "'happyhorse-1.1-i2v'",
    ]
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(0,)]


def test_a_search_for_lost_creates_asks_each_task_once_per_run_and_under_dashscopes_20_queries_a_second(httpserver):
    """A busy account: 40 other tasks in the window of two lost creates. Each is asked for its
    prompt once (also the ones that do not tell it), and never more than 20 a second."""
    from werkzeug.wrappers import Response

    now = datetime.now(timezone.utc)
    made = int((now - timedelta(seconds=5)).timestamp() * 1000)
    ids = [f"0b0e3c52-0000-4000-8000-{i:012d}" for i in range(40)]
    page = {"request_id": "r", "data": [{"task_id": t, "status": "SUCCEEDED", "model_name": "wan2.7-t2v",
                                         "gmt_create": made} for t in ids],
            "total": 40, "total_page": 1, "page_no": 1, "page_size": 100}
    asked: list = []

    def task(request):
        asked.append(time.monotonic())
        task_id = request.path.rsplit("/", 1)[1]
        output = {"task_id": task_id, "task_status": "SUCCEEDED", "video_url": "https://example.com/v.mp4"}
        if int(task_id[-1]) % 2:  # half of them do not tell their prompt
            output["orig_prompt"] = f"someone else's {task_id}"
        return Response(json.dumps({"request_id": "r", "output": output}), content_type="application/json")

    httpserver.expect_request("/api/v1/tasks").respond_with_json(page)
    httpserver.expect_request(re.compile(r"^/api/v1/tasks/.+$")).respond_with_handler(task)
    client = WanClient(httpserver.url_for("/api/v1"), API_KEY, backoff_factor=0.001, connect_timeout=2.0,
                       read_timeout=5.0)
    try:
        for prompt in ("the first lost create", "the second lost create"):
            search = client.find_tasks(params_for(prompt), "", now - timedelta(seconds=10), now)
            assert search.tasks == [] and not search.covered  # 20 of them cannot tell: it stays open
    finally:
        client.close()
    assert len(asked) == 40  # once each, not once per look-up
    busiest = max(sum(1 for t in asked if start <= t < start + 1.0) for start in asked)
    assert busiest <= 20, f"{busiest} task queries in one second"
