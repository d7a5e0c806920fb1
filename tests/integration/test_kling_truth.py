"""Kling as its official documentation describes it (issue 21), against real local servers: the
account costs at the domain root, the look-up of a lost create on a busy account, the documented
status words and charges."""
from __future__ import annotations

import json
import time

import pytest
from werkzeug.wrappers import Response

from ledger.providers.kling import KlingClient

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

    def make(base_url: str) -> KlingClient:
        client = KlingClient(base_url, KEY, backoff_factor=0.001, connect_timeout=2.0, read_timeout=5.0)
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
