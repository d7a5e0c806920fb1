"""Cross-check with Volcengine's official Ark runtime (``volcengine-ark-runtime``, the package that
ships ``volcenginesdkarkruntime``): for the same job the SDK and ledger send the same request (method,
path, query, the headers that matter, every body field with its value and JSON type), and the
simulator's answers read as the SDK's own response and error types."""
from __future__ import annotations

import json
import typing
from typing import Any, Dict, Iterator, List, Mapping

import pytest
import requests
from pydantic import TypeAdapter, ValidationError
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAPIStatusError
from volcenginesdkarkruntime.resources.content_generation.tasks import Tasks
from volcenginesdkarkruntime.types.content_generation.content_generation_task import ContentGenerationTask
from volcenginesdkarkruntime.types.content_generation.create_task_content_param import CreateTaskContentParam
from werkzeug.wrappers import Response

from ledger.providers.seedance import FAST, NORMAL, PRO, V25, seed_of

from tests.contracts import runner

KEY = "seedance-contract-key-000000000000"  # the key runner.open_client gives ledger
TASKS = "/api/v3/contents/generations/tasks"
TASK_ID = "cgt-20250331175019-68d9t"
FIRST, LAST = "https://example.com/first.png", "https://example.com/last.png"

# One job each, as a user of the SDK writes it (its create() keywords) and as a storyboard says it.
JOBS: List[Dict[str, Any]] = [
    {"id": "text", "segment": {"prompt": "a fox runs through snow"},
     "sdk": dict(model=NORMAL, content=[{"type": "text", "text": "a fox runs through snow"}], resolution="720p",
                 ratio="16:9", duration=5, generate_audio=False, service_tier="default", camera_fixed=False,
                 watermark=False)},
    {"id": "first-frame-vertical-1080p-pro-audio",
     "segment": {"prompt": "she turns", "is_pro": True, "image_url": FIRST, "resolution": "vertical",
                 "quality": "high", "duration": 8, "options": {"generate_audio": True}},
     "sdk": dict(model=PRO, content=[{"type": "text", "text": "she turns"},
                                     {"type": "image_url", "image_url": {"url": FIRST}, "role": "first_frame"}],
                 resolution="1080p", ratio="9:16", duration=8, generate_audio=True, service_tier="default",
                 camera_fixed=False, watermark=False)},
    {"id": "first-and-last-frame-flex-seed-camera",
     "segment": {"prompt": "a flower opens", "is_pro": True, "image_url": FIRST, "remove_watermark": False,
                 "options": {"last_frame_url": LAST, "service_tier": "flex", "seed": 42, "camera_fixed": True}},
     "sdk": dict(model=PRO, content=[{"type": "text", "text": "a flower opens"},
                                      {"type": "image_url", "image_url": {"url": FIRST}, "role": "first_frame"},
                                      {"type": "image_url", "image_url": {"url": LAST}, "role": "last_frame"}],
                 resolution="720p", ratio="16:9", duration=5, generate_audio=False, service_tier="flex",
                 camera_fixed=True, watermark=True, seed=42)},
    {"id": "fast-480p-square", "segment": {"prompt": "a kite", "model": FAST, "is_pro": None, "resolution": "1:1",
                                           "options": {"resolution": "480p"}},
     "sdk": dict(model=FAST, content=[{"type": "text", "text": "a kite"}], resolution="480p", ratio="1:1", duration=5,
                 generate_audio=False, service_tier="default", camera_fixed=False, watermark=False)},
    {"id": "2.5-first-frame-adaptive",
     "segment": {"prompt": "the door opens", "model": V25, "is_pro": None, "image_url": FIRST, "duration": 12},
     "sdk": dict(model=V25, content=[{"type": "text", "text": "the door opens"},
                                     {"type": "image_url", "image_url": {"url": FIRST}, "role": "first_frame"}],
                 resolution="720p", ratio="adaptive", duration=12, generate_audio=False, service_tier="default",
                 camera_fixed=False, watermark=False)},
]


def sdk_client(base_url: str) -> Ark:
    return Ark(base_url=base_url, api_key=KEY, max_retries=0, timeout=5)


def captured(httpserver: Any) -> List[Any]:
    requests_seen = [request for request, _ in httpserver.log]
    httpserver.clear_log()
    return requests_seen


def sent_body(request: Any) -> Dict[str, Any]:
    """The JSON body, without the fields the SDK sends as null for keywords not given."""
    return {k: v for k, v in json.loads(request.get_data(as_text=True)).items() if v is not None}


def same_request(ours: Any, theirs: Any) -> List[str]:
    """Every difference between two captured requests that the API could see."""
    wrong = [f"{name}: ledger {a!r}, SDK {b!r}" for name, a, b in (
        ("method", ours.method, theirs.method), ("path", ours.path, theirs.path),
        ("query", sorted(ours.args.items(multi=True)), sorted(theirs.args.items(multi=True))),
        ("Authorization", ours.headers.get("Authorization"), theirs.headers.get("Authorization")))
        if a != b]
    if ours.method == "POST":
        if ours.mimetype != theirs.mimetype:
            wrong.append(f"Content-Type: ledger {ours.mimetype!r}, SDK {theirs.mimetype!r}")
        mine, sdk = sent_body(ours), sent_body(theirs)
        for key in sorted(set(mine) | set(sdk)):
            if key not in sdk:
                wrong.append(f"body.{key}: sent by ledger only ({mine[key]!r})")
            elif key not in mine:
                wrong.append(f"body.{key}: sent by the SDK only ({sdk[key]!r})")
            elif json.dumps(mine[key], sort_keys=True) != json.dumps(sdk[key], sort_keys=True):
                wrong.append(f"body.{key}: ledger {mine[key]!r}, SDK {sdk[key]!r}")
    return wrong


@pytest.fixture
def ledger_client(httpserver: Any, tmp_path: Any) -> Iterator[Any]:
    client = runner.open_client("seedance", httpserver.url_for("/"), tmp_path)
    yield client
    client.close()


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job["id"])
def test_ledger_sends_the_create_the_sdk_sends_for_the_same_job(httpserver, ledger_client, job):
    httpserver.expect_request(TASKS, method="POST").respond_with_json({"id": TASK_ID})
    params = runner.params_for("seedance", job["segment"])
    assert ledger_client.create(params, runner.REF).task_id == TASK_ID
    sdk = dict(job["sdk"])
    sdk.setdefault("seed", seed_of(params, runner.REF))  # ledger's own seed: how a lost create is found again
    assert sdk_client(httpserver.url_for("/api/v3")).content_generation.tasks.create(**sdk).id == TASK_ID
    ours, theirs = captured(httpserver)
    assert same_request(ours, theirs) == []


def test_every_field_ledger_sends_is_a_keyword_of_the_sdks_create_with_its_type(httpserver, ledger_client):
    """Beyond the jobs above: each body field is one of create()'s keywords, and its value passes
    that keyword's annotation strictly (an int for duration and seed, a bool for the flags, the
    content items as the SDK's TypedDicts)."""
    httpserver.expect_request(TASKS, method="POST").respond_with_json({"id": TASK_ID})
    hints = typing.get_type_hints(_unwrapped(Tasks.create))
    for job in JOBS:
        ledger_client.create(runner.params_for("seedance", job["segment"]), runner.REF)
    for request in captured(httpserver):
        for key, value in sent_body(request).items():
            assert key in hints, f"{key} is not a keyword of the SDK's create()"
            annotation = List[CreateTaskContentParam] if key == "content" else hints[key]
            try:
                TypeAdapter(annotation).validate_python(value, strict=True)
            except ValidationError as exc:
                pytest.fail(f"body.{key} = {value!r} does not pass the SDK's {annotation}: {exc}")


def _unwrapped(function: Any) -> Any:
    """The SDK's own create() under its ``apikey_required`` wrapper (which keeps no ``__wrapped__``)."""
    inner = [cell.cell_contents for cell in function.__closure__ or () if callable(cell.cell_contents)]
    assert len(inner) == 1, function
    return inner[0]


def test_ledger_gets_and_lists_as_the_sdk_does(httpserver, ledger_client):
    task = {"id": TASK_ID, "model": NORMAL, "status": "running", "created_at": 1765434920, "updated_at": 1765434920}
    httpserver.expect_request(f"{TASKS}/{TASK_ID}", method="GET").respond_with_json(task)
    httpserver.expect_request(TASKS, method="GET").respond_with_json({"total": 1, "items": [task]})
    ark = sdk_client(httpserver.url_for("/api/v3"))
    ledger_client.get(TASK_ID)
    ark.content_generation.tasks.get(task_id=TASK_ID)
    ledger_client.recent(None, 500)
    ark.content_generation.tasks.list(page_num=1, page_size=500)
    ledger_client.recent("3", 100)
    ark.content_generation.tasks.list(page_num=3, page_size=100)
    log = captured(httpserver)
    for ours, theirs in zip(log[0::2], log[1::2]):
        assert same_request(ours, theirs) == []


# --- the simulator's answers, read by the SDK -------------------------------------------------------


@pytest.fixture
def start(start_sim: Any) -> Any:
    return lambda **config: start_sim("seedance", KEY, **config)


def typed_fields(model: Any, raw: Mapping[str, Any]) -> List[str]:
    """Fields of ``raw`` the SDK declares, whose values do not pass its annotation (nested
    models validated as the SDK declares them)."""
    wrong = []
    for name, field in type(model).model_fields.items():
        if name in raw and raw[name] is not None:
            try:
                TypeAdapter(field.annotation).validate_python(raw[name], strict=True)
            except ValidationError as exc:
                if not (isinstance(raw[name], Mapping) and _partial_ok(field.annotation, raw[name])):
                    wrong.append(f"{name}={raw[name]!r}: {exc.errors()[0]['msg']}")
    return wrong


def _partial_ok(annotation: Any, value: Mapping[str, Any]) -> bool:
    """A nested object the answer gives in part (``content`` without ``last_frame_url``): each
    field it gives passes its annotation."""
    fields = getattr(annotation, "model_fields", {})
    try:
        for key, item in value.items():
            if key in fields:
                TypeAdapter(fields[key].annotation).validate_python(item, strict=True)
    except ValidationError:
        return False
    return bool(fields)


@pytest.mark.parametrize("config, status", [({"gen_seconds": 60.0}, "queued"), ({"gen_seconds": 0.0}, "succeeded"),
                                            ({"gen_seconds": 0.0, "fail_rate": 1.0}, "failed")])
def test_the_simulators_tasks_read_as_the_sdks_types(start, config, status):
    sim = start(**config)
    ark = sdk_client(sim.base_url)
    body = runner.params_for("seedance", {"prompt": "a fox"})
    made = ark.content_generation.tasks.create(model=body["model"], content=[{"type": "text", "text": "a fox"}],
                                                duration=body["duration"], ratio=body["ratio"],
                                                resolution=body["resolution"], seed=7)
    task = ark.content_generation.tasks.get(task_id=made.id)
    assert isinstance(task, ContentGenerationTask) and (task.id, task.status) == (made.id, status)
    raw = requests.get(f"{sim.base_url}/contents/generations/tasks/{made.id}", timeout=5,
                       headers={"Authorization": f"Bearer {KEY}"}).json()
    assert typed_fields(task, raw) == []
    if status == "succeeded":
        assert task.content.video_url.startswith("http") and task.usage.completion_tokens > 0
    if status == "failed":
        assert task.error.code and task.error.message
    page = ark.content_generation.tasks.list(page_num=1, page_size=10)
    assert page.total == 1 and [item.id for item in page.items] == [made.id]
    assert typed_fields(page.items[0], raw) == []


def test_the_simulators_errors_read_as_the_sdks_errors(start):
    sim = start(gen_seconds=0.0)
    ark = sdk_client(sim.base_url)
    with pytest.raises(ArkAPIStatusError) as bad:
        ark.content_generation.tasks.create(model=NORMAL, content=[{"type": "text", "text": "a fox"}], duration=99)
    assert (bad.value.status_code, bad.value.code, bad.value.param) == (400, "InvalidParameter", "duration")
    with pytest.raises(ArkAPIStatusError) as gone:
        ark.content_generation.tasks.get(task_id="cgt-20250331175019-00000")
    assert gone.value.status_code == 404 and gone.value.code
    with pytest.raises(ArkAPIStatusError) as refused:
        Ark(base_url=sim.base_url, api_key="ark-wrong-key-000000000000000000", max_retries=0).content_generation \
            .tasks.list(page_num=1, page_size=1)
    assert (refused.value.status_code, refused.value.code) == (401, "AuthenticationError")


def test_an_answer_the_sdk_cannot_read_is_not_one_ledger_reads_either(httpserver, ledger_client):
    """The SDK reads a task's ``error`` as {code, message}; ledger keeps both, in the API's words."""
    failed = {"id": TASK_ID, "model": NORMAL, "status": "failed", "created_at": 1, "updated_at": 2,
              "error": {"code": "InputTextRiskDetection", "message": "The input text includes sensitive content."}}
    httpserver.expect_request(f"{TASKS}/{TASK_ID}").respond_with_response(
        Response(json.dumps(failed), content_type="application/json"))
    task = sdk_client(httpserver.url_for("/api/v3")).content_generation.tasks.get(task_id=TASK_ID)
    ours = ledger_client.get(TASK_ID)
    assert ours.error_msg == f"{task.error.message} ({task.error.code})"
