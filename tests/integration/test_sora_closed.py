"""Sora has ended (OpenAI's /v1/videos shut down on 2026-09-24; resellers answer "model not found"):
the pre-flight and the create recognise the answer, the run stops with one line that says so and
names the providers to use instead, and nothing is created, charged or marked as paid."""
from __future__ import annotations

import json
from typing import Any, Dict, Tuple

import pytest
from pytest_httpserver import HTTPServer

from ledger.errors import ServiceClosed
from ledger.providers import REGISTRY, SORA
from ledger.providers.openai_videos import OpenAIVideos
from ledger.sunset import says_closed
from tests.helpers import query, segments

OPENAI_KEY = "sk-proj-Closed0123456789abcdefghijklmnop"
SORA_KEY = "sora-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"

# What the closed upstream, or a relay in front of it, answers: (HTTP status, body).
OPENAI_GONE: Dict[str, Tuple[int, Any]] = {
    "openai_404_model_not_found": (404, {"error": {
        "message": "The model `sora-2` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}}),
    "reseller_400_model_not_found": (400, {"error": {"message": "model not found: sora-2", "type": "invalid_request",
                                                     "param": "model", "code": None}}),
    "new_api_503_no_channel": (503, {"error": {"message": "当前分组 default 下对于模型 sora-2 无可用渠道",
                                               "type": "new_api_error", "param": "", "code": "model_not_found"}}),
    "gone_410": (410, "<html><body><h1>410 Gone</h1></body></html>"),
}
SORA_HK_GONE: Dict[str, Tuple[int, Any]] = {
    "envelope_in_200": (200, {"code": 404, "message": "model not found", "data": None}),
    "reseller_400_chinese": (400, {"code": 400, "message": "模型不存在", "data": None}),
    "reseller_404_openai_shape": (404, {"error": {"message": "The model `sora-2` does not exist",
                                                  "code": "model_not_found"}}),
    "gone_410": (410, "Gone"),
}
EMPTY_LIST = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def answer(httpserver: HTTPServer, path: str, method: str, reply: Tuple[int, Any]) -> None:
    status, body = reply
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    kind = "text/html" if isinstance(body, str) else "application/json"
    httpserver.expect_request(path, method=method).respond_with_data(text, status=status, content_type=kind)


def openai_env(httpserver: HTTPServer) -> Dict[str, str]:
    return {"PROVIDER": "openai", "OPENAI_BASE_URL": httpserver.url_for("/v1"), "OPENAI_API_KEY": OPENAI_KEY,
            "NO_PROXY": "127.0.0.1,localhost", "GEN_COUNT_PER_SEGMENT": "1"}


def sora_env(httpserver: HTTPServer) -> Dict[str, str]:
    return {"SORA_BASE_URL": httpserver.url_for("/v1"), "SORA_API_KEY": SORA_KEY, "NO_PROXY": "127.0.0.1,localhost",
            "GEN_COUNT_PER_SEGMENT": "1"}


def posts(httpserver: HTTPServer) -> int:
    return sum(1 for request, _ in httpserver.log if request.method == "POST")


def assert_one_line_naming_the_others(output: str) -> None:
    lines = [line for line in output.splitlines() if "2026-09-24" in line]
    assert len(lines) == 1, output
    line = lines[0]
    assert "Sora upstream closed on 2026-09-24" in line
    others = [name for name in REGISTRY if name not in SORA]
    assert others and f"PROVIDER= one of {', '.join(others)}" in line
    assert OPENAI_KEY not in output and SORA_KEY not in output


def assert_nothing_paid(ws: Any) -> None:
    assert query(ws.root, "SELECT state, remote_task_id, cost_cents, spent_cents FROM jobs") == [
        ("pending", None, None, 0)]


@pytest.mark.parametrize("name", OPENAI_GONE)
def test_openai_preflight_stops_with_one_line_when_sora_is_gone(ws, httpserver, name):
    answer(httpserver, "/v1/videos", "GET", OPENAI_GONE[name])
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env=openai_env(httpserver))
    assert result.exit_code == 3, result.output
    assert_one_line_naming_the_others(result.output)
    assert posts(httpserver) == 0


@pytest.mark.parametrize("name", OPENAI_GONE)
def test_openai_create_refused_as_gone_stops_the_run_and_nothing_is_paid(ws, httpserver, name):
    answer(httpserver, "/v1/videos", "GET", (200, EMPTY_LIST))  # a relay whose list still works
    answer(httpserver, "/v1/videos", "POST", OPENAI_GONE[name])
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env=openai_env(httpserver))
    assert result.exit_code == 3, result.output
    assert_one_line_naming_the_others(result.output)
    assert posts(httpserver) == 1  # never sent again
    assert_nothing_paid(ws)


@pytest.mark.parametrize("name", SORA_HK_GONE)
def test_sora_hk_create_refused_as_gone_stops_the_run_and_nothing_is_paid(ws, httpserver, name):
    answer(httpserver, "/v1/balance", "GET", (200, {"code": 200, "message": "ok", "data": {"balance": 5000}}))
    answer(httpserver, "/v1/pricing", "GET", (200, {"code": 200, "message": "ok", "data": {
        "normal_price": 30, "pro_price": 150, "currency": "USD", "unit": "cents"}}))
    answer(httpserver, "/v1/create", "POST", SORA_HK_GONE[name])
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env=sora_env(httpserver))
    assert result.exit_code == 3, result.output
    assert_one_line_naming_the_others(result.output)
    assert posts(httpserver) == 1
    assert_nothing_paid(ws)


@pytest.mark.parametrize("name", ["envelope_in_200", "gone_410"])
def test_sora_hk_preflight_stops_with_one_line_when_sora_is_gone(ws, httpserver, name):
    answer(httpserver, "/v1/balance", "GET", SORA_HK_GONE[name])
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env=sora_env(httpserver))
    assert result.exit_code == 3, result.output
    assert_one_line_naming_the_others(result.output)
    assert posts(httpserver) == 0


def test_a_relay_without_the_route_or_a_missing_video_is_not_taken_for_the_end_of_sora(httpserver):
    """A relay's "Invalid URL" 404 means a wrong base URL, and a video 404 a task it does not know."""
    assert not says_closed(404, json.dumps({"error": {"message": "Invalid URL (GET /v1/videos)"}}))
    assert not says_closed(404, json.dumps({"error": {"message": "Video with id 'video_1' not found."}}))
    assert says_closed(404, "Not Found", official=True)  # api.openai.com itself has no other reason
    answer(httpserver, "/v1/videos/video_1", "GET", OPENAI_GONE["openai_404_model_not_found"])
    with OpenAIVideos(httpserver.url_for("/v1"), OPENAI_KEY, get_retries=0) as client:
        with pytest.raises(Exception) as info:
            client.get("video_1")  # a poll is never the create: its 404 stays "this video is unknown"
    assert not isinstance(info.value, ServiceClosed)


def test_in_team_mode_no_key_is_retired_for_the_end_of_sora(ws, httpserver):
    """A closed service refuses every key alike: the run stops at the first refusal, each key stays
    in rotation, and the other key is not spent on a second refused create."""
    answer(httpserver, "/v1/videos", "GET", (200, EMPTY_LIST))
    answer(httpserver, "/v1/videos", "POST", OPENAI_GONE["openai_404_model_not_found"])
    ws.storyboard("storyboard_a.json", segments("one"))
    env = {**openai_env(httpserver), "OPENAI_API_KEY": "",
           "OPENAI_API_KEYS": f"{OPENAI_KEY}@1,sk-proj-Second0123456789abcdefghijklmn@1"}
    result = ws.cli("run", "--no-progress", env=env)
    assert result.exit_code == 3, result.output
    assert_one_line_naming_the_others(result.output)
    assert posts(httpserver) == 1
    assert query(ws.root, "SELECT count(*) FROM api_keys WHERE out_reason IS NOT NULL") in ([(0,)], [])
    assert_nothing_paid(ws)


def test_a_lost_create_whose_look_up_meets_model_not_found_is_never_taken_as_not_created(ws, httpserver):
    """Only the create's own refusal proves nothing was made: when its answer was lost and the list
    read to find it says "model not found", the job stays unresolved, never pending to be sent again."""
    httpserver.expect_request("/v1/videos", method="GET", query_string={"limit": "1"}).respond_with_json(EMPTY_LIST)
    answer(httpserver, "/v1/videos", "GET", OPENAI_GONE["openai_404_model_not_found"])
    answer(httpserver, "/v1/videos", "POST", (502, "<html>Bad Gateway</html>"))  # the create's answer is lost
    ws.storyboard("storyboard_a.json", segments("one"))
    env = {**openai_env(httpserver), "RECONCILE_GRACE_SECONDS": "0.1", "RETRY_BASE_DELAY": "0.05",
           "POLL_MIN_INTERVAL": "0.05"}
    ws.cli("run", "--no-progress", env=env)
    assert posts(httpserver) == 1
    assert query(ws.root, "SELECT state FROM jobs") == [("submitting",)]
