"""The api.sora.hk simulator against the documented exchanges of ``tests/contracts/sora_hk/``: it
serves the documented paths (and no others), and its answers have the documented shape."""
from __future__ import annotations

from typing import Any, Dict

import pytest
import requests

from ledger.sim import SimServer
from ledger.sim.server import POLICY_TRIGGER
from tests.contracts import runner

KEY = "sora-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"
DOCS = {f.path.stem: f.data for f in runner.fixtures("sora_hk")}


@pytest.fixture
def sim(start_sim: Any) -> SimServer:
    return start_sim("sora_hk", KEY, gen_seconds=0.0, seed=3)


def call(sim: SimServer, method: str, path: str, key: str = KEY, **kw: Any) -> requests.Response:
    return requests.request(method, sim.origin + path, headers={"Authorization": f"Bearer {key}"}, timeout=5, **kw)


def documented(name: str) -> Any:
    return DOCS[name]["answer"]["body"]


def create(sim: SimServer, prompt: str = "a fox") -> Dict[str, Any]:
    body = {**DOCS["create_text"]["request"]["body"], "prompt": prompt}
    answer = call(sim, "POST", "/v1/create", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_create_answers_the_documented_envelope(sim):
    made = create(sim)
    runner.assert_shape_covers(documented("create_text"), made)
    assert made["code"] == 200 and made["data"]["status"] == "pending"


def test_a_finished_and_a_failed_task_have_the_documented_shape(sim):
    done = call(sim, "GET", f"/v1/tasks/{create(sim)['data']['task_id']}").json()
    assert done["data"]["status"] == "completed"
    runner.assert_shape_covers(documented("get_completed"), done)
    failed = call(sim, "GET", f"/v1/tasks/{create(sim, f'a {POLICY_TRIGGER} fox')['data']['task_id']}").json()
    assert failed["data"]["status"] == "failed" and failed["data"]["error_msg"]
    runner.assert_shape_covers(documented("get_failed"), failed)


def test_the_list_balance_and_prices_have_the_documented_shape(sim):
    create(sim, "one")
    create(sim, "two")
    page = call(sim, "GET", "/v1/tasks", params=DOCS["list_page"]["request"]["query"]).json()
    runner.assert_shape_covers(documented("list_page"), page, optional=("data[].video_url",))
    runner.assert_shape_covers(documented("balance"), call(sim, "GET", "/v1/balance").json())
    prices = call(sim, "GET", "/v1/pricing").json()
    runner.assert_shape_covers(documented("pricing"), prices)
    assert prices["data"]["unit"] == documented("pricing")["data"]["unit"]


def test_the_documented_prices_read_as_cents_per_task(httpserver, tmp_path):
    """GET /pricing has no runner call: the documented answer is read by the real client here."""
    runner.serve(httpserver, runner.Fixture("sora_hk", tmp_path / "pricing.json", DOCS["pricing"]))
    client = runner.open_client("sora_hk", httpserver.url_for("/"), tmp_path)
    try:
        pricing = client.pricing()
    finally:
        client.close()
    expect = DOCS["pricing"]["expect"]
    assert (pricing.normal_price, pricing.pro_price, pricing.currency) == (
        expect["normal_price"], expect["pro_price"], expect["currency"])


@pytest.mark.parametrize("name, request_kw", [
    ("error_401", {"method": "GET", "path": "/v1/balance", "key": "sora-wrong"}),
    ("error_1001", {"method": "POST", "path": "/v1/create", "json": {"prompt": "a", "duration": 11}}),
])
def test_the_error_codes_come_in_the_documented_envelope(sim, name, request_kw):
    answer = call(sim, **request_kw).json()
    runner.assert_shape_covers(documented(name), answer)
    assert answer["code"] == documented(name)["code"]


@pytest.mark.parametrize("method, path", [("GET", "/v1/videos"), ("POST", "/v1/videos"), ("GET", "/v1/task/x"),
                                          ("GET", "/v1/account")])
def test_only_the_documented_paths_are_served(sim, method, path):
    answer = call(sim, method, path, json={"prompt": "a"})
    assert answer.status_code == 404 and answer.json()["code"] == 404
