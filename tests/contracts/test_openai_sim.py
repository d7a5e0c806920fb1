"""The /v1/videos simulator against the documented exchanges of ``tests/contracts/openai/``: it
serves the documented paths (and no others), and its answers have the documented shape."""
from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import requests

from ledger.providers.openai_videos import OpenAIVideos
from ledger.sim import SimServer
from ledger.sim.server import POLICY_TRIGGER
from tests.contracts import runner

KEY = "sk-proj-contract0123456789abcdefghijkl"
DOCS = {f.path.stem: f.data for f in runner.fixtures("openai")}
# Fields the documented video has that a gateway may leave out of an unfinished task.
UNFINISHED = ("completed_at", "expires_at", "remixed_from_video_id", "error")


@pytest.fixture
def sim(start_sim: Any) -> SimServer:
    return start_sim("openai", KEY, gen_seconds=0.0, seed=3)


def call(sim: SimServer, method: str, path: str, key: str = KEY, **kw: Any) -> requests.Response:
    return requests.request(method, sim.origin + path, headers={"Authorization": f"Bearer {key}"}, timeout=5, **kw)


def documented(name: str) -> Any:
    return DOCS[name]["answer"]["body"]


def create(sim: SimServer, prompt: str = "a fox", **fields: Any) -> Dict[str, Any]:
    body = {**DOCS["create_text_json"]["request"]["body"], "prompt": prompt, **fields}
    answer = call(sim, "POST", "/v1/videos", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_create_answers_the_documented_video_object(sim):
    made = create(sim)
    runner.assert_shape_covers(documented("create_text_json"), made, optional=UNFINISHED)
    assert made["object"] == "video" and made["status"] == "queued" and made["seconds"] == "8"


def test_the_sdks_multipart_create_is_taken_like_the_json_one(sim):
    """The official SDK always sends a form (create_multipart_sdk): the simulator takes it too."""
    form = DOCS["create_multipart_sdk"]["form"]
    answer = call(sim, "POST", "/v1/videos", files={name: (None, value) for name, value in form.items()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["size"] == form["size"] and answer.json()["seconds"] == form["seconds"]


def test_a_finished_and_a_failed_video_have_the_documented_shape(sim):
    done = call(sim, "GET", f"/v1/videos/{create(sim)['id']}").json()
    assert done["status"] == "completed"
    runner.assert_shape_covers(documented("get_completed"), done)
    failed = call(sim, "GET", f"/v1/videos/{create(sim, prompt=f'a {POLICY_TRIGGER} fox')['id']}").json()
    assert failed["status"] == "failed"
    runner.assert_shape_covers(documented("get_failed_moderation"), failed, optional=("expires_at",))


def test_the_list_is_the_documented_cursor_page(sim):
    for prompt in ("one", "two", "three"):
        create(sim, prompt=prompt)
    query = DOCS["list_page"]["request"]["query"]
    first = call(sim, "GET", "/v1/videos", params={**query, "limit": "2"}).json()
    runner.assert_shape_covers(documented("list_page"), first)
    assert first["has_more"] is True and first["last_id"] == first["data"][-1]["id"]
    last = call(sim, "GET", "/v1/videos", params={**query, "limit": "2", "after": first["last_id"]}).json()
    assert last["has_more"] is False and [v["prompt"] for v in first["data"] + last["data"]] == ["three", "two", "one"]


@pytest.mark.parametrize("name, request_kw", [
    ("error_400_invalid_value", {"method": "POST", "path": "/v1/videos", "json": {"prompt": "a", "seconds": "10"}}),
    ("error_401_invalid_api_key", {"method": "POST", "path": "/v1/videos", "json": {"prompt": "a"}, "key": "sk-wrong"}),
    ("error_404_unknown_video", {"method": "GET", "path": "/v1/videos/video_unknown"}),
])
def test_the_errors_have_the_documented_status_and_body(sim, name, request_kw):
    answer = call(sim, **request_kw)
    assert answer.status_code == DOCS[name]["answer"]["status"]
    runner.assert_shape_covers(documented(name), answer.json(), optional=("error.param", "error.code"))


def test_the_content_is_served_behind_the_key_at_the_documented_path(sim, tmp_path):
    video = create(sim)
    spec = DOCS["content"]["request"]
    path = spec["path"].replace(spec["path"].split("/")[3], video["id"])
    assert call(sim, "GET", path, key="sk-wrong").status_code == 401
    answer = call(sim, "GET", path)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "video/mp4" and answer.content
    with OpenAIVideos(sim.base_url, KEY) as client:  # the client asks that path, with the key
        task = client.get(video["id"])
        assert task.video_url == sim.base_url + path[len("/v1"):]
        assert client.download(task.video_url, tmp_path / "v.mp4", root=tmp_path).path.read_bytes() == answer.content


@pytest.mark.parametrize("method, path", [("GET", "/v1/tasks"), ("POST", "/v1/create"), ("GET", "/v1/balance"),
                                          ("POST", "/v1/videos/generations")])
def test_only_the_documented_paths_are_served(sim, method, path):
    answer = call(sim, method, path, data=json.dumps({"prompt": "a"}))
    assert answer.status_code == 404 and "error" in answer.json()
