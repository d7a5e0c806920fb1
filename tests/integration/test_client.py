"""The API client against the simulator (and pytest-httpserver for single odd answers), over sockets."""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any, Callable, Optional, Type
from urllib.parse import quote

import pytest
from pytest_httpserver import HTTPServer

from ledger.client import RATE_LIMIT_PAUSE, SharedBackoff, SoraClient
from ledger.errors import (
    ApiError,
    AuthError,
    BadParameters,
    InsufficientBalance,
    RateLimited,
    RemoteTaskFailed,
    TransientError,
)
from ledger.settings import Settings
from ledger.sim import POLICY_MESSAGE, SimServer

from .conftest import API_KEY

PROMPT = "A drone shot over a neon city at dusk."
MakeSim = Callable[..., SimServer]
MakeClient = Callable[..., SoraClient]


def envelope(code: int, message: str = "", data: Any = None) -> str:
    return json.dumps({"code": code, "message": message, "data": data}, ensure_ascii=False)


# --- the happy path -------------------------------------------------------------------------------


def test_create_poll_list_balance_and_pricing_against_the_simulator(sim: SimServer, client: SoraClient,
                                                                    wait_terminal: Callable) -> None:
    pricing = client.pricing()
    assert (pricing.normal_price, pricing.pro_price, pricing.price_for(True)) == (30, 150, 150)

    task = client.create({"prompt": PROMPT, "duration": 15, "is_pro": False, "resolution": "vertical",
                          "image_url": None})
    assert (task.status, task.cost, task.prompt) == ("pending", 30, PROMPT)
    assert client.balance() == 100_000 - 30

    done = wait_terminal(client, task.task_id)
    assert done.is_completed and done.progress == 100
    assert done.video_url and done.video_url.startswith(sim.origin + "/files/")
    assert done.created_at is not None and done.created_at.utcoffset() is not None
    assert done.raw["resolution"] == "vertical" and done.raw["image_url"] == ""

    later = client.create({"prompt": "second"})
    assert [t.task_id for t in client.list()] == [later.task_id, task.task_id]


def test_a_policy_rejection_is_a_failed_task_carrying_the_message_verbatim(client: SoraClient,
                                                                           wait_terminal: Callable) -> None:
    task = client.create({"prompt": "A riot scene [POLICY-REJECT]"})
    failed = wait_terminal(client, task.task_id)
    assert failed.is_failed and failed.error_msg == POLICY_MESSAGE and failed.video_url is None
    with pytest.raises(RemoteTaskFailed) as info:
        failed.raise_if_failed()
    assert info.value.error_msg == POLICY_MESSAGE and info.value.task_id == task.task_id


@pytest.mark.parametrize("params, field", [
    ({"prompt": "  "}, "prompt"),
    ({"prompt": PROMPT, "duration": 25}, "duration"),
    ({"prompt": PROMPT, "resolution": "square"}, "resolution"),
    ({"prompt": PROMPT, "image_url": "file:///home/me/ref.jpg"}, "image_url"),
    ({"prompt": PROMPT, "is_pro": "yes"}, "is_pro"),
])
def test_bad_parameters_are_refused_and_not_charged(sim: SimServer, client: SoraClient,
                                                    params: dict, field: str) -> None:
    with pytest.raises(BadParameters) as info:
        client.create(params)
    assert info.value.code == 1001 and field in str(info.value)
    assert client.balance() == 100_000


def test_insufficient_balance_arrives_inside_an_http_200(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim(balance=40)
    client = make_client(sim.base_url)
    client.create({"prompt": PROMPT})
    with pytest.raises(InsufficientBalance) as info:
        client.create({"prompt": PROMPT})
    assert (info.value.code, info.value.http_status) == (1012, 200)
    assert sim.stats()["tasks_created"] == 1 and client.balance() == 10


# --- every envelope shape maps to the same error ----------------------------------------------------

HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
SHAPES = [
    # (HTTP status, body, content type, error class, whether a POST /create may have made a task)
    pytest.param(200, envelope(401, "invalid key"), "application/json", AuthError, False, id="401-in-200-envelope"),
    pytest.param(401, "Unauthorized", "text/plain", AuthError, False, id="http-401-plain"),
    pytest.param(401, envelope(401, "API密钥无效"), "application/json", AuthError, False, id="http-401-envelope"),
    pytest.param(200, envelope(1001, "参数错误"), "application/json", BadParameters, False, id="1001-in-200"),
    pytest.param(400, envelope(1001, "参数错误"), "application/json", BadParameters, False, id="1001-in-400"),
    pytest.param(200, envelope(1012, "余额不足"), "application/json", InsufficientBalance, False, id="1012-in-200"),
    pytest.param(429, "", "text/plain", RateLimited, False, id="http-429-empty"),
    pytest.param(200, envelope(429, "请求过于频繁"), "application/json", RateLimited, False, id="429-in-200"),
    pytest.param(502, HTML_502, "text/html", TransientError, True, id="http-502-html"),
    pytest.param(503, envelope(500, "服务器内部错误"), "application/json", TransientError, True, id="http-503-envelope"),
    pytest.param(200, envelope(500, "服务器内部错误"), "application/json", TransientError, True, id="500-in-200"),
    pytest.param(200, "<html>maintenance</html>", "text/html", TransientError, True, id="non-json-200"),
    pytest.param(200, '{"task_id": "abc"}', "application/json", TransientError, True, id="json-not-an-envelope"),
    pytest.param(200, envelope(1002, "未知错误"), "application/json", ApiError, False, id="unknown-code"),
    pytest.param(404, envelope(404, "not found"), "application/json", ApiError, False, id="http-404"),
]


@pytest.mark.parametrize("status, body, content_type, error, maybe_created", SHAPES)
def test_each_answer_shape_maps_to_one_error_class_for_create_and_for_gets(
    httpserver: HTTPServer, make_client: MakeClient, status: int, body: str, content_type: str,
    error: Type[ApiError], maybe_created: bool,
) -> None:
    for path in ("/v1/create", "/v1/balance"):
        httpserver.expect_request(path).respond_with_data(body, status=status, content_type=content_type)
    base = httpserver.url_for("/v1")

    with pytest.raises(ApiError) as created:
        make_client(base, get_retries=1).create({"prompt": PROMPT})
    assert type(created.value) is error
    assert getattr(created.value, "maybe_created", False) is maybe_created
    message = str(created.value)
    assert message.startswith(f"POST /create: HTTP {status}") and "\n" not in message
    assert len(httpserver.log) == 1, "a paid create must never be re-sent"

    with pytest.raises(ApiError) as got:
        make_client(base, get_retries=1).balance()
    assert type(got.value) is error
    transient = error is TransientError
    assert len(httpserver.log) == 1 + (2 if transient else 1), "GETs retry transient answers only"


def test_a_non_json_502_names_the_status_and_shows_the_start_of_the_page(httpserver: HTTPServer,
                                                                         make_client: MakeClient) -> None:
    httpserver.expect_request("/v1/create").respond_with_data(HTML_502, status=502, content_type="text/html")
    with pytest.raises(TransientError) as info:
        make_client(httpserver.url_for("/v1")).create({"prompt": PROMPT})
    assert str(info.value).startswith("POST /create: HTTP 502 (non-JSON body: '<html><head><title>502 Bad")
    assert "may have been created" in str(info.value)


# --- retries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http_502_html", "http_500_json", "envelope_500", "drop"])
def test_gets_retry_transient_failures_and_then_succeed(sim: SimServer, client: SoraClient, kind: str) -> None:
    task = client.create({"prompt": PROMPT})
    sim.inject("task", kind, count=2)
    assert client.get(task.task_id).task_id == task.task_id
    assert sim.stats()["requests_by_route"]["task"] == 3


@pytest.mark.parametrize("kind", ["http_502_html", "envelope_500", "drop"])
def test_gets_give_up_after_the_configured_retries(sim: SimServer, make_client: MakeClient, kind: str) -> None:
    client = make_client(sim.base_url, get_retries=3)
    sim.inject("balance", kind, count=10)
    with pytest.raises(TransientError) as info:
        client.balance()
    assert not info.value.maybe_created
    assert sim.stats()["requests_by_route"]["balance"] == 4


@pytest.mark.parametrize("kind", ["http_502_html", "http_500_json", "envelope_500", "drop"])
def test_create_is_never_resent_after_an_ambiguous_failure(sim: SimServer, client: SoraClient, kind: str) -> None:
    sim.inject("create", kind)
    with pytest.raises(TransientError) as info:
        client.create({"prompt": PROMPT})
    assert info.value.maybe_created is True
    assert sim.stats()["creates_received"] == 1


def test_create_is_never_resent_after_a_read_timeout(sim: SimServer, make_client: MakeClient) -> None:
    client = make_client(sim.base_url, read_timeout=0.3)
    sim.inject("create", "delay", seconds=1.0)
    with pytest.raises(TransientError) as info:
        client.create({"prompt": PROMPT})
    assert info.value.maybe_created is True and "timed out" in str(info.value)
    assert sim.stats()["creates_received"] == 1


def test_a_get_that_times_out_is_retried(sim: SimServer, make_client: MakeClient) -> None:
    client = make_client(sim.base_url, read_timeout=0.3)
    sim.inject("balance", "delay", seconds=1.0)
    assert client.balance() == 100_000
    assert sim.stats()["requests_by_route"]["balance"] == 2


def test_create_may_be_sent_again_when_the_server_was_unreachable(make_sim: MakeSim, make_client: MakeClient,
                                                                  unused_port: int) -> None:
    client = make_client(f"http://127.0.0.1:{unused_port}/v1", get_retries=2)
    with pytest.raises(TransientError) as info:
        client.create({"prompt": PROMPT})
    assert info.value.maybe_created is False and "refused" in str(info.value).lower()

    sim = make_sim(port=unused_port)
    assert client.create({"prompt": PROMPT}).status == "pending"
    assert sim.stats()["tasks_created"] == 1


@pytest.mark.parametrize("list_shape", ["list", "object"])
def test_a_create_whose_answer_was_lost_is_found_by_find_tasks(make_sim: MakeSim, make_client: MakeClient,
                                                               list_shape: str) -> None:
    sim = make_sim(list_shape=list_shape)
    client = make_client(sim.base_url)
    client.create({"prompt": "an earlier, different shot"})
    since = datetime.now(timezone.utc)
    sim.inject("create", "lost_create")
    with pytest.raises(TransientError) as info:
        client.create({"prompt": PROMPT})
    assert info.value.maybe_created is True
    for index in range(3):  # newer tasks push the lost one onto the second page
        client.create({"prompt": f"a later shot {index}"})

    found = client.find_tasks(PROMPT, since, page_size=2)

    [made] = [task["task_id"] for task in sim.tasks() if task["prompt"] == PROMPT]
    assert [task.task_id for task in found.tasks] == [made] and found.covered
    assert client.balance() == 100_000 - 5 * 30


def test_find_tasks_keeps_the_window_orders_nearest_first_and_stops_paging(httpserver: HTTPServer,
                                                                         make_client: MakeClient) -> None:
    def task(task_id: str, prompt: str, created_at: Optional[str]) -> dict:
        return {"task_id": task_id, "status": "processing", "prompt": prompt, "created_at": created_at}

    pages = {
        "1": [task("t6", PROMPT, "2024-05-01T12:00:50+08:00"), task("t5", "other", "2024-05-01T12:00:45+08:00")],
        "2": [task("t4", PROMPT, "2024-05-01 12:00:30"), task("t3", PROMPT, None)],
        "3": [task("t2", PROMPT, "2024-05-01T03:50:00Z"), task("t1", PROMPT, "2024-05-01T03:40:00Z")],
        "4": [task("t0", PROMPT, "2024-05-01T03:30:00Z")],
    }
    for page, items in pages.items():
        httpserver.expect_request("/v1/tasks", query_string={"page": page, "page_size": "2"}).respond_with_data(
            envelope(200, "操作成功", {"list": items, "total": 7}), content_type="application/json")
    since = datetime(2024, 5, 1, 4, 0, 20, tzinfo=timezone.utc)  # 12:00:20 in the service's +08:00

    found = make_client(httpserver.url_for("/v1")).find_tasks(PROMPT, since, skew_seconds=60, page_size=2)

    assert [t.task_id for t in found.tasks] == ["t4", "t6", "t3"]  # t3 has no created_at and counts, last
    assert found.covered and found.pages == 3
    assert len(httpserver.log) == 3  # page 3 is older than the window: no page 4


def test_the_task_list_masks_a_key_echoed_in_a_failed_tasks_message(httpserver: HTTPServer,
                                                                     make_client: MakeClient) -> None:
    """The list feeds reconciliation and batch status, which store its messages, as a single GET does."""
    echoed = {"task_id": "t1", "status": "failed", "prompt": PROMPT, "created_at": None,
              "error_msg": f"quota of {API_KEY[len('sora-'):]} and {quote('key=' + API_KEY, safe='')} used up"}
    httpserver.expect_request("/v1/tasks").respond_with_data(
        envelope(200, "操作成功", {"list": [echoed], "total": 1}), content_type="application/json")
    client = make_client(httpserver.url_for("/v1"))
    since = datetime.now(timezone.utc)

    messages = [client.list()[0].error_msg, client.recent(None, 20).tasks[0].error_msg,
                client.find_tasks(PROMPT, since).tasks[0].error_msg]

    for message in messages:
        assert message is not None and "used up" in message
        assert API_KEY[len("sora-"):] not in message and quote(API_KEY, safe="") not in message


# --- rate limits -------------------------------------------------------------------------------------


def test_a_429_honours_retry_after_and_pauses_every_client_sharing_the_backoff(sim: SimServer,
                                                                              make_client: MakeClient) -> None:
    shared = SharedBackoff()
    submitter = make_client(sim.base_url, backoff=shared)
    poller = make_client(sim.base_url, backoff=shared)
    sim.inject("create", "rate_limit", retry_after=1)
    with pytest.raises(RateLimited) as info:
        submitter.create({"prompt": PROMPT})
    assert info.value.retry_after == 1.0 and info.value.maybe_created is False

    started = time.monotonic()
    assert poller.balance() == 100_000
    assert time.monotonic() - started >= 0.9
    assert sim.stats()["tasks_created"] == 0


def test_a_429_on_a_get_is_not_retried_and_pauses_by_default(sim: SimServer, client: SoraClient) -> None:
    sim.inject("balance", "rate_limit", body="text")
    with pytest.raises(RateLimited) as info:
        client.balance()
    assert info.value.retry_after is None
    assert sim.stats()["requests_by_route"]["balance"] == 1
    assert client.backoff.paused_until - time.monotonic() > RATE_LIMIT_PAUSE - 1


def test_retry_after_may_be_an_http_date(httpserver: HTTPServer, make_client: MakeClient) -> None:
    httpserver.expect_request("/v1/balance").respond_with_data(
        "", status=429, headers={"Retry-After": formatdate(time.time() + 3, usegmt=True)})
    client = make_client(httpserver.url_for("/v1"))
    with pytest.raises(RateLimited) as info:
        client.balance()
    assert info.value.retry_after is not None and 1 <= info.value.retry_after <= 3
    assert client.backoff.paused_until > time.monotonic()


# --- proxies -----------------------------------------------------------------------------------------


def test_the_settings_http_proxy_carries_api_calls_and_downloads(make_sim: MakeSim, make_client: MakeClient,
                                                                 tmp_path: Any) -> None:
    proxy = make_sim(gen_seconds=0)
    client = make_client("http://api.invalid/v1", http_proxy=proxy.origin)
    task = client.create({"prompt": PROMPT})
    url = client.get(task.task_id).video_url
    assert url is not None and url.startswith("http://api.invalid/files/")
    client.download(url, tmp_path / "1_v1_x.mp4", root=tmp_path)
    assert proxy.stats()["proxied_requests"] == 3


def test_an_http_proxy_alone_serves_https_too(make_sim: MakeSim, make_client: MakeClient) -> None:
    proxy = make_sim()
    client = make_client("https://api.invalid/v1", http_proxy=proxy.origin)
    with pytest.raises(TransientError):
        client.balance()  # the simulator refuses to tunnel, but it was asked to
    assert proxy.stats()["connect_requests"][0] == "api.invalid:443"


def test_no_proxy_sends_matching_hosts_direct(make_sim: MakeSim, make_client: MakeClient) -> None:
    api, proxy = make_sim(), make_sim()
    client = make_client(api.base_url, http_proxy=proxy.origin, no_proxy="localhost,127.0.0.1")
    assert client.balance() == 100_000
    assert proxy.stats()["requests_by_route"] == {} and api.stats()["requests_by_route"] == {"balance": 1}


def test_environment_proxies_apply_unless_the_settings_give_one(make_sim: MakeSim, make_client: MakeClient,
                                                                unused_port: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = make_sim()
    monkeypatch.setenv("HTTP_PROXY", proxy.origin)
    assert make_client("http://api.invalid/v1").balance() == 100_000
    assert proxy.stats()["proxied_requests"] == 1

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port}")  # a dead system proxy
    assert make_client("http://api.invalid/v1", http_proxy=proxy.origin).balance() == 100_000
    assert proxy.stats()["proxied_requests"] == 2


def test_a_client_from_settings_uses_their_url_key_and_proxy(make_sim: MakeSim, api_key: str) -> None:
    proxy = make_sim()
    settings = Settings(api_key=api_key, base_url="http://api.invalid/v1", http_proxy=proxy.origin,
                        max_concurrent_tasks=3, connect_timeout=2.0, read_timeout=5.0)
    with SoraClient.from_settings(settings) as client:
        assert client.balance() == 100_000
    assert proxy.stats()["proxied_requests"] == 1


# --- the key never leaks -----------------------------------------------------------------------------


def test_a_rejected_key_is_masked_in_the_error_and_the_logs(sim: SimServer, make_client: MakeClient,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sora-WrongWrongWrongWrongWrongWrong9876"
    with pytest.raises(AuthError) as info:
        make_client(sim.base_url, wrong).balance()
    assert (info.value.code, info.value.http_status) == (401, 401)
    assert "sora-…9876" in str(info.value)  # the user can tell which key was refused
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert "Bearer" not in caplog.text


def test_a_configured_key_echoed_in_any_body_is_masked(httpserver: HTTPServer, make_client: MakeClient,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = "tok_live_51HxQ2eZvKYlo2CqPz"
    httpserver.expect_request("/v1/create").respond_with_data(
        f"<html>upstream rejected the key {key}</html>", status=502, content_type="text/html")
    httpserver.expect_request("/v1/balance").respond_with_data(
        envelope(1002, f"key {key} is not enabled for this endpoint"), content_type="application/json")
    client = make_client(httpserver.url_for("/v1"), key)
    for call in (lambda: client.create({"prompt": PROMPT}), client.balance):
        with pytest.raises(ApiError) as info:
            call()
        assert key not in str(info.value) and key[-4:] in str(info.value)
    assert key not in caplog.text


# --- the pool ----------------------------------------------------------------------------------------


def test_one_pooled_session_serves_concurrent_threads(sim: SimServer, make_client: MakeClient,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    client = make_client(sim.base_url, pool_size=8)
    task = client.create({"prompt": PROMPT})
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: client.get(task.task_id).task_id, range(80)))
    assert seen == [task.task_id] * 80
    assert "pool is full" not in caplog.text  # no connection was opened only to be thrown away
