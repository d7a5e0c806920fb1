"""The simulator's MiniMax protocol (``ledger sim --protocol hailuo``): Hailuo v1 and H3 v2.

v1's answers carry ``base_resp: {status_code, status_msg}``, errors included, in an HTTP 200 (only
a server error is a 5xx); v2's carry none, and v2 says an error in its own envelope with an HTTP
status (``v2_error``) — except the faults tests inject, which come in the v1 form on every route.
v2: ``POST /v2/video_generation`` (a ``content`` list), ``GET /v2/query/video_generation/{id}``
(``{"task": {...}}``, the video in ``content.url``, a failure's reason in ``error{code, message}``)
and the list ``GET /v2/query/video_generation?page_num&page_size`` (``{"items": [...], "total":
N}``). v1: ``POST /v1/video_generation``, ``GET /v1/query/video_generation?task_id=`` (a
``file_id`` once done) and ``GET /v1/files/retrieve?file_id=`` (the ``download_url``); v1 tasks
are in no list. Each version knows only its own tasks: asked about the other's, it answers 2013.

Where the documentation is silent the simulator follows one reading, and a class attribute offers
the other (tests switch them): ``shows_prompt`` (False, as documented: task objects carry no
prompt; True: they do), ``newest_first`` (the list's order), ``policy_check`` ("input": "[policy-reject]" is refused
at the create with 1026 and nothing is made; "output": the task is made, billed and fails with 1027),
``failure_status`` (how a v2 task that fails for no policy reason ends: "failed" with ``error{code,
message}``, or "expired", the status of a task not run in its time, with no error object).
"""
from __future__ import annotations

import random
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

from .protocol import Reply, SimProtocol, json_reply

NAME = "hailuo"
V2_MODELS: Mapping[str, Mapping[str, Tuple[int, ...]]] = {"MiniMax-H3": {"768P": tuple(range(4, 16)),
                                                                        "2K": tuple(range(4, 16))}}
_V1 = {"768P": (6, 10), "1080P": (6,)}
V1_MODELS: Mapping[str, Mapping[str, Tuple[int, ...]]] = {"MiniMax-Hailuo-2.3": _V1, "MiniMax-Hailuo-2.3-Fast": _V1,
                                                          "MiniMax-Hailuo-02": _V1}
IMAGE_ONLY = frozenset({"MiniMax-Hailuo-2.3-Fast"})
RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9")
ADAPTIVE = "adaptive"  # the frame's shape: with a first frame, and only then
# What the account is charged, in fen: H3 per second, Hailuo 2.3 per video.
PER_SECOND = {"768P": 50, "2K": 80}
PER_VIDEO = {("768P", 6): 200, ("768P", 10): 400, ("1080P", 6): 350}
V2_WORDS = {"pending": "queued", "processing": "running", "completed": "succeeded", "failed": "failed"}
V1_WORDS = {"pending": "Queueing", "processing": "Processing", "completed": "Success", "failed": "Fail"}
SIZES = {"768P": (1366, 768), "1080P": (1920, 1080)}
INPUT_SENSITIVE = "输入内容涉及敏感内容 (input new_sensitive)"
OUTPUT_SENSITIVE = "生成视频涉及敏感内容 (output new_sensitive)"
OK = {"status_code": 0, "status_msg": "success"}
_V2_TASK = re.compile(r"^/v2/query/video_generation/([^/]+)$")
_FILE = re.compile(r"^/files/([^/]+)\.mp4$")


def reply(code: int, message: str, status: int = 200, **fields: Any) -> Reply:
    """An answer of this API: ``fields`` and its ``base_resp``."""
    return json_reply(status, {**fields, "base_resp": {"status_code": code, "status_msg": message}})


# v2 says an error in an envelope with an HTTP status, its code at the end of the message
# (platform.minimaxi.com video-generation-v2-create, error examples).
V2_ERRORS: Mapping[int, Tuple[int, str]] = {
    2013: (400, "bad_request_error"), 1004: (401, "authorized_error"), 1008: (402, "insufficient_balance_error"),
    1026: (422, "unprocessable_entity_error"), 1002: (429, "rate_limit_error"), 1000: (500, "server_error"),
}


def v2_error(code: int, message: str) -> Reply:
    """A v2 error: ``{"type": "error", "error": {"type", "message": "... (code)", "http_code"}, "request_id"}``."""
    status, kind = V2_ERRORS.get(code, (400, "bad_request_error"))
    return json_reply(status, {"type": "error", "error": {"type": kind, "message": f"{message} ({code})",
                                                          "http_code": str(status)},
                               "request_id": f"{random.getrandbits(128):032x}"})


def price(model: str, resolution: str, duration: int) -> int:
    """Fen for one video."""
    if model in V2_MODELS:
        return PER_SECOND[resolution] * duration
    return PER_VIDEO[(resolution, duration)]


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and urlsplit(value).scheme in ("http", "https")


def _choice(body: Mapping[str, Any], name: str, offered: Any, default: Any) -> Optional[str]:
    """Why ``body[name]`` is not one of ``offered``, or None."""
    value = body.get(name, default)
    if isinstance(value, bool) or value not in offered:
        return f"{name} must be one of {', '.join(map(str, offered))}, got {value!r}"
    return None


def validate_v2(body: Mapping[str, Any]) -> Optional[str]:
    """The first problem with a v2 create body, or None."""
    model = body.get("model")
    if model not in V2_MODELS:
        return f"model must be one of {', '.join(V2_MODELS)}, got {model!r}"
    content = body.get("content")
    items = content if isinstance(content, list) else []
    texts = [i for i in items if isinstance(i, dict) and i.get("type") == "text"]
    if len(texts) != 1 or not isinstance(texts[0].get("text"), str) or not texts[0]["text"].strip():
        return "content must hold exactly one non-empty text item"
    for item in items:
        if isinstance(item, dict) and item.get("type") == "image_url" and (
                item.get("role") != "first_frame" or not _is_url((item.get("image_url") or {}).get("url"))):
            return "an image_url item must have role first_frame and an http(s) image_url.url"
    framed = any(isinstance(item, dict) and item.get("type") == "image_url" for item in items)
    resolution = str(body.get("resolution", "768P"))
    # From text a ratio must be named and cannot be adaptive; from a frame it is adaptive (the default).
    return (_choice(body, "resolution", V2_MODELS[model], "768P")
            or _choice(body, "duration", V2_MODELS[model].get(resolution, ()), 6)
            or _choice(body, "ratio", (*RATIOS, ADAPTIVE) if framed else RATIOS, ADAPTIVE))


def validate_v1(body: Mapping[str, Any]) -> Optional[str]:
    """The first problem with a v1 create body, or None."""
    model = body.get("model")
    if model not in V1_MODELS:
        return f"model must be one of {', '.join(V1_MODELS)}, got {model!r}"
    image = body.get("first_frame_image")
    if image is not None and not _is_url(image):
        return "first_frame_image must be an http(s) URL"
    if model in IMAGE_ONLY and image is None:
        return f"{model} needs first_frame_image"
    prompt = body.get("prompt")
    if image is None and (not isinstance(prompt, str) or not prompt.strip()):
        return "prompt must be a non-empty string"
    if "prompt_optimizer" in body and not isinstance(body["prompt_optimizer"], bool):
        return "prompt_optimizer must be true or false"
    resolution = str(body.get("resolution", "768P"))
    return (_choice(body, "resolution", V1_MODELS[model], "768P")
            or _choice(body, "duration", V1_MODELS[model].get(resolution, ()), 6))


def _shown_ratio(body: Mapping[str, Any]) -> str:
    """The ratio a task shows: the one asked for, or for ``adaptive`` the frame's (the sample video's, 16:9)."""
    ratio = str(body.get("ratio") or ADAPTIVE)
    return "16:9" if ratio == ADAPTIVE else ratio


def _new_number() -> str:
    """An id like MiniMax's: a long decimal number."""
    return str(random.randrange(10 ** 14, 10 ** 15))


class HailuoProtocol(SimProtocol):
    """The MiniMax video APIs, as ``ledger sim --protocol hailuo`` speaks them."""

    name = NAME
    base_path = ""  # the base URL carries no version: paths say /v1/ or /v2/
    key_hint = "PROVIDER=hailuo, MINIMAX_BASE_URL={url} and MINIMAX_API_KEY={key}"
    routes = ("query", "retrieve")  # v1's task query and file retrieval
    # The documented task object (the v2 query and list pages, MiniMax-AI/cli VideoV2Task) has no
    # prompt: by default neither has the simulator's. True is the other, undocumented reading.
    shows_prompt = False
    newest_first = True
    policy_check = "input"
    failure_status = "failed"

    def new_id(self) -> str:
        return _new_number()

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        if method == "POST":
            return ("create", "") if path in ("/v1/video_generation", "/v2/video_generation") else (None, "")
        if path == "/v2/query/video_generation":
            return "tasks", ""
        if path == "/v1/query/video_generation":
            return "query", query.get("task_id", [""])[0]
        if path == "/v1/files/retrieve":
            return "retrieve", query.get("file_id", [""])[0]
        for name, pattern in (("task", _V2_TASK), ("file", _FILE)):
            match = pattern.match(path)
            if match:
                return name, unquote(match.group(1))
        return None, ""

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        """Each endpoint takes its own body: a ``content`` list is v2's, a ``prompt`` v1's."""
        if not isinstance(body, dict):
            return reply(2013, "invalid params, the body must be a JSON object"), False
        api = "v2" if "content" in body else "v1"
        refuse = v2_error if api == "v2" else reply
        problem = validate_v2(body) if api == "v2" else validate_v1(body)
        if problem:
            return refuse(2013, f"invalid params, {problem}"), False
        prompt, image = self._prompt_and_image(body, api)
        from .server import POLICY_TRIGGER

        if POLICY_TRIGGER in prompt.lower() and self.policy_check == "input":
            return refuse(1026, INPUT_SENSITIVE), False
        model, resolution = str(body["model"]), str(body.get("resolution", "768P"))
        duration = int(body.get("duration", 6))
        task = sim.record_task(prompt, price(model, resolution, duration), task_id, model=model, duration=duration,
                               resolution=resolution, image_url=image, is_pro=resolution in ("2K", "1080P"),
                               extra={"api": api, "ratio": _shown_ratio(body), "file_id": _new_number()})
        if task is None:
            return refuse(1008, "insufficient balance"), False
        if api == "v2":  # v2's answers carry no base_resp
            return json_reply(200, {"task_id": task.task_id}), True
        return reply(0, "success", task_id=task.task_id), True

    @staticmethod
    def _prompt_and_image(body: Mapping[str, Any], api: str) -> Tuple[str, str]:
        if api == "v1":
            return str(body.get("prompt") or ""), str(body.get("first_frame_image") or "")
        items = [i for i in body["content"] if isinstance(i, dict)]
        text = next(i["text"] for i in items if i.get("type") == "text")
        image = next((i["image_url"]["url"] for i in items if i.get("type") == "image_url"), "")
        return text, image

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        if route == "tasks":
            return self._list(sim, query, origin)
        if route == "retrieve":
            return self._retrieve(sim, arg, origin)
        task = sim.get_task(arg, poll=True)
        api = "v2" if route == "task" else "v1"
        if task is None or task.extra.get("api") != api:
            # v2: "a task_id outside this window returns invalid task_id" (the v2 query page)
            return v2_error(2013, "invalid task_id") if api == "v2" else reply(2013, f"invalid params, task {arg} "
                                                                                    f"not found")
        if api == "v1":
            return json_reply(200, self._v1(sim, task))
        return json_reply(200, {"task": self._v2(sim, task, origin)})

    def _list(self, sim: Any, query: Mapping[str, List[str]], origin: str) -> Reply:
        try:
            page, size = int(query.get("page_num", ["1"])[0]), int(query.get("page_size", ["10"])[0])
        except ValueError:
            return v2_error(2013, "invalid params, page_num and page_size must be integers")
        if page < 1 or not 1 <= size <= 100:
            return v2_error(2013, "invalid params, page_num >= 1 and 1 <= page_size <= 100")
        tasks = [t for t in sim.tasks_newest_first() if t.extra.get("api") == "v2"]
        tasks = tasks if self.newest_first else tasks[::-1]
        first = 0 if sim.config.list_ignores_page else (page - 1) * size
        views = [self._v2(sim, task, origin) for task in tasks[first:first + size]]
        return json_reply(200, {"items": views, "total": len(tasks)})

    def _retrieve(self, sim: Any, file_id: str, origin: str) -> Reply:
        task = sim.find_task(lambda t: t.extra.get("file_id") == file_id)
        if task is None or sim.timeline(task)[0] != "completed":
            return reply(2013, f"invalid params, file {file_id} not found")
        created = int(task.created_wall.timestamp())
        return reply(0, "success", file={"file_id": int(file_id), "bytes": 0, "created_at": created,
                                         "filename": "output.mp4", "purpose": "video_generation",
                                         "download_url": sim.signed_url(task.task_id, origin)})

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        """A v2 task object, or a v1 query's answer."""
        return self._v1(sim, task) if task.extra.get("api") == "v1" else self._v2(sim, task, origin)

    def _v2(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        status, _, ends_at = sim.timeline(task)
        created = int(task.created_wall.timestamp())
        ended = status in ("completed", "failed")
        view: Dict[str, Any] = {
            "id": task.task_id, "model": task.model, "status": self._word(sim, V2_WORDS[status]),
            "created_at": created, "updated_at": created + round(ends_at) if ended else created,
            "duration": task.duration, "resolution": task.resolution, "ratio": task.extra.get("ratio"),
            "task_type": "generation", "modality": "video",
            # seconds billed, known once the video is made (MiniMax-AI/cli src/types/api.ts VideoV2Task.usage)
            "usage": {"total_seconds": task.duration if status == "completed" else 0, "input_seconds": 0,
                      "output_seconds": task.duration if status == "completed" else 0,
                      "input_image_count": 1 if task.image_url else 0},
        }
        if self.shows_prompt:
            view["prompt"] = task.prompt
        if status == "completed":
            view["content"] = {"url": sim.signed_url(task.task_id, origin)}
        if status == "failed" and task.outcome == "error" and self.failure_status == "expired":
            view["status"] = "expired"  # not run in its time: the status says it all, no error object
        elif status == "failed":  # a failed task says why in error{code, message}, the code a string
            view["error"] = {"code": "1027" if task.outcome == "policy" else "1000", "message": self._failure(task)}
        return view

    def _v1(self, sim: Any, task: Any) -> Dict[str, Any]:
        status, _, _ = sim.timeline(task)
        word = V1_WORDS[status]
        if status == "pending" and time.monotonic() - task.created_mono < 0.05 * sim.config.gen_seconds:
            word = "Preparing"
        width, height = SIZES[task.resolution] if status == "completed" else (0, 0)
        base = {"status_code": 1027, "status_msg": OUTPUT_SENSITIVE} if status == "failed" and \
            task.outcome == "policy" else OK
        return {"task_id": task.task_id, "status": self._word(sim, word),
                "file_id": task.extra["file_id"] if status == "completed" else "",
                "video_width": width, "video_height": height, "base_resp": base}

    @staticmethod
    def _word(sim: Any, word: str) -> str:
        """The status word, or the one ``SimConfig.status_words`` says instead (an unknown one)."""
        return str(sim.config.status_words.get(word, word))

    @staticmethod
    def _failure(task: Any) -> str:
        from .server import GENERATION_FAILED_MESSAGE

        return OUTPUT_SENSITIVE if task.outcome == "policy" else GENERATION_FAILED_MESSAGE

    def settings(self, sim: Any) -> Dict[str, str]:
        return {"PROVIDER": NAME, "MINIMAX_BASE_URL": sim.base_url,
                "MINIMAX_API_KEY": sim.config.api_key or "sk-api-any"}

    def job_price(self, sim: Any) -> int:
        return price("MiniMax-H3", "768P", 6)

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        if kind == "no_route":
            return Reply(404, b"404 page not found", content_type="text/plain; charset=utf-8")
        if kind == "unauthorised":  # the key it got, echoed: clients must mask it
            return reply(1004, f"login fail: Please carry the API secret key in the 'Authorization' field of the "
                               f"request header ({message})")
        if kind == "server":
            return reply(1000, "unknown error", status=500)
        if kind == "server_in_200":
            return reply(1013, "internal service error")
        if kind == "rate_limited":
            return reply(1002, "rate limit exceeded (RPM)")
        if kind == "insufficient_balance":
            return reply(1008, "insufficient balance")
        if kind == "in_200":  # any documented (or undocumented) code
            return reply(int(details.get("code") or 2013), message or "invalid params")
        return reply(2013, f"invalid params, {message}")


PROTOCOL = HailuoProtocol()
