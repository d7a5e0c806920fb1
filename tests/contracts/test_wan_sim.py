"""The wan simulator (``ledger sim --protocol wan``) against the documented exchanges of
``tests/contracts/wan/``: it takes the documented creates of both protocols and refuses the other
protocol's fields, serves the documented paths only, and its answers have the documented shapes
(task in each status, the batch query, the error bodies)."""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping

import pytest
import requests

from ledger.sim import SimServer
from tests.contracts import runner

KEY = "sk-contract-0000000000000000"
FIXTURES = {f.path.stem: f.data for f in runner.fixtures("wan")}
CREATE = "/api/v1/services/aigc/video-generation/video-synthesis"
HEADERS = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"}


@pytest.fixture
def make(start_sim: Any) -> Any:
    return lambda **config: start_sim("wan", KEY, **config)


def url(sim: SimServer, path: str) -> str:
    return sim.base_url.split("/api/v1")[0] + path


def create(sim: SimServer, body: Mapping[str, Any], headers: Mapping[str, str] = HEADERS) -> requests.Response:
    return requests.post(url(sim, CREATE), json=body, headers=dict(headers), timeout=5)


def task(sim: SimServer, task_id: str) -> Dict[str, Any]:
    return requests.get(url(sim, f"/api/v1/tasks/{task_id}"), headers=HEADERS, timeout=5).json()


def documented(name: str) -> Any:
    return FIXTURES[name]["answer"]["body"]


@pytest.mark.parametrize("name", sorted(n for n, f in FIXTURES.items() if f.get("call") == "create"
                                        and f["answer"]["status"] == 200))
def test_the_simulator_takes_each_documented_create_and_answers_its_shape(make, name):
    sim = make(gen_seconds=5.0)
    answer = create(sim, FIXTURES[name]["request"]["body"])
    assert answer.status_code == 200, answer.text
    runner.assert_shape_covers(documented(name), answer.json())


@pytest.mark.parametrize("body, refused", [
    ({"model": "wan2.7-i2v", "input": {"prompt": "p", "img_url": "https://example.com/a.png"},
      "parameters": {"resolution": "720P"}}, "input.img_url is not supported by wan2.7-i2v"),
    ({"model": "wan2.7-t2v", "input": {"prompt": "p"}, "parameters": {"size": "1280*720"}},
     "parameters.size is not supported"),
    ({"model": "wan2.7-t2v", "input": {"prompt": "p"}, "parameters": {"duration": 16}},
     "parameters.duration 16 is not supported; use 2 to 15"),
    ({"model": "wan2.6-i2v", "input": {"prompt": "p", "media": [{"type": "first_frame", "url": "https://e/a.png"}]}},
     "input.media is not supported by wan2.6-i2v"),
])
def test_the_simulator_refuses_the_other_protocols_fields_as_invalid_parameters(make, body, refused):
    sim = make()
    answer = create(sim, body)
    assert answer.status_code == 400 and answer.json()["code"] == "InvalidParameter"
    assert refused in answer.json()["message"]
    runner.assert_shape_covers(documented("error_invalid_parameter"), answer.json())


def test_the_task_in_each_status_has_the_documented_shape(make):
    sim = make(gen_seconds=0.4)
    task_id = create(sim, FIXTURES["create_text_wan27"]["request"]["body"]).json()["output"]["task_id"]
    seen: Dict[str, Dict[str, Any]] = {}
    deadline = time.monotonic() + 3
    while "SUCCEEDED" not in seen:
        assert time.monotonic() < deadline, seen.keys()
        answer = task(sim, task_id)
        seen.setdefault(answer["output"]["task_status"], answer)
        time.sleep(0.02)
    assert {"RUNNING", "SUCCEEDED"} <= set(seen)
    runner.assert_shape_covers(documented("get_running"), seen["RUNNING"])
    runner.assert_shape_covers(documented("get_succeeded"), seen["SUCCEEDED"])
    runner.assert_shape_covers(documented("get_unknown"), task(sim, "0b0e3c52-0000-4000-8000-000000000000"))


def test_a_failed_task_has_the_documented_code_and_message(make):
    sim = make(gen_seconds=0.0, fail_rate=1.0)
    task_id = create(sim, FIXTURES["create_text_wan27"]["request"]["body"]).json()["output"]["task_id"]
    answer = task(sim, task_id)
    assert answer["output"]["task_status"] == "FAILED"
    runner.assert_shape_covers(documented("get_failed"), answer)


def test_the_batch_query_has_the_documented_shape(make):
    sim = make(gen_seconds=5.0)
    create(sim, FIXTURES["create_text_wan27"]["request"]["body"])
    answer = requests.get(url(sim, "/api/v1/tasks"), params={"page_no": 1, "page_size": 10}, headers=HEADERS,
                          timeout=5)
    assert answer.status_code == 200
    runner.assert_shape_covers(documented("list_page"), answer.json())


def test_the_documented_error_bodies(make):
    sim = make()
    body = FIXTURES["create_text_wan27"]["request"]["body"]
    wrong_key = create(sim, body, {**HEADERS, "Authorization": "Bearer sk-wrong"})
    assert wrong_key.status_code == 401 and wrong_key.json()["code"] == "InvalidApiKey"
    runner.assert_shape_covers(documented("error_invalid_api_key"), wrong_key.json())
    synchronous = create(sim, body, {"Authorization": f"Bearer {KEY}"})
    assert synchronous.status_code == 403 and synchronous.json()["code"] == "AccessDenied"
    runner.assert_shape_covers(documented("error_access_denied_sync"), synchronous.json())


@pytest.mark.parametrize("method, path", [("POST", "/api/v1/services/aigc/image2video/video-synthesis"),
                                          ("POST", "/api/v1/tasks"), ("GET", "/api/v1/task/abc"),
                                          ("GET", "/v1/tasks")])
def test_the_simulator_serves_the_documented_paths_only(make, method, path):
    sim = make()
    answer = requests.request(method, url(sim, path), headers=HEADERS, json={}, timeout=5)
    assert answer.status_code == 404, (path, answer.status_code, answer.text)
