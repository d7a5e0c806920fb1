"""Kling as its official documentation describes it (issue 21), against real local servers: the
account costs at the domain root, the look-up of a lost create on a busy account, the documented
status words and charges."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from werkzeug.wrappers import Response

from ledger.errors import TransientError
from ledger.providers import RULES, Request
from ledger.providers.kling import LIST_LIMIT, KlingClient
from tests.helpers import api_env, job_price, query, segments, spawn

KEY = "kling-truth-key-0000000000000000"


def costs_answer(remaining: float = 118.0) -> dict:
    """The answer of the official "Account Information Inquiry" page, with a pack valid now."""
    now = int(time.time() * 1000)
    return {"code": 0, "message": "string", "request_id": "req-1", "data": {
        "code": 0, "msg": "string", "resource_pack_subscribe_infos": [{
            "resource_pack_name": "视频生成-10000条", "resource_pack_id": "509f3fd3d4ab4a3f9eec5db27aa44f27",
            "resource_pack_type": "decreasing_total", "total_quantity": 200.0, "remaining_quantity": remaining,
            "purchase_time": now - 1000, "effective_time": now - 1000, "invalid_time": now + 86400000,
            "status": "online"}]}}


def reply(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, headers={"Content-Type": "application/json"})


@pytest.fixture
def client_at():
    made = []

    def make(base_url: str, key: str = KEY) -> KlingClient:
        client = KlingClient(base_url, key, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# --- issue 21 item 1: the account costs are at the domain root -------------------------------------


def test_the_preflight_and_the_balance_ask_the_account_costs_at_the_domain_root(httpserver, client_at):
    """The official page: ``GET https://api-beijing.klingai.com/account/costs`` — no /v1."""
    httpserver.expect_request("/account/costs").respond_with_response(reply(costs_answer()))
    client = client_at(httpserver.url_for("/v1"))
    assert client.preflight() == 11800  # 118 credits, in fen at 1 credit = ¥1
    assert client.balance() == 11800
    assert [r.path for r, _ in httpserver.log] == ["/account/costs", "/account/costs"]
    assert all(r.args["start_time"].isdigit() and r.args["end_time"].isdigit() for r, _ in httpserver.log)


def test_a_server_with_the_account_costs_under_v1_is_asked_there_after_a_404_at_the_root(httpserver, client_at):
    """One third-party test expects ``/v1/account/costs``: the root's 404 sends the call there."""
    httpserver.expect_request("/v1/account/costs").respond_with_response(reply(costs_answer(7.5)))
    httpserver.expect_request("/account/costs").respond_with_response(
        reply({"code": 1203, "message": "not found", "request_id": "r"}, 404))
    client = client_at(httpserver.url_for("/v1"))
    assert client.preflight() == 750
    assert client.balance() == 750  # asked where it answered: no second 404
    assert [r.path for r, _ in httpserver.log] == ["/account/costs", "/v1/account/costs", "/v1/account/costs"]


# --- issue 21 item 8: a lost create on a busy account ----------------------------------------------


@pytest.fixture
def protocol() -> str:
    return "kling"


def backdated(sim, task_id: str, hours: float) -> None:
    """Make a task of the simulator look ``hours`` older (another client made it earlier)."""
    task = sim.get_task(task_id, poll=False)
    task.created_wall -= timedelta(hours=hours)


def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def busy_account(sim) -> None:
    """Another client's text2video tasks, newer than the lost create: it is on page 2 of its list."""
    for i in range(LIST_LIMIT + 10):
        sim.create_external(f"another client's shot {i}")


def test_a_lost_text2video_create_behind_a_full_page_and_an_older_image2video_task_is_found_not_paid_again(
        ws, make_sim, work_env):
    """The official look-up answers the one task object: taken (before, it was refused, and the list
    scan that followed stopped at the older image2video task: "not created", paid twice)."""
    sim = make_sim(gen_seconds=0.3, balance=10 ** 8)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "2"}
    backdated(sim, sim.create_external("an older image task", image="https://example.com/f.jpg"), hours=1)
    ws.storyboard("storyboard_k.json", segments("the create whose answer is lost"))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    wait_for(lambda: sim.stats()["tasks_created"] >= 2, what="the lost create")
    busy_account(sim)
    out, errors = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, errors)
    assert sim.stats()["creates_per_prompt"]["the create whose answer is lost"] == 1
    mine = sim.find_task(lambda t: t.prompt == "the create whose answer is lost")
    assert query(ws.root, "SELECT remote_task_id, state, spent_cents FROM jobs") == [
        (mine.task_id, "done", job_price(sim))]
    assert any("found the lost create's task" in d for (d,) in query(ws.root, "SELECT detail FROM events"))


def test_when_no_look_up_form_answers_the_create_kinds_own_list_is_read_past_its_first_page(make_sim, client_at,
                                                                                            api_key):
    """Neither look-up form is understood: the text2video list alone is read, page after page, down to
    the create's time; the older image2video task on that kind's first page says nothing about it."""
    sim = make_sim(balance=10 ** 8)
    client = client_at(sim.base_url, api_key)
    backdated(sim, sim.create_external("an older image task", image="https://example.com/f.jpg"), hours=1)
    params, ref = RULES["kling"].map(Request(prompt="lost", model=None, is_pro=False, duration=None,
                                             resolution="horizontal", quality="normal", remove_watermark=True,
                                             image_url=None)).params, "ledger-1-1700000000000"
    since = datetime.now(timezone.utc)
    sim.inject("create", "lost_create")
    with pytest.raises(TransientError):
        client.create(params, ref)
    busy_account(sim)
    sim.inject("lookup", "envelope", code=1201, message="参数错误：external_task_id 不支持")
    sim.inject("task", "envelope", code=1201, message="参数错误：task_id 无效")
    found = client.find_tasks(params, ref, since)
    mine = sim.find_task(lambda t: t.extra["external_task_id"] == ref)
    assert [t.task_id for t in found.tasks] == [mine.task_id] and found.covered
    assert sim.stats()["requests_by_route"]["tasks"] == 2  # text2video pages 1 and 2; no image2video page


# --- issue 21 items 5 and 12: statuses, charges, what each model takes -----------------------------


def test_the_newer_api_generations_succeeded_is_done_and_the_video_is_saved(ws, make_sim, work_env):
    sim = make_sim(gen_seconds=0.3, status_words={"succeed": "succeeded"})
    ws.storyboard("storyboard_k.json", segments("done, in the newer words"))
    result = ws.cli("run", "--no-progress", env={**work_env, **api_env(sim), "POLL_TIMEOUT_SECONDS": "20"})
    assert result.exit_code == 0, result.output
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)]


def test_what_kling_deducted_is_the_booked_cost_not_the_price_list(ws, make_sim, work_env):
    """The price list says ¥0.70/s; the finished task says Kling deducted 3 units (¥0.60/s x 5 s)."""
    sim = make_sim(gen_seconds=0.3)
    ws.storyboard("storyboard_k.json", segments("charged as Kling says"))
    result = ws.cli("run", "--no-progress", env={**work_env, **api_env(sim), "KLING_PRICES": "std=70"})
    assert result.exit_code == 0, result.output
    [task] = sim.tasks()
    assert task["final_unit_deduction"] == "3"
    assert query(ws.root, "SELECT state, cost_cents, spent_cents FROM jobs") == [("done", 300, 300)]
    assert sim.config.balance - sim.stats()["balance"] == 300


def test_sound_on_kling_v2_6_std_and_cfg_scale_on_the_v2_models_are_scan_errors(ws, sim, work_env):
    ws.storyboard("storyboard_k.json", {"segments": [
        {"segment_index": 1, "prompt_text": "a", "model": "kling-v2-6", "kling": {"sound": "on"}},
        {"segment_index": 2, "prompt_text": "b", "model": "kling-v2-6", "kling": {"cfg_scale": 0.5}},
        {"segment_index": 3, "prompt_text": "c", "model": "kling-v2-6", "is_pro": True, "kling": {"sound": "on"}},
        {"segment_index": 4, "prompt_text": "d", "model": "kling-v3", "duration_seconds": 15,
         "kling": {"cfg_scale": 0.5}}]})
    result = ws.cli("scan", env=work_env)
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("invalid: ")] == [
        "invalid: input/storyboard_k.json: /segments/0/kling: sound 'on' is taken by kling-v2-6 in pro mode only; "
        "set mode 'pro' (or is_pro: true), or sound 'off'",
        "invalid: input/storyboard_k.json: /segments/1/kling: cfg_scale is not taken by the kling-v2.x models "
        "(kling-v2-6); only by kling-v3: drop it"]


def test_a_task_path_answering_a_task_without_its_external_id_is_not_taken_for_the_create(httpserver, client_at):
    """An API that ignores the external id in the path answers some task of the account: without
    `task_info.external_task_id` nothing says it is the create's, and adopting it would save another
    job's video under this one (and leave the lost create's own task unread)."""
    ref = "ledger-3-1700000000000"
    refused = {"code": 1201, "message": "参数错误", "request_id": "r", "data": None}
    httpserver.expect_request("/v1/videos/text2video", query_string={"external_task_id": ref}).respond_with_json(
        refused, status=400)
    httpserver.expect_request(f"/v1/videos/text2video/{ref}").respond_with_json({
        "code": 0, "message": "SUCCEED", "request_id": "r", "data": {
            "task_id": "SomeoneElsesTask01", "task_status": "succeed", "created_at": int(time.time() * 1000),
            "updated_at": int(time.time() * 1000),
            "task_result": {"videos": [{"id": "v", "url": "https://cdn.example.com/other.mp4", "duration": "5"}]}}})
    httpserver.expect_request("/v1/videos/text2video").respond_with_json(
        {"code": 0, "message": "SUCCEED", "request_id": "r", "data": []})
    client = client_at(httpserver.url_for("/v1"))
    params = RULES["kling"].map(Request(prompt="lost", model=None, is_pro=False, duration=None,
                                        resolution="horizontal", quality="normal", remove_watermark=True,
                                        image_url=None)).params
    found = client.find_tasks(params, ref, datetime.now(timezone.utc) - timedelta(seconds=30))
    assert [t.task_id for t in found.tasks] == []
