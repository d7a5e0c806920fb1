"""OpenAI's own SDK (``openai``, a test dependency) as the second witness of the /v1/videos protocol:
for the same job, ledger's requests match the SDK's field by field (a local capture server sees
both), and the simulator's answers and the documented ones are valid ``openai.types.Video`` objects."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import openai
import pytest
from openai.types import Video
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request

from ledger.sim import SimServer
from ledger.sim.server import POLICY_TRIGGER
from tests.contracts import runner

KEY = "sk-proj-contract0123456789abcdefghijkl"
DOCS = {f.path.stem: f.data for f in runner.fixtures("openai")}
VIDEO = DOCS["get_completed"]["answer"]["body"]
# The SDK marks every Sora method deprecated (the upstream shut down on 2026-09-24); the warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=5)


def capture(httpserver: HTTPServer) -> None:
    """Answer every documented call with a documented answer, so both clients go on as they would."""
    page = {"object": "list", "data": [VIDEO], "first_id": VIDEO["id"], "last_id": VIDEO["id"], "has_more": False}
    httpserver.expect_request("/v1/videos", method="POST").respond_with_json(DOCS["create_text_json"]["answer"]["body"])
    httpserver.expect_request("/v1/videos", method="GET").respond_with_json(page)
    httpserver.expect_request(f"/v1/videos/{VIDEO['id']}/content").respond_with_data(b"mp4", content_type="video/mp4")
    httpserver.expect_request(f"/v1/videos/{VIDEO['id']}", method="GET").respond_with_json(VIDEO)


def fields(request: Request) -> Dict[str, str]:
    """A create's fields as form fields, whichever form it came in: the SDK's multipart
    (``input_reference[image_url]``) or ledger's JSON (``{"input_reference": {"image_url"}}``)."""
    if request.mimetype == "multipart/form-data":
        return {name: value for name, value in request.form.items()}
    flat: Dict[str, str] = {}
    for name, value in json.loads(request.get_data(as_text=True)).items():
        if isinstance(value, Mapping):
            flat.update({f"{name}[{inner}]": str(v) for inner, v in value.items()})
        else:
            flat[name] = str(value)
    return flat


def sent(httpserver: HTTPServer) -> List[Request]:
    requests_, _ = zip(*httpserver.log) if httpserver.log else ((), ())
    httpserver.clear_log()
    return list(requests_)


def query(request: Request) -> Dict[str, str]:
    return dict(request.args.items())


@pytest.fixture
def ledger_client(httpserver: HTTPServer, tmp_path: Path) -> Iterator[Any]:
    capture(httpserver)
    client = runner.open_client("openai", httpserver.url_for("/"), tmp_path, {"OPENAI_API_KEY": KEY})
    yield client
    client.close()


@pytest.mark.parametrize("segment, sdk_args", [
    ({"prompt": "a fox", "duration": 8, "resolution": "horizontal"},
     {"prompt": "a fox", "model": "sora-2", "seconds": "8", "size": "1280x720"}),
    ({"prompt": "a fox", "is_pro": True, "duration": 12, "resolution": "1792x1024"},
     {"prompt": "a fox", "model": "sora-2-pro", "seconds": "12", "size": "1792x1024"}),
    ({"prompt": "a fox", "duration": 4, "resolution": "vertical", "image_url": "https://example.com/first.png"},
     {"prompt": "a fox", "model": "sora-2", "seconds": "4", "size": "720x1280",
      # SDK 3.51 types input_reference as a file or {image_url}, but only uploads files through it:
      # the URL form goes as the body field it stands for.
      "extra_body": {"input_reference": {"image_url": "https://example.com/first.png"}}}),
], ids=["text", "pro_large", "first_frame"])
def test_the_create_sends_what_the_sdk_sends_for_the_same_job(httpserver, ledger_client, segment, sdk_args):
    ledger_client.create(runner.params_for("openai", segment), runner.REF)
    ours = sent(httpserver)
    sdk(httpserver.url_for("/v1")).videos.create(**sdk_args)
    theirs = sent(httpserver)
    assert [(r.method, r.path) for r in ours] == [(r.method, r.path) for r in theirs] == [("POST", "/v1/videos")]
    assert ours[0].headers["Authorization"] == theirs[0].headers["Authorization"] == f"Bearer {KEY}"
    assert fields(ours[0]) == fields(theirs[0])
    assert theirs[0].mimetype == "multipart/form-data" and ours[0].mimetype == "application/json"


def test_the_look_up_the_list_and_the_content_are_asked_as_the_sdk_asks_them(httpserver, ledger_client, tmp_path):
    client = sdk(httpserver.url_for("/v1"))
    pairs: List[Tuple[str, Any, Any]] = [
        ("retrieve", lambda: ledger_client.get(VIDEO["id"]), lambda: client.videos.retrieve(VIDEO["id"])),
        ("list", lambda: ledger_client.recent(None, 20), lambda: client.videos.list(limit=20, order="desc")),
        ("next page", lambda: ledger_client.recent("video_1", 20),
         lambda: client.videos.list(limit=20, order="desc", after="video_1")),
        ("content", lambda: ledger_client.download(ledger_client.get(VIDEO["id"]).video_url, tmp_path / "v.mp4",
                                                   root=tmp_path),
         lambda: (client.videos.retrieve(VIDEO["id"]), client.videos.download_content(VIDEO["id"]))),
    ]
    for what, ours_call, sdk_call in pairs:
        ours_call()
        ours = sent(httpserver)
        sdk_call()
        theirs = sent(httpserver)
        assert [(r.method, r.path, query(r)) for r in ours] == [(r.method, r.path, query(r)) for r in theirs], what
        assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in ours + theirs), what


@pytest.mark.parametrize("name", [name for name, doc in DOCS.items()
                                  if isinstance((doc.get("answer") or {}).get("body"), Mapping)
                                  and doc["answer"]["body"].get("object") == "video"])
def test_every_documented_video_is_a_valid_sdk_video(name):
    Video.model_validate(DOCS[name]["answer"]["body"])


@pytest.fixture
def sim(start_sim: Any) -> SimServer:
    return start_sim("openai", KEY, gen_seconds=0.0, seed=5)


def test_the_sdk_runs_against_the_simulator_and_its_answers_are_valid_sdk_types(sim):
    client = sdk(sim.base_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        made = client.videos.create(prompt="a fox", model="sora-2", seconds="8", size="1280x720")
        refused = client.videos.create(prompt=f"a {POLICY_TRIGGER} fox", model="sora-2-pro", seconds="4",
                                       size="1792x1024")
        done, failed = client.videos.retrieve(made.id), client.videos.retrieve(refused.id)
        page = client.videos.list(limit=1, order="desc")
        assert client.videos.download_content(made.id).content[4:8] == b"ftyp"  # an MP4 behind the key
    assert (made.status, done.status, failed.status) == ("queued", "completed", "failed")
    assert failed.error is not None and failed.error.code and failed.error.message
    assert page.has_more is True and page.last_id == refused.id and [v.id for v in page.data] == [refused.id]
    for video in (made, refused, done, failed, *page.data):
        Video.model_validate(video.model_dump())  # strict: the SDK's own types, not its lenient construction
