"""Alibaba's own DashScope SDK (``dashscope``, a test-only dependency) as the second witness of the
wan protocol: ``VideoSynthesis.async_call`` and ledger's client create the same video against one
local capture server and their requests are compared field by field; the simulator's answers are
read by the SDK's own calls and response types."""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import dashscope
import pytest
from dashscope import VideoSynthesis
from werkzeug.wrappers import Request as WerkzeugRequest

from ledger.sim import SimServer
from tests.contracts import runner

KEY = "sk-contract-0000000000000000"
IMAGE = "https://wanx.alicdn.com/material/20250318/first_frame.png"
CREATE = "/api/v1/services/aigc/video-generation/video-synthesis"
PENDING = {"request_id": "4909100c", "output": {"task_id": "0385dc79-5ff8-4d82-bcb6-000000000001",
                                                "task_status": "PENDING"}}
# What the SDK sends of its own accord (``VideoSynthesis._get_input``, dashscope 2.0.2):
# ``input.extend_prompt``, a deprecated flag it always adds ("@deprecated, use prompt_extend in
# parameters"), and ``input.function``, the last segment of the path it posts to, repeated; neither
# is in Alibaba's HTTP examples of the same create.
SDK_ONLY = {"input.extend_prompt", "input.function"}

# (the storyboard segment, the same video as the SDK is asked for it)
JOBS: Dict[str, Tuple[Dict[str, Any], Dict[str, Any]]] = {
    "wan2.7 text": ({"prompt": "a fox", "duration": 12, "resolution": "vertical", "quality": "high"},
                    dict(model="wan2.7-t2v", prompt="a fox", resolution="1080P", ratio="9:16", duration=12,
                         watermark=False)),
    "wan2.7 first frame": ({"prompt": "a fox", "image_url": IMAGE, "duration": 2},
                           dict(model="wan2.7-i2v", prompt="a fox", resolution="720P", duration=2, watermark=False,
                                media=[{"type": VideoSynthesis.MediaType.FIRST_FRAME, "url": IMAGE}])),
    "wan3.0 square": ({"prompt": "a fox", "is_pro": True, "options": {"ratio": "1:1", "seed": 9}},
                      dict(model="wan3.0-video", prompt="a fox", resolution="720P", ratio="1:1", duration=5,
                           watermark=False, seed=9)),
    "wan2.6 text (legacy)": ({"prompt": "a fox", "model": "wan2.6-t2v", "duration": 15,
                              "options": {"negative_prompt": "rain", "prompt_extend": False}},
                             dict(model="wan2.6-t2v", prompt="a fox", size="1280*720", duration=15, watermark=False,
                                  negative_prompt="rain", prompt_extend=False)),
    "wan2.6 first frame (legacy)": ({"prompt": "a fox", "model": "wan2.6-i2v", "image_url": IMAGE},
                                    dict(model="wan2.6-i2v", prompt="a fox", img_url=IMAGE, resolution="720P",
                                         duration=5, watermark=False)),
}


@pytest.fixture
def sdk_at() -> Iterator[Any]:
    """Point the SDK at a server for one test (it reads a module-level base URL)."""
    was = dashscope.base_http_api_url

    def point(base: str) -> None:
        dashscope.base_http_api_url = base

    yield point
    dashscope.base_http_api_url = was


def captured(httpserver: Any) -> List[WerkzeugRequest]:
    return [request for request, _ in httpserver.log if request.path == CREATE]


def flat(doc: Any, prefix: str = "") -> Dict[str, Any]:
    """A JSON body as dotted paths to its leaves (lists whole)."""
    if isinstance(doc, Mapping):
        return {path: value for key, item in doc.items() for path, value in flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: doc}


@pytest.mark.parametrize("job", list(JOBS))
def test_ledger_sends_the_create_the_official_sdk_sends_field_by_field(httpserver, sdk_at, tmp_path, job):
    segment, sdk_call = JOBS[job]
    httpserver.expect_request(CREATE, method="POST").respond_with_json(PENDING)
    sdk_at(httpserver.url_for("/api/v1"))
    answer = VideoSynthesis.async_call(api_key=KEY, **sdk_call)
    assert answer.status_code == 200 and answer.output.task_id == PENDING["output"]["task_id"]
    client = runner.open_client("wan", httpserver.url_for("/"), tmp_path)
    try:
        client.create(runner.params_for("wan", segment), runner.REF)
    finally:
        client.close()
    sdk, ours = captured(httpserver)
    assert (ours.method, ours.path) == (sdk.method, sdk.path)
    for header in ("X-DashScope-Async", "Content-Type"):
        assert ours.headers.get(header, "").split(";")[0] == sdk.headers.get(header, "").split(";")[0], header
    assert ours.headers["Authorization"].startswith("Bearer ") and sdk.headers["Authorization"].startswith("Bearer ")
    sent, expected = flat(json.loads(ours.get_data())), flat(json.loads(sdk.get_data()))
    for path in SDK_ONLY:
        expected.pop(path, None)
    assert sent == expected, {path: (sent.get(path), expected.get(path))
                              for path in set(sent) | set(expected) if sent.get(path) != expected.get(path)}


@pytest.fixture
def sim(start_sim: Any) -> SimServer:
    return start_sim("wan", KEY, gen_seconds=0.0)


def test_the_sdk_creates_fetches_and_lists_through_the_simulator_with_its_own_response_types(sim, sdk_at):
    sdk_at(sim.base_url)
    made = VideoSynthesis.async_call(api_key=KEY, **JOBS["wan2.7 first frame"][1])
    assert made.status_code == 200, (made.code, made.message)
    task_id = made.output.task_id
    assert made.output.task_status == "PENDING"
    done = VideoSynthesis.fetch(task_id, api_key=KEY)
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED"
    assert done.output.video_url.startswith("http") and done.usage.video_count == 1
    assert done.usage.video_duration == 2
    listed = VideoSynthesis.list(api_key=KEY, page_no=1, page_size=10)
    assert listed.status_code == 200 and [t["task_id"] for t in listed.output["data"]] == [task_id]
    assert listed.output["total"] == 1


def test_the_sdk_reads_the_simulators_error_bodies_and_unknown_tasks(sim, sdk_at):
    sdk_at(sim.base_url)
    refused = VideoSynthesis.async_call(api_key="sk-wrong", model="wan2.7-t2v", prompt="a fox")
    assert (refused.status_code, refused.code) == (401, "InvalidApiKey")
    invalid = VideoSynthesis.async_call(api_key=KEY, model="wan2.7-i2v", prompt="a fox", img_url=IMAGE)
    assert (invalid.status_code, invalid.code) == (400, "InvalidParameter")  # the legacy field, refused
    unknown = VideoSynthesis.fetch("0b0e3c52-0000-4000-8000-000000000000", api_key=KEY)
    assert unknown.status_code == 200 and unknown.output.task_status == "UNKNOWN"
