"""The simulator's OpenAI-compatible ``/v1/videos`` protocol (``ledger sim --protocol openai``).

Plain HTTP statuses with ``{"error": {"message", "type", "param", "code"}}`` bodies, video objects
with unix timestamps and ``seconds`` as a string, cursor-paged lists, and the video behind the key at
``/v1/videos/{id}/content`` — served there, or answered with a redirect to a signed URL on another
host (``content_host``), as relays in front of object storage do. The server module keeps the
state, the faults and the bytes; this module only speaks the format.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

from .protocol import Reply, SimProtocol, json_reply

NAME = "openai"
# What the simulated API takes, per model (``sora-2-2025-10-06``-style snapshots take their model's).
MODELS: Mapping[str, Mapping[str, Tuple[str, ...]]] = {
    "sora-2": {"seconds": ("4", "8", "12"), "sizes": ("720x1280", "1280x720")},
    "sora-2-pro": {"seconds": ("4", "8", "12"), "sizes": ("720x1280", "1280x720", "1792x1024", "1024x1792")},
}
# Cents per second of video, as the public list has it: Pro above 720p costs more.
PRICES: Mapping[str, float] = {"sora-2": 10.0, "sora-2-pro": 30.0, "sora-2-pro@1792x1024": 50.0,
                               "sora-2-pro@1024x1792": 50.0}
STATUS_WORDS = {"pending": "queued", "processing": "in_progress", "completed": "completed", "failed": "failed"}
POLICY_CODE = "moderation_blocked"
FAILED_CODE = "video_generation_failed"
_SNAPSHOT = re.compile(r"^(.+)-\d{4}-\d{2}-\d{2}$")
_VIDEO = re.compile(r"^/v1/videos/([^/]+)$")
_CONTENT = re.compile(r"^/v1/videos/([^/]+)/content$")
_FILE = re.compile(r"^/files/([^/]+)\.mp4$")


def route(method: str, path: str) -> Tuple[Optional[str], str]:
    """(route name, task id) of a request; the content endpoint is ``content``, a signed file ``file``."""
    if method == "POST":
        return ("create", "") if path == "/v1/videos" else (None, "")
    if path == "/v1/videos":
        return "tasks", ""
    for name, pattern in (("content", _CONTENT), ("task", _VIDEO), ("file", _FILE)):
        match = pattern.match(path)
        if match:
            return name, unquote(match.group(1))
    return None, ""


def family(model: str) -> Optional[str]:
    """The model whose rules ``model`` (a model or a dated snapshot) follows."""
    if model in MODELS:
        return model
    match = _SNAPSHOT.match(model)
    return match.group(1) if match and match.group(1) in MODELS else None


def validate(body: Any) -> Optional[Tuple[Optional[str], str]]:
    """The first problem with a create body as (param, message), or None."""
    if not isinstance(body, dict):
        return None, "We could not parse the JSON body of your request."
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt", "Missing required parameter: 'prompt'."
    model = body.get("model", "sora-2")
    rules = MODELS.get(family(model) or "") if isinstance(model, str) else None
    if rules is None:
        return "model", f"Invalid value: {model!r}. Supported values are: 'sora-2' and 'sora-2-pro'."
    seconds = body.get("seconds", "4")
    if not isinstance(seconds, str) or seconds not in rules["seconds"]:
        return "seconds", (f"Invalid value: {seconds!r}. Supported values are: "
                           f"{', '.join(repr(s) for s in rules['seconds'])}.")
    size = body.get("size", "720x1280")
    if size not in rules["sizes"]:
        return "size", f"Invalid value: {size!r}. Supported values are: {', '.join(map(repr, rules['sizes']))}."
    reference = body.get("input_reference")
    if reference is not None:
        url = reference.get("image_url") if isinstance(reference, dict) else None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            return "input_reference", "input_reference must hold an http(s) image_url."
    return None


def price(model: str, size: str, seconds: int, table: Mapping[str, float] = PRICES) -> int:
    """Cents for one video."""
    base = family(model) or model
    rate = next(table[key] for key in (f"{model}@{size}", model, f"{base}@{size}", base) if key in table)
    return round(rate * seconds)


def error(message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
          code: Optional[str] = None) -> bytes:
    """An error body of this format."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}},
                      ensure_ascii=False).encode("utf-8")


def view(task: Any, status: str, progress: int, completed_at: Optional[int], expires_at: Optional[int],
         words: Mapping[str, str]) -> Dict[str, Any]:
    """A video object; ``status`` is one of the simulator's four, said in this format's words (or a
    gateway's, ``words``)."""
    said = words.get(STATUS_WORDS[status], STATUS_WORDS[status])
    failure = None
    if status == "failed":
        from .server import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE

        failure = ({"code": POLICY_CODE, "message": POLICY_MESSAGE} if task.outcome == "policy"
                   else {"code": FAILED_CODE, "message": GENERATION_FAILED_MESSAGE})
    return {
        "id": task.task_id, "object": "video", "model": task.model, "status": said, "progress": progress,
        "created_at": int(task.created_wall.timestamp()), "completed_at": completed_at, "expires_at": expires_at,
        "seconds": str(task.duration), "size": task.size, "prompt": task.prompt, "remixed_from_video_id": None,
        "error": failure,
    }


def page(views: List[Dict[str, Any]], query: Mapping[str, List[str]],
         ignore_cursor: bool) -> Tuple[int, Any]:
    """One page of ``views`` (newest first) for ``GET /videos?limit&after&order``: (status, body)."""
    try:
        limit = int(query.get("limit", ["20"])[0])
    except ValueError:
        return 400, error("limit must be an integer.", param="limit")
    order = query.get("order", ["desc"])[0]
    if not 1 <= limit <= 100 or order not in ("asc", "desc"):
        return 400, error("limit must be 1 to 100 and order asc or desc.", param="limit")
    items = views if order == "desc" else list(reversed(views))
    start = 0
    after = query.get("after", [None])[0]
    if after and not ignore_cursor:
        ids = [item["id"] for item in items]
        if after not in ids:
            return 400, error(f"No video found with id {after!r} for 'after'.", param="after")
        start = ids.index(after) + 1
    data = items[start:start + limit]
    return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                 "last_id": data[-1]["id"] if data else None, "has_more": start + limit < len(items)}


class OpenAIProtocol(SimProtocol):
    """The /v1/videos format, as ``ledger sim --protocol openai`` speaks it."""

    name = NAME
    key_hint = "PROVIDER=openai, OPENAI_BASE_URL={url} and OPENAI_API_KEY={key}"

    def new_id(self) -> str:
        import uuid

        return f"video_{uuid.uuid4().hex}"

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        return route(method, path)

    def authorise(self, headers: Mapping[str, str], key: Optional[str]) -> Optional[Reply]:
        header = headers.get("Authorization", "")
        if key is None or header == f"Bearer {key}":
            return None
        presented = header[7:] if header.lower().startswith("bearer ") else header
        return Reply(401, error(f"Incorrect API key provided: {presented or '(none)'}.", code="invalid_api_key"))

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        problem = validate(body)
        if problem:
            param, message = problem
            return Reply(400, error(message, param=param)), False
        model, size = str(body.get("model", "sora-2")), str(body.get("size", "720x1280"))
        seconds = int(body.get("seconds", "4"))
        cost = price(model, size, seconds)
        reference = body.get("input_reference") or {}
        task = sim.record_task(body["prompt"], cost, task_id, is_pro=family(model) == "sora-2-pro",
                               duration=seconds, resolution=size, quality="", remove_watermark=False,
                               image_url=str(reference.get("image_url") or ""), model=model, size=size)
        if task is None:
            return Reply(429, error("You exceeded your current quota, please check your plan and billing details.",
                                    "insufficient_quota", code="insufficient_quota")), False
        # The create only accepts the job: its answer is the video queued, however quick the generation.
        return json_reply(200, view(task, "pending", 0, None, None, sim.config.status_words)), True

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        hint = {"openai-poll-after-ms": str(sim.config.poll_after_ms)} if sim.config.poll_after_ms else {}
        if route == "task":
            task = sim.get_task(arg, poll=True)
            if task is None:
                return Reply(404, error(f"Video with id {arg!r} not found."))
            return json_reply(200, self.view(sim, task, origin), hint)
        if route == "tasks":
            views = [self.view(sim, task, origin) for task in sim.tasks_newest_first()]
            status, answer = page(views, query, sim.config.list_ignores_page)
            return Reply(status, answer if isinstance(answer, bytes) else
                         json.dumps(answer, ensure_ascii=False).encode("utf-8"), hint)
        return self.error("no_route", f"GET {route}")

    def content_problem(self, sim: Any, task_id: str, expired: bool) -> Optional[Reply]:
        """Why ``/v1/videos/{id}/content`` cannot be served, or None."""
        task = sim.get_task(task_id, poll=False)
        if task is None:
            return Reply(404, error(f"Video with id {task_id!r} not found."))
        status, _, ends_at = sim.timeline(task)
        if status != "completed":
            return Reply(404, error(f"Video {task_id!r} has no content yet (status {status})."))
        if expired or time.monotonic() >= task.created_mono + ends_at + sim.config.url_ttl:
            return Reply(410, error(f"The content of video {task_id!r} has expired."))
        return None

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        status, progress, ends_at = sim.timeline(task)
        completed = int(task.created_wall.timestamp() + round(ends_at)) if status in ("completed", "failed") else None
        expires = int(completed + sim.config.url_ttl) if status == "completed" and completed is not None else None
        return view(task, status, progress, completed, expires, sim.config.status_words)

    def settings(self, sim: Any) -> Dict[str, str]:
        return {"PROVIDER": "openai", "OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": sim.config.api_key or "sk-any"}

    def job_price(self, sim: Any) -> int:
        return price("sora-2", "1280x720", 4)

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        if kind == "no_route":
            return Reply(404, error(f"Invalid URL ({message})"))
        if kind in ("server", "server_in_200"):
            return Reply(500, error("The server had an error while processing your request.", "server_error"))
        if kind == "rate_limited":
            return Reply(429, error("Rate limit reached for requests.", "requests", code="rate_limit_exceeded"))
        if kind == "in_200":  # a gateway answering HTTP 200 with an error object
            return Reply(200, error(message or "Invalid request", code=str(details.get("code") or "invalid_request")))
        return Reply(404, error(message))


PROTOCOL = OpenAIProtocol()
