"""The simulator's DashScope protocol for the Wan / HappyHorse video models (``ledger sim --protocol wan``).

Errors are ``{"request_id", "code", "message"}`` with the HTTP status DashScope gives each code; a
create needs ``X-DashScope-Async: enable`` (403 ``AccessDenied`` without it); tasks are
``{"request_id", "output": {...}, "usage": {...}}`` with China-time timestamps and no progress;
an id the service does not know answers ``UNKNOWN``; the batch task query filters by time window
(``YYYYMMDDhhmmss``, China time), model and status, in pages, and its entries carry no prompt.

Where the documentation leaves a fact open, this simulator follows one reading and a class
attribute switches it (a test sets it on ``PROTOCOL``):

* ``shows_orig_prompt`` (True): ``GET /tasks/{id}`` tells the task's ``orig_prompt`` at every
  status. False: it never does, so a lost create cannot be told apart from the account's other tasks.
* ``arrearage_status`` (400): the HTTP status of ``Arrearage``; 403 is the other reading.
* ``page_cap`` (None): the most entries one page of the batch query holds, whatever ``page_size``
  asked for (the answer's ``page_size`` and ``total_page`` say the capped size).
* ``window_zone`` (None: China time): the zone the batch query reads ``start_time`` / ``end_time``
  in (``timezone.utc`` is the other reading; the documentation names none).
"""
from __future__ import annotations

import math
import re
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

from .protocol import Reply, SimProtocol, json_reply

NAME = "wan"
BASE_PATH = "/api/v1"
CREATE_PATH = BASE_PATH + "/services/aigc/video-generation/video-synthesis"
ASYNC_HEADER = "X-DashScope-Async"
# What each model takes: its price family, its tiers, whether it wants, takes or refuses a first
# frame, the protocol it speaks (``ledger.providers.wan``: "legacy" reads ``input.img_url`` and
# ``parameters.size`` / ``resolution``; "media" reads ``input.media`` and ``parameters.resolution`` +
# ``ratio`` and refuses the legacy fields) and its seconds.
MODELS: Mapping[str, Tuple[str, Tuple[str, ...], str, str, Tuple[int, ...]]] = {
    "wan2.6-t2v": ("wan2.6", ("720P", "1080P"), "refuses", "legacy", (5, 10, 15)),
    "wan2.6-i2v": ("wan2.6", ("720P", "1080P"), "wants", "legacy", (5, 10, 15)),
    "wan2.7-t2v": ("wan2.7", ("720P", "1080P"), "refuses", "media", tuple(range(2, 16))),
    "wan2.7-i2v": ("wan2.7", ("720P", "1080P"), "wants", "media", tuple(range(2, 16))),
    "wan3.0-video": ("wan3.0", ("480P", "720P", "1080P"), "takes", "media", (5, 10)),
    "happyhorse-1.1-t2v": ("happyhorse-1.1", ("480P", "720P", "1080P"), "refuses", "media", (5, 10)),
    "happyhorse-1.1-i2v": ("happyhorse-1.1", ("480P", "720P", "1080P"), "wants", "media", (5, 10)),
}
TIER_OF: Mapping[str, str] = {"832*480": "480P", "480*832": "480P", "1280*720": "720P", "720*1280": "720P",
                              "960*960": "720P", "1088*832": "720P", "832*1088": "720P",
                              "1920*1080": "1080P", "1080*1920": "1080P", "1440*1440": "1080P",
                              "1632*1248": "1080P", "1248*1632": "1080P"}
RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")
FRAME_TYPES = ("first_frame", "last_frame")
# Fen per second, by family and tier (the public list).
PRICES: Mapping[Tuple[str, str], int] = {
    ("wan2.6", "720P"): 60, ("wan2.6", "1080P"): 100,
    ("wan2.7", "720P"): 60, ("wan2.7", "1080P"): 100,
    ("wan3.0", "480P"): 30, ("wan3.0", "720P"): 60, ("wan3.0", "1080P"): 120,
    ("happyhorse-1.1", "480P"): 45, ("happyhorse-1.1", "720P"): 90, ("happyhorse-1.1", "1080P"): 120,
}
# A body that is only a prompt (the server's ``create_external``) asks for this.
DEFAULT_MODEL, DEFAULT_RESOLUTION, DEFAULT_RATIO, DEFAULT_DURATION = "wan2.7-t2v", "720P", "16:9", 5
STATUS_WORDS = {"pending": "PENDING", "processing": "RUNNING", "completed": "SUCCEEDED", "failed": "FAILED"}
# The HTTP status each error code comes with.
CODE_STATUS: Mapping[str, int] = {"InvalidApiKey": 401, "Arrearage": 400, "Throttling": 429,
                                  "Throttling.RateQuota": 429, "Throttling.AllocationQuota": 429,
                                  "DataInspectionFailed": 400, "InvalidParameter": 400, "AccessDenied": 403,
                                  "InternalError": 500}
FAILED_CODE = "InternalError.Algo"
TIME_FORMAT = "%Y%m%d%H%M%S"
_TASK = re.compile(r"^/api/v1/tasks/([^/]+)$")
_FILE = re.compile(r"^/files/([^/]+)\.mp4$")


def error(code: str, message: str, status: Optional[int] = None) -> Reply:
    """An error answer of this format."""
    body = {"request_id": str(uuid.uuid4()), "code": code, "message": message}
    return json_reply(status or CODE_STATUS.get(code, CODE_STATUS.get(code.split(".")[0], 400)), body)


def route(method: str, path: str) -> Tuple[Optional[str], str]:
    """(route name, task id) of a request."""
    if method == "POST":
        return ("create", "") if path == CREATE_PATH else (None, "")
    if path == BASE_PATH + "/tasks":
        return "tasks", ""
    for name, pattern in (("task", _TASK), ("file", _FILE)):
        match = pattern.match(path)
        if match:
            return name, unquote(match.group(1))
    return None, ""


def normalised(body: Any) -> Any:
    """A body that is only a prompt (``create_external``) as the create it stands for."""
    if isinstance(body, dict) and "input" not in body and "prompt" in body:
        return {"model": DEFAULT_MODEL, "input": {"prompt": body["prompt"]},
                "parameters": {"resolution": DEFAULT_RESOLUTION, "ratio": DEFAULT_RATIO,
                               "duration": DEFAULT_DURATION}}
    return body


def validate(body: Any) -> Optional[str]:
    """The first problem with a create body, in the API's words, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return "input must be an object"
    model = MODELS.get(body.get("model")) if isinstance(body.get("model"), str) else None
    if model is None:
        return f"Model not exist: {body.get('model')!r}; supported: {', '.join(MODELS)}"
    given = body["input"]
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "input.prompt is required"
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        return "parameters must be an object"
    _, tiers, image, protocol, seconds = model
    if protocol == "media":
        problem = _media_problem(body["model"], image, given) or _media_size_problem(tiers, parameters)
    else:
        problem = _legacy_problem(body["model"], image, given, tiers, parameters)
    return problem or _parameters_problem(seconds, parameters)


def first_frame(given: Mapping[str, Any]) -> Optional[str]:
    """The first frame of a create's input, in either protocol."""
    media = given.get("media")
    if isinstance(media, list):
        return next((str(m.get("url")) for m in media if isinstance(m, dict) and m.get("type") == "first_frame"), None)
    return str(given["img_url"]) if given.get("img_url") is not None else None


def _media_problem(name: str, image: str, given: Mapping[str, Any]) -> Optional[str]:
    if "img_url" in given:
        return f"input.img_url is not supported by {name}: give the first frame in input.media"
    media = given.get("media")
    if media is None:
        return f"input.media with a first_frame is required by {name}" if image == "wants" else None
    if image == "refuses":
        return f"{name} does not take input.media (use its image-to-video model)"
    if not isinstance(media, list) or not all(isinstance(m, dict) for m in media):
        return "input.media must be a list of objects"
    for item in media:
        if item.get("type") not in FRAME_TYPES:
            return f"input.media type {item.get('type')!r} is not supported; use one of {', '.join(FRAME_TYPES)}"
        if not isinstance(item.get("url"), str) or urlsplit(item["url"]).scheme not in ("http", "https"):
            return "input.media url must be an http(s) URL"
    if first_frame(given) is None:
        return "input.media needs a first_frame"
    return None


def _media_size_problem(tiers: Tuple[str, ...], parameters: Mapping[str, Any]) -> Optional[str]:
    if "size" in parameters:
        return "parameters.size is not supported by this model: use parameters.resolution and parameters.ratio"
    resolution = parameters.get("resolution", DEFAULT_RESOLUTION)
    if resolution not in tiers:
        return f"parameters.resolution {resolution!r} is not supported; use one of {', '.join(tiers)}"
    ratio = parameters.get("ratio", DEFAULT_RATIO)
    if ratio not in RATIOS:
        return f"parameters.ratio {ratio!r} is not supported; use one of {', '.join(RATIOS)}"
    return None


def _legacy_problem(name: str, image: str, given: Mapping[str, Any], tiers: Tuple[str, ...],
                    parameters: Mapping[str, Any]) -> Optional[str]:
    if "media" in given:
        return f"input.media is not supported by {name}"
    url = given.get("img_url")
    if url is None:
        if image == "wants":
            return f"input.img_url is required by {name}"
        size = parameters.get("size", "1280*720")
        if TIER_OF.get(size) not in tiers:
            sizes = [s for s, tier in TIER_OF.items() if tier in tiers]
            return f"parameters.size {size!r} is not supported; use one of {', '.join(sizes)}"
        return None
    if image == "refuses":
        return f"{name} does not take input.img_url (use its image-to-video model)"
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        return "input.img_url must be an http(s) URL"
    resolution = parameters.get("resolution", tiers[-1])
    if resolution not in tiers:
        return f"parameters.resolution {resolution!r} is not supported; use one of {', '.join(tiers)}"
    return None


def _parameters_problem(seconds: Tuple[int, ...], parameters: Mapping[str, Any]) -> Optional[str]:
    duration = parameters.get("duration", DEFAULT_DURATION)
    if type(duration) is not int or duration not in seconds:
        return (f"parameters.duration {duration!r} is not supported; use {seconds[0]} to {seconds[-1]}"
                if len(seconds) > 3 else
                f"parameters.duration {duration!r} is not supported; use one of {', '.join(map(str, seconds))}")
    for name, kind in (("prompt_extend", bool), ("watermark", bool), ("seed", int)):
        if name in parameters and type(parameters[name]) is not kind:
            return f"parameters.{name} must be a {kind.__name__}"
    return None


def tier(body: Mapping[str, Any]) -> str:
    """The resolution tier a valid create asks for."""
    parameters = body.get("parameters", {})
    if "size" in parameters:
        return TIER_OF[parameters["size"]]
    return str(parameters.get("resolution") or MODELS[body["model"]][1][-1])


def price(body: Mapping[str, Any]) -> int:
    """Fen for the video a valid create asks for."""
    parameters = body.get("parameters", {})
    return PRICES[(MODELS[body["model"]][0], tier(body))] * int(parameters.get("duration", DEFAULT_DURATION))


def china_time(moment: datetime) -> str:
    """``2025-01-01 12:00:00.123``: the API's timestamps (the server's clock is China time)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _window_time(text: str, sim_tz: Any) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=sim_tz)


class WanProtocol(SimProtocol):
    """DashScope's video synthesis and task APIs, as ``ledger sim --protocol wan`` speaks them."""

    name = NAME
    base_path = BASE_PATH
    key_hint = "PROVIDER=wan, DASHSCOPE_BASE_URL={url} and DASHSCOPE_API_KEY={key}"
    shows_orig_prompt = True
    arrearage_status = 400
    page_cap: Optional[int] = None
    window_zone: Any = None

    def __init__(self) -> None:
        # The server gives ``route`` the method and path and ``authorise`` only the headers: the
        # route a handler thread is answering is kept between the two calls.
        self._answering = threading.local()

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        found = route(method, path)
        self._answering.route = found[0]
        return found

    def authorise(self, headers: Mapping[str, str], key: Optional[str]) -> Optional[Reply]:
        header = headers.get("Authorization", "")
        if key is not None and header != f"Bearer {key}":
            presented = header[7:] if header.lower().startswith("bearer ") else header
            # Like many services, the answer echoes the key it got, so clients must mask it.
            return error("InvalidApiKey", f"Invalid API-key provided: {presented or '(none)'}")
        if getattr(self._answering, "route", None) == "create" and headers.get(ASYNC_HEADER, "").lower() != "enable":
            return error("AccessDenied", "current user api does not support synchronous calls")
        return None

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        from .server import POLICY_MESSAGE, POLICY_TRIGGER

        body = normalised(body)
        problem = validate(body)
        if problem:
            return error("InvalidParameter", problem), False
        given, parameters = body["input"], body.get("parameters", {})
        if POLICY_TRIGGER in given["prompt"].lower():  # input moderation: refused before anything is made
            return error("DataInspectionFailed", POLICY_MESSAGE), False
        task = sim.record_task(given["prompt"], price(body), task_id, model=body["model"],
                               size=parameters.get("size") or parameters.get("ratio") or "",
                               duration=int(parameters.get("duration", DEFAULT_DURATION)), resolution=tier(body),
                               image_url=first_frame(given) or "", is_pro=body["model"] == "wan3.0-video",
                               extra={"body": body})
        if task is None:
            return error("Arrearage", "Access denied, please make sure your account is in good standing.",
                         self.arrearage_status), False
        return json_reply(200, {"request_id": str(uuid.uuid4()),
                                "output": {"task_id": task.task_id, "task_status": "PENDING"}}), True

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        if route == "task":
            task = sim.get_task(arg, poll=True)
            if task is None:  # expired, or never made: DashScope answers UNKNOWN, not 404
                return json_reply(200, {"request_id": str(uuid.uuid4()),
                                        "output": {"task_id": arg, "task_status": "UNKNOWN"}})
            return json_reply(200, self.view(sim, task, origin))
        if route == "tasks":
            return self._batch(sim, query)
        return self.error("no_route", f"GET {route}")

    def _batch(self, sim: Any, query: Mapping[str, List[str]]) -> Reply:
        """The batch task query: newest first, filtered by time window, model and status, in pages."""
        from .server import SIM_TZ

        one = {name: values[0] for name, values in query.items() if values}
        try:
            page_no, page_size = int(one.get("page_no", "1")), int(one.get("page_size", "10"))
            zone = self.window_zone or SIM_TZ
            start = _window_time(one["start_time"], zone) if "start_time" in one else None
            end = _window_time(one["end_time"], zone) if "end_time" in one else None
        except ValueError:
            return error("InvalidParameter", "page_no and page_size must be integers, start_time and end_time "
                                             "YYYYMMDDhhmmss")
        if page_no < 1 or not 1 <= page_size <= 100:
            return error("InvalidParameter", "page_no must be at least 1 and page_size 1 to 100")
        entries = [self._entry(sim, task) for task in sim.tasks_newest_first()
                   if (start is None or task.created_wall >= start) and (end is None or task.created_wall <= end)
                   and one.get("model_name", task.model) == task.model]
        entries = [e for e in entries if one.get("status", e["status"]) == e["status"]]
        page_size = min(page_size, self.page_cap or page_size)
        first = 0 if sim.config.list_ignores_page else (page_no - 1) * page_size
        return json_reply(200, {"request_id": str(uuid.uuid4()), "data": entries[first:first + page_size],
                                "total": len(entries), "total_page": math.ceil(len(entries) / page_size),
                                "page_no": page_no, "page_size": page_size})

    def _entry(self, sim: Any, task: Any) -> Dict[str, Any]:
        """A task as the batch query lists it: no prompt, no message, no video URL."""
        status, _, ends_at = sim.timeline(task)
        created = int(task.created_wall.timestamp() * 1000)
        done = status in ("completed", "failed")
        return {"task_id": task.task_id, "request_id": task.task_id, "status": self._word(sim, status),
                "model_name": task.model, "gmt_create": created, "start_time": created,
                "end_time": created + int(ends_at * 1000) if done else None, "region": "cn-beijing",
                "api_key_id": "1", "caller_uid": "1", "caller_parent_id": "1", "user_api_unique_key": "apikey:v1:1"}

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        from .server import GENERATION_FAILED_MESSAGE

        status, _, ends_at = sim.timeline(task)
        output: Dict[str, Any] = {"task_id": task.task_id, "task_status": self._word(sim, status),
                                  "submit_time": china_time(task.created_wall)}
        if status != "pending":
            output["scheduled_time"] = china_time(task.created_wall + timedelta(seconds=0.1 * sim.config.gen_seconds))
        if status in ("completed", "failed"):
            output["end_time"] = china_time(task.created_wall + timedelta(seconds=ends_at))
        if self.shows_orig_prompt:
            output["orig_prompt"] = task.prompt
        answer: Dict[str, Any] = {"request_id": str(uuid.uuid4()), "output": output}
        if status == "completed":
            output["video_url"] = sim.signed_url(task.task_id, origin)
            if self.shows_orig_prompt:
                output["actual_prompt"] = task.prompt
            answer["usage"] = {"video_duration": task.duration, "video_count": 1,
                               "SR": int(str(task.resolution).rstrip("P") or 720)}
        elif status == "failed":
            output.update(code=FAILED_CODE, message=GENERATION_FAILED_MESSAGE)
        return answer

    def _word(self, sim: Any, status: str) -> str:
        """``status`` in this API's words (or the ones the test configured, ``status_words``)."""
        word = STATUS_WORDS[status]
        return sim.config.status_words.get(word, word)

    def settings(self, sim: Any) -> Dict[str, str]:
        return {"PROVIDER": NAME, "DASHSCOPE_BASE_URL": sim.base_url,
                "DASHSCOPE_API_KEY": sim.config.api_key or "sk-any"}

    def job_price(self, sim: Any) -> int:
        return price(normalised({"prompt": "-"}))

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        if kind == "unauthorised":
            return error("InvalidApiKey", "Invalid API-key provided.")
        if kind in ("server", "server_in_200"):  # DashScope never says an error in an HTTP 200
            return error("InternalError", "An internal error has occured, please try again later or contact "
                                          "service support.")
        if kind == "rate_limited":
            return error("Throttling.RateQuota", "Requests rate limit exceeded, please try again later.")
        if kind == "in_200":  # an injected error code, answered with the HTTP status it comes with
            return error(str(details.get("code") or "InvalidParameter"), message or "The request is invalid.")
        if kind == "insufficient_balance":
            return error("Arrearage", "Access denied, please make sure your account is in good standing.",
                         self.arrearage_status)
        if kind == "bad_request":
            return error("InvalidParameter", message)
        return error("NotFound", f"Not found: {message}", 404)


PROTOCOL = WanProtocol()
