"""MiniMax Hailuo (海螺): the v2 API of MiniMax-H3 and the v1 API of MiniMax-Hailuo-2.3 / 2.3-Fast / 02.

Sources (read 2026-12-07; the contract fixtures in ``tests/contracts/hailuo`` hold the exchanges):
MiniMax's API reference (platform.minimaxi.com / platform.minimax.io: video-generation-v2-create,
-v2-query, -v2-list, errorcode), MiniMax's own CLI (github MiniMax-AI/cli: src/video/v2.ts,
src/types/api.ts, src/commands/video/task-list.ts) and MCP server (``minimax-mcp`` 0.0.19 on PyPI).
``Authorization: Bearer``; the base URL (``https://api.minimaxi.com``, international
``https://api.minimax.io``) has no version: paths carry ``/v1/...`` or ``/v2/...``.

* v2 (H3): ``POST /v2/video_generation`` with a ``content`` list (answer ``{task_id}``), ``GET
  /v2/query/video_generation/{id}`` (``{"task": {...}}``: status ``queued|running|succeeded|failed|
  cancelled|expired``, the video in ``content.url``, a failure's reason in ``error{code, message}``),
  and the task list ``GET /v2/query/video_generation?page_num&page_size`` answering ``{"items":
  [...], "total": N}`` — what the pre-flight, batch status and the search for a lost create read.
  Tasks are kept 7 days. v2 answers carry no ``base_resp``; an error comes in an envelope with its
  HTTP status, ``{"type": "error", "error": {"type", "message": "... (2013)", "http_code"}}``.
* v1 (Hailuo): ``POST /v1/video_generation``, ``GET /v1/query/video_generation?task_id=`` (a
  ``file_id`` once done), then ``GET /v1/files/retrieve?file_id=`` for the download URL; every
  answer carries ``base_resp: {status_code, status_msg}``, usually inside an HTTP 200. There is no
  v1 task list: a lost v1 create cannot be looked up, and its job stays unresolved.

No create takes a client reference, nor is there a balance or price endpoint; a generation is
billed when its create is accepted. Where the facts are inferred ([I]) the client works under both
readings: the list may or may not show prompts (then a lost create stays unresolved), and may be
newest or oldest first (it is read newest first either way).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Type, Union
from urllib.parse import quote

import requests

from ..client import (past_retention, ApiClient, RemoteTask, TaskSearch, _Busy, _int_or_none, _snippet, parse_timestamp,
                      search_pages, task_id_problem)
from ..errors import (ApiError, AuthError, BadParameters, ConfigError, ContentRefused, InsufficientBalance,
                      InvalidTaskId, RateLimited, TaskNotFound, TransientError)
from ..money import rate as money_rate
from ..redact import mask_key
from ..settings import Option, Settings, price_setting, secret_setting, url_setting
from .base import Mapped, Mismatch, Registration, Request, TaskPage

log = logging.getLogger(__name__)

NAME = "hailuo"
CURRENCY = "CNY"
# MiniMax bills a generation when its create is accepted — the create is what answers 1008 when the
# balance cannot pay, and only a queued task cancelled with DELETE /v2/video_generation/{id} goes
# unbilled ([I] a copy of the v2 reference) — so an unanswered create may have been paid for.
BILLS_AT_CREATE = True
H3, HAILUO, HAILUO_FAST = "MiniMax-H3", "MiniMax-Hailuo-2.3", "MiniMax-Hailuo-2.3-Fast"
HAILUO_02 = "MiniMax-Hailuo-02"
ADAPTIVE = "adaptive"  # the v2 ratio of a video made from a first frame: the frame's own shape


@dataclass(frozen=True)
class Model:
    """What one MiniMax model takes: its API version, its durations by resolution (seconds), its
    default duration, the resolution of a normal and of a Pro (``is_pro`` / ``quality: high``)
    request, its aspect ratios (v2 only), and whether it needs a first frame."""

    name: str
    api: str  # "v1" or "v2": the paths it is created and queried on
    durations: Mapping[str, Tuple[int, ...]]  # resolution -> the seconds it is offered for
    default_duration: int
    normal: str
    pro: str
    ratios: Tuple[str, ...] = ()
    needs_image: bool = False
    per_second: bool = False  # priced per second of video (else per video of each length)


# v1: 6 or 10 s, 768P or 1080P (minimax-mcp 0.0.19 minimax_mcp/server.py, generate_video: "duration
# ... Values can be 6 and 10", "resolution ... ["768P", "1080P"]"); [I] 1080P for 6 s only, as
# third-party notes on the same tool say (the docstring does not pair them).
_V1_DURATIONS = {"768P": (6, 10), "1080P": (6,)}
_H3_SECONDS = tuple(range(4, 16))  # "an integer from 4 to 15 seconds" (MiniMax-AI/cli src/video/v2.ts)
MODELS: Mapping[str, Model] = {
    # v2 (platform.minimaxi.com video-generation-v2-create): model "MiniMax-H3", resolution 768P or
    # 2K, 4-15 s; ratio 16:9, 9:16, 1:1, 4:3, 3:4 or 21:9 from text (a text-only create must name
    # one), "adaptive" with a first frame: the frame's shape (MiniMax-AI/cli src/video/v2.ts
    # VIDEO_V2_RATIOS and buildVideoV2Request). MiniMax's CLI sends 2K only; the API docs list both.
    H3: Model(H3, "v2", {"768P": _H3_SECONDS, "2K": _H3_SECONDS}, 6, "768P", "2K",
              ratios=("16:9", "9:16", "1:1", "4:3", "3:4", "21:9"), per_second=True),
    HAILUO: Model(HAILUO, "v1", _V1_DURATIONS, 6, "768P", "1080P"),
    # [I] image-to-video only, as the adapters that call it say.
    HAILUO_FAST: Model(HAILUO_FAST, "v1", _V1_DURATIONS, 6, "768P", "1080P", needs_image=True),
    # The model before 2.3, on v1 with the same lengths (minimax-mcp 0.0.19 server.py generate_video).
    HAILUO_02: Model(HAILUO_02, "v1", _V1_DURATIONS, 6, "768P", "1080P"),
}
DEFAULT_MODEL = H3
# The storyboard's orientation, as the v2 ratio.
ORIENTATIONS = {"horizontal": "16:9", "vertical": "9:16"}

# Every status word of both APIs (v1 says them capitalised; compared lower-cased), as the ledger's
# four. An unknown word is logged once and taken as not finished.
STATUSES: Mapping[str, str] = {
    "queued": "pending", "preparing": "pending", "queueing": "pending",
    "running": "processing", "processing": "processing",
    "succeeded": "completed", "success": "completed",
    "failed": "failed", "fail": "failed", "cancelled": "failed",
    # v2 only: a task not run within its time on the service ends ``expired`` (MiniMax-AI/cli
    # src/types/api.ts VideoV2Task.status); it never finishes, so it is a failure, not a wait.
    "expired": "failed",
}

# ``base_resp.status_code`` → the outcome. MiniMax's own codes are all ≥ 1000, so the HTTP statuses
# a proxy or gateway in front of it may answer share the table. On a look-up by id (a task query, a
# file retrieval), 2013 and HTTP 404 mean the API does not know the id (``TaskNotFound``), and 1026
# / 1027 are the task's own verdict (it failed with that message), not an error of the call.
ERRORS: Mapping[int, Type[ApiError]] = {
    1000: TransientError,  # unknown error
    1001: TransientError,  # timeout
    1002: RateLimited,  # rate or concurrency limit
    1004: AuthError,  # the key was refused
    1008: InsufficientBalance,
    1013: TransientError,  # internal service error
    1026: ContentRefused,  # the input is sensitive: refused, nothing created
    1027: ContentRefused,  # the output is sensitive: the task failed
    1024: TransientError,  # internal error
    1033: TransientError,  # system error
    2013: BadParameters,
    2038: AuthError,  # the account has not completed real-name verification: no key of it can create
    2049: AuthError,  # invalid API key (MiniMax-AI/cli skill/references/h3-video.md, with 1004)
    401: AuthError,
    402: InsufficientBalance,  # v2 answers 1008 with HTTP 402
    403: AuthError,
    429: RateLimited,
}
# Account errors: a key of this account cannot create until its owner acts on the platform. Said
# in one line, like a refused key. 2038: minimax-mcp 0.0.19 minimax_mcp/client.py maps it to
# "should complete real-name verification on the open-platform".
ACCOUNT_ERRORS: Mapping[int, str] = {
    2038: "its MiniMax account has not completed real-name verification: complete it at "
          "https://platform.minimaxi.com/user-center/basic-information",
}
TASK_VERDICTS = frozenset({1026, 1027})
NOT_FOUND = frozenset({2013, 404})
LIST_LIMIT = 100  # the page size the list is read in
# The list's array: ``{"items": [task, ...], "total": N}`` (MiniMax's own CLI, MiniMax-AI/cli
# src/commands/video/task-list.ts, reads ``response.items``; no source shows another name).
LIST_FIELD = "items"
V1_NO_LIST = "the MiniMax v1 API has no task list to look it up in"
# "Only tasks from the last 7 days can be queried ... a task_id outside this window returns invalid
# task_id" (platform.minimaxi.com video-generation-v2-query).
RETENTION = 7 * 86400.0
_ENVELOPE_CODE = re.compile(r"\((\d{3,5})\)\s*$")  # "invalid params (2013)"
_LOOKUPS = ("/v2/query/video_generation/", "/v1/query/video_generation", "/v1/files/retrieve")

_unknown_words: Set[str] = set()
_unknown_lock = threading.Lock()


# --- the storyboard's fields → parameters ---------------------------------------------------------


def _offered(values: Any) -> str:
    return ", ".join(map(repr, values))


class HailuoRules:
    """Storyboard fields → a v1 or v2 create. ``model`` picks the model (default MiniMax-H3);
    ``duration_seconds`` the seconds; ``resolution`` an orientation (the H3 ratio; a v1 model makes
    16:9 from text, a first frame's shape otherwise), an H3 ratio, or a resolution itself;
    ``is_pro`` / ``quality: high`` the model's higher resolution (H3 2K, Hailuo 2.3 1080P);
    ``image_url`` the first frame. The ``"hailuo"`` block's ``resolution`` and ``ratio`` are the
    most specific and win over those; ``prompt_optimizer`` goes to v1 models."""

    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        model = MODELS.get(request.model or DEFAULT_MODEL)
        if model is None:
            return [Mismatch("model", f"model {request.model!r} is not offered by the {NAME} provider; use one of "
                                      f"{_offered(MODELS)}")]
        resolution, problems = _resolution(model, request)
        duration = model.default_duration if request.duration is None else request.duration
        problems += _duration_problems(model, resolution, duration)
        problems += _option_problems(model, request)
        if model.needs_image and not request.image_url:
            problems.append(Mismatch("image_url", f"{model.name} makes videos from a first frame only: give an "
                                                  f"image_url, or use {HAILUO}"))
        if problems:
            return problems
        params = _params(model, request, resolution, duration)
        return Mapped(params, resolution == model.pro, self.price_key(params))

    def price_key(self, params: Mapping[str, Any]) -> str:
        """``model@resolution:seconds``: what both price lists need."""
        return f"{params['model']}@{params['resolution']}:{params['duration']}"


def _params(model: Model, request: Request, resolution: str, duration: int) -> Dict[str, Any]:
    """Everything the create sends (it is built from these alone), with ``"provider"``."""
    params: Dict[str, Any] = {"provider": NAME, "model": model.name, "prompt": request.prompt, "duration": duration,
                              "resolution": resolution}
    ratio = _ratio(model, request)
    if ratio is not None:
        params["ratio"] = ratio
    if request.image_url:
        params["image_url"] = request.image_url
    if "prompt_optimizer" in request.options:
        params["prompt_optimizer"] = request.options["prompt_optimizer"]
    return params


def _resolution(model: Model, request: Request) -> Tuple[str, List[Mismatch]]:
    """The resolution to send — the block's, else one the neutral ``resolution`` names, else the
    model's Pro or normal one — and the values ``model`` does not take."""
    wanted, block = request.resolution, request.options.get("resolution")
    problems: List[Mismatch] = []
    if wanted not in _shapes(model, request):
        hint = "" if model.ratios or request.image_url else " ('vertical' only with an image_url: its shape)"
        problems.append(Mismatch("resolution", f"resolution {wanted!r} is not offered by {model.name} on the {NAME} "
                                               f"provider; use one of {_offered(_shapes(model, request))}{hint}"))
    if block is not None and block not in model.durations:
        problems.append(Mismatch(NAME, f"{NAME}.resolution {block!r} is not offered by {model.name}; use one of "
                                       f"{_offered(model.durations)}"))
    if block is not None:
        return block, problems
    if wanted in model.durations:
        return wanted, problems
    return (model.pro if request.is_pro or request.quality == "high" else model.normal), problems


def _ratio(model: Model, request: Request) -> Optional[str]:
    """The v2 ratio — the block's, else the neutral ``resolution``'s orientation or ratio, else 16:9;
    None for a v1 model, which takes none (its block ``ratio`` is reported by ``_option_problems``)."""
    if not model.ratios:
        return None
    if request.image_url:
        return ADAPTIVE
    wanted = request.resolution
    return request.options.get("ratio") or ORIENTATIONS.get(wanted) or \
        (wanted if wanted in model.ratios else ORIENTATIONS["horizontal"])


def _shapes(model: Model, request: Request) -> List[str]:
    """The neutral ``resolution`` values ``model`` takes for ``request``."""
    if model.ratios and not request.image_url:
        return [*ORIENTATIONS, *model.ratios, *model.durations]
    if model.ratios:  # from a first frame, the frame's shape
        return [*ORIENTATIONS, *model.durations]
    # From text a v1 model makes 16:9; from a first frame, the frame's shape.
    shapes = ["horizontal", "vertical"] if request.image_url else ["horizontal"]
    return [*shapes, *model.durations]


def _duration_problems(model: Model, resolution: str, duration: int) -> List[Mismatch]:
    offered = model.durations.get(resolution)
    if offered is None or duration in offered:
        return []  # an unknown resolution is reported on its own
    elsewhere = [r for r, seconds in model.durations.items() if duration in seconds]
    hint = f" ({duration}s is offered at {', '.join(elsewhere)})" if elsewhere else ""
    return [Mismatch("duration_seconds", f"duration {duration}s is not offered by {model.name} at {resolution} on "
                                         f"the {NAME} provider; use one of {', '.join(map(str, offered))}{hint}")]


def _option_problems(model: Model, request: Request) -> List[Mismatch]:
    """The block's keys ``model`` does not take (the schema already refused unknown keys)."""
    problems: List[Mismatch] = []
    if "ratio" in request.options:
        if not model.ratios:
            problems.append(Mismatch(NAME, f"{NAME}.ratio is not taken by {model.name} (a v1 model); drop it"))
        elif request.image_url:
            problems.append(Mismatch(NAME, f"{NAME}.ratio is not taken by {model.name} with a first frame (the "
                                           f"video takes the frame's shape); drop it"))
        elif request.options["ratio"] not in model.ratios:
            problems.append(Mismatch(NAME, f"{NAME}.ratio {request.options['ratio']!r} is not offered by "
                                           f"{model.name}; use one of {_offered(model.ratios)}"))
    if "prompt_optimizer" in request.options and model.api != "v1":
        v1 = [m.name for m in MODELS.values() if m.api == "v1"]
        problems.append(Mismatch(NAME, f"{NAME}.prompt_optimizer is not taken by {model.name}; it is for "
                                       f"{', '.join(v1)}"))
    return problems


RULES = HailuoRules()

STORYBOARD_OPTIONS: Mapping[str, Any] = {"properties": {
    "resolution": {"type": "string", "description": "The model's own resolution: MiniMax-H3 768P or 2K; "
                                                    "MiniMax-Hailuo-2.3(-Fast) and -02 768P or 1080P (6 s only)."},
    "ratio": {"type": "string", "description": "MiniMax-H3 from text only: 16:9, 9:16, 1:1, 4:3, 3:4 or 21:9 "
                                               "(from a first frame the video takes the frame's shape)."},
    "prompt_optimizer": {"type": "boolean", "description": "v1 models only: let MiniMax rewrite the prompt "
                                                           "(the API's default: true)."},
}}


def request_body(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON body of the create for stored parameters, in the model's API version."""
    if MODELS[params["model"]].api == "v1":
        body = {"model": params["model"], "prompt": params["prompt"], "duration": params["duration"],
                "resolution": params["resolution"]}
        if params.get("image_url"):
            body["first_frame_image"] = params["image_url"]
        if "prompt_optimizer" in params:
            body["prompt_optimizer"] = params["prompt_optimizer"]
        return body
    content: List[Dict[str, Any]] = [{"type": "text", "text": params["prompt"]}]
    if params.get("image_url"):
        content.append({"type": "image_url", "image_url": {"url": params["image_url"]}, "role": "first_frame"})
    return {"model": params["model"], "content": content, "duration": params["duration"],
            "resolution": params["resolution"], "ratio": params["ratio"]}


# --- money ---------------------------------------------------------------------------------------

# Fen: per second for a per-second model (MODEL-RESOLUTION), per video otherwise
# (MODEL-RESOLUTION-SECONDSs). [I] Fast and 02 cost what Hailuo 2.3 costs: their own prices are in
# no source read (HAILUO_PRICES sets them).
DEFAULT_PRICES: Mapping[str, float] = {
    f"{H3}-768P": 50.0, f"{H3}-2K": 80.0,
    **{f"{name}-{key}": fen for name in (HAILUO, HAILUO_FAST, HAILUO_02)
       for key, fen in (("768P-6s", 200.0), ("768P-10s", 400.0), ("1080P-6s", 350.0))},
}
BUILT_IN_PRICES = "the built-in price list; HAILUO_PRICES overrides it"


@dataclass(frozen=True)
class HailuoTariff:
    """The price list: fen per second of H3 by resolution; fen per Hailuo 2.3 video by resolution
    and length."""

    table: Mapping[str, float]
    source: str = BUILT_IN_PRICES
    currency: str = CURRENCY

    def price(self, key: str) -> int:
        """Fen for one job by its price key (``model@resolution:seconds``)."""
        model_resolution, seconds = key.rsplit(":", 1)
        model, resolution = model_resolution.rsplit("@", 1)
        per_second = MODELS[model].per_second if model in MODELS else True
        entry = f"{model}-{resolution}" if per_second else f"{model}-{resolution}-{seconds}s"
        if entry not in self.table:
            raise KeyError(f"no price for {key}: add {entry} to HAILUO_PRICES")
        return round(self.table[entry] * (int(seconds) if per_second else 1))

    def describe(self) -> str:
        """``hailuo MiniMax-H3-768P ¥0.50/s, …, MiniMax-Hailuo-2.3-768P-6s ¥2.00, … (from …)``."""
        # A per-video entry ends in its length ("-6s"); a per-second one in its resolution.
        shown = (f"{entry} {money_rate(fen, CURRENCY)}{'' if entry.endswith('s') else '/s'}"
                 for entry, fen in self.table.items())
        return f"{NAME} {', '.join(shown)} ({self.source})"


def tariff(settings: Settings) -> HailuoTariff:
    """The built-in price list with ``HAILUO_PRICES`` on top; an entry it does not have is refused."""
    overrides = dict(settings.option("hailuo_prices") or ())
    unknown = sorted(set(overrides) - set(DEFAULT_PRICES))
    if unknown:
        raise ConfigError(f"HAILUO_PRICES: no price is called {', '.join(unknown)}; use "
                          f"{', '.join(DEFAULT_PRICES)} (fen per second, or per video of that length)")
    source = "the built-in price list with HAILUO_PRICES" if overrides else BUILT_IN_PRICES
    return HailuoTariff(MappingProxyType({**DEFAULT_PRICES, **overrides}), source)


# --- the client ----------------------------------------------------------------------------------


class Hailuo(ApiClient):
    """A client of the MiniMax video APIs (v1 and v2) at one base URL. Safe to share between threads."""

    name = NAME
    balance_refusal = "code 1008"
    reports_cost = False  # no answer carries a price: the price list is all there is
    bills_on_success = False  # [I] not documented: a failed task is taken as paid for
    tells_progress = False  # status answers tell no progress
    retention = RETENTION  # the video URL is time-limited, but every poll within the 7 days signs a fresh one
    KEY_SETTING = "MINIMAX_API_KEY"
    KEY_EXAMPLE = "sk-api-..."
    URL_SETTING = "MINIMAX_BASE_URL"
    PREFLIGHT_CALL = "GET /v2/query/video_generation"
    API_TITLE = "the MiniMax API"
    URL_FIELD = "minimax_base_url"
    KEY_FIELD = "minimax_api_key"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The API version each task id answered on (learnt at its create or first poll): a poll has
        # only the id, and asking the wrong version first costs a call.
        self._versions: Dict[str, str] = {}

    @classmethod
    def open(cls, settings: Settings, base_url: Optional[str] = None, pool_size: Optional[int] = None) -> "Hailuo":
        """A client from ``settings`` (``base_url``: the API a job was sent to, if not the configured one)."""
        return cls.from_settings(settings, base_url=base_url, pool_size=pool_size)

    # --- the calls ---------------------------------------------------------------------------------

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """``POST /v2/video_generation`` or ``/v1/…`` by the model. Never re-sent once it may have
        reached the API; there is no client reference (``ref`` is not sent)."""
        api = MODELS[params["model"]].api
        path = f"/{api}/video_generation"
        data = self._call("POST", path, body=request_body(params))
        task_id = str(data.get("task_id") or "")
        if not task_id:
            raise TransientError(self._redact(f"POST {path}: answer without a task_id: {_snippet(repr(data))}; "
                                              "the task may have been created"), maybe_created=True)
        problem = task_id_problem(task_id)
        if problem:
            raise InvalidTaskId(self._redact(f"POST {path}: the task was created and billed, but its id "
                                             f"{_snippet(repr(task_id))} {problem}"))
        self._versions[task_id] = api
        return RemoteTask(task_id=task_id, status="pending", progress=0, prompt=str(params["prompt"]),
                          video_url=None, error_msg=None, cost=None, created_at=None, completed_at=None,
                          raw=MappingProxyType(dict(data)))

    def get(self, task_id: str) -> RemoteTask:
        """The v2 query, then the v1 one when v2 does not know the id (unless the version is known)."""
        known = self._versions.get(task_id)
        if known != "v1":
            try:
                return self._get_v2(task_id)
            except TaskNotFound:
                if known == "v2":
                    raise
        return self._get_v1(task_id)

    def recent(self, cursor: Optional[str], limit: int = LIST_LIMIT) -> TaskPage:
        """A page of the v2 task list, newest first whichever way the API orders it ([I]): the cursor
        is ``n:PAGE`` (a newest-first list, read forward) or ``o:PAGE`` (an oldest-first one, read
        from its last page back). v1 tasks are not in it: they are polled alone."""
        size = min(limit, LIST_LIMIT)
        if cursor is not None:
            direction, page, *served = cursor.split(":")
            return self._page(int(page), int(served[0]) if served else size, newest_first=direction == "n")
        tasks, total = self._list(1, size)
        if tasks and total is not None and len(tasks) < min(size, total):
            # The API serves fewer a page than asked (undocumented): page by what it serves, or
            # the pages counted by the size asked would end the reading halfway down the list.
            size = len(tasks)
        last = math.ceil(total / size) if total is not None else None
        if (last is not None and last <= 1) or (total is None and len(tasks) < size):
            return TaskPage(tasks[::-1] if _newest_first(tasks) is False else tasks, None)  # the whole list
        if self._reads_forward(tasks, last, size):
            return self._paged(tasks, total, 1, size, newest_first=True)
        return self._page(last or 1, size, newest_first=False)

    def _reads_forward(self, first: List[RemoteTask], last: Optional[int], size: int) -> bool:
        """Whether a list of several pages is newest first: told by its first page's creation times,
        else by its last page's against them. A list that cannot tell is refused: read the wrong
        way, a search would stop before reaching the create's time and conclude "not created"."""
        order = _newest_first(first)
        if order is None and last is not None:
            order = _newer(first, self._list(last, size)[0])
        if order is False and last is None:
            order = None  # oldest first without a total: its end cannot be found
        if order is None:
            raise ApiError(self._redact("GET /v2/query/video_generation: cannot tell whether the task list is "
                                        "newest or oldest first, so it cannot be searched"))
        return order

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """The v2 list, newest first, until it is older than the window, by prompt; a v1 create
        cannot be looked up at all."""
        if MODELS[params["model"]].api == "v1":
            return TaskSearch([], False, 0, V1_NO_LIST, final=True)
        if past_retention(since, RETENTION):
            # v2 holds the last 7 days only: a list without the create then proves nothing, and
            # sending again may pay twice. Asking later cannot change that.
            return TaskSearch([], False, 0, f"the create was sent more than {RETENTION / 86400:g} days ago, and the "
                                            "MiniMax v2 API keeps tasks no longer: its list cannot show whether it "
                                            "made one", final=True)
        return search_pages(lambda cursor: self.recent(cursor, LIST_LIMIT), str(params["prompt"]), since, until,
                            skew_seconds=skew_seconds)

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """Model, duration, resolution and ratio of a listed task must be the request's; fields it
        omits do not count against it (a task wrongly ruled out would be paid for twice)."""
        raw, body = task.raw, request_body(params)
        # An adaptive ratio is answered as the ratio the frame gave: any ratio may be the create's.
        keys = ("model", "duration", "resolution") + (() if body.get("ratio") == ADAPTIVE else ("ratio",))
        return not any(raw.get(key) not in (None, "") and key in body and str(raw[key]) != str(body[key])
                       for key in keys)

    def balance(self) -> Optional[int]:
        """MiniMax has no balance endpoint."""
        return None

    # --- the two versions --------------------------------------------------------------------------

    def _get_v2(self, task_id: str) -> RemoteTask:
        path = f"/v2/query/video_generation/{quote(task_id, safe='')}"
        data = self._call("GET", path)
        found = data.get("task")
        if not isinstance(found, Mapping) and _code(data) not in TASK_VERDICTS:
            raise TransientError(self._redact(f"GET {path}: answer without a task: {_snippet(repr(data))}"))
        task = self._task(found if isinstance(found, Mapping) else {}, data)
        self._versions[task_id] = "v2"
        return task if task.task_id else dataclasses.replace(task, task_id=task_id)

    def _get_v1(self, task_id: str) -> RemoteTask:
        """The v1 query; a finished task's ``file_id`` is then retrieved for its download URL."""
        data = self._call("GET", "/v1/query/video_generation", params={"task_id": task_id})
        task = self._task(data, data)
        self._versions[task_id] = "v1"
        task = task if task.task_id else dataclasses.replace(task, task_id=task_id)
        if not task.is_completed:
            return task
        return dataclasses.replace(task, video_url=self._download_url(data.get("file_id")))

    def _download_url(self, file_id: Any) -> Optional[str]:
        """``GET /v1/files/retrieve``'s ``file.download_url`` (None without a ``file_id``: asked again)."""
        if file_id in (None, ""):
            return None
        data = self._call("GET", "/v1/files/retrieve", params={"file_id": file_id})
        file = data.get("file") if isinstance(data.get("file"), Mapping) else {}
        return str(file.get("download_url") or "") or None

    def _list(self, page: int, size: int) -> Tuple[List[RemoteTask], Optional[int]]:
        """One page of the v2 list as the API orders it, and the total it tells."""
        path = "/v2/query/video_generation"
        data = self._call("GET", path, params={"page_num": page, "page_size": size})
        items = data.get(LIST_FIELD)
        if not isinstance(items, list):
            raise TransientError(self._redact(f"GET {path}: unexpected page shape: {_snippet(repr(data))}"))
        tasks = [self._task(item, data) for item in items if isinstance(item, Mapping)]
        return tasks, _int_or_none(data.get("total"))

    def _page(self, page: int, size: int, *, newest_first: bool) -> TaskPage:
        tasks, total = self._list(page, size)
        return self._paged(tasks, total, page, size, newest_first=newest_first)

    @staticmethod
    def _paged(tasks: List[RemoteTask], total: Optional[int], page: int, size: int, *,
               newest_first: bool) -> TaskPage:
        if not newest_first:  # an oldest-first page, read from the list's end back
            return TaskPage(tasks[::-1], f"o:{page - 1}:{size}" if page > 1 else None)
        more = page * size < total if total is not None else len(tasks) >= size
        return TaskPage(tasks, f"n:{page + 1}:{size}" if more else None)

    # --- answers -----------------------------------------------------------------------------------

    def _task(self, data: Mapping[str, Any], answer: Mapping[str, Any]) -> RemoteTask:
        """A v2 task object or a v1 query answer, normalised; ``answer`` holds its ``base_resp``."""
        base = answer.get("base_resp") if isinstance(answer.get("base_resp"), Mapping) else {}
        code = _code(answer)
        word = str(data.get("status") or "").strip().lower()
        status = "failed" if code in TASK_VERDICTS else STATUSES.get(word)
        if status is None:
            _note_unknown(word)
            status = word or "unknown"
        message = _failure(data, word) or str((base.get("status_msg") if code in TASK_VERDICTS else "") or "")
        content = data.get("content")
        url = content.get("url") if isinstance(content, Mapping) and status == "completed" else None
        return RemoteTask(
            task_id=str(data.get("id") or data.get("task_id") or ""), status=status,
            progress=100 if status == "completed" else 0, prompt=_prompt_of(data), video_url=str(url) if url else None,
            error_msg=self._redact(message.strip()) if status == "failed" and message.strip() else None, cost=None,
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("updated_at")) if status in ("completed", "failed") else None,
            raw=MappingProxyType(dict(data)))

    def _unwrap(self, method: str, path: str, resp: requests.Response) -> Mapping[str, Any]:
        """The answer of a 2xx whose ``base_resp`` says 0 (or that has none); on a look-up, also one
        whose code is the task's own verdict (1026/1027); the mapped error otherwise."""
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        code = _code(payload)
        ok = 200 <= resp.status_code < 300 and isinstance(payload, Mapping)
        if ok and (code in (None, 0) or (code in TASK_VERDICTS and _is_lookup(method, path))):
            return payload
        said = _said(payload)
        detail = f"code {code}: {_snippet(said)}" if code is not None else f"unexpected body: {_snippet(resp.text)!r}"
        error = self._error_for(method, path, resp, code, detail, said)
        log.debug("%s", error)
        raise error

    def _error_for(self, method: str, path: str, resp: requests.Response, code: Optional[int], detail: str,
                   said: str) -> ApiError:
        status = resp.status_code
        where = f"{method} {path}: HTTP {status}"
        kind = ERRORS.get(code) if code is not None else None
        kind = kind or ERRORS.get(status)
        if _is_lookup(method, path) and code is None and status == 404:
            # Not MiniMax's own body: a proxy or load balancer answered, not the task's end.
            return self._not_the_apis_404(where, detail, status)
        if _is_lookup(method, path) and code in NOT_FOUND:
            return TaskNotFound(self._redact(f"{where}, the API does not know this id ({detail})"), code=code,
                                http_status=status)
        if kind is ContentRefused:  # a refusal of the create, in the API's own words
            return ContentRefused(self._redact(said or detail))
        if kind is RateLimited:
            return self._rate_limit_error(where, resp, detail, code)
        if kind is AuthError:
            shown = mask_key(self._key) if self._key else "(no key set)"
            if code in ACCOUNT_ERRORS:
                return AuthError(self._redact(f"{where}, the API key {shown} cannot create: {ACCOUNT_ERRORS[code]} "
                                              f"({detail})"), code=code, http_status=status)
            return AuthError(self._redact(f"{where}, the API key {shown} was rejected ({detail})"), code=code,
                             http_status=status)
        if kind in (InsufficientBalance, BadParameters):
            what = "insufficient balance" if kind is InsufficientBalance else "bad parameters"
            return kind(self._redact(f"{where}, {what} ({detail})"), code=code, http_status=status)
        if kind is TransientError or status >= 500 or (code is None and 200 <= status < 300):
            suffix = "; the task may have been created" if method == "POST" else ""
            return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=method == "POST",
                                  code=code, http_status=status)
        return ApiError(self._redact(f"{where} ({detail})"), code=code, http_status=status)

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> Optional[int]:
        """``GET /v2/query/video_generation?page_size=1``: proves the URL, the key and the proxy
        without spending anything. There is no balance to report (None)."""
        path = "/v2/query/video_generation"
        url = self.base_url + path
        try:
            resp = session.get(url, params={"page_num": 1, "page_size": 1}, timeout=timeouts,  # type: ignore[arg-type]
                               proxies=self._proxies_for(url), headers={"Accept": "application/json",
                                                                        **self._auth_headers()})
        except requests.RequestException as exc:
            raise self._unreachable(exc, session, url, timeouts) from exc
        try:
            data = self._unwrap("GET", path, resp)
        except AuthError as exc:
            if exc.code in ACCOUNT_ERRORS:
                raise ConfigError(str(exc)) from exc
            raise ConfigError(self._redact(f"the API key {mask_key(self._key or '')} was rejected "
                                           f"(code {exc.code or exc.http_status}): check {self.KEY_SETTING}")) from exc
        except RateLimited as exc:
            raise _Busy(f"GET {path}: rate limited", wait=min(exc.retry_after or 0.5, 5.0)) from exc
        except InsufficientBalance:
            return None  # the key works; the first create will say so and stop submitting
        except TransientError as exc:
            if exc.code is None and exc.http_status is not None and exc.http_status < 500:
                raise self._not_the_api(resp) from exc
            raise _Busy(f"GET {path}: HTTP {resp.status_code}, {_snippet(str(exc.message))}") from exc
        except ApiError as exc:
            if exc.code is None:
                raise self._not_the_api(resp) from exc
            raise ConfigError(self._redact(f"the pre-flight call failed: {exc}")) from exc
        if not isinstance(data.get(LIST_FIELD), list):
            raise self._not_the_api(resp)
        return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _code(answer: Any) -> Optional[int]:
    """An answer's code: v1's ``base_resp.status_code``, or the code v2's error envelope
    (``{"type": "error", "error": {"type", "message": "... (2013)", "http_code"}}``) ends its
    message with (None: it has neither)."""
    if not isinstance(answer, Mapping):
        return None
    base = answer.get("base_resp")
    if isinstance(base, Mapping):
        return _int_or_none(base.get("status_code"))
    error = answer.get("error")
    if not isinstance(error, Mapping):
        return None
    found = _ENVELOPE_CODE.search(str(error.get("message") or ""))
    return int(found.group(1)) if found else _int_or_none(error.get("code"))


def _said(answer: Any) -> str:
    """What an error answer says in words: ``base_resp.status_msg``, or v2's ``error.message``
    without the code it ends with (the code is shown on its own)."""
    if not isinstance(answer, Mapping):
        return ""
    for name, field in (("base_resp", "status_msg"), ("error", "message")):
        part = answer.get(name)
        if isinstance(part, Mapping) and str(part.get(field) or "").strip():
            return _ENVELOPE_CODE.sub("", str(part[field])).strip() if name == "error" else str(part[field]).strip()
    return ""


def _failure(data: Mapping[str, Any], word: str) -> str:
    """A failed v2 task's reason — its ``error{code, message}`` as MiniMax's CLI shows it
    (``code: message``) — or what its status word alone says; "" when neither tells."""
    error = data.get("error") if isinstance(data.get("error"), Mapping) else {}
    message, code = str(error.get("message") or "").strip(), str(error.get("code") or "").strip()
    if message or code:
        return f"{code}: {message}" if message and code else message or f"code {code}"
    return {"expired": "the task expired on the service before it finished (status expired)",
            "cancelled": "the task was cancelled on the service (status cancelled)"}.get(word, "")


def _is_lookup(method: str, path: str) -> bool:
    """A GET of one task or file by its id."""
    return method == "GET" and path.startswith(_LOOKUPS)


def _prompt_of(data: Mapping[str, Any]) -> Optional[str]:
    """The prompt a task object shows: ``prompt``, or the text item of a ``content`` list like the
    create's; None when it shows neither."""
    if data.get("prompt") is not None:
        return str(data["prompt"])
    content = data.get("content")
    texts = [item.get("text") for item in content if isinstance(item, Mapping) and item.get("type") == "text"] \
        if isinstance(content, list) else []
    return str(texts[0]) if texts and texts[0] is not None else None


def _newest_first(tasks: List[RemoteTask]) -> Optional[bool]:
    """Whether a page lists its tasks newest first (None: its creation times cannot tell)."""
    dated = [task.created_at for task in tasks if task.created_at is not None]
    if len(dated) < 2 or dated[0] == dated[-1]:
        return None
    return dated[0] > dated[-1]


def _newer(first: List[RemoteTask], last: List[RemoteTask]) -> Optional[bool]:
    """Whether the first page holds the newer tasks (None: one of them is undated). Pages whose
    tasks share one second mean the whole list does, and either way of reading it is right."""
    firsts = [t.created_at for t in first if t.created_at is not None]
    lasts = [t.created_at for t in last if t.created_at is not None]
    return max(firsts) >= max(lasts) if firsts and lasts else None


def _note_unknown(word: str) -> None:
    """An unknown status word is logged once per process and treated as "not finished"."""
    with _unknown_lock:
        if word in _unknown_words:
            return
        _unknown_words.add(word)
    log.warning("the %s API answered an unknown status %r; taken as not finished and polled again", NAME, word)


OPTIONS: Tuple[Option, ...] = (
    Option("MINIMAX_API_KEY", "minimax_api_key", secret_setting, secret=True),
    Option("MINIMAX_BASE_URL", "minimax_base_url", url_setting, default="https://api.minimaxi.com",
           url_example="https://api.minimaxi.com"),
    Option("HAILUO_PRICES", "hailuo_prices", price_setting, default=()),
)

REGISTRATION = Registration(
    name=NAME, rules=RULES, open=Hailuo.open, base_url=lambda settings: settings.option("minimax_base_url"),
    tariff=tariff, currency=CURRENCY, key_env="MINIMAX_API_KEY", url_env="MINIMAX_BASE_URL", options=OPTIONS,
    storyboard_options=STORYBOARD_OPTIONS, sim=NAME, bills_at_create=BILLS_AT_CREATE)
