"""The Seedance (Ark) simulator against the documented exchanges of ``tests/contracts/seedance``:
it serves the documented paths (and nothing else), and each answer has the documented shape —
so a rehearsal with ``ledger sim --protocol seedance`` meets the API as Ark documents it."""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping

import pytest
import requests

from ledger.providers.seedance import request_body
from ledger.sim.server import SimServer
from tests.contracts import runner

KEY = "ark-contract-key-0000000000000000"
FIXTURES = {f.path.stem: f.data for f in runner.fixtures("seedance")}
TASKS = "/api/v3/contents/generations/tasks"


@pytest.fixture
def start(start_sim: Any) -> Any:
    return lambda **config: start_sim("seedance", KEY, **config)


def call(sim: SimServer, method: str, path: str, key: str = KEY, **kw: Any) -> requests.Response:
    origin = sim.base_url.rsplit("/api/v3", 1)[0]
    return requests.request(method, origin + path, headers={"Authorization": f"Bearer {key}"}, timeout=5, **kw)


def documented(name: str) -> Mapping[str, Any]:
    return FIXTURES[name]["answer"]["body"]


def create_body(name: str) -> Dict[str, Any]:
    """The body ledger sends for a create fixture's segment (the contract tests prove it is the
    documented one)."""
    params = runner.params_for("seedance", FIXTURES[name]["segment"])
    return request_body(params, 1234)


@pytest.mark.parametrize("name", sorted(n for n in FIXTURES if n.startswith("create_")))
def test_every_documented_create_is_taken_and_answered_with_the_documented_shape(start, name):
    sim = start(gen_seconds=0.0)
    answer = call(sim, "POST", TASKS, json=create_body(name))
    assert answer.status_code == 200, answer.text
    runner.assert_shape_covers(documented(name), answer.json())


@pytest.mark.parametrize("name, config, wait", [
    ("get_queued", {"gen_seconds": 60.0}, 0.0), ("get_running", {"gen_seconds": 1.0}, 0.2),
    ("get_succeeded", {"gen_seconds": 0.0}, 0.0), ("get_failed", {"gen_seconds": 0.0, "fail_rate": 1.0}, 0.0),
])
def test_a_task_in_each_status_has_the_documented_shape(start, name, config, wait):
    sim = start(**config)
    task_id = call(sim, "POST", TASKS, json=create_body("create_text")).json()["id"]
    time.sleep(wait)  # a tenth of its generation queued, then running
    answer = call(sim, "GET", f"{TASKS}/{task_id}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == documented(name)["status"]
    runner.assert_shape_covers(documented(name), body, optional=["error"] if name != "get_failed" else ())


def test_the_list_page_has_the_documented_shape(start):
    sim = start(gen_seconds=0.0)
    for _ in range(2):
        call(sim, "POST", TASKS, json=create_body("create_text"))
    answer = call(sim, "GET", TASKS, params={"page_num": 1, "page_size": 20})
    assert answer.status_code == 200, answer.text
    runner.assert_shape_covers(documented("list_page"), answer.json())
    assert answer.json()["total"] == 2


def test_errors_have_the_documented_body_and_status(start):
    sim = start(gen_seconds=0.0)
    unknown = call(sim, "GET", f"{TASKS}/cgt-20250331175019-00000")
    assert unknown.status_code == 404
    runner.assert_shape_covers(documented("get_not_found"), unknown.json())
    refused_key = call(sim, "GET", TASKS, key="ark-wrong-key-00000000000000000000")
    assert refused_key.status_code == FIXTURES["error_authentication"]["answer"]["status"]
    runner.assert_shape_covers(documented("error_authentication"), refused_key.json())
    assert refused_key.json()["error"]["code"] == "AuthenticationError"
    bad = call(sim, "POST", TASKS, json={**create_body("create_text"), "duration": 99})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "InvalidParameter")
    runner.assert_shape_covers(documented("error_invalid_parameter"), bad.json())


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v3/contents/generations/task"), ("POST", f"{TASKS}/cgt-1"), ("GET", f"{TASKS}/cgt-1/content"),
    ("GET", "/contents/generations/tasks"), ("POST", "/api/v3/videos/generations"),
])
def test_only_the_documented_paths_are_served(start, method, path):
    sim = start(gen_seconds=0.0)
    answer = call(sim, method, path, json={} if method == "POST" else None)
    assert answer.status_code == 404, (method, path, answer.status_code, answer.text[:200])
