"""The Volcengine Ark Seedance provider, end to end: `ledger` against the simulator speaking Ark's
format over real sockets, with real ledger files. What is Ark's own: money in fen by output tokens
(the usage of a finished task replaces the estimate; a failed task costs nothing), a lost create
found again by the seed each attempt sends (or left unresolved when the list cannot tell), and
tasks the API forgets after 24 hours."""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from ledger.providers.seedance import NORMAL, PRO, Seedance, attempt_seed, request_body, seed_of
from ledger.sim.seedance import TEXT_REFUSED, SeedanceProtocol, fen, tokens
from ledger.sim.server import POLICY_MESSAGE
from tests.helpers import api_env, job_price, query, segments, spawn
from tests.integration.conftest import API_KEY
from tests.integration.test_work import assert_all_done_and_whole


@pytest.fixture
def protocol() -> str:
    return "seedance"


@pytest.fixture
def env(sim, work_env):
    return {**work_env, **api_env(sim)}


@pytest.fixture
def ark_client():
    """Clients of the simulator with tiny backoffs, closed afterwards."""
    made = []

    def make(base_url: str) -> Seedance:
        client = Seedance(base_url, API_KEY, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def billed(sim) -> int:
    """What the simulated account was charged, in fen."""
    return sim.config.balance - sim.stats()["balance"]


def spent(ws) -> int:
    return query(ws.root, "SELECT coalesce(sum(spent_cents), 0) FROM jobs")[0][0]


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def body(prompt: str, seed: int, **fields) -> dict:
    """A create body another client of the account might send."""
    params = {"model": NORMAL, "prompt": prompt, "duration": 5, "ratio": "16:9", "resolution": "720p",
              "generate_audio": False, "service_tier": "default", "camera_fixed": False, "watermark": False, **fields}
    return request_body(params, seed)


# --- a whole run, and its money ---------------------------------------------------------------------


def test_a_storyboard_runs_to_done_files_and_each_job_costs_its_usage(ws, sim, env):
    ws.storyboard("storyboard_ark.json", {"defaults": {"provider": "seedance"}, "segments": [
        {"segment_index": 1, "prompt_text": "a harbour at dawn", "duration_seconds": 5},
        {"segment_index": 2, "prompt_text": "she turns to the camera", "duration_seconds": 8,
         "image_url": "https://example.com/first-frame.png", "resolution": "vertical"},
        {"segment_index": 3, "prompt_text": "rain on the window", "duration_seconds": 10, "is_pro": True,
         "seedance": {"service_tier": "flex", "camera_fixed": True}}]})
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 3)
    # each job is booked what the API billed by its usage (121 frames for 5 s, not the 120 estimated)
    usage = [fen(NORMAL, tokens("720p", "16:9", 5), False, "default"),
             fen(NORMAL, tokens("720p", "9:16", 8), False, "default"),
             fen(PRO, tokens("720p", "16:9", 10), False, "flex")]
    assert query(ws.root, "SELECT cost_cents FROM jobs ORDER BY segment_index") == [(c,) for c in usage]
    assert usage == [478, 762, 83]  # estimated 474, 758 and 83
    assert spent(ws) == billed(sim) == sum(usage)
    assert "paid ¥13.23 for 3 generations" in result.output
    framed = sim.find_task(lambda t: t.image_url)
    assert (framed.image_url, framed.duration, framed.extra["ratio"]) == ("https://example.com/first-frame.png", 8, "9:16")
    seeds = [t["seed"] for t in sim.tasks()]
    assert len(set(seeds)) == 3 and all(0 <= s < 2 ** 31 - 1 for s in seeds)  # one derived seed per attempt


def test_flex_halves_the_estimate_and_audio_changes_the_price_of_1_5_pro(ws, env):
    ws.storyboard("storyboard_prices.json", {"defaults": {"provider": "seedance"}, "segments": [
        {"segment_index": 1, "prompt_text": "plain"},
        {"segment_index": 2, "prompt_text": "offline", "is_pro": True, "seedance": {"service_tier": "flex"}},
        {"segment_index": 3, "prompt_text": "pro, silent", "is_pro": True},
        {"segment_index": 4, "prompt_text": "pro, with sound", "is_pro": True, "seedance": {"generate_audio": True}}]})
    result = ws.cli("scan", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT price_key FROM jobs ORDER BY segment_index") == [
        (f"{NORMAL}@1248x704:5s:silent:default",), (f"{PRO}@1248x704:5s:silent:flex",),
        (f"{PRO}@1248x704:5s:silent:default",), (f"{PRO}@1248x704:5s:audio:default",)]
    assert "estimated ¥7.69" in result.output  # 478 + 42 (half of 83) + 83 + 166 (twice the silent rate) fen
    cheaper = ws.cli("scan", env={**env, "SEEDANCE_PRICES": f"{NORMAL}=23"})
    assert "estimated ¥5.30" in cheaper.output  # the 2.0 job at half its rate: 239 + 42 + 83 + 166


def test_a_failed_generation_costs_nothing_and_keeps_the_apis_words(ws, sim, env):
    ws.storyboard("storyboard_a.json", segments("[policy-reject] a street fight", "a calm sea"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    rows = query(ws.root, "SELECT segment_index, state, error_kind, error_message, spent_cents FROM jobs ORDER BY id")
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [(1, "failed", "refused", 0), (2, "done", None, job_price(sim))]
    assert rows[0][3] == f"{POLICY_MESSAGE} (OutputVideoSensitiveContentDetected)"
    assert spent(ws) == billed(sim) == job_price(sim)  # charged at create, settled to nothing once it failed


def test_a_prompt_refused_at_create_ends_failed_in_the_apis_words_and_nothing_is_made(ws, sim, env):
    sim.protocol = SeedanceProtocol(policy="input")
    ws.storyboard("storyboard_a.json", segments("[policy-reject] a street fight"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    assert query(ws.root, "SELECT state, error_kind, error_message, remote_task_id FROM jobs") == [
        ("failed", "refused", f"{TEXT_REFUSED} (InputTextSensitiveContentDetected)", None)]
    assert (sim.stats()["creates_received"], sim.stats()["tasks_created"], billed(sim), spent(ws)) == (1, 0, 0, 0)


# --- paid once ------------------------------------------------------------------------------------


def test_a_lost_create_answer_is_found_by_its_seed_and_not_paid_again(ws, sim, env):
    ws.storyboard("storyboard_a.json", segments("the create whose answer is lost"))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, {**env, "RECONCILE_GRACE_SECONDS": "1"}, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 1)
    for i in range(40):  # another client of the account, same model and settings, while the worker waits
        sim.create_external("", body=body(f"another client's shot {i}", seed=1000 + i))
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["the create whose answer is lost"] == 1
    ours = sim.find_task(lambda t: t.prompt == "the create whose answer is lost")
    assert query(ws.root, "SELECT remote_task_id, state, spent_cents FROM jobs") == [(ours.task_id, "done", job_price(sim))]
    assert any("found the lost create's task" in d for (d,) in query(ws.root, "SELECT detail FROM events"))
    assert spent(ws) == billed(sim) - 40 * job_price(sim)


def test_a_list_without_seeds_leaves_a_lost_create_unresolved_never_sent_again(ws, sim, env):
    sim.protocol = SeedanceProtocol(list_shows_seed=False)  # the other reading of the list
    env = {**env, "MAX_ATTEMPTS": "2"}
    ws.storyboard("storyboard_a.json", segments("lost, and the list hides seeds"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert "could not be looked up" in result.output
    assert query(ws.root, "SELECT state, error_kind, remote_task_id FROM jobs") == [("submitting", "unresolved", None)]
    assert "without their seed" in ws.cli("show", "1", env=env).output
    assert ws.cli("work", "--no-progress", env=env).exit_code == 0  # a later run asks again …
    assert sim.stats()["creates_per_prompt"]["lost, and the list hides seeds"] == 1  # … and never pays twice


def test_a_list_without_seeds_parks_the_job_on_the_first_look_up_pass(ws, sim, env):
    """Reading the same list again cannot decide what it could not: the job is parked after one
    pass of the look-up, not after MAX_ATTEMPTS passes with growing pauses (~7.5 min before)."""
    sim.protocol = SeedanceProtocol(list_shows_seed=False)
    ws.storyboard("storyboard_a.json", segments("lost, and the list hides seeds"))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, error_kind, attempts FROM jobs") == [("submitting", "unresolved", 0)]
    lists = [route for route, _ in sim.request_times() if route == "tasks"]
    assert len(lists) == 2, sim.request_times()  # the pre-flight's, and one pass of the look-up
    assert sim.stats()["creates_per_prompt"]["lost, and the list hides seeds"] == 1


def test_a_seed_set_in_the_storyboard_cannot_tell_a_lost_create_from_another_task_with_it(ws, sim, env):
    """The storyboard's seed is shared by every request made with it: after a lost answer, another
    task of that time with the same seed makes the look-up ambiguous, and the job waits unresolved."""
    env = {**env, "MAX_ATTEMPTS": "2"}
    ws.storyboard("storyboard_a.json", {"defaults": {"seedance": {"seed": 42}}, "segments": [
        {"segment_index": 1, "prompt_text": "a shot with a fixed seed"}]})
    sim.create_external("", body=body("someone else's shot with the same seed", seed=42))
    sim.inject("create", "lost_create")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state, error_kind FROM jobs") == [("submitting", "unresolved")]
    assert "2 tasks of that time have the storyboard's seed 42" in query(ws.root, "SELECT error_message FROM jobs")[0][0]
    assert sim.stats()["creates_per_prompt"]["a shot with a fixed seed"] == 1


def test_a_server_error_on_the_create_is_looked_up_before_it_is_sent_again(ws, sim, env):
    ws.storyboard("storyboard_a.json", segments("answered with a 500"))
    sim.inject("create", "http_500_json")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert sim.stats()["creates_received"] == 2 and sim.stats()["tasks_created"] == 1
    assert any("no task was created by the unanswered POST" in d for (d,) in query(ws.root, "SELECT detail FROM events"))
    assert spent(ws) == billed(sim) == job_price(sim)


def test_the_lookup_finds_its_seed_in_a_list_that_is_oldest_first(make_sim, ark_client):
    sim = make_sim(balance=10_000_000)
    sim.protocol = SeedanceProtocol(newest_first=False)
    since = datetime.now(timezone.utc)
    params = {"model": NORMAL, "prompt": "mine", "duration": 5, "ratio": "16:9", "resolution": "720p",
              "generate_audio": False, "service_tier": "default", "camera_fixed": False, "watermark": False}
    for i in range(300):
        sim.create_external("", body=body(f"before {i}", seed=i))
    mine = sim.create_external("", body=request_body(params, seed_of(params, "ledger-7-1")))
    for i in range(300):
        sim.create_external("", body=body(f"after {i}", seed=5000 + i))
    found = ark_client(sim.base_url).find_tasks(params, "ledger-7-1", since, skew_seconds=5)
    assert [t.task_id for t in found.tasks] == [mine] and found.covered and found.pages == 2
    assert seed_of(params, "ledger-7-1") == attempt_seed("ledger-7-1")


# --- the API's refusals -------------------------------------------------------------------------------


def test_an_overdue_account_stops_submitting_and_what_was_made_is_finished(ws, make_sim, work_env):
    sim = make_sim(balance=1000)  # two default generations: 474 fen each when made, 478 once done
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "1"}
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 4, result.output
    assert "lack of balance (AccountOverdueError)" in result.output
    assert "this API does not tell the balance" in result.output
    assert query(ws.root, "SELECT state FROM jobs ORDER BY segment_index") == [("done",), ("done",), ("pending",)]
    assert spent(ws) == billed(sim) == 2 * job_price(sim)


def test_rate_limits_pause_the_calls_and_the_jobs_still_complete(ws, sim, env):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    sim.inject("create", "rate_limit", retry_after=1)  # Retry-After is whole seconds
    sim.inject("task", "rate_limit", retry_after=1)
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert_all_done_and_whole(ws, sim, 2)
    assert sim.stats()["faults_injected"]["rate_limit"] == 2 and sim.stats()["tasks_created"] == 2
    assert any("rate limited before creating; retry in 1 s" in d for (d,) in query(ws.root, "SELECT detail FROM events"))


def test_each_refusal_ends_its_job_as_the_error_table_says(ws, sim, env):
    env = {**env, "MAX_CONCURRENT_TASKS": "1"}
    ws.storyboard("storyboard_a.json", segments("model not open", "refused image", "overdue", "never sent"))
    sim.inject("create", "envelope", code="ModelNotOpen", message="Your account has not activated the model.")
    sim.inject("create", "envelope", code="InputImageSensitiveContentDetected.PrivacyInformation",
               message="The request failed because the input image may contain real person.")
    sim.inject("create", "envelope", code="AccountOverdueError", message="Your account has an overdue balance.")
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 4, result.output
    rows = query(ws.root, "SELECT state, error_kind, error_message FROM jobs ORDER BY segment_index")
    assert [r[:2] for r in rows] == [("failed", "bad_parameters"), ("failed", "refused"), ("pending", None),
                                     ("pending", None)]
    assert "HTTP 404" in rows[0][2] and "ModelNotOpen" in rows[0][2]
    assert rows[1][2] == ("The request failed because the input image may contain real person. "
                          "(InputImageSensitiveContentDetected.PrivacyInformation)")
    assert (billed(sim), spent(ws), sim.stats()["tasks_created"]) == (0, 0, 0)


def test_the_risk_checks_and_every_sensitive_content_code_are_refusals_in_the_apis_words(ws, sim, env):
    """Ark's error table: InputTextRiskDetection, InputImageRiskDetection and the
    *SensitiveContentDetected* family (HTTP 400) refuse the content: the job ends refused
    (error kind refused) with the API's message, never as bad parameters."""
    env = {**env, "MAX_CONCURRENT_TASKS": "1"}
    codes = {"InputTextRiskDetection": "The request could not be processed because the input text includes "
                                       "sensitive content that violates ContentSecurityDetection.",
             "InputImageRiskDetection": "The request could not be processed because the input image includes "
                                        "sensitive content that violates ContentSecurityDetection.",
             "OutputVideoSensitiveContentDetected": "The request failed because the output video may contain "
                                                    "sensitive information."}
    ws.storyboard("storyboard_a.json", segments(*codes))
    for code, message in codes.items():
        sim.inject("create", "envelope", code=code, message=message)
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    rows = query(ws.root, "SELECT state, error_kind, error_message FROM jobs ORDER BY segment_index")
    assert rows == [("failed", "refused", f"{message} ({code})") for code, message in codes.items()]
    assert (billed(sim), spent(ws), sim.stats()["tasks_created"]) == (0, 0, 0)


def test_2_5_with_a_first_frame_sends_adaptive_and_renders_1080p(ws, sim, env):
    """2.5 takes only ratio adaptive with a first frame (the storyboard's default becomes it, which
    the simulator, like Ark, insists on), and renders 1080p (ByteDance's capability table)."""
    ws.storyboard("storyboard_a.json", {"segments": [
        {"segment_index": 1, "prompt_text": "framed on 2.5", "model": "doubao-seedance-2-5-260628",
         "image_url": "https://example.com/first-frame.png", "quality": "high"}]})
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)]
    made = sim.find_task(lambda t: t.image_url)
    assert (made.extra["ratio"], made.resolution) == ("adaptive", "1080p")


def test_a_rejected_key_is_one_line_exit_3_and_never_printed(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    wrong = "ark-Wr0ngWr0ngWr0ngWr0ng0123456789"
    result = ws.cli("run", "--no-progress", env={**work_env, "ARK_API_KEY": wrong})
    assert result.exit_code == 3, result.output
    said = [line for line in result.output.splitlines() if "was rejected" in line]
    assert len(said) == 1 and "check ARK_API_KEY" in said[0]
    assert wrong not in result.output and wrong[4:] not in result.output and wrong[:-4] not in result.output
    missing = ws.cli("run", "--no-progress", env={k: v for k, v in work_env.items() if k != "ARK_API_KEY"})
    assert missing.exit_code == 3 and "ARK_API_KEY is not set" in missing.output
    assert sim.stats()["creates_received"] == 0


def test_an_unknown_status_word_is_logged_once_and_the_job_still_completes(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=1.0, status_words={"running": "generating"})
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    proc = spawn(ws.root, {**work_env, **api_env(sim)}, "run", "--no-progress")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, errors)
    assert errors.count("unknown status 'generating'; taken as not finished and polled again") == 1
    assert_all_done_and_whole(ws, sim, 3)


# --- retention --------------------------------------------------------------------------------------


def test_a_task_the_api_forgot_after_24_hours_ends_content_expired_and_requeue_generates_it_again(ws, make_sim,
                                                                                                  work_env):
    sim = make_sim(gen_seconds=2.0)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("left for a day"))
    # the run stops polling while it is still generating (the laptop is shut) …
    assert ws.cli("run", "--no-progress", env={**env, "POLL_TIMEOUT_SECONDS": "0.2"}).exit_code == 0
    assert query(ws.root, "SELECT state FROM jobs") == [("submitted",)]
    # … and is opened again 25 hours later: the API keeps tasks 24 hours
    with closing(sqlite3.connect(ws.root / "ledger.db")) as conn, conn:
        (was,) = conn.execute("SELECT submitted_at FROM jobs").fetchone()
        earlier = datetime.fromisoformat(was) - timedelta(hours=25)
        conn.execute("UPDATE jobs SET submitted_at = ?", (earlier.isoformat(sep=" "),))
    sim.protocol = SeedanceProtocol()
    sim.protocol.retention = 0.0
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    ((state, kind, message),) = query(ws.root, "SELECT state, error_kind, error_message FROM jobs")
    assert (state, kind) == ("failed", "content_expired")
    assert "keeps a task and its video 24 h" in message and "`ledger requeue --failed` generates it again" in message
    requeued = ws.cli("requeue", "--failed", env=env)
    assert "1 to generate again" in requeued.output, requeued.output
    assert query(ws.root, "SELECT state, remote_task_id FROM jobs") == [("pending", None)]
    sim.protocol = SeedanceProtocol()
    assert ws.cli("work", "--no-progress", env=env).exit_code == 0
    assert sim.stats()["tasks_created"] == 2  # the forgotten one, and the one paid again on purpose
    assert_all_done_and_whole(ws, sim, 1)


@pytest.mark.parametrize("clears_url", [False, True], ids=["url-refused", "url-cleared"])
def test_a_video_past_24_hours_of_a_task_still_listed_ends_content_expired_and_requeue_generates_it(
        ws, make_sim, work_env, clears_url):
    """Ark keeps task records 7 days but the video 24 h: a task read back after that still answers
    succeeded, with a URL refused for ever (403) or none. The job ends content_expired at once, and
    `requeue --failed` generates it again instead of downloading the dead URL again."""
    sim = make_sim(gen_seconds=1.0)
    env = {**work_env, **api_env(sim)}
    ws.storyboard("storyboard_a.json", segments("left for a day and a bit"))
    assert ws.cli("run", "--no-progress", env={**env, "POLL_TIMEOUT_SECONDS": "0.2"}).exit_code == 0
    assert query(ws.root, "SELECT state FROM jobs") == [("submitted",)]
    with closing(sqlite3.connect(ws.root / "ledger.db")) as conn, conn:
        (was,) = conn.execute("SELECT submitted_at FROM jobs").fetchone()
        earlier = datetime.fromisoformat(was) - timedelta(hours=25)
        conn.execute("UPDATE jobs SET submitted_at = ?", (earlier.isoformat(sep=" "),))
    sim.protocol = SeedanceProtocol(clears_url=clears_url)
    sim.protocol.video_retention = 0.0  # the record is kept, its video is not
    time.sleep(1.0)  # the task finishes (gen_seconds) on the service
    result = ws.cli("work", "--no-progress", env=env)
    assert result.exit_code == 1, result.output
    ((state, kind, message),) = query(ws.root, "SELECT state, error_kind, error_message FROM jobs")
    assert (state, kind) == ("failed", "content_expired"), message
    assert "keeps a task and its video 24 h" in message and "`ledger requeue --failed` generates it again" in message
    assert "\n" not in message
    requeued = ws.cli("requeue", "--failed", env=env)
    assert "1 to generate again" in requeued.output, requeued.output
    assert query(ws.root, "SELECT state, remote_task_id FROM jobs") == [("pending", None)]
    sim.protocol = SeedanceProtocol()
    assert ws.cli("work", "--no-progress", env=env).exit_code == 0
    assert sim.stats()["tasks_created"] == 2  # the one whose video expired, and the one paid again on purpose
    assert_all_done_and_whole(ws, sim, 1)


# --- the storyboard, checked at scan time ------------------------------------------------------------


def test_values_seedance_does_not_take_are_scan_errors_naming_the_allowed_ones(ws, env):
    ws.storyboard("storyboard_a.json", {"defaults": {"provider": "seedance"}, "segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 20},
        {"segment_index": 2, "prompt_text": "b", "resolution": "adaptive"},
        {"segment_index": 3, "prompt_text": "c", "model": "doubao-seedance-2-0-fast-260128", "quality": "high"},
        {"segment_index": 4, "prompt_text": "d", "seedance": {"sead": 1}},
        {"segment_index": 5, "prompt_text": "e", "seedance": {"service_tier": "batch"}},
        {"segment_index": 6, "prompt_text": "f", "seedance": {"service_tier": "flex"}}]})
    result = ws.cli("scan", env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("invalid: ")]
    assert lines == [
        "invalid: input/storyboard_a.json: /segments/0/duration_seconds: duration 20s is not offered by "
        "doubao-seedance-2-0-260128 on the seedance provider; use one of 4, 5, …, 15 (every whole second from 4 to 15)",
        "invalid: input/storyboard_a.json: /segments/1/resolution: resolution 'adaptive' takes the ratio of the first "
        "frame: it needs an image_url; without one use 'horizontal', 'vertical' or a ratio such as '16:9'",
        "invalid: input/storyboard_a.json: /segments/2/quality: quality 'high' (1080p) is not offered by "
        "doubao-seedance-2-0-fast-260128; use one of 480p, 720p",
        "invalid: input/storyboard_a.json: /segments/3/seedance/sead: unknown key — did you mean seed?",
        "invalid: input/storyboard_a.json: /segments/4/seedance/service_tier: 'batch' is not allowed here; use one "
        "of 'default', 'flex'",
        "invalid: input/storyboard_a.json: /segments/5/seedance: seedance.service_tier 'flex' (offline inference) is "
        "not offered by doubao-seedance-2-0-260128; use 'default', or a model that offers it: "
        "doubao-seedance-1-5-pro-251215",
    ]
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(0,)]


def test_the_demo_storyboard_is_valid_with_the_default_settings(ws, env):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "docs" / "providers" / "storyboard_seedance.json"
    doc = json.loads(demo.read_text(encoding="utf-8"))
    ws.storyboard("storyboard_seedance.json", doc)
    result = ws.cli("scan", env={k: v for k, v in env.items() if k != "PROVIDER"})
    assert result.exit_code == 0, result.output
    rows = query(ws.root, "SELECT provider, params FROM jobs")
    assert {p for p, _ in rows} == {"seedance"} and len(rows) == 3
    params = [json.loads(p) for _, p in rows]
    assert any(p.get("image_url") for p in params) and len({p["duration"] for p in params}) == 3
