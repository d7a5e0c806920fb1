"""The OpenAI-compatible /v1/videos provider, where it differs from the first one: the key-guarded
content and its redirects, gateway status words, cursor paging, parameter mapping at scan time, the
error objects, the poll-after hint — and jobs that keep going to the API they were sent to."""
from __future__ import annotations

import json
import re
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ledger.errors import BadParameters
from ledger.providers.openai_videos import OpenAIVideos
from tests.helpers import api_env, both_protocols, job_price, leftovers, query, segments, spawn
from tests.integration.conftest import API_KEY
from tests.integration.test_work import assert_all_done_and_whole


@pytest.fixture
def protocol() -> str:
    return "openai"


@pytest.fixture
def videos_client(make_client):
    """A /v1/videos client with tiny backoffs, closed afterwards."""
    made = []

    def make(base_url: str, api_key: str = API_KEY) -> OpenAIVideos:
        client = OpenAIVideos(base_url, api_key, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.mark.parametrize("content_host, keyed_file_requests", [("localhost", 0), ("127.0.0.1", 2)])
def test_the_key_goes_to_the_api_origin_only_never_to_a_redirect_elsewhere(ws, make_sim, work_env, content_host,
                                                                          keyed_file_requests):
    """The content endpoint answers with a redirect to a signed URL: on another host ("localhost"
    is not "127.0.0.1") the key is not sent; on the API's own origin it is."""
    sim = make_sim(content_host=content_host)
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    result = ws.cli("run", "--no-progress", env={**work_env, **api_env(sim)})
    assert result.exit_code == 0, result.output
    stats = sim.stats()
    assert stats["requests_by_route"]["content"] == 2 and stats["requests_by_route"]["file"] == 2
    assert stats["file_requests_with_auth"] == keyed_file_requests
    assert_all_done_and_whole(ws, sim, 2)


def test_gateway_status_words_are_normalised_and_an_unknown_one_is_not_done(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=1.0, status_words={"queued": "pending", "in_progress": "rendering",
                                                  "completed": "succeeded"})
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    proc = spawn(ws.root, {**work_env, **api_env(sim)}, "run", "--no-progress")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, errors)
    assert "unknown status 'rendering'; taken as not finished and polled again" in errors
    assert errors.count("unknown status 'rendering'") == 1  # logged once, not at every poll
    # nothing was fetched before the generation said "succeeded"
    assert sim.stats()["requests_by_route"]["content"] == 3
    assert_all_done_and_whole(ws, sim, 3)


def test_the_client_reads_synonyms_and_keeps_unknown_words_unfinished(make_sim, videos_client):
    sim = make_sim(gen_seconds=0.4, status_words={"in_progress": "processing", "completed": "succeeded",
                                                  "queued": "warming_up"})
    client = videos_client(sim.base_url)
    task_id = sim.create_external("a fox")
    first = client.get(task_id)
    assert (first.status, first.is_terminal) == ("warming_up", False)
    time.sleep(0.5)
    done = client.get(task_id)
    assert done.is_completed and done.video_url == f"{sim.base_url}/videos/{task_id}/content"


def test_reconciliation_pages_the_cursor_until_the_create_is_found(make_sim, videos_client):
    sim = make_sim()
    since = datetime.now(timezone.utc)
    mine = sim.create_external("the lost create")
    for i in range(250):
        sim.create_external(f"someone else {i}")
    found = videos_client(sim.base_url).find_tasks({"prompt": "the lost create"}, "", since, skew_seconds=5)
    assert [t.task_id for t in found.tasks] == [mine] and found.covered and found.pages == 3
    assert sim.stats()["requests_by_route"]["tasks"] == 3


def test_a_relay_that_ignores_the_cursor_cannot_prove_a_create_was_not_made(make_sim, videos_client):
    sim = make_sim(list_ignores_page=True)
    since = datetime.now(timezone.utc)
    sim.create_external("the lost create")
    for i in range(150):
        sim.create_external(f"someone else {i}")
    found = videos_client(sim.base_url).find_tasks({"prompt": "the lost create"}, "", since, skew_seconds=5)
    assert not found.covered and found.tasks == [] and "repeated itself" in found.reason


def test_values_a_provider_cannot_take_are_rejected_at_scan_with_the_allowed_ones(ws, sim, work_env):
    ws.storyboard("storyboard_o.json", {
        "defaults": {"provider": "openai"},
        "segments": [
            {"segment_index": 1, "prompt_text": "a", "duration_seconds": 10},
            {"segment_index": 2, "prompt_text": "b", "resolution": "1792x1024"},
            {"segment_index": 3, "prompt_text": "c", "model": "sora-2", "is_pro": True},
            {"segment_index": 4, "prompt_text": "d", "provider": "runway"},
            {"segment_index": 5, "prompt_text": "e", "is_pro": True, "resolution": "1792x1024", "duration_seconds": 12},
        ]})
    ws.storyboard("storyboard_s.json", {"segments": [{"segment_index": 1, "prompt_text": "x",
                                                      "resolution": "1280x720", "duration_seconds": 8}]})
    env = {k: v for k, v in work_env.items() if k != "PROVIDER"}  # sora_hk is the default provider
    result = ws.cli("scan", env={**env, "DEFAULT_DURATION": "10"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("invalid: ")]
    assert lines == [
        "invalid: input/storyboard_o.json: /segments/0/duration_seconds: duration 10s is not offered by sora-2 on "
        "the openai provider; use one of 4, 8, 12",
        "invalid: input/storyboard_o.json: /segments/1: duration 10s is not offered by sora-2 on the openai provider; "
        "use one of 4, 8, 12 (the value comes from the setting DEFAULT_DURATION)",
        "invalid: input/storyboard_o.json: /segments/1/resolution: resolution '1792x1024' is not offered by sora-2 on "
        "the openai provider; use one of 'horizontal' (1280x720), 'vertical' (720x1280), '1280x720', '720x1280'",
        "invalid: input/storyboard_o.json: /segments/2/model: model 'sora-2' is not a Pro model, but is_pro is true; "
        "drop one of the two",
        "invalid: input/storyboard_o.json: /segments/3/provider: unknown provider 'runway'; use one of 'sora_hk', "
        "'openai', 'seedance', 'kling', 'wan', 'hailuo'",
        "invalid: input/storyboard_s.json: /segments/0/duration_seconds: 8 is not allowed here; use one of 10, 15, 25",
        "invalid: input/storyboard_s.json: /segments/0/resolution: '1280x720' is not allowed here; use one of "
        "'horizontal', 'vertical'",
    ]
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(0,)]
    # without the setting, each model takes its own default: the openai file is valid but for segment 3/4
    fixed = ws.storyboard("storyboard_o.json", {"defaults": {"provider": "openai"}, "segments": [
        {"segment_index": 1, "prompt_text": "a"},
        {"segment_index": 5, "prompt_text": "e", "is_pro": True, "resolution": "1792x1024", "duration_seconds": 12}]})
    assert fixed.is_file()
    ws.storyboard("storyboard_s.json", segments("x"))
    result = ws.cli("scan", env=env)
    assert result.exit_code == 0, result.output
    rows = query(ws.root, "SELECT provider, price_key, is_pro, params FROM jobs ORDER BY id")
    assert [(p, k, bool(pro)) for p, k, pro, _ in rows] == [
        ("openai", "sora-2@1280x720:4", False), ("openai", "sora-2-pro@1792x1024:12", True), ("sora_hk", "normal", False)]
    assert json.loads(rows[1][3]) == {"provider": "openai", "model": "sora-2-pro", "prompt": "e", "duration": 12,
                                      "resolution": "1792x1024", "size": "1792x1024", "is_pro": True}
    # 4 s x $0.10 + 12 s x $0.50 + the sora.hk normal price
    assert "estimated $6.70" in result.output


def test_a_job_keeps_going_to_the_api_it_was_sent_to_after_the_settings_change(ws, make_sim, work_env):
    """Sent to one sora.hk API; then SORA_BASE_URL points elsewhere and PROVIDER=openai: the job is
    still polled and downloaded where it was made, and new jobs go to the new provider."""
    first = make_sim(protocol="sora_hk", gen_seconds=3.0)
    elsewhere = make_sim(protocol="sora_hk")
    gateway = make_sim(protocol="openai")
    before = {**work_env, "SORA_BASE_URL": first.base_url, "PROVIDER": "sora_hk"}
    ws.storyboard("storyboard_a.json", segments("made before the switch"))
    assert ws.cli("scan", env=before).exit_code == 0
    proc = spawn(ws.root, before, "work", "--no-progress")
    deadline = time.monotonic() + 15
    while not query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'submitted'")[0][0]:
        assert time.monotonic() < deadline, "the create was never recorded"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert query(ws.root, "SELECT provider, api_base, state FROM jobs") == [("sora_hk", first.base_url, "submitted")]
    ws.storyboard("storyboard_b.json", segments("made after the switch"))
    after = {**work_env, "SORA_BASE_URL": elsewhere.base_url, **api_env(gateway)}
    result = ws.cli("run", "--no-progress", env=after)
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT s.path, j.provider, j.api_base, j.state FROM jobs j JOIN storyboards s "
                          "ON s.id = j.storyboard_id ORDER BY s.path") == [
        ("input/storyboard_a.json", "sora_hk", first.base_url, "done"),
        ("input/storyboard_b.json", "openai", gateway.base_url, "done")]
    assert first.stats()["tasks_created"] == 1 and first.stats()["requests_by_route"]["file"] == 1
    assert elsewhere.stats()["requests_by_route"] == {}  # never asked about a job it did not make
    assert gateway.stats()["tasks_created"] == 1
    assert leftovers(ws.root) == []
    status = json.loads(ws.cli("status", "--json", env=after).output)
    by_provider = {p["provider"]: p for p in status["providers"]}
    assert by_provider["sora_hk"]["api_bases"] == [first.base_url] and by_provider["sora_hk"]["spent_cents"] == 30
    assert by_provider["openai"]["api_bases"] == [gateway.base_url] and by_provider["openai"]["spent_cents"] == 40
    shown = ws.cli("show", "storyboard_a#1v1", env=after).output
    assert "sora_hk" in shown and first.base_url in shown
    assert json.loads(ws.cli("show", "storyboard_b#1v1", "--json", env=after).output)["provider"] == "openai"


def test_the_error_objects_map_to_the_same_outcomes(ws, make_sim, work_env, videos_client):
    sim = make_sim(balance=100)  # two default generations of 40 cents
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "1"}
    # a relay answering HTTP 200 with an error object: bad parameters, terminal, nothing billed
    sim.inject("create", "envelope", code="invalid_value", message="Invalid 'seconds': 10")
    ws.storyboard("storyboard_a.json", segments("refused", "two", "three", "four"))
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 4, result.output  # insufficient_quota after two: the balance stop
    assert "lack of balance (insufficient_quota)" in result.output
    assert "this API does not tell the balance" in result.output
    states = dict(query(ws.root, "SELECT segment_index, state FROM jobs"))
    assert states == {1: "failed", 2: "done", 3: "done", 4: "pending"}
    assert query(ws.root, "SELECT error_kind FROM jobs WHERE segment_index = 1") == [("bad_parameters",)]
    assert sim.config.balance - sim.stats()["balance"] == 80
    # a 400 names the parameter
    with pytest.raises(BadParameters) as info:
        videos_client(sim.base_url).create({"model": "sora-2", "prompt": "x", "duration": 10, "size": "1280x720"})
    assert "HTTP 400" in str(info.value) and "param seconds" in str(info.value)


def test_a_refused_key_stops_before_anything_is_spent_and_is_never_printed(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    wrong = "sk-proj-WrongWrongWrongWrong0123456789"
    result = ws.cli("run", "--no-progress", env={**work_env, "OPENAI_API_KEY": wrong})
    assert result.exit_code == 3, result.output
    assert "was rejected" in result.output and "check OPENAI_API_KEY" in result.output
    assert wrong not in result.output and wrong[8:] not in result.output
    missing = ws.cli("run", "--no-progress", env={k: v for k, v in work_env.items() if k != "OPENAI_API_KEY"})
    assert missing.exit_code == 3 and "OPENAI_API_KEY is not set" in missing.output
    assert sim.stats()["creates_received"] == 0


def test_the_poll_after_hint_is_a_lower_bound_for_the_next_poll(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=3.0, poll_after_ms=1200)
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env={**work_env, **api_env(sim)})
    assert result.exit_code == 0, result.output
    polls = [t for route, t in sim.request_times() if route == "task"]
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    assert len(polls) >= 2 and min(gaps) >= 1.1, gaps  # without the hint the first polls come 0.5 s apart


def test_a_dry_run_prices_by_the_second_and_says_there_is_no_balance_to_read(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", {"segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 8},
        {"segment_index": 2, "prompt_text": "b", "is_pro": True, "resolution": "1024x1792", "duration_seconds": 4}]})
    result = ws.cli("run", "--dry-run", env=work_env)
    assert result.exit_code == 0, result.output
    assert "A run would submit 2 jobs (1 normal, 1 Pro): estimated $2.80 at openai sora-2 $0.10/s" in result.output  # 8 x 10 + 4 x 50 cents
    assert "openai: Balance unknown (the openai API has no balance endpoint)" in result.output
    assert sim.stats()["creates_received"] == 0 and sim.stats()["requests_by_route"] == {"tasks": 1}


@both_protocols
def test_one_list_call_answers_for_many_jobs_in_flight(ws, make_sim, work_env):
    """24 generations in flight at once: their polls are answered by list reads, a few calls in all,
    not a GET per job per poll."""
    sim = make_sim(gen_seconds=3.0)
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(24)]))
    result = ws.cli("run", "--no-progress", env={**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "24"})
    assert result.exit_code == 0, result.output
    routes = sim.stats()["requests_by_route"]
    status_calls = routes.get("task", 0) + routes.get("tasks", 0)
    polls = sum(int(n) for (detail,) in query(ws.root, "SELECT detail FROM events WHERE detail LIKE 'generated in %'")
                for n in re.findall(r"\((\d+) polls?\)", detail))
    assert polls >= 24 * 2  # every job was asked about several times …
    assert status_calls <= 24, routes  # … by far fewer calls than one per job
    assert routes.get("tasks", 0) >= 2
    assert_all_done_and_whole(ws, sim, 24)
    assert sim.config.balance - sim.stats()["balance"] == 24 * job_price(sim)


def test_the_readmes_gateway_env_works_as_written(ws, make_sim):
    """The README's .env for a gateway, only its base URL pointed at the simulator (which takes any key)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```sh\n# .env for an OpenAI-compatible gateway", 1)[1].split("```", 1)[0]
    (ws.root / ".env").write_text("# .env for an OpenAI-compatible gateway" + block, encoding="utf-8")
    sim = make_sim(api_key=None)
    ws.storyboard("storyboard_a.json", {"segments": [
        {"segment_index": 1, "prompt_text": "a", "duration_seconds": 8},
        {"segment_index": 2, "prompt_text": "b", "is_pro": True, "resolution": "1792x1024"}]})
    result = ws.cli("run", "--dry-run", env={"OPENAI_BASE_URL": sim.base_url, "GEN_COUNT_PER_SEGMENT": "1"})
    assert result.exit_code == 0, result.output
    assert "estimated $2.24" in result.output  # the .env's rates: 8 s x 8 cents + 4 s x 40 cents
    assert "sk-xxxxxxxx" not in result.output
    assert sim.stats()["requests_by_route"] == {"tasks": 1}


def test_an_api_that_disappeared_holds_up_nothing_else(ws, make_sim, work_env):
    """A reseller gone with a job in flight: the run warns, leaves that job as it is (task id kept)
    and sends the new work to the provider configured now."""
    gone = make_sim(protocol="sora_hk", gen_seconds=30.0)
    gateway = make_sim(protocol="openai")
    ws.storyboard("storyboard_a.json", segments("made at the reseller that disappears"))
    before = {**work_env, "SORA_BASE_URL": gone.base_url, "PROVIDER": "sora_hk"}
    assert ws.cli("run", "--no-progress", env={**before, "POLL_TIMEOUT_SECONDS": "0.2"}).exit_code == 0
    gone_url = gone.base_url
    assert query(ws.root, "SELECT state, api_base FROM jobs") == [("submitted", gone_url)]
    gone.stop()
    ws.storyboard("storyboard_b.json", segments("made at the gateway"))
    result = ws.cli("run", "--no-progress", env={**work_env, **api_env(gateway)})
    assert result.exit_code == 0, result.output
    assert f"warning: the jobs sent earlier to {gone_url} (sora_hk) are left as they are this run" in result.output
    assert "connection refused" in result.output
    assert query(ws.root, "SELECT j.provider, j.state, j.remote_task_id IS NOT NULL FROM jobs j ORDER BY j.id") == [
        ("sora_hk", "submitted", 1), ("openai", "done", 1)]


def test_a_list_the_api_refuses_never_fails_a_job_polls_ask_alone(ws, make_sim, work_env):
    """A relay whose task list answers "bad parameters": one try, then every job is polled alone;
    no paid job is failed for it."""
    sim = make_sim(protocol="sora_hk", gen_seconds=1.0)
    sim.inject("tasks", "envelope", count=1000, code=1001, message="参数错误：不支持的接口")
    ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(8)]))
    proc = spawn(ws.root, {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "8"}, "run", "--no-progress")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, errors)
    assert "the task list could not answer for the jobs in flight" in errors
    assert sim.stats()["requests_by_route"]["tasks"] == 1
    assert_all_done_and_whole(ws, sim, 8)


def test_content_the_service_no_longer_holds_ends_the_job_and_requeue_generates_it_again(ws, sim, work_env):
    """HTTP 410 Gone from ``/content`` (past the video's ``expires_at``). Before: three fresh URLs,
    then the download was tried again at every attempt, and ``requeue --failed`` sent the job back
    to the same dead download, for ever; there is nothing left to fetch but a new generation."""
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    env = {**work_env, **api_env(sim)}
    sim.inject("file", "expired", count=4)  # the first job's download and its 3 fresh URLs: 410 each time
    result = ws.cli("run", "--no-progress", "--concurrency", "1", env=env)
    assert result.exit_code == 1, result.output
    rows = query(ws.root, "SELECT segment_index, state, error_kind, error_message, attempts FROM jobs ORDER BY id")
    assert [row[:3] for row in rows] == [(1, "failed", "content_expired"), (2, "done", None)]
    assert "HTTP 410 Gone, the server no longer holds this video, after 3 fresh URLs" in rows[0][3], rows[0][3]
    assert "`ledger requeue --failed` generates it again (and pays for it)" in rows[0][3]
    assert rows[0][4] == 1  # ended at once, not retried at every attempt
    assert sim.stats()["requests_by_route"]["content"] == 5  # 4 for the first job, 1 for the second
    assert "downloads it again without paying" not in result.output
    requeued = ws.cli("requeue", "--failed", env=env)
    assert "0 to download again (already paid for), 1 to generate again" in requeued.output
    assert query(ws.root, "SELECT state, remote_task_id FROM jobs WHERE segment_index = 1") == [("pending", None)]
    assert ws.cli("work", "--no-progress", env=env).exit_code == 0
    assert sim.stats()["tasks_created"] == 3  # the expired one, the second, and the one paid again on purpose
    assert_all_done_and_whole(ws, sim, 2)
