"""The Kling (可灵) provider against the simulator speaking its protocol: envelopes with codes,
text2video and image2video, external_task_id and both readings of its look-up, API key or JWT,
credits in yuan, the resource packs' balance, the 30 days a task is kept."""
from __future__ import annotations

import re
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timezone

import pytest

from ledger.errors import (AuthError, BadParameters, ContentRefused, InsufficientBalance, RateLimited, TransientError)
from ledger.providers import RULES, Request
from ledger.providers.kling import KlingClient
from ledger.sim import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE
from ledger.sim.kling import ACCEPT, ACCESS_KEY, OBJECT, PATH, QUERY, REJECT, SECRET_KEY, KlingProtocol
from tests.helpers import job_price, query, segments, spawn
from tests.integration.conftest import API_KEY
from tests.integration.test_work import assert_all_done_and_whole, assert_every_job_paid_once

REF = re.compile(r"^ledger-(\d+)-\d+$")


@pytest.fixture
def protocol() -> str:
    return "kling"


@pytest.fixture
def kling_client():
    """Kling clients with tiny backoffs, closed afterwards."""
    made = []

    def make(base_url: str, api_key: str = API_KEY) -> KlingClient:
        client = KlingClient(base_url, api_key, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def params_of(**segment):
    """The stored parameters of a kling segment."""
    fields = dict(prompt="a fox", model=None, is_pro=False, duration=None, resolution="horizontal",
                  quality="normal", remove_watermark=True, image_url=None)
    return RULES["kling"].map(Request(**{**fields, **segment})).params


def billed(sim) -> int:
    return sim.config.balance - sim.stats()["balance"]


def spent(ws) -> int:
    return query(ws.root, "SELECT coalesce(sum(spent_cents), 0) FROM jobs")[0][0]


def details(ws, pattern: str):
    return [d for (d,) in query(ws.root, "SELECT detail FROM events WHERE detail LIKE ?", pattern)]


def externals(sim):
    return [task.extra["external_task_id"] for task in sim.tasks_newest_first()]


def assert_each_task_carries_its_attempts_reference(ws, sim):
    """Every task the account holds was made with the reference of the attempt that owns it."""
    by_task = dict(query(ws.root, "SELECT remote_task_id, id FROM jobs WHERE remote_task_id IS NOT NULL"))
    for task in sim.tasks_newest_first():
        match = REF.match(task.extra["external_task_id"] or "")
        assert match and int(match.group(1)) == by_task[task.task_id], task.extra
    assert len(set(externals(sim))) == len(externals(sim))


# --- a whole run ------------------------------------------------------------------------------------


def test_a_run_makes_every_video_and_books_what_the_account_was_charged_in_yuan(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", {"segments": [
        {"segment_index": 1, "prompt_text": "a fox in the snow"},
        {"segment_index": 2, "prompt_text": "the fox looks up", "resolution": "vertical", "duration_seconds": 10},
        {"segment_index": 3, "prompt_text": "a square shot", "resolution": "1:1", "kling": {"mode": "pro"}}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert "3 saved; paid ¥13.00 for 3 generations." in result.output  # 5 s x ¥0.6 + 10 s x ¥0.6 + 5 s x ¥0.8
    assert_all_done_and_whole(ws, sim, 3)
    assert_every_job_paid_once(ws, sim, 3)
    assert billed(sim) == spent(ws) == 1300
    assert_each_task_carries_its_attempts_reference(ws, sim)
    bodies = sorted((t.extra["body"] for t in sim.tasks_newest_first()), key=lambda b: b["prompt"])
    assert [(b["aspect_ratio"], b["duration"], b["mode"]) for b in bodies] == [
        ("16:9", "5", "std"), ("1:1", "5", "pro"), ("9:16", "10", "std")]


def test_a_segment_with_an_image_url_goes_to_image2video_and_is_polled_there(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", {"segments": [
        {"segment_index": 1, "prompt_text": "the first frame comes alive", "image_url": "https://example.com/f.jpg"},
        {"segment_index": 2, "prompt_text": "words alone"}]})
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 2)
    kinds = {t.prompt: (t.extra["kind"], t.extra["body"].get("image")) for t in sim.tasks_newest_first()}
    assert kinds == {"the first frame comes alive": ("image2video", "https://example.com/f.jpg"),
                     "words alone": ("text2video", None)}


def test_a_fresh_process_finds_an_image_task_it_did_not_create_under_image2video(sim, kling_client):
    task_id = sim.create_external("made elsewhere", image="https://example.com/f.jpg")
    time.sleep(0.3)
    task = kling_client(sim.base_url).get(task_id)  # text2video says 404, image2video knows it
    assert task.is_completed and task.video_url and "/files/" in task.video_url


# --- paid once: external_task_id -------------------------------------------------------------------


@pytest.mark.parametrize("lookup", [OBJECT, QUERY, PATH])
def test_a_lost_create_answer_is_found_by_its_external_task_id_and_paid_once(ws, sim, work_env, lookup):
    sim.protocol = KlingProtocol(lookup=lookup)
    sim.inject("create", "lost_create")
    ws.storyboard("storyboard_k.json", segments("the answer of this create is lost", "this one is not"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert len(details(ws, "found the lost create's task%")) == 1
    assert sim.stats()["tasks_created"] == sim.stats()["creates_received"] == 2
    assert_all_done_and_whole(ws, sim, 2)
    assert_every_job_paid_once(ws, sim, 2)
    assert billed(sim) == spent(ws) == 2 * job_price(sim)
    routes = sim.stats()["requests_by_route"]
    assert routes["lookup"] == 1 and "tasks" not in routes  # looked up by its reference: no list scan


@pytest.mark.parametrize("lookup, calls", [(QUERY, {"create": 1, "lookup": 1}),
                                           (PATH, {"create": 1, "lookup": 1, "task": 1})])
def test_the_look_up_falls_back_to_the_path_form_when_the_list_ignores_the_filter(sim, kling_client, lookup, calls):
    """Reading B: the list does not know ``external_task_id`` and answers 30 tasks of others; the
    external id in the task path finds the lost create's task."""
    sim.protocol = KlingProtocol(lookup=lookup)
    client = kling_client(sim.base_url)
    params, ref = params_of(prompt="lost"), "ledger-1-1700000000000"
    since = datetime.now(timezone.utc)
    sim.inject("create", "lost_create")
    with pytest.raises(TransientError) as info:
        client.create(params, ref)
    assert info.value.maybe_created
    for i in range(40):
        sim.create_external(f"someone else {i}")
    mine = sim.find_task(lambda t: t.extra["external_task_id"] == ref)
    found = client.find_tasks(params, ref, since)
    assert [t.task_id for t in found.tasks] == [mine.task_id] and found.covered
    assert sim.stats()["requests_by_route"] == calls


@pytest.mark.parametrize("lookup", [OBJECT, QUERY, PATH])
def test_a_create_that_made_nothing_is_proven_absent_and_sent_again_with_a_new_reference(ws, sim, work_env, lookup):
    sim.protocol = KlingProtocol(lookup=lookup)
    for i in range(3):  # the account has tasks of others: a list ignoring the filter answers them
        sim.create_external(f"someone else {i}")
    sim.inject("create", "http_502_html")  # a proxy's 502: nothing reached the API
    ws.storyboard("storyboard_k.json", segments("sent twice, made once"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert len(details(ws, "no task was created by the unanswered POST /create%")) == 1
    assert sim.stats()["creates_received"] == 2 and sim.stats()["tasks_created"] == 4
    assert_all_done_and_whole(ws, sim, 1)
    assert billed(sim) - 3 * job_price(sim) == spent(ws) == job_price(sim)


def test_when_neither_look_up_is_understood_the_job_waits_unresolved_and_is_never_sent_again(ws, sim, work_env):
    sim.inject("create", "http_502_html")
    sim.inject("lookup", "envelope", count=100, code=1201, message="参数错误：external_task_id 不支持")
    sim.inject("task", "envelope", count=100, code=1201, message="参数错误：task_id 无效")
    sim.inject("tasks", "envelope", count=100, code=1201, message="参数错误：pageNum 无效")  # no list either
    ws.storyboard("storyboard_k.json", segments("cannot be told"))
    ws.cli("run", "--no-progress", env={**work_env, "MAX_ATTEMPTS": "2"})
    rows = query(ws.root, "SELECT state, error_kind, error_message FROM jobs")
    assert [row[:2] for row in rows] == [("submitting", "unresolved")]
    assert "no look-up by external_task_id ledger-1-" in rows[0][2] and "was conclusive" in rows[0][2]
    assert "the task list could not be read" in rows[0][2]
    assert sim.stats()["creates_received"] == 1


@pytest.mark.parametrize("duplicates", [REJECT, ACCEPT])
def test_ledger_never_repeats_an_external_task_id_so_nothing_is_paid_twice_either_way(ws, sim, work_env,
                                                                                      kling_client, duplicates):
    """Whether the API refuses a repeated reference or bills it again is undocumented: the simulator
    does either, and ledger, which never sends one twice, pays each video once under both."""
    sim.protocol = KlingProtocol(duplicates=duplicates)
    client = kling_client(sim.base_url)
    client.create(params_of(prompt="probe"), "probe-1")
    if duplicates == REJECT:
        with pytest.raises(BadParameters, match="external_task_id probe-1 已存在"):
            client.create(params_of(prompt="probe"), "probe-1")
    else:
        client.create(params_of(prompt="probe"), "probe-1")
    probes = billed(sim)
    assert probes == job_price(sim) * (1 if duplicates == REJECT else 2)
    for _ in range(2):
        sim.inject("create", "lost_create")
        sim.inject("create", "http_502_html")
        sim.inject("create", "envelope_500")
    ws.storyboard("storyboard_k.json", segments(*[f"shot {i}" for i in range(6)]))
    result = ws.cli("run", "--no-progress", env={**work_env, "MAX_CONCURRENT_TASKS": "2"})
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 6)
    linked = {t for (t,) in query(ws.root, "SELECT remote_task_id FROM jobs")}
    orphans = {t.task_id for t in sim.tasks_newest_first()} - linked
    assert {sim.get_task(t, poll=False).extra["external_task_id"] for t in orphans} == {"probe-1"}  # 0 paid twice
    assert billed(sim) - probes == spent(ws) == 6 * job_price(sim)
    ours = [e for e in externals(sim) if e.startswith("ledger-")]
    assert len(ours) == len(set(ours)) == 6


# --- the error table, over the wire ----------------------------------------------------------------


@pytest.mark.parametrize("code, raised", [
    (1000, AuthError), (1004, AuthError), (1100, InsufficientBalance), (1101, InsufficientBalance),
    (1102, InsufficientBalance), (1200, BadParameters), (1201, BadParameters), (1300, ContentRefused),
    (1301, ContentRefused), (1302, RateLimited), (1303, RateLimited), (5000, TransientError),
])
def test_each_code_of_the_envelope_raises_its_outcome(sim, kling_client, code, raised):
    sim.inject("create", "envelope", code=code, message=f"说明 {code}")
    with pytest.raises(raised) as info:
        kling_client(sim.base_url).create(params_of(), "ledger-1-1")
    assert type(info.value) is raised
    if raised is TransientError:
        assert info.value.maybe_created  # a create the service failed on may still have been made
    if raised is ContentRefused:
        assert str(info.value) == f"说明 {code}"  # the API's words, verbatim
    assert sim.stats()["tasks_created"] == 0


def test_a_content_policy_refusal_fails_the_job_with_the_apis_words_and_costs_nothing(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", segments("a fox [policy-reject]", "a cat"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 1, result.output
    rows = query(ws.root, "SELECT segment_index, state, error_kind, error_message FROM jobs ORDER BY segment_index")
    assert rows == [(1, "failed", "refused", POLICY_MESSAGE), (2, "done", None, None)]
    assert billed(sim) == spent(ws) == job_price(sim)  # the refused create made nothing


def test_a_task_that_fails_keeps_its_message_verbatim_and_its_credits_booked(ws, make_sim, work_env):
    sim = make_sim(fail_rate=1.0)
    ws.storyboard("storyboard_k.json", segments("fails midway"))
    result = ws.cli("run", "--no-progress", env={**work_env, "KLING_BASE_URL": sim.base_url})
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT state, error_kind, error_message FROM jobs") == [
        ("failed", "remote_failed", GENERATION_FAILED_MESSAGE)]
    assert billed(sim) == spent(ws) == job_price(sim)  # a refund of a failed task is undocumented


def test_a_spent_resource_pack_stops_submitting_and_says_the_balance_in_yuan(ws, make_sim, work_env):
    sim = make_sim(balance=2 * 300)
    ws.storyboard("storyboard_k.json", segments("one", "two", "three"))
    result = ws.cli("run", "--no-progress", "--concurrency", "1", env={**work_env, "KLING_BASE_URL": sim.base_url})
    assert result.exit_code == 4, result.output
    assert "lack of balance (codes 1100-1102" in result.output
    # the expired pack's credits cannot be spent; the figure is Kling's, in units, and may be late
    assert ("the balance is ¥0.00 (Kling resource-pack units taken as ¥1 each; Kling's figure lags up to 12 h)"
            in result.output)
    assert dict(query(ws.root, "SELECT segment_index, state FROM jobs")) == {1: "done", 2: "done", 3: "pending"}
    assert billed(sim) == spent(ws) == 600


def test_a_rate_limit_pauses_and_the_job_still_completes(ws, sim, work_env):
    sim.inject("create", "rate_limit", retry_after=1)
    ws.storyboard("storyboard_k.json", segments("after a pause"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert details(ws, "rate limited before creating; retry in 1 s")
    assert sim.stats()["creates_received"] == 2 and sim.stats()["tasks_created"] == 1
    assert_all_done_and_whole(ws, sim, 1)


def test_the_concurrency_limit_1303_pauses_creates_until_a_task_finishes(ws, sim, work_env):
    sim.protocol = KlingProtocol(max_running=1, busy_retry_after=1)
    ws.storyboard("storyboard_k.json", segments("one", "two", "three"))
    result = ws.cli("run", "--no-progress", env={**work_env, "MAX_CONCURRENT_TASKS": "3"})
    assert result.exit_code == 0, result.output
    stats = sim.stats()
    assert stats["tasks_created"] == 3 and stats["creates_received"] > 3  # some met the limit
    assert details(ws, "rate limited before creating%")
    assert_all_done_and_whole(ws, sim, 3)
    assert billed(sim) == spent(ws) == 3 * job_price(sim)


# --- credentials -----------------------------------------------------------------------------------


def test_a_rejected_key_is_one_line_and_exit_3_and_the_key_is_never_printed(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", segments("one"))
    wrong = "kling-WrongWrongWrong0123456789abcdef"
    result = ws.cli("run", "--no-progress", env={**work_env, "KLING_API_KEY": wrong})
    assert result.exit_code == 3, result.output
    line = next(line for line in result.output.splitlines() if "was rejected" in line)
    assert "the API key …cdef was rejected (code 1002): check KLING_API_KEY" in line
    assert wrong not in result.output and wrong[6:] not in result.output
    missing = ws.cli("run", "--no-progress", env={k: v for k, v in work_env.items() if k != "KLING_API_KEY"})
    assert missing.exit_code == 3
    assert "no Kling key is set: set KLING_API_KEY, or KLING_ACCESS_KEY and KLING_SECRET_KEY in .env" in missing.output
    assert sim.stats()["creates_received"] == 0


def test_an_access_key_and_secret_key_sign_every_call_with_a_jwt(ws, sim, work_env):
    env = {k: v for k, v in work_env.items() if k != "KLING_API_KEY"}
    ws.storyboard("storyboard_k.json", segments("signed", "and sealed"))
    result = ws.cli("run", "--no-progress", env={**env, "KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY})
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 2)


def test_a_wrong_secret_key_is_one_line_and_exit_3_and_neither_secret_is_printed(ws, sim, work_env):
    env = {k: v for k, v in work_env.items() if k != "KLING_API_KEY"}
    wrong = "SKwrong0123456789abcdefghijklmnopqr"
    ws.storyboard("storyboard_k.json", segments("one"))
    result = ws.cli("run", "--no-progress", env={**env, "KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": wrong})
    assert result.exit_code == 3, result.output
    assert (f"the JWT of the access key …{ACCESS_KEY[-4:]} was rejected (code 1004): check KLING_ACCESS_KEY and "
            "KLING_SECRET_KEY") in result.output
    assert wrong not in result.output and ACCESS_KEY not in result.output and "eyJ" not in result.output
    assert sim.stats()["creates_received"] == 0


# --- statuses, balance, prices, mapping, retention -------------------------------------------------


def test_an_unknown_status_word_is_logged_once_and_the_job_still_completes(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=1.0, status_words={"processing": "queueing"})
    ws.storyboard("storyboard_k.json", segments("one", "two"))
    proc = spawn(ws.root, {**work_env, "KLING_BASE_URL": sim.base_url}, "run", "--no-progress")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, errors)
    assert errors.count("the kling API answered an unknown status 'queueing'; taken as not finished and polled "
                        "again") == 1
    assert_all_done_and_whole(ws, sim, 2)


def test_a_dry_run_shows_the_credits_of_the_valid_packs_in_yuan(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", segments("one", "two"))
    result = ws.cli("run", "--dry-run", env=work_env)
    assert result.exit_code == 0, result.output
    assert "A run would submit 2 jobs (2 normal): estimated ¥6.00 at kling std ¥0.60/s" in result.output
    # ¥1,000.00 in the live pack; the expired pack's ¥50.00 does not count
    assert ("kling: Balance ¥1,000.00 (Kling resource-pack units taken as ¥1 each; Kling's figure lags up to 12 h) "
            "covers it (¥994.00 would be left).") in result.output
    assert sim.stats()["creates_received"] == 0 and set(sim.stats()["requests_by_route"]) == {"balance"}


def test_mode_and_sound_change_the_price_and_the_account_is_charged_the_same(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", {"defaults": {"model": "kling-v2-6"}, "segments": [
        {"segment_index": 1, "prompt_text": "std, silent"},
        {"segment_index": 2, "prompt_text": "pro, silent", "kling": {"mode": "pro"}},
        {"segment_index": 3, "prompt_text": "std, with sound", "duration_seconds": 10, "model": "kling-v3",
         "kling": {"sound": "on"}},  # kling-v2-6 makes sound in pro mode only
        {"segment_index": 4, "prompt_text": "pro, with sound", "duration_seconds": 10, "quality": "high",
         "kling": {"sound": "on"}}]})
    dry = ws.cli("run", "--dry-run", env=work_env)
    assert "estimated ¥25.00" in dry.output, dry.output  # 5 x 0.6 + 5 x 0.8 + 10 x 0.8 + 10 x 1.0
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT segment_index, price_key, cost_cents FROM jobs ORDER BY segment_index") == [
        (1, "std:5", 300), (2, "pro:5", 400), (3, "std+sound:10", 800), (4, "pro+sound:10", 1000)]
    assert billed(sim) == spent(ws) == 2500


def test_values_kling_cannot_take_are_scan_errors_naming_the_allowed_ones(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", {"defaults": {"kling": {"negative_prompt": "blur"}}, "segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 8},
        {"segment_index": 2, "prompt_text": "b", "resolution": "4:3"},
        {"segment_index": 3, "prompt_text": "c", "kling": {"sound": "on"}},
        {"segment_index": 4, "prompt_text": "d", "kling": {"mode": "ultra"}},
        {"segment_index": 5, "prompt_text": "e", "kling": {"seed": 7}},
        {"segment_index": 6, "prompt_text": "f", "model": "kling-v1"}]})
    result = ws.cli("scan", env=work_env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("invalid: ")]
    assert lines == [
        "invalid: input/storyboard_k.json: /segments/0/duration_seconds: duration 8s is not offered by "
        "kling-v2-5-turbo on the kling provider; use one of 5, 10",
        "invalid: input/storyboard_k.json: /segments/1/resolution: resolution '4:3' is not offered by "
        "kling-v2-5-turbo on the kling provider; use one of 'horizontal' (16:9), 'vertical' (9:16), '16:9', '9:16', "
        "'1:1'",
        "invalid: input/storyboard_k.json: /segments/2/kling: sound is taken only by kling-v2-6, kling-v3; "
        "kling-v2-5-turbo makes silent videos",
        "invalid: input/storyboard_k.json: /segments/3/kling/mode: 'ultra' is not allowed here; use one of 'std', "
        "'pro'",
        "invalid: input/storyboard_k.json: /segments/4/kling: unknown option 'seed' for the kling provider (it takes "
        "'cfg_scale', 'mode', 'negative_prompt', 'sound')",
        "invalid: input/storyboard_k.json: /segments/5/model: model 'kling-v1' is not offered by the kling provider; "
        "use one of 'kling-v2-5-turbo', 'kling-v2-6', 'kling-v2-1-master', 'kling-v3'",
    ]
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(0,)]


def test_a_task_the_api_forgot_after_30_days_ends_content_expired_and_requeue_makes_it_again(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=60.0)
    env = {**work_env, "KLING_BASE_URL": sim.base_url}
    ws.storyboard("storyboard_k.json", segments("kept for 30 days"))
    assert ws.cli("run", "--no-progress", env={**env, "POLL_TIMEOUT_SECONDS": "0.2"}).exit_code == 0
    [(task_id,)] = query(ws.root, "SELECT remote_task_id FROM jobs WHERE state = 'submitted'")
    sim.forget(task_id)  # cleaned on the service's side
    with closing(sqlite3.connect(ws.root / "ledger.db")) as conn, conn:
        conn.execute("UPDATE jobs SET submitted_at = datetime('now', '-31 days')")
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    [(kind, message)] = query(ws.root, "SELECT error_kind, error_message FROM jobs")
    assert kind == "content_expired" and "the kling API keeps a task and its video 720 h" in message
    requeued = ws.cli("requeue", "--failed", env=env)
    assert "1 to generate again" in requeued.output, requeued.output
    fast = make_sim()  # the configured API now: a pending job goes there
    assert ws.cli("work", "--no-progress", env={**env, "KLING_BASE_URL": fast.base_url}).exit_code == 0
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)] and fast.stats()["tasks_created"] == 1
