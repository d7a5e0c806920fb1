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
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

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
