"""Volcengine Ark (火山方舟) Seedance video generation: ``/api/v3/contents/generations/tasks``.

Facts this module is built on (``/work/shared/video-apis-facts.md``, "Seedance / Ark", and Ark's
API reference): ``Authorization: Bearer $ARK_API_KEY``; ``POST /contents/generations/tasks`` creates
(paid; no client reference) and answers ``{"id": "cgt-…"}``; ``GET …/tasks/{id}`` polls (status
``queued|running|succeeded|failed|expired|cancelled``, ``content.video_url``, ``usage.completion_tokens``,
no progress); ``GET …/tasks?page_num&page_size`` lists the account's tasks with their ``seed`` but
without their prompt; errors are ``{"error": {"code", "message", "param", "type"}}`` with an HTTP
status; the video is kept 24 h (the task record up to 7 days); there is no balance endpoint. A job is billed
by the output tokens of a successful task only (CNY per million tokens; ``service_tier: flex`` is
half price).

Paid once without a client reference: each attempt sends a ``seed`` derived from its reference,
and a lost create answer is looked for in the list by that seed (``find_tasks``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple, Type, Union
from urllib.parse import quote

import requests

from ..client import (past_retention, ApiClient, RemoteTask, TaskSearch, _Busy, _int_or_none, _snippet, parse_timestamp,
                      task_id_problem)
from ..errors import (ApiError, AuthError, BadParameters, ConfigError, ContentRefused, InsufficientBalance,
                      InvalidTaskId, RateLimited, TaskNotFound, TransientError)
from ..redact import mask_key
from ..settings import Option, Settings, price_setting, secret_setting, url_setting
from .base import Mapped, Mismatch, ModelRules, Registration, Request, TaskPage, choose_model

log = logging.getLogger(__name__)

NAME = "seedance"
DEFAULT_BASE_URL = "https://ark.cn-beijing.volces.com/api/v3"
TASKS = "/contents/generations/tasks"

# --- the models, as data ---------------------------------------------------------------------------

NORMAL, PRO = "doubao-seedance-2-0-260128", "doubao-seedance-1-5-pro-251215"
FAST, MINI, V25 = "doubao-seedance-2-0-fast-260128", "doubao-seedance-2-0-mini-260615", "doubao-seedance-2-5-260628"
RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
# The storyboard's ``resolution`` → the ratio sent; ``adaptive`` takes the first frame's ratio.
_RATIO_OF: Mapping[str, str] = {"horizontal": "16:9", "vertical": "9:16", **{ratio: ratio for ratio in RATIOS}}
# The storyboard's ``quality`` → the output resolution (the seedance block's ``resolution`` wins).
QUALITY: Mapping[str, str] = {"normal": "720p", "high": "1080p"}
# Pixels of each output resolution and ratio, from Ark's table "不同宽高比对应的宽高像素值".
PIXELS: Mapping[str, Mapping[str, Tuple[int, int]]] = {
    "480p": {"16:9": (864, 480), "4:3": (736, 544), "1:1": (640, 640), "3:4": (544, 736), "9:16": (480, 864),
             "21:9": (960, 416)},
    "720p": {"16:9": (1248, 704), "4:3": (1120, 832), "1:1": (960, 960), "3:4": (832, 1120), "9:16": (704, 1248),
             "21:9": (1504, 640)},
    "1080p": {"16:9": (1920, 1088), "4:3": (1664, 1248), "1:1": (1440, 1440), "3:4": (1248, 1664),
              "9:16": (1088, 1920), "21:9": (2176, 928)},
}
FPS = 24
TOKEN_PIXELS = 1024  # tokens ≈ width × height × frames / 1024; frames = 24 × seconds + the first one


@dataclass(frozen=True)
class SeedanceModel(ModelRules):
    """One Seedance model: ``resolutions`` maps the storyboard's ``resolution`` to the ratio sent,
    ``sizes`` are the output resolutions it renders."""

    sizes: Tuple[str, ...] = ("480p", "720p", "1080p")
    # The ratios it takes with a first frame (None: the same as without one).
    first_frame_ratios: Optional[Tuple[str, ...]] = None
    # The service tiers it takes: ``flex`` is offline inference (half price).
    tiers: Tuple[str, ...] = ("default",)


FLEX = "flex"  # the offline service tier: half price


def _seconds(low: int, high: int) -> Tuple[int, ...]:
    return tuple(range(low, high + 1))


# What each model takes, from the model-capabilities table of ByteDance's own Seedance tutorial
# (BytePlus ModelArk, the same models as Ark's doubao-* ones; read 2026-12-07:
# https://ai.byteplus.com/ark/region:ap-southeast-1/docs/ModelArk/video-generation-tutorial#e7b4c498):
# durations, output resolutions (4k not offered here), ratios 21:9 16:9 4:3 1:1 3:4 9:16 (and adaptive
# with an image: Ark's create-task page, 82379/1520757), and "offline inference" (service_tier flex)
# on 1.5 pro only. Gateways agree on 2.0 fast and mini at 480p/720p (docs.phanedge.cloud).
MODELS: Mapping[str, SeedanceModel] = {
    NORMAL: SeedanceModel(NORMAL, pro=False, durations=_seconds(4, 15), default_duration=5, resolutions=_RATIO_OF),
    PRO: SeedanceModel(PRO, pro=True, durations=_seconds(4, 12), default_duration=5, resolutions=_RATIO_OF,
                       tiers=("default", FLEX)),
    FAST: SeedanceModel(FAST, pro=False, durations=_seconds(4, 15), default_duration=5, resolutions=_RATIO_OF,
                        sizes=("480p", "720p")),
    MINI: SeedanceModel(MINI, pro=False, durations=_seconds(4, 15), default_duration=5, resolutions=_RATIO_OF,
                        sizes=("480p", "720p")),
    # 2.5 with a first frame: ratio adaptive only (HTTP 400 otherwise: a reseller's live tests of
    # 2026-08-28, /work/shared/video-apis-facts.md; the tutorial's own 2.5 example sends adaptive).
    V25: SeedanceModel(V25, pro=False, durations=_seconds(4, 30), default_duration=5, resolutions=_RATIO_OF,
                       first_frame_ratios=("adaptive",)),
}
# Yuan per million output tokens (ArcReel's registry); ``MODEL.silent`` is the rate without audio
# where it differs. SEEDANCE_PRICES overrides any of them.
DEFAULT_PRICES: Mapping[str, float] = {NORMAL: 46.0, PRO: 16.0, f"{PRO}.silent": 8.0, FAST: 37.0, MINI: 23.0,
                                       V25: 70.0}

# Every status word of the API, as the ledger's four. An unknown word is "not finished".
STATUSES: Mapping[str, str] = {
    "queued": "pending", "running": "processing", "succeeded": "completed",
    "failed": "failed", "expired": "failed", "cancelled": "failed",
}
# Every error code (by its family: ``RateLimitExceeded.EndpointRPMExceeded`` is ``RateLimitExceeded``),
# then the HTTP status of an answer whose code is not here, as the ledger's outcome.
ERRORS: Mapping[Union[str, int], Type[ApiError]] = {
    "AuthenticationError": AuthError,
    "AccountOverdueError": InsufficientBalance,
    "OperationDenied.ServiceOverdue": InsufficientBalance,
    # The account's own "safe experience" spending limit paused the model: nothing is made until
    # the user lifts it, so it stops submitting like an overdue balance.
    "SetLimitExceeded": InsufficientBalance,
    "RateLimitExceeded": RateLimited,  # .EndpointRPMExceeded, .EndpointTPMExceeded: also the concurrency cap
    "QuotaExceeded": RateLimited,
    "ServerOverloaded": RateLimited,
    # Content-policy refusals (InputTextRiskDetection, InputImageSensitiveContentDetected, …) are
    # not listed one by one: ``_refusal`` takes every code of both families.
    "InvalidParameter": BadParameters,
    "MissingParameter": BadParameters,
    "ModelNotOpen": BadParameters,
    "InvalidEndpointOrModel": BadParameters,
    "InternalServiceError": TransientError,
    400: BadParameters,
    401: AuthError,
    429: RateLimited,
}
LIST_LIMIT = 500  # the largest page (and the highest page number) the list takes
# The video is kept 24 h (its URL is signed with X-Tos-Expires=86400); past that a job's video is
# gone (content_expired, regenerated by requeue) even where the task is still listed. Ark's pages
# disagree on the task record: the get and list references say the last 7 days can be queried, the
# video-generation guide says task data (status, URL) is cleared after 24 h (volcengine.com/docs/82379
# 1521309, 1521675, 1366799). A lost create's look-up keeps to the shorter reading: an empty window
# read past it would send the create again.
RETENTION = 24 * 3600.0
RECORDS = 7 * 86400.0  # how long Ark's get/list references say task records are kept (its guide says 24 h)
MAX_SEED = 2 ** 31 - 1

_unknown_words: Set[str] = set()
_unknown_lock = threading.Lock()


# --- the storyboard → the parameters ---------------------------------------------------------------


class SeedanceRules:
    """Storyboard fields → a create: ``is_pro`` picks 1.5 pro, ``resolution`` the ratio (horizontal
    16:9, vertical 9:16, or a ratio the API takes), ``quality`` the output resolution (normal 720p,
    high 1080p; the seedance block's ``resolution`` wins), ``image_url`` the first frame,
    ``remove_watermark`` the watermark (the block's ``watermark`` wins); the rest from the block."""

    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        chosen = choose_model(NAME, MODELS, NORMAL, PRO, request)
        if isinstance(chosen, Mismatch):
            return [chosen]
        name, model = chosen
        assert isinstance(model, SeedanceModel)
        seconds = model.default_duration if request.duration is None else request.duration
        ratio = _first_frame_ratio(model, request) or model.resolutions.get(request.resolution)
        size = request.options.get("resolution") or QUALITY.get(request.quality, request.quality)
        problems = [*_duration_problems(name, model, seconds), *_ratio_problems(name, model, request, ratio),
                    *_size_problems(name, model, request, size), *_tier_problems(name, model, request),
                    *_last_frame_problems(request)]
        if problems:
            return problems
        params = _params(request, name, model, seconds, str(ratio), size)
        return Mapped(params, model.pro, self.price_key(params))

    def price_key(self, params: Mapping[str, Any]) -> str:
        """``model@WIDTHxHEIGHT:SECONDSs:audio|silent:TIER``: everything the token price depends on."""
        width, height = pixels(params["resolution"], params["ratio"])
        audio = "audio" if params.get("generate_audio") else "silent"
        return f"{params['model']}@{width}x{height}:{params['duration']}s:{audio}:{params.get('service_tier', 'default')}"


def _duration_problems(name: str, model: SeedanceModel, seconds: int) -> List[Mismatch]:
    if seconds in model.durations:
        return []
    return [Mismatch("duration_seconds", f"duration {seconds}s is not offered by {name} on the {NAME} provider; "
                                         f"use one of {_listed(model.durations)}")]


def _first_frame_ratio(model: SeedanceModel, request: Request) -> Optional[str]:
    """The ratio sent with a first frame to a model that takes only some (2.5: adaptive) when the
    storyboard leaves it at its default ``horizontal`` or names one of them; None otherwise."""
    if not request.image_url or model.first_frame_ratios is None:
        return None
    wanted = "adaptive" if request.resolution == "horizontal" else _RATIO_OF.get(request.resolution)
    return wanted if wanted in model.first_frame_ratios else None


def _ratio_problems(name: str, model: SeedanceModel, request: Request, ratio: Optional[str]) -> List[Mismatch]:
    if request.image_url and model.first_frame_ratios is not None and ratio not in model.first_frame_ratios:
        return [Mismatch("resolution", f"resolution {request.resolution!r} is not offered by {name} with a first "
                                       f"frame (image_url): it takes only {', '.join(map(repr, model.first_frame_ratios))}"
                                       ", the ratio of the frame; drop resolution or set 'adaptive'")]
    if ratio is None:
        offered = ", ".join(f"{key!r}" + (f" ({value})" if key != value else "") for key, value in model.resolutions.items())
        return [Mismatch("resolution", f"resolution {request.resolution!r} is not offered by {name} on the {NAME} "
                                       f"provider; use one of {offered}")]
    if ratio == "adaptive" and not request.image_url:
        return [Mismatch("resolution", "resolution 'adaptive' takes the ratio of the first frame: it needs an "
                                       "image_url; without one use 'horizontal', 'vertical' or a ratio such as '16:9'")]
    return []


def _tier_problems(name: str, model: SeedanceModel, request: Request) -> List[Mismatch]:
    tier = str(request.options.get("service_tier", "default"))
    if tier in model.tiers or tier not in ("default", FLEX):  # an unknown word is the schema's to name
        return []
    offering = [other for other, rules in MODELS.items() if tier in rules.tiers]
    return [Mismatch(NAME, f"{NAME}.service_tier {tier!r} (offline inference) is not offered by {name}; "
                           f"use 'default', or a model that offers it: {', '.join(offering)}")]


def _last_frame_problems(request: Request) -> List[Mismatch]:
    if request.options.get("last_frame_url") and not request.image_url:
        return [Mismatch(NAME, f"{NAME}.last_frame_url needs a first frame: set image_url too")]
    return []


def _size_problems(name: str, model: SeedanceModel, request: Request, size: str) -> List[Mismatch]:
    if size in model.sizes:
        return []
    where = f"{NAME}.resolution {size!r}" if "resolution" in request.options else \
        f"quality {request.quality!r} ({size})"
    return [Mismatch(NAME if "resolution" in request.options else "quality",
                     f"{where} is not offered by {name}; use one of {', '.join(model.sizes)}")]


def _params(request: Request, name: str, model: SeedanceModel, seconds: int, ratio: str, size: str) -> Dict[str, Any]:
    """The parameters the ledger stores and the create is built from (the seed only when the
    storyboard sets one: otherwise each attempt derives its own, ``attempt_seed``)."""
    options = request.options
    params: Dict[str, Any] = {
        "provider": NAME, "model": name, "prompt": request.prompt, "duration": seconds, "ratio": ratio,
        "resolution": size, "generate_audio": bool(options.get("generate_audio", False)),
        "service_tier": str(options.get("service_tier", "default")),
        "camera_fixed": bool(options.get("camera_fixed", False)),
        "watermark": bool(options.get("watermark", not request.remove_watermark)), "is_pro": model.pro,
    }
    if options.get("seed") is not None:
        params["seed"] = int(options["seed"])
    if request.image_url:
        params["image_url"] = request.image_url
    if options.get("last_frame_url"):
        params["last_frame_url"] = str(options["last_frame_url"])
    return params


def _listed(values: Tuple[int, ...]) -> str:
    """``4, 5, …, 15``: the allowed seconds, every one of them implied."""
    if len(values) > 4 and values == tuple(range(values[0], values[-1] + 1)):
        return f"{values[0]}, {values[1]}, …, {values[-1]} (every whole second from {values[0]} to {values[-1]})"
    return ", ".join(map(str, values))


def pixels(resolution: str, ratio: str) -> Tuple[int, int]:
    """Width and height of an output; ``adaptive`` (not known before the image is read) counts as
    the largest of its resolution, so the estimate is never below the bill for it."""
    sizes = PIXELS[resolution]
    return sizes[ratio] if ratio in sizes else max(sizes.values(), key=lambda wh: wh[0] * wh[1])


RULES = SeedanceRules()


def attempt_seed(ref: str) -> int:
    """The seed an attempt sends when the storyboard sets none: stable per attempt reference, in
    0..2^31-2, so a lost create answer's task is found again by it."""
    return int.from_bytes(hashlib.sha256(ref.encode("utf-8")).digest()[:8], "big") % MAX_SEED


def seed_of(params: Mapping[str, Any], ref: str) -> Optional[int]:
    """The seed a create of ``params`` for attempt ``ref`` sends (None: none at all, no reference)."""
    if params.get("seed") is not None:
        return int(params["seed"])
    return attempt_seed(ref) if ref else None


def request_body(params: Mapping[str, Any], seed: Optional[int]) -> Dict[str, Any]:
    """The JSON body of ``POST /contents/generations/tasks`` for stored parameters."""
    content: List[Dict[str, Any]] = [{"type": "text", "text": params["prompt"]}]
    if params.get("image_url"):
        content.append({"type": "image_url", "image_url": {"url": params["image_url"]}, "role": "first_frame"})
    if params.get("last_frame_url"):
        content.append({"type": "image_url", "image_url": {"url": params["last_frame_url"]}, "role": "last_frame"})
    body: Dict[str, Any] = {"model": params["model"], "content": content}
    for key in ("resolution", "ratio", "duration", "generate_audio", "service_tier", "camera_fixed", "watermark"):
        body[key] = params[key]
    if seed is not None:
        body["seed"] = seed
    return body


# --- the price list --------------------------------------------------------------------------------

BUILT_IN_PRICES = "the built-in price list; SEEDANCE_PRICES overrides it"


@dataclass(frozen=True)
class TokenTariff:
    """Seedance's price list: yuan per million output tokens by model (``MODEL.silent``: without
    audio, where that differs); amounts in fen."""

    table: Mapping[str, float]
    source: str = BUILT_IN_PRICES
    currency: str = "CNY"

    def rate(self, model: str, audio: bool, tier: str) -> Fraction:
        """Yuan per million tokens of ``model`` with or without audio in service tier ``tier``."""
        key = model if audio or f"{model}.silent" not in self.table else f"{model}.silent"
        if key not in self.table:
            raise KeyError(f"no price for {model}: add it to SEEDANCE_PRICES (MODEL=YUAN_PER_MILLION_TOKENS)")
        rate = Fraction(str(self.table[key]))
        return rate / 2 if tier == FLEX else rate

    def cost(self, model: str, tokens: Union[int, Fraction], audio: bool, tier: str) -> int:
        """Fen for ``tokens`` output tokens, rounded half up."""
        fen = Fraction(tokens) * self.rate(model, audio, tier) / 10_000
        return int(fen + Fraction(1, 2))

    def price(self, key: str) -> int:
        """The estimate of one job by its price key: the tokens of its frames at 24 fps and the first
        frame (1080p 5 s: 121 frames, 246,840 tokens, as Ark bills it)."""
        model, rest = key.rsplit("@", 1)
        size, seconds, audio, tier = rest.split(":")
        width, height = (int(n) for n in size.split("x"))
        tokens = Fraction(width * height * (FPS * int(seconds.rstrip("s")) + 1), TOKEN_PIXELS)
        return self.cost(model, tokens, audio == "audio", tier)

    def describe(self) -> str:
        """``seedance doubao-seedance-2-0-260128 ¥46/M tokens, …; flex half price (from …)``."""
        rates = ", ".join(f"{key} ¥{value:g}/M tokens" for key, value in self.table.items())
        return f"{NAME} {rates}; service_tier flex half price ({self.source})"


def tariff(settings: Settings) -> TokenTariff:
    """The built-in price list with SEEDANCE_PRICES on top."""
    overrides = dict(settings.option("seedance_prices") or ())
    source = "the built-in price list with SEEDANCE_PRICES" if overrides else BUILT_IN_PRICES
    return TokenTariff(MappingProxyType({**DEFAULT_PRICES, **overrides}), source)


# --- the client ------------------------------------------------------------------------------------


class Seedance(ApiClient):
    """A client of one Ark API. Safe to share between threads."""

    name = NAME
    balance_refusal = "AccountOverdueError"
    reports_cost = False  # the create answers only an id: the usage comes with the finished task
    bills_on_success = True
    tells_progress = False  # status answers tell no progress
    retention: Optional[float] = RETENTION
    KEY_SETTING = "ARK_API_KEY"
    KEY_EXAMPLE = "your-ark-api-key"
    URL_SETTING = "ARK_BASE_URL"
    PREFLIGHT_CALL = f"GET {TASKS}"
    API_TITLE = "the Ark API"
    URL_FIELD = "ark_base_url"
    KEY_FIELD = "ark_api_key"
    prices: TokenTariff = TokenTariff(DEFAULT_PRICES)

    @classmethod
    def open(cls, settings: Settings, base_url: Optional[str] = None, pool_size: Optional[int] = None) -> "Seedance":
        """A client from ``settings`` (``base_url``: the API a job was sent to, if not the configured one)."""
        client = cls.from_settings(settings, base_url=base_url, pool_size=pool_size)
        client.prices = tariff(settings)
        return client

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """``POST /contents/generations/tasks`` with the attempt's seed. Never re-sent once it may
        have reached the API: a lost answer is a ``TransientError`` with ``maybe_created``."""
        data = self._call("POST", TASKS, body=request_body(params, seed_of(params, ref)))
        task_id = str(data.get("id") or "") if isinstance(data, Mapping) else ""
        if not task_id:
            raise TransientError(self._redact(f"POST {TASKS}: answer without an id: {_snippet(repr(data))}; "
                                              "the task may have been created"), maybe_created=True)
        problem = task_id_problem(task_id)
        if problem:
            raise InvalidTaskId(self._redact(f"POST {TASKS}: the task was created, but its id "
                                             f"{_snippet(repr(task_id))} {problem}"))
        return RemoteTask(task_id=task_id, status="pending", progress=0, prompt=str(params["prompt"]), video_url=None,
                          error_msg=None, cost=None, created_at=None, completed_at=None,
                          raw=MappingProxyType(dict(data)))

    def get(self, task_id: str) -> RemoteTask:
        """``GET /contents/generations/tasks/{id}``."""
        data = self._call("GET", f"{TASKS}/{quote(task_id, safe='')}")
        if not isinstance(data, Mapping):
            raise TransientError(self._redact(f"GET {TASKS}/{task_id}: unexpected answer: {_snippet(repr(data))}"))
        task = self._task(data)
        return task if task.task_id else dataclasses.replace(task, task_id=task_id)

    def recent(self, cursor: Optional[str], limit: int = LIST_LIMIT) -> TaskPage:
        """``GET /contents/generations/tasks?page_num&page_size``: the cursor is the page number."""
        page, size = int(cursor or 1), max(1, min(limit, LIST_LIMIT))
        data = self._call("GET", TASKS, params={"page_num": page, "page_size": size})
        items = data.get("items") if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            raise TransientError(self._redact(f"GET {TASKS}: unexpected page shape: {_snippet(repr(data))}"))
        total = _int_or_none(data.get("total"))
        more = len(items) >= size and (total is None or page * size < total)
        return TaskPage([self._task(item) for item in items if isinstance(item, Mapping)],
                        str(page + 1) if more else None)

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """After a lost create answer: the list, newest first, until it is older than the window;
        the candidates are the tasks of the request's kind whose seed is the one the create sent."""
        seed = seed_of(params, ref)
        if seed is None:
            return TaskSearch([], False, 0, "the create was sent without a seed: the list cannot tell its task",
                              final=True)
        window = _window(since, until, skew_seconds)
        if past_retention(since, RECORDS):
            return TaskSearch([], False, 0, f"the create was sent more than {RECORDS / 86400:g} days ago, and Ark "
                                            "keeps task records no longer: the list cannot show whether it made one",
                              final=True)
        lookup = SeedLookup(seed, window, lambda task: self.same_request(task, params), user_seed="seed" in params)
        search = lookup.run(lambda cursor: self.recent(cursor, LIST_LIMIT))
        if past_retention(since, RETENTION) and not search.tasks:
            # Ark's pages disagree: task records kept 7 days (get/list) or 24 h (the guide). A task
            # found is the create's either way; a list without it proves nothing past 24 h.
            return TaskSearch([], False, search.pages, f"the create was sent more than {RETENTION / 3600:g} h ago: "
                                                       "Ark may keep task records only that long, so a list without "
                                                       "it cannot show whether it made one", final=True)
        return search

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """Model, seconds, ratio, resolution and tier of a listed task must be the request's; a
        field the list leaves out does not count against it (ruled out wrongly, it is paid twice)."""
        raw = task.raw
        wanted = {key: params.get(key) for key in ("model", "duration", "resolution", "service_tier")}
        if params.get("ratio") != "adaptive":
            wanted["ratio"] = params.get("ratio")
        return not any(raw.get(key) not in (None, "") and str(raw[key]) != str(value) for key, value in wanted.items())

    def balance(self) -> Optional[int]:
        """Ark has no balance endpoint."""
        return None

    # --- answers -----------------------------------------------------------------------------------

    def _task(self, data: Mapping[str, Any]) -> RemoteTask:
        word = str(data.get("status") or "").strip().lower()
        status = STATUSES.get(word)
        if status is None:
            _note_unknown(word)
            status = word or "unknown"
        content = data.get("content") if isinstance(data.get("content"), Mapping) else {}
        url = str(content.get("video_url") or "") or None
        failure = _failure(data, word) if status == "failed" else None
        return RemoteTask(
            task_id=str(data.get("id") or ""), status=status, progress=100 if status == "completed" else 0,
            prompt=None, video_url=url if status == "completed" else None,
            error_msg=self._redact(failure) if failure else None,
            cost=self._cost(data) if status == "completed" else None,
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("updated_at")) if status in ("completed", "failed") else None,
            raw=MappingProxyType(dict(data)))

    def _cost(self, data: Mapping[str, Any]) -> Optional[int]:
        """What a finished task costs by its usage, when the task says everything its rate needs."""
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        tokens = _int_or_none(usage.get("completion_tokens"))
        model, tier, audio = data.get("model"), data.get("service_tier"), data.get("generate_audio")
        if tokens is None or not isinstance(model, str) or not isinstance(tier, str):
            return None
        if not isinstance(audio, bool) and f"{model}.silent" in self.prices.table:
            return None  # its rate depends on the audio, which the task does not say
        try:
            return self.prices.cost(model, tokens, bool(audio), tier)
        except KeyError:
            return None

    def _unwrap(self, method: str, path: str, resp: requests.Response) -> Any:
        """The body of a 2xx that is not an error object; the mapped error otherwise. A failed
        task's own ``error`` is part of the task, not an error of the call."""
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, Mapping) else None
        is_error = isinstance(error, Mapping) and not ({"id", "status", "items"} & set(payload))
        if 200 <= resp.status_code < 300 and isinstance(payload, Mapping) and not is_error:
            return payload
        raised = self._error_for(method, path, resp, error if is_error else None)
        log.debug("%s", raised)
        raise raised

    def _error_for(self, method: str, path: str, resp: requests.Response, error: Optional[Mapping[str, Any]]) -> ApiError:
        status = resp.status_code
        code = str((error or {}).get("code") or "")
        message = str((error or {}).get("message") or "").strip()
        where = f"{method} {path}: HTTP {status}"
        parts = [message] + [f"{name} {error[name]}" for name in ("param", "code") if error and error.get(name)]
        detail = "; ".join(p for p in parts if p) or f"unexpected body: {_snippet(resp.text)!r}"
        if status == 404 and method == "GET" and path.startswith(TASKS + "/") and not code:
            # Not Ark's own error body: a proxy or load balancer answered, not the task's end.
            return self._not_the_apis_404(where, detail, status)
        if status == 404 and method == "GET" and path.startswith(TASKS + "/"):
            return TaskNotFound(self._redact(f"{where}, the API does not know this task ({detail})"), http_status=status)
        kind = ERRORS.get(code) or ERRORS.get(code.split(".")[0]) or _refusal(code) or ERRORS.get(status)
        if kind is None and (status >= 500 or 200 <= status < 300):  # a garbled answer, or a server in trouble
            kind = TransientError
        build = _BUILDERS.get(kind) if kind is not None else None
        if build is None:
            return ApiError(self._redact(f"{where} ({detail})"), http_status=status)
        return build(self, method, where, resp, code, message, detail)

    def _rate_limited(self, method: str, where: str, resp: requests.Response, code: str, message: str,
                      detail: str) -> ApiError:
        return self._rate_limit_error(where, resp, detail)

    def _auth(self, method: str, where: str, resp: requests.Response, code: str, message: str, detail: str) -> ApiError:
        shown = mask_key(self._key) if self._key else "(no key set)"
        return AuthError(self._redact(f"{where}, the API key {shown} was rejected ({detail})"),
                         http_status=resp.status_code)

    def _overdue(self, method: str, where: str, resp: requests.Response, code: str, message: str,
                 detail: str) -> ApiError:
        why = "the account's own inference limit paused the model (raise it on the model's activation page)" \
            if code == "SetLimitExceeded" else "the account cannot pay"
        return InsufficientBalance(self._redact(f"{where}, {why} ({detail})"), http_status=resp.status_code)

    def _refused(self, method: str, where: str, resp: requests.Response, code: str, message: str,
                 detail: str) -> ApiError:
        """A content-policy refusal at create, in the API's own words (nothing was made)."""
        return ContentRefused(self._redact(f"{message} ({code})" if message else code))

    def _bad(self, method: str, where: str, resp: requests.Response, code: str, message: str, detail: str) -> ApiError:
        return BadParameters(self._redact(f"{where}, bad parameters ({detail})"), http_status=resp.status_code)

    def _transient(self, method: str, where: str, resp: requests.Response, code: str, message: str,
                   detail: str) -> ApiError:
        suffix = "; the task may have been created" if method == "POST" else ""
        return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=method == "POST",
                              http_status=resp.status_code)

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> Optional[int]:
        """``GET /contents/generations/tasks?page_size=1``: proves the URL, the key and the proxy
        without spending anything. There is no balance to report (None)."""
        url = self.base_url + TASKS
        try:
            resp = session.get(url, params={"page_size": 1}, timeout=timeouts, proxies=self._proxies_for(url),  # type: ignore[arg-type]
                               headers={"Accept": "application/json", **self._auth_headers()})
        except requests.RequestException as exc:
            raise self._unreachable(exc, session, url, timeouts) from exc
        try:
            data = self._unwrap("GET", TASKS, resp)
        except AuthError as exc:
            raise ConfigError(self._redact(f"the API key {mask_key(self._key or '')} was rejected "
                                           f"(HTTP {exc.http_status}): check {self.KEY_SETTING}")) from exc
        except RateLimited as exc:
            raise _Busy(f"{self.PREFLIGHT_CALL}: HTTP {resp.status_code}, rate limited",
                        wait=min(exc.retry_after or 0.5, 5.0)) from exc
        except InsufficientBalance:
            return None  # the key works; the first create says the account is overdue and stops the run
        except TransientError as exc:
            if exc.http_status is not None and exc.http_status < 500:
                raise self._not_the_api(resp) from exc
            raise _Busy(f"{self.PREFLIGHT_CALL}: HTTP {resp.status_code}, {_snippet(str(exc.message))}") from exc
        except ApiError as exc:
            raise self._not_the_api(resp) from exc
        if not isinstance(data.get("items"), list):
            raise self._not_the_api(resp)
        return None


_Builder = Callable[[Seedance, str, str, requests.Response, str, str, str], ApiError]
# How each outcome of ``ERRORS`` is said (its message, and a 429's pause of every call).
_BUILDERS: Mapping[Type[ApiError], _Builder] = {
    AuthError: Seedance._auth, InsufficientBalance: Seedance._overdue, RateLimited: Seedance._rate_limited,
    ContentRefused: Seedance._refused, BadParameters: Seedance._bad, TransientError: Seedance._transient,
}


def _refusal(code: str) -> Optional[Type[ApiError]]:
    """A content-policy refusal: Ark's error-code table (HTTP 400) has the risk checks
    (``InputTextRiskDetection``, ``InputImageRiskDetection``, ``Output…RiskDetection``) beside the
    ``*SensitiveContentDetected*`` family (``InputImageSensitiveContentDetected.PrivacyInformation``,
    ``OutputVideoSensitiveContentDetected``, …): nothing was made, and sending it again is refused
    again, so it ends the job in the API's words, like a task that failed the check."""
    family = code.split(".")[0]
    return ContentRefused if family.endswith(("SensitiveContentDetected", "RiskDetection")) else None


def _failure(data: Mapping[str, Any], word: str) -> str:
    """A failed task's reason, the API's message verbatim with its code."""
    error = data.get("error") if isinstance(data.get("error"), Mapping) else {}
    message, code = str(error.get("message") or "").strip(), str(error.get("code") or "").strip()
    if message or code:
        return f"{message} ({code})" if message and code else message or code
    return {"expired": "the task expired on the service before it finished (status expired)",
            "cancelled": "the task was cancelled on the service (status cancelled)"}.get(word, f"status {word}")


def _note_unknown(word: str) -> None:
    """An unknown status word is logged once per process and treated as "not finished"."""
    with _unknown_lock:
        if word in _unknown_words:
            return
        _unknown_words.add(word)
    log.warning("the %s API answered an unknown status %r; taken as not finished and polled again", NAME, word)


# --- finding a lost create by its seed ---------------------------------------------------------------


def _window(since: datetime, until: Optional[datetime], skew_seconds: float) -> Tuple[datetime, Optional[datetime]]:
    """The creation times a lost create's task may show (naive datetimes are UTC)."""
    skew = timedelta(seconds=skew_seconds)
    start = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)) - skew
    if until is None:
        return start, None
    return start, (until if until.tzinfo else until.replace(tzinfo=timezone.utc)) + skew


class SeedLookup:
    """One search of the task list for the task of a create whose answer was lost: those created
    in ``window`` that ``same`` accepts and whose seed is ``seed``.

    The window is covered once a page newest first is older than it, or the list ends (a list
    that turns out not to be newest first is read to its end). Tasks of the window that show no
    seed leave it uncovered, unless the derived seed was found: it is the attempt's alone. A seed
    the storyboard set is shared by every request made with it, so it tells one task only when
    no other in the window has it."""

    STALE_PAGES = 3

    def __init__(self, seed: int, window: Tuple[datetime, Optional[datetime]], same: Callable[[RemoteTask], bool],
                 *, user_seed: bool) -> None:
        self.seed, self.window, self.same, self.user_seed = seed, window, same, user_seed
        self.found: Dict[str, RemoteTask] = {}
        self.unknown = 0
        self.seen: Set[str] = set()
        self.newest_first = True
        self.last: Optional[datetime] = None

    def run(self, pages: Callable[[Optional[str]], TaskPage]) -> TaskSearch:
        """Read ``pages`` (a cursor-paged list) until the window is covered or cannot be."""
        cursor: Optional[str] = None
        repeats = 0
        for read in range(1, LIST_LIMIT + 1):
            page = pages(cursor)
            fresh = [task for task in page.tasks if task.task_id not in self.seen]
            repeats = repeats + 1 if page.tasks and not fresh else 0
            if repeats >= self.STALE_PAGES:
                return TaskSearch([], False, read, f"the task list repeated itself for {repeats} pages (page {read}); "
                                                   "it never reached the time of the create")
            self._take(fresh)
            dated = [task.created_at for task in page.tasks if task.created_at is not None]
            if page.next_cursor is None or (self.newest_first and dated and min(dated) < self.window[0]):
                return self._verdict(read)
            cursor = page.next_cursor
        return TaskSearch([], False, LIST_LIMIT, f"read {LIST_LIMIT} pages without reaching the time of the create")

    def _take(self, tasks: List[RemoteTask]) -> None:
        for task in tasks:
            self.seen.add(task.task_id)
            created = task.created_at
            if created is not None and self.last is not None and created > self.last:
                self.newest_first = False
            self.last = created or self.last
            start, end = self.window
            in_window = created is None or (created >= start and (end is None or created <= end))
            if not in_window or not self.same(task) or task_id_problem(task.task_id):
                continue
            shown = _int_or_none(task.raw.get("seed"))
            if shown is None:
                self.unknown += 1
            elif shown == self.seed:
                self.found[task.task_id] = task

    def _verdict(self, pages: int) -> TaskSearch:
        """What the covered window shows. The undecided verdicts are ``final``: the same list read
        again shows the same tasks the same way, so the job is parked at once for a later run
        instead of reading it again with growing pauses."""
        found = list(self.found.values())
        if self.user_seed and len(found) > 1:
            return TaskSearch([], False, pages, f"{len(found)} tasks of that time have the storyboard's seed {self.seed}: "
                                                "the list cannot tell which one the create made", final=True)
        if found and not (self.user_seed and self.unknown):
            return TaskSearch(found, True, pages)
        if self.unknown:
            return TaskSearch([], False, pages, f"the list shows {self.unknown} task(s) of that time without their "
                                                "seed: any of them may be the create's", final=True)
        return TaskSearch([], True, pages)


# --- settings and registration ---------------------------------------------------------------------

OPTIONS: Tuple[Option, ...] = (
    Option("ARK_API_KEY", "ark_api_key", secret_setting, secret=True),
    Option("ARK_BASE_URL", "ark_base_url", url_setting, default=DEFAULT_BASE_URL, url_example=DEFAULT_BASE_URL),
    Option("SEEDANCE_PRICES", "seedance_prices", price_setting, default=()),
)

# The seedance block of a storyboard (in ``defaults`` and segments; the segment's keys win).
STORYBOARD_OPTIONS: Mapping[str, Any] = {"properties": {
    "generate_audio": {"description": "A soundtrack made with the picture (1.5 pro: ¥16 instead of ¥8 per M tokens). "
                                      "Default false.", "type": "boolean"},
    "service_tier": {"description": "flex: offline, half price, slower. Default default.", "type": "string",
                     "enum": ["default", "flex"]},
    "seed": {"description": "The same seed gives similar videos. Default: one derived from each attempt, by which "
                            "a create whose answer was lost is found again.", "type": "integer", "minimum": 0,
             "maximum": 4294967295},
    "camera_fixed": {"description": "Keep the camera still. Default false.", "type": "boolean"},
    "watermark": {"description": "Mark the video as AI-made. Default: the opposite of remove_watermark.",
                  "type": "boolean"},
    "resolution": {"description": "The output resolution, over quality (normal 720p, high 1080p).", "type": "string",
                   "enum": ["480p", "720p", "1080p"]},
    "last_frame_url": {"description": "http(s) URL of the last frame: the video goes from image_url to it.",
                       "type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/]+"},
}}

REGISTRATION = Registration(
    name=NAME, rules=RULES, open=Seedance.open, base_url=lambda settings: settings.option("ark_base_url"),
    tariff=tariff, currency="CNY", key_env="ARK_API_KEY", url_env="ARK_BASE_URL", options=OPTIONS,
    storyboard_options=STORYBOARD_OPTIONS, sim="seedance")
