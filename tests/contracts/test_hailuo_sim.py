"""The MiniMax simulator (``ledger sim --protocol hailuo``) against the documented exchanges of
``tests/contracts/hailuo``: it serves the documented paths (and no others), and its answers have
the documented shape — the v2 list's ``items``/``total``, a task's ``error{code, message}``, the
``expired`` status, v1's query and file retrieval."""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping

import pytest
import requests

from ledger.sim import SimServer
from ledger.sim.hailuo import PROTOCOL
from tests.contracts import runner

KEY = "sk-api-contract-0000000000000000"
IMAGE = "https://cdn.example.com/first.png"
FIXTURES = {f.path.stem: f.data for f in runner.fixtures("hailuo")}


def documented(name: str, index: int = -1) -> Any:
    """The documented answer body of fixture ``name`` (of its ``index``-th exchange)."""
    data = FIXTURES[name]
    exchange = data["exchanges"][index] if "exchanges" in data else data
    return exchange["answer"]["body"]


def documented_request(name: str) -> Mapping[str, Any]:
    return FIXTURES[name]["request"]


@pytest.fixture
def make_sim(start_sim: Any) -> Any:
    return lambda **config: start_sim("hailuo", KEY, **{"gen_seconds": 0.0, **config})


def call(sim: SimServer, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, sim.base_url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=5,
                            proxies={"http": "", "https": ""}, **kw)


def create(sim: SimServer, fixture: str) -> str:
    """Send the create body a fixture documents; the task id."""
    spec = documented_request(fixture)
    resp = call(sim, "POST", spec["path"], json=spec["body"])
    assert resp.status_code == 200, resp.text
    runner.assert_shape_covers(documented(fixture), resp.json())
    return str(resp.json()["task_id"])


@pytest.mark.parametrize("fixture", ["create_v2_text", "create_v2_first_frame", "create_v1_text",
                                     "create_v1_first_frame"])
def test_the_simulator_takes_every_documented_create_and_answers_its_shape(make_sim, fixture):
    assert create(make_sim(), fixture)


def test_a_v2_task_is_answered_in_the_documented_shape_in_each_status(make_sim):
    sim = make_sim(gen_seconds=30.0)
    task_id = create(sim, "create_v2_text")
    resp = call(sim, "GET", f"/v2/query/video_generation/{task_id}")
    assert resp.status_code == 200 and resp.json()["task"]["status"] in ("queued", "running")
    runner.assert_shape_covers(documented("get_v2_queued"), resp.json())
    done = make_sim()
    finished = create(done, "create_v2_text")
    resp = call(done, "GET", f"/v2/query/video_generation/{finished}")
    assert resp.json()["task"]["status"] == "succeeded"
    runner.assert_shape_covers(documented("get_v2_succeeded"), resp.json())


def test_a_failed_v2_task_says_why_in_error_code_and_message(make_sim):
    sim = make_sim(fail_rate=1.0)
    task_id = create(sim, "create_v2_text")
    wait_until_final(sim, task_id)
    task = call(sim, "GET", f"/v2/query/video_generation/{task_id}").json()
    assert task["task"]["status"] == "failed"
    runner.assert_shape_covers(documented("get_v2_failed_error"), task)


def test_a_v2_task_can_end_expired(make_sim, monkeypatch):
    monkeypatch.setattr(PROTOCOL, "failure_status", "expired")
    sim = make_sim(fail_rate=1.0)
    task_id = create(sim, "create_v2_text")
    wait_until_final(sim, task_id)
    task = call(sim, "GET", f"/v2/query/video_generation/{task_id}").json()
    assert task["task"]["status"] == "expired"
    runner.assert_shape_covers(documented("get_v2_expired"), task)


def test_the_v2_list_answers_items_and_total(make_sim):
    sim = make_sim()
    made = [create(sim, "create_v2_text") for _ in range(3)]
    spec = documented_request("list_v2_items_total")
    resp = call(sim, "GET", spec["path"], params={"page_num": 1, "page_size": 2})
    page = resp.json()
    assert resp.status_code == 200 and "tasks" not in page
    runner.assert_shape_covers(documented("list_v2_items_total"), page, optional=[".items[].content"])
    assert page["total"] == 3 and [t["id"] for t in page["items"]] == made[::-1][:2]
    assert call(sim, "GET", spec["path"], params={"page_num": 1, "page_size": 1}).json()["total"] == 3


def test_a_v1_task_is_queried_then_its_file_retrieved_in_the_documented_shapes(make_sim):
    sim = make_sim()
    task_id = create(sim, "create_v1_text")
    answer = call(sim, "GET", "/v1/query/video_generation", params={"task_id": task_id}).json()
    assert answer["status"] == "Success"
    runner.assert_shape_covers(documented("get_v1_success_file", 1), answer)
    found = call(sim, "GET", "/v1/files/retrieve", params={"file_id": answer["file_id"]}).json()
    runner.assert_shape_covers(documented("get_v1_success_file", 2), found)
    assert found["file"]["download_url"].startswith(sim.base_url)


def test_an_id_v2_does_not_hold_is_invalid_task_id_in_the_v2_envelope(make_sim):
    sim = make_sim()
    v1_task = create(sim, "create_v1_text")
    resp = call(sim, "GET", f"/v2/query/video_generation/{v1_task}")
    assert resp.status_code == 400
    runner.assert_shape_covers(documented("get_v1_success_file", 0), resp.json())
    assert resp.json()["error"]["message"].endswith("(2013)")


@pytest.mark.parametrize("body, code", [
    ({"model": "MiniMax-H3", "content": [{"type": "text", "text": "[policy-reject] x"}], "duration": 5,
      "resolution": "768P", "ratio": "16:9"}, "1026"),
    ({"model": "MiniMax-H3", "content": [{"type": "text", "text": "a fox"}], "duration": 5, "resolution": "768P",
      "ratio": "adaptive"}, "2013"),  # from text a ratio must be named
    ({"model": "MiniMax-H3", "content": [{"type": "text", "text": "a fox"}], "duration": 16, "resolution": "768P",
      "ratio": "16:9"}, "2013"),
])
def test_a_refused_v2_create_answers_the_documented_error_envelope(make_sim, body, code):
    resp = call(make_sim(), "POST", "/v2/video_generation", json=body)
    name = {"1026": "create_v2_error_1026_sensitive", "2013": "create_v2_error_2013_params"}[code]
    assert resp.status_code == FIXTURES[name]["answer"]["status"]
    runner.assert_shape_covers(documented(name), resp.json())
    assert resp.json()["error"]["message"].endswith(f"({code})")


def test_no_balance_at_a_v2_create_is_1008_with_http_402(make_sim):
    resp = call(make_sim(balance=0), "POST", "/v2/video_generation", json=documented_request("create_v2_text")["body"])
    assert resp.status_code == 402
    runner.assert_shape_covers(documented("create_v2_error_1008_balance"), resp.json())


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/query/video_generation/123"), ("GET", "/v2/tasks"), ("POST", "/v2/query/video_generation"),
    ("GET", "/v1/video_generation"), ("POST", "/v2/video_generation/123"), ("GET", "/v2/video_generation"),
])
def test_paths_no_source_documents_are_not_served(make_sim, method, path):
    assert call(make_sim(), method, path).status_code == 404


def test_every_documented_path_is_served(make_sim):
    sim = make_sim()
    v2 = create(sim, "create_v2_text")
    v1 = create(sim, "create_v1_text")
    file_id = call(sim, "GET", "/v1/query/video_generation", params={"task_id": v1}).json()["file_id"]
    paths: Dict[str, requests.Response] = {
        "GET /v2/query/video_generation/{id}": call(sim, "GET", f"/v2/query/video_generation/{v2}"),
        "GET /v2/query/video_generation": call(sim, "GET", "/v2/query/video_generation",
                                               params={"page_num": 1, "page_size": 1}),
        "GET /v1/query/video_generation": call(sim, "GET", "/v1/query/video_generation", params={"task_id": v1}),
        "GET /v1/files/retrieve": call(sim, "GET", "/v1/files/retrieve", params={"file_id": file_id}),
    }
    assert {name: resp.status_code for name, resp in paths.items()} == {name: 200 for name in paths}


def wait_until_final(sim: SimServer, task_id: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        word = call(sim, "GET", f"/v2/query/video_generation/{task_id}").json()["task"]["status"]
        if word not in ("queued", "running"):
            return
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never ended")
