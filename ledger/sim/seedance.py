"""The simulator's Volcengine Ark Seedance protocol (``ledger sim --protocol seedance``).

``/api/v3/contents/generations/tasks``: a create answers ``{"id": "cgt-…"}``; task objects carry
``status`` (queued, running, succeeded, failed), ``content.video_url``, ``usage`` in output tokens,
the ``seed``, unix timestamps and no progress; the list pages by ``page_num``/``page_size`` and
shows no prompt; errors are ``{"error": {"code", "message", "param", "type"}}`` with an HTTP
status. Billing as Ark bills: only successful tasks, by the tokens of their frames (24 fps plus
the first frame, 121 for 5 s). A task is charged its estimate when made and settled when first
seen finished: to its usage when it succeeded, to nothing when it failed. Task records are kept
``retention`` seconds (7 days: BytePlus's list "only the last 7 days"), then answer 404 and leave the
list; a video ``video_retention`` seconds after it was made (24 h): past that the task still
answers succeeded, with its URL refused (403, as an expired signature) — or, with
``clears_url=True``, with no URL at all. Tests lower both.

Where the facts are open, ``SeedanceProtocol`` takes the other reading: ``list_shows_seed=False``
(list items without their seed), ``newest_first=False`` (the list oldest first) and
``policy="input"`` (a "[policy-reject]" prompt refused at create instead of failing its output).
"""
from __future__ import annotations

import json
import random
import re
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote, urlsplit

from .protocol import Reply, SimProtocol, json_reply

NAME = "seedance"
BASE = "/api/v3"
TASKS = f"{BASE}/contents/generations/tasks"
# What each model takes: durations in seconds and output resolutions (the model-capabilities table
# of ByteDance's Seedance tutorial), and the models that take service_tier flex (offline inference).
MODELS: Mapping[str, Tuple[range, Tuple[str, ...]]] = {
    "doubao-seedance-2-0-260128": (range(4, 16), ("480p", "720p", "1080p")),
    "doubao-seedance-1-5-pro-251215": (range(4, 13), ("480p", "720p", "1080p")),
    "doubao-seedance-2-0-fast-260128": (range(4, 16), ("480p", "720p")),
    "doubao-seedance-2-0-mini-260615": (range(4, 16), ("480p", "720p")),
    "doubao-seedance-2-5-260628": (range(4, 31), ("480p", "720p", "1080p")),
}
FLEX_MODELS = ("doubao-seedance-1-5-pro-251215",)
ADAPTIVE_ONLY = ("doubao-seedance-2-5-260628",)  # with a first frame, ratio adaptive only
# Fen per million output tokens: (with audio, without audio).
PRICES: Mapping[str, Tuple[int, int]] = {
    "doubao-seedance-2-0-260128": (4600, 4600), "doubao-seedance-1-5-pro-251215": (1600, 800),
    "doubao-seedance-2-0-fast-260128": (3700, 3700), "doubao-seedance-2-0-mini-260615": (2300, 2300),
    "doubao-seedance-2-5-260628": (7000, 7000),
}
PIXELS: Mapping[str, Mapping[str, Tuple[int, int]]] = {
    "480p": {"16:9": (864, 480), "4:3": (736, 544), "1:1": (640, 640), "3:4": (544, 736), "9:16": (480, 864),
             "21:9": (960, 416)},
    "720p": {"16:9": (1248, 704), "4:3": (1120, 832), "1:1": (960, 960), "3:4": (832, 1120), "9:16": (704, 1248),
             "21:9": (1504, 640)},
    "1080p": {"16:9": (1920, 1088), "4:3": (1664, 1248), "1:1": (1440, 1440), "3:4": (1248, 1664),
              "9:16": (1088, 1920), "21:9": (2176, 928)},
}
RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
WORDS = {"pending": "queued", "processing": "running", "completed": "succeeded", "failed": "failed"}
# The documented HTTP status of each error code (an injected "envelope" fault answers with it).
STATUS_OF: Mapping[str, int] = {
    "AuthenticationError": 401, "AccountOverdueError": 403, "AccessDenied": 403,
    "RateLimitExceeded.EndpointRPMExceeded": 429, "QuotaExceeded": 429, "ServerOverloaded": 429,
    "InvalidParameter": 400, "MissingParameter": 400, "ModelNotOpen": 404, "InvalidEndpointOrModel.NotFound": 404,
    "InputTextSensitiveContentDetected": 400, "InputImageSensitiveContentDetected": 400,
    "InternalServiceError": 500, "ResourceNotFound": 404,
}
TEXT_REFUSED = "The request failed because the input text may contain sensitive information."
IMAGE_REFUSED = "The request failed because the input image may contain sensitive information."
_TASK = re.compile(rf"^{TASKS}/([^/]+)$")
_FILE = re.compile(r"^/files/([^/]+)\.mp4$")


def error(code: str, message: str, param: str = "", status: Optional[int] = None) -> Reply:
    """An Ark error answer, with the code's HTTP status."""
    return json_reply(status or STATUS_OF.get(code, 400),
                      {"error": {"code": code, "message": message, "param": param, "type": "BadRequest"}})


def tokens(resolution: str, ratio: str, seconds: int) -> int:
    """The output tokens of a video as the API counts them: every frame at 24 fps and the first one."""
    width, height = PIXELS[resolution]["16:9" if ratio == "adaptive" else ratio]
    return width * height * (24 * seconds + 1) // 1024


def fen(model: str, count: int, audio: bool, tier: str) -> int:
    """The price of ``count`` output tokens, rounded half up."""
    rate = PRICES[model][0 if audio else 1] // (2 if tier == "flex" else 1)
    return (count * rate + 500_000) // 1_000_000


def estimate(body: Mapping[str, Any]) -> int:
    """What a create is charged until the task is settled: its frames at 24 fps (the largest
    picture of its resolution for ``adaptive``)."""
    sizes = PIXELS[body["resolution"]]
    width, height = sizes.get(body["ratio"]) or max(sizes.values(), key=lambda wh: wh[0] * wh[1])
    count = width * height * 24 * body["duration"] // 1024
    return fen(body["model"], count, body["generate_audio"], body["service_tier"])


def with_defaults(body: Mapping[str, Any]) -> Dict[str, Any]:
    """The create body with the API's defaults filled in."""
    return {"resolution": "720p", "ratio": "16:9", "duration": 5, "generate_audio": False, "service_tier": "default",
            "camera_fixed": False, "watermark": False, "seed": -1, **body}


def validate(body: Any) -> Optional[Tuple[str, str, str]]:
    """The first problem with a create body as (code, param, message), or None."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        return "MissingParameter", "content", "The parameter `content` specified in the request is missing."
    if body.get("model") not in MODELS:
        return "InvalidEndpointOrModel.NotFound", "model", f"The model {body.get('model')!r} does not exist."
    texts = [item.get("text") for item in body["content"] if isinstance(item, dict) and item.get("type") == "text"]
    if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0].strip():
        return "InvalidParameter", "content", "The content must hold one non-empty text item."
    durations, sizes = MODELS[body["model"]]
    checks = (("duration", lambda v: type(v) is int and v in durations), ("resolution", lambda v: v in sizes),
              ("ratio", lambda v: v in RATIOS), ("service_tier", lambda v: v == "default" or (v == "flex" and body["model"] in FLEX_MODELS)),
              ("seed", lambda v: type(v) is int and -1 <= v <= 2 ** 32 - 1))
    checks += tuple((name, lambda v: isinstance(v, bool)) for name in ("generate_audio", "camera_fixed", "watermark"))
    for name, ok in checks:
        if name in body and not ok(body[name]):
            return "InvalidParameter", name, f"The parameter `{name}` specified in the request is not valid: {body[name]!r}."
    return _image_problem(body)


def _image_problem(body: Mapping[str, Any]) -> Optional[Tuple[str, str, str]]:
    images = [item for item in body["content"] if isinstance(item, dict) and item.get("type") == "image_url"]
    roles = [item.get("role", "first_frame") for item in images]
    for item in images:
        url = (item.get("image_url") or {}).get("url") if isinstance(item.get("image_url"), dict) else None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or \
                roles not in ([], ["first_frame"], ["first_frame", "last_frame"]):
            return "InvalidParameter", "content", "A first_frame image_url (and a last_frame one) with an http(s) " \
                                                  "url is taken."
    if body.get("ratio") == "adaptive" and not images:
        return "InvalidParameter", "ratio", "The ratio adaptive is only supported with an image."
    if images and body["model"] in ADAPTIVE_ONLY and body.get("ratio", "adaptive") != "adaptive":
        return "InvalidParameter", "ratio", f"The parameter `ratio` specified in the request is not valid: " \
                                            f"{body['model']} with a first frame supports only adaptive."
    return None


class SeedanceProtocol(SimProtocol):
    """The Ark Seedance format, as ``ledger sim --protocol seedance`` speaks it."""

    name = NAME
    base_path = BASE
    key_hint = "PROVIDER=seedance, ARK_BASE_URL={url} and ARK_API_KEY={key}"
    retention = 7 * 86400.0  # seconds a task record is kept; a test lowers it
    video_retention = 86400.0  # seconds a finished task's video is kept; a test lowers it

    def __init__(self, *, list_shows_seed: bool = True, newest_first: bool = True, policy: str = "output",
                 clears_url: bool = False) -> None:
        self.list_shows_seed = list_shows_seed
        self.newest_first = newest_first
        self.policy = policy
        self.clears_url = clears_url
        self._random = random.Random()

    def new_id(self) -> str:
        return f"cgt-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:10]}"

    def route(self, method: str, path: str, query: Mapping[str, List[str]]) -> Tuple[Optional[str], str]:
        if path == TASKS:
            return ("create" if method == "POST" else "tasks"), ""
        for name, pattern in (("task", _TASK), ("file", _FILE)):
            match = pattern.match(path)
            if match and method == "GET":
                return name, unquote(match.group(1))
        return None, ""

    def create(self, sim: Any, body: Any, task_id: Optional[str]) -> Tuple[Reply, bool]:
        if isinstance(body, dict):  # the official SDK sends every keyword not given as null: not set
            body = {key: value for key, value in body.items() if value is not None}
        problem = validate(body) or self._refusal(body)
        if problem:
            code, param, message = problem
            return error(code, message, param), False
        body = with_defaults(body)
        seed = body["seed"] if body["seed"] != -1 else self._random.randrange(2 ** 32 - 1)
        prompt = next(item["text"] for item in body["content"] if item.get("type") == "text")
        image = next((item["image_url"]["url"] for item in body["content"] if item.get("type") == "image_url"), "")
        task = sim.record_task(prompt, estimate(body), task_id, model=body["model"], duration=body["duration"],
                               resolution=body["resolution"], image_url=image,
                               is_pro=body["model"] == "doubao-seedance-1-5-pro-251215",
                               extra={"seed": seed, "ratio": body["ratio"], "audio": body["generate_audio"],
                                      "tier": body["service_tier"]})
        if task is None:
            return error("AccountOverdueError", "The request failed because your account has an overdue balance."), False
        return json_reply(200, {"id": task.task_id}), True

    def _refusal(self, body: Mapping[str, Any]) -> Optional[Tuple[str, str, str]]:
        """The input check, when the content policy looks at the request (``policy="input"``)."""
        from .server import POLICY_TRIGGER

        if self.policy != "input":
            return None
        said = json.dumps(body["content"], ensure_ascii=False).lower()
        if POLICY_TRIGGER not in said:
            return None
        text = any(POLICY_TRIGGER in str(item.get("text", "")).lower() for item in body["content"])
        return (("InputTextSensitiveContentDetected", "content", TEXT_REFUSED) if text else
                ("InputImageSensitiveContentDetected", "content", IMAGE_REFUSED))

    def answer(self, sim: Any, route: str, arg: str, query: Mapping[str, List[str]], origin: str) -> Reply:
        if route == "task":
            task = sim.get_task(arg, poll=True)
            if task is None or self._gone(task):
                return error("ResourceNotFound", f"The specified task {arg} is not found.", "id")
            return json_reply(200, self.view(sim, task, origin))
        if route == "tasks":
            return self._page(sim, query, origin)
        return self.error("no_route", f"GET {route}")

    def _gone(self, task: Any) -> bool:
        return time.monotonic() - task.created_mono > self.retention

    def _page(self, sim: Any, query: Mapping[str, List[str]], origin: str) -> Reply:
        try:
            number, size = int(query.get("page_num", ["1"])[0]), int(query.get("page_size", ["10"])[0])
        except ValueError:
            return error("InvalidParameter", "page_num and page_size must be integers.", "page_num")
        if not (1 <= number <= 500 and 1 <= size <= 500):
            return error("InvalidParameter", "page_num and page_size must be within [1, 500].", "page_size")
        tasks = [t for t in sim.tasks_newest_first() if not self._gone(t)]
        items = [self._item(sim, task, origin) for task in (tasks if self.newest_first else reversed(tasks))]
        wanted = {key: query[f"filter.{key}"][0] for key in ("status", "model") if f"filter.{key}" in query}
        items = [item for item in items if all(item.get(key) == value for key, value in wanted.items())]
        start = 0 if sim.config.list_ignores_page else (number - 1) * size
        return json_reply(200, {"items": items[start:start + size], "total": len(items)})

    def _item(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        item = self.view(sim, task, origin)
        if not self.list_shows_seed:
            item.pop("seed")
        return item

    def view(self, sim: Any, task: Any, origin: str) -> Dict[str, Any]:
        status, _, ends_at = sim.timeline(task)
        self._settle(sim, task, status)
        created = int(task.created_wall.timestamp())
        extra = task.extra
        said = WORDS[status]
        view: Dict[str, Any] = {
            "id": task.task_id, "model": task.model, "status": sim.config.status_words.get(said, said),
            "error": None, "created_at": created,
            "updated_at": created + round(ends_at) if status in ("completed", "failed") else created,
            "seed": extra["seed"], "resolution": task.resolution,
            "ratio": "16:9" if extra["ratio"] == "adaptive" else extra["ratio"], "duration": task.duration,
            "framespersecond": 24, "generate_audio": extra["audio"], "service_tier": extra["tier"],
            "execution_expires_after": 172800,
        }
        if status == "completed":
            count = tokens(task.resolution, extra["ratio"], task.duration)
            made = task.created_wall.timestamp() + ends_at
            expires = int(made + self.video_retention)
            gone = sim.wall_now() >= expires
            view["content"] = {"video_url": "" if gone and self.clears_url else
                               sim.signed_url(task.task_id, origin, expires)}
            view["usage"] = {"completion_tokens": count, "total_tokens": count}
        elif status == "failed":
            view["error"] = self._failure(task)
        return view

    def _settle(self, sim: Any, task: Any, status: str) -> None:
        """Bill a finished task what Ark bills: its usage when it succeeded, nothing when it failed."""
        if status not in ("completed", "failed"):
            return
        extra = task.extra
        owed = fen(task.model, tokens(task.resolution, extra["ratio"], task.duration), extra["audio"],
                   extra["tier"]) if status == "completed" else 0
        if task.cost != owed:
            sim.adjust_charge(task, owed)

    @staticmethod
    def _failure(task: Any) -> Dict[str, str]:
        from .server import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE

        if task.outcome == "policy":
            return {"code": "OutputVideoSensitiveContentDetected", "message": POLICY_MESSAGE}
        return {"code": "InternalServiceError", "message": GENERATION_FAILED_MESSAGE}

    def settings(self, sim: Any) -> Dict[str, str]:
        return {"PROVIDER": NAME, "ARK_BASE_URL": sim.base_url, "ARK_API_KEY": sim.config.api_key or "ark-any-key"}

    def job_price(self, sim: Any) -> int:
        """What one default job (2.0, 720p, 16:9, 5 s, silent) is billed once it succeeded."""
        return fen("doubao-seedance-2-0-260128", tokens("720p", "16:9", 5), False, "default")

    def error(self, kind: str, message: str, **details: Any) -> Reply:
        if kind == "no_route":
            return error("InvalidEndpointOrModel.NotFound", f"The requested resource was not found ({message}).")
        if kind in ("server", "server_in_200"):  # Ark has no errors inside an HTTP 200
            return error("InternalServiceError", "The service encountered an unexpected internal error.")
        if kind == "rate_limited":
            return error("RateLimitExceeded.EndpointRPMExceeded",
                         "The request has exceeded the rate limit (requests per minute) of this endpoint.")
        if kind == "unauthorised":
            return error("AuthenticationError", f"The API key or AK/SK in the request is missing or invalid ({message}).")
        if kind == "insufficient_balance":
            return error("AccountOverdueError", "The request failed because your account has an overdue balance.")
        if kind == "in_200":  # an injected error code: answered with its own HTTP status
            code = str(details.get("code") or "InvalidParameter")
            return error(code, message or code)
        if kind == "bad_request":
            return error("InvalidParameter", message)
        return error("ResourceNotFound", message)


PROTOCOL = SeedanceProtocol()
