"""The Kling simulator against the documented exchanges of ``tests/contracts/kling/``: it serves the
documented paths (and answers the undocumented ones as the API does, 404), and its answers have the
documented shape. The simulator is the rehearsal server; the fixtures are the truth."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import pytest
import requests

from ledger.sim import SimServer
from tests.contracts import runner

KEY = "kling-sim-contract-key-0000000000"
GEN = 100.0  # seconds a task takes: a task is placed in each state by its age, not by waiting
FIXTURES = {f.path.stem: f for f in runner.fixtures("kling")}
# Documented fields the simulator leaves out, none of which ledger reads: the watermark copy.
OPTIONAL = (".data.watermark_info", ".data.task_result.videos[].watermark_url", ".data[].watermark_info",
            ".data[].task_result.videos[].watermark_url")


@pytest.fixture
def sim(start_sim: Any) -> SimServer:
    return start_sim("kling", KEY, gen_seconds=GEN, balance=10 ** 8)


def call(sim: SimServer, method: str, path: str, *, params: Optional[Mapping[str, Any]] = None,
         body: Any = None, key: str = KEY) -> Tuple[int, Dict[str, Any]]:
    resp = requests.request(method, sim.origin + path, params=params, json=body, timeout=5,
                            headers={"Authorization": f"Bearer {key}"})
    return resp.status_code, resp.json()


def documented(name: str, exchange: int = -1) -> Mapping[str, Any]:
    """The documented request and answer of a fixture (its last exchange, by default)."""
    return FIXTURES[name].exchanges[exchange]


def created(sim: SimServer, name: str, ref: str) -> Tuple[str, Dict[str, Any]]:
    """A task made by the documented create of fixture ``name`` (with ``ref`` as its external id)."""
    spec = documented(name)["request"]
    status, answer = call(sim, "POST", spec["path"], body={**spec["body"], "external_task_id": ref})
    assert status == 200, answer
    return answer["data"]["task_id"], answer


def aged(sim: SimServer, task_id: str, seconds: float, outcome: str = "ok") -> None:
    """Place a task ``seconds`` into its generation (``outcome``: how it ends)."""
    task = sim.get_task(task_id, poll=False)
    task.created_mono -= seconds
    task.outcome = outcome


@pytest.mark.parametrize("name", ["create_text2video", "create_text2video_v2_6_pro_sound", "create_text2video_v3_15s",
                                  "create_image2video"])
def test_each_documented_create_is_taken_and_answered_in_the_documented_shape(sim, name):
    _, answer = created(sim, name, f"conf-{name}")
    runner.assert_shape_covers(documented(name)["answer"]["body"], answer)
    assert answer["data"]["task_status"] == "submitted"


@pytest.mark.parametrize("name, age, outcome, word", [
    ("get_text2video_submitted", 0.0, "ok", "submitted"),
    ("get_image2video_processing", GEN / 2, "ok", "processing"),
    ("get_text2video_succeed_with_deduction", GEN, "ok", "succeed"),
    ("get_image2video_succeed", GEN, "ok", "succeed"),
    ("get_image2video_failed", GEN, "error", "failed"),
])
def test_a_task_in_each_state_is_answered_in_the_documented_shape(sim, name, age, outcome, word):
    kind = "image2video" if "image2video" in name else "text2video"
    task_id, _ = created(sim, "create_image2video" if kind == "image2video" else "create_text2video", f"conf-{name}")
    aged(sim, task_id, age, outcome)
    status, answer = call(sim, "GET", f"/v1/videos/{kind}/{task_id}")
    assert status == 200 and answer["data"]["task_status"] == word, answer
    runner.assert_shape_covers(documented(name)["answer"]["body"], answer, optional=OPTIONAL)


def test_a_list_page_is_answered_in_the_documented_shape(sim):
    """As the documented page: a finished task, newest, then a failed one."""
    failed, _ = created(sim, "create_image2video", "conf-list-failed")
    finished, _ = created(sim, "create_image2video", "conf-list-done")
    aged(sim, finished, GEN)
    aged(sim, failed, GEN, "error")
    spec = documented("list_page")["request"]
    status, answer = call(sim, "GET", spec["path"], params=spec["query"])
    assert status == 200
    runner.assert_shape_covers(documented("list_page")["answer"]["body"], answer, optional=OPTIONAL)


def test_the_look_up_by_external_task_id_answers_the_one_task_object(sim):
    task_id, _ = created(sim, "create_text2video", "conf-lookup")
    status, answer = call(sim, "GET", "/v1/videos/text2video", params={"external_task_id": "conf-lookup"})
    assert status == 200 and answer["data"]["task_id"] == task_id
    runner.assert_shape_covers(documented("find_by_external_task_id_object")["answer"]["body"], answer)


def test_the_account_costs_are_served_at_the_domain_root_in_the_documented_shape(sim):
    spec = documented("balance_account_costs")["request"]
    status, answer = call(sim, "GET", spec["path"], params={"start_time": 1, "end_time": 2})
    assert status == 200
    runner.assert_shape_covers(documented("balance_account_costs")["answer"]["body"], answer)


@pytest.mark.parametrize("method, path", [("GET", "/v1/account/costs"), ("GET", "/v1/tasks"),
                                          ("POST", "/videos/text2video"), ("GET", "/v1/videos/omni-video")])
def test_undocumented_paths_are_not_served(sim, method, path):
    status, answer = call(sim, method, path, body={"prompt": "x"} if method == "POST" else None)
    assert (status, answer["code"]) == (404, 1203)


@pytest.mark.parametrize("name, make", [
    ("error_1002", lambda sim: call(sim, "GET", "/v1/videos/text2video/x", key="wrong-key")),
    ("error_1201", lambda sim: call(sim, "POST", "/v1/videos/text2video", body={"prompt": "a", "duration": "7"})),
    ("error_1203", lambda sim: call(sim, "GET", "/v1/videos/text2video/no-such-task")),
    ("error_1301", lambda sim: call(sim, "POST", "/v1/videos/text2video", body={"prompt": "a [policy-reject]"})),
])
def test_refusals_have_the_documented_status_code_and_shape(sim, name, make):
    status, answer = make(sim)
    spec = documented(name)["answer"]
    assert (status, answer["code"]) == (spec["status"], spec["body"]["code"])
    runner.assert_shape_covers(spec["body"], answer)


def test_what_the_models_cannot_take_is_refused_as_bad_parameters(sim):
    for body in ({"prompt": "a", "model_name": "kling-v2-6", "mode": "std", "sound": "on"},
                 {"prompt": "a", "model_name": "kling-v2-5-turbo", "cfg_scale": 0.5},
                 {"prompt": "a", "model_name": "kling-v3", "duration": "16"}):
        status, answer = call(sim, "POST", "/v1/videos/text2video", body=body)
        assert (status, answer["code"]) == (400, 1201), (body, answer)
