"""Alibaba's Wan and HappyHorse video models on DashScope (百炼, Model Studio).

Facts this module is built on (``/work/shared/video-apis-facts.md``, "Wan / HappyHorse"; [I] marks
what is inferred, not documented): ``Authorization: Bearer sk-…``; ``POST
/services/aigc/video-generation/video-synthesis`` creates (paid) and needs the header
``X-DashScope-Async: enable``; ``GET /tasks/{id}`` polls (``PENDING`` / ``RUNNING`` / ``SUCCEEDED``
/ ``FAILED`` / ``CANCELED``, and ``UNKNOWN`` once the id has expired: tasks and video URLs live
24 h); ``GET /tasks?start_time&end_time&model_name&page_no&page_size`` is the batch task query,
whose entries carry no prompt; errors are ``{"request_id", "code", "message"}`` with an HTTP
status. There is no client reference ("do not create duplicate tasks, poll instead"), no balance
endpoint and no price in any answer: the prices are data (yuan per second by model and resolution).

The create speaks one of two protocols by model (``MODELS``): wan2.6 the legacy one (``input.img_url``,
``parameters.size``), wan2.7 / wan3.0 / HappyHorse the new one (``input.media``,
``parameters.resolution`` + ``ratio``); ``tests/contracts/wan`` holds the documented exchanges and
``tests/contracts/test_wan_sdk.py`` checks the requests against Alibaba's ``dashscope`` SDK.

A create whose answer is lost is looked for in the batch query of its time window, and each task
found there that could be it is asked for its ``orig_prompt`` (once per run, under the account's 20
queries a second): a task that does not tell its prompt leaves the search open (the job stays
unresolved, nothing is sent again), and so does a create sent longer ago than the 24 h DashScope
keeps tasks. What the documentation leaves open is read both ways: the page size the batch query
really answers, the zone of its window.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Type, Union
from urllib.parse import quote

import requests

from ..client import (past_retention, SERVICE_TZ, ApiClient, RemoteTask, TaskSearch, _Busy, _int_or_none, _nearest,
                      _snippet, _text_or_none, parse_timestamp, task_id_problem)
from ..errors import (ApiError, AuthError, BadParameters, ConfigError, ContentRefused, InsufficientBalance,
                      InvalidTaskId, RateLimited, TaskNotFound, TransientError)
from ..money import rate as money_rate
from ..redact import mask_key
from ..settings import Option, Settings, secret_setting, url_setting
from .base import Mapped, Mismatch, ModelRules, Registration, Request, TaskPage, choose_model

log = logging.getLogger(__name__)

NAME = "wan"
CURRENCY = "CNY"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
CREATE_PATH = "/services/aigc/video-generation/video-synthesis"
ASYNC_HEADER = "X-DashScope-Async"  # "enable": required on the create; the create is refused without it
RETENTION = 24 * 3600.0  # a task and its video URL expire 24 h after it was made
LIST_LIMIT = 100  # [I] the largest page_size of the batch query
# Task look-ups a search for a lost create sends a second: DashScope allows an account 20 task
# queries a second (help.aliyun.com/zh/model-studio/manage-asynchronous-tasks); the rest is left
# to the polls of the jobs in flight.
LOOKUP_RATE = 15.0
SEARCH_PAGES = 100  # batch query pages one look-up reads at most (10,000 tasks of one model in one window)
WINDOW_FORMAT = "%Y%m%d%H%M%S"  # the batch query's start_time / end_time, in China time

# --- the models, as data ---------------------------------------------------------------------------

# DashScope's video synthesis speaks two protocols on the same path, chosen by the model:
# LEGACY (wan2.6 and older): the first frame is ``input.img_url``; a text-to-video request names its
# ``parameters.size`` (``"1280*720"``), an image-to-video one its ``parameters.resolution`` tier (the
# frame sets the aspect ratio). Sources: help.aliyun.com/zh/model-studio/text-to-video-api-reference
# and image-to-video-api-reference (wan2.6, read 2026-12-07), the dashscope SDK's
# ``VideoSynthesis.async_call(img_url=, size=, resolution=)`` (pypi:dashscope==2.0.2).
# MEDIA (wan2.7, wan3.0, HappyHorse): the first frame is ``input.media: [{"type": "first_frame",
# "url": …}]``, the size is ``parameters.resolution`` (``720P``…) plus, without a frame,
# ``parameters.ratio``; ``img_url`` and ``size`` are not this protocol's. Sources:
# alibabacloud.com/help/tc/model-studio/text-to-video-api-reference ("此介面為新版協議,僅支援wan2.7模型"),
# platform.qianwenai.com/docs/api-reference/video-generation/wan27-image-to-video/create-task (the
# wan2.7-i2v create: media + resolution, no ratio), docs.comfy.org …/wan/wan2-7-i2v (media types of
# wan2.7 / wan3.0; HappyHorse's i2v takes its frame as media, not img_url), the SDK's
# ``VideoSynthesis.MediaType.FIRST_FRAME`` and ``media=`` / ``resolution=`` / ``ratio=``.
LEGACY, MEDIA = "legacy", "media"

# The API's WIDTH*HEIGHT of each legacy tier and ratio (wan2.6-t2v's ``size`` list,
# help.aliyun.com text-to-video-api-reference; 480P is only 16:9 and 9:16 there).
LEGACY_SIZES: Mapping[Tuple[str, str], str] = {
    ("480P", "16:9"): "832*480", ("480P", "9:16"): "480*832",
    ("720P", "16:9"): "1280*720", ("720P", "9:16"): "720*1280", ("720P", "1:1"): "960*960",
    ("720P", "4:3"): "1088*832", ("720P", "3:4"): "832*1088",
    ("1080P", "16:9"): "1920*1080", ("1080P", "9:16"): "1080*1920", ("1080P", "1:1"): "1440*1440",
    ("1080P", "4:3"): "1632*1248", ("1080P", "3:4"): "1248*1632",
}
TIERS = ("480P", "720P", "1080P")
RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")  # ``parameters.ratio`` of the media protocol
ORIENTATIONS: Mapping[str, str] = {"horizontal": "16:9", "vertical": "9:16"}
# The tier ``quality`` asks for when neither a size nor the block's ``resolution`` names one.
QUALITY_TIERS: Mapping[str, str] = {"normal": "720P", "high": "1080P"}
DEFAULT_DURATION = 5


@dataclass(frozen=True)
class Model:
    """One model: the price list it is in, whether it is the Pro one, its resolution tiers, the
    model a request with a first frame (``image_url``) goes to, whether it needs one, the protocol
    it speaks and the seconds it takes."""

    name: str
    family: str
    pro: bool
    tiers: Tuple[str, ...]
    first_frame: str
    needs_image: bool = False
    protocol: str = MEDIA
    durations: Tuple[int, ...] = (5, 10)


_HD = ("720P", "1080P")
MODELS: Mapping[str, Model] = {m.name: m for m in (
    # wan2.6, legacy: 720P / 1080P, 5, 10 or 15 s (help.aliyun.com text-to-video and image-to-video API
    # references; gateways agree: docs.sinancode.com wan2-image-to-video, docs.gmicloud.ai wan2-6-i2v).
    Model("wan2.6-t2v", "wan2.6", False, _HD, first_frame="wan2.6-i2v", protocol=LEGACY, durations=(5, 10, 15)),
    Model("wan2.6-i2v", "wan2.6", False, _HD, first_frame="wan2.6-i2v", needs_image=True, protocol=LEGACY,
          durations=(5, 10, 15)),
    # wan2.7: 720P / 1080P, any whole 2 to 15 s (alibabacloud.com/help/en/model-studio/wan-image-to-video-guide,
    # "video durations from 2 to 15 seconds in integer values"; the text-to-video API reference).
    Model("wan2.7-t2v", "wan2.7", False, _HD, first_frame="wan2.7-i2v", durations=tuple(range(2, 16))),
    Model("wan2.7-i2v", "wan2.7", False, _HD, first_frame="wan2.7-i2v", needs_image=True,
          durations=tuple(range(2, 16))),
    # [I] wan3.0's and HappyHorse 1.1's seconds are not in a source read: 5 and 10, as before. Their
    # tiers are the price list's (ArcReel, /work/shared/video-apis-facts.md); their protocol is media
    # (docs.comfy.org wan2-7-i2v: wan3.0-video's media types; HappyHorse i2v's frame "as a media item").
    Model("wan3.0-video", "wan3.0", True, TIERS, first_frame="wan3.0-video"),  # takes a first frame itself
    # [I] HappyHorse 1.1's names follow Wan's t2v / i2v pattern.
    Model("happyhorse-1.1-t2v", "happyhorse-1.1", False, TIERS, first_frame="happyhorse-1.1-i2v"),
    Model("happyhorse-1.1-i2v", "happyhorse-1.1", False, TIERS, first_frame="happyhorse-1.1-i2v", needs_image=True),
)}
NORMAL, PRO = "wan2.7-t2v", "wan3.0-video"
FAMILIES = tuple(dict.fromkeys(m.family for m in MODELS.values()))
# A storyboard size WIDTHxHEIGHT → (its tier, its ratio): the legacy sizes, read the same for both protocols.
STORYBOARD_SIZES: Mapping[str, Tuple[str, str]] = {
    size.replace("*", "x"): pair for pair, size in LEGACY_SIZES.items()}


def _resolutions(model: Model) -> Dict[str, str]:
    """The storyboard ``resolution`` values a model takes → the ratio they stand for."""
    sizes = {shown: ratio for shown, (tier, ratio) in STORYBOARD_SIZES.items() if tier in model.tiers}
    return {**ORIENTATIONS, **sizes}


_CHOICES: Mapping[str, ModelRules] = {
    m.name: ModelRules(m.name, m.pro, m.durations, DEFAULT_DURATION, _resolutions(m)) for m in MODELS.values()}

# Every status word of ``output.task_status`` (and of the batch query's ``status``). GONE: the task
# id expired (or never existed): the task and its video are gone. An unknown word is not finished.
GONE = "gone"
STATUSES: Mapping[str, str] = {"PENDING": "pending", "RUNNING": "processing", "SUCCEEDED": "completed",
                               "FAILED": "failed", "CANCELED": "failed", "UNKNOWN": GONE}
# What an error answer means: by its ``code`` (``InvalidParameter.DataInspection`` falls back to
# ``InvalidParameter``), else by its HTTP status; a 5xx (or an answer that is no answer) is transient.
ERRORS: Mapping[Union[str, int], Type[ApiError]] = {
    "InvalidApiKey": AuthError,
    "Arrearage": InsufficientBalance,  # HTTP 400 (and 403 [I])
    "Throttling.RateQuota": RateLimited,  # too many requests
    "Throttling.AllocationQuota": RateLimited,  # too many tasks at once: the concurrency limit
    "Throttling": RateLimited,
    "DataInspectionFailed": ContentRefused,  # input moderation refused the create: nothing was made
    "InvalidParameter": BadParameters,
    "AccessDenied": BadParameters,  # e.g. a create without the async header, a model the account cannot use
    "InternalError": TransientError,
    401: AuthError,
    429: RateLimited,
    400: BadParameters,
    403: BadParameters,
    404: TaskNotFound,  # only for GET /tasks/{id}
}

_unknown_words: Set[str] = set()
_unknown_lock = threading.Lock()

# --- the storyboard → the create's parameters -------------------------------------------------------

STORYBOARD_OPTIONS: Mapping[str, Any] = {"properties": {
    "resolution": {"description": "The resolution tier (otherwise quality picks it: normal 720P, high 1080P).",
                   "enum": list(TIERS)},
    "ratio": {"description": "The aspect ratio of a video made without a first frame (otherwise the segment's "
                             "resolution picks it: horizontal 16:9, vertical 9:16); a first frame sets its own.",
              "enum": list(RATIOS)},
    "prompt_extend": {"description": "Let the API rewrite the prompt before generating.", "type": "boolean"},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647},
    "negative_prompt": {"description": "What the video must not show.", "type": "string", "maxLength": 500},
    "watermark": {"description": "Put the AI-generated mark on the video (default: not remove_watermark).",
                  "type": "boolean"},
}}


class WanRules:
    """Storyboard fields → a video-synthesis request: ``model`` / ``is_pro`` pick the model (an
    ``image_url`` sends a text-to-video request to its image-to-video sibling, with the first
    frame), ``resolution`` the orientation or a size, ``quality`` (or the block's ``resolution``)
    the tier, the block's ``ratio`` the aspect ratio, ``duration_seconds`` the seconds; the ``"wan"``
    block adds ``prompt_extend``, ``seed``, ``negative_prompt`` and ``watermark``. The parameters
    keep the tier (``resolution``), the ``ratio`` of a video without a first frame and, for the
    legacy protocol, its ``size``: ``request_body`` writes them in the model's protocol."""

    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        """The request as a create's parameters, or every value the model cannot take."""
        chosen = choose_model(NAME, _CHOICES, NORMAL, PRO, request)
        if isinstance(chosen, Mismatch):
            return [chosen]
        model = MODELS[chosen[0]]
        sent = MODELS[model.first_frame] if request.image_url else model
        seconds = DEFAULT_DURATION if request.duration is None else request.duration
        shaped = _tier_and_ratio(sent, request)
        problems = [m for m in (_image_problem(model, request), _duration_problem(sent, seconds),
                                shaped if isinstance(shaped, Mismatch) else None) if m]
        if problems or isinstance(shaped, Mismatch):
            return problems
        tier, ratio = shaped
        params: Dict[str, Any] = {"provider": NAME, "model": sent.name, "prompt": request.prompt, "duration": seconds,
                                  "resolution": tier, "is_pro": sent.pro, "watermark": not request.remove_watermark,
                                  **_block_options(request.options)}
        if request.image_url:
            params["image_url"] = request.image_url
        else:
            params["ratio"] = ratio
            if sent.protocol == LEGACY:
                params["size"] = LEGACY_SIZES[(tier, ratio)]
        return Mapped(params, sent.pro, self.price_key(params))

    def price_key(self, params: Mapping[str, Any]) -> str:
        """``model@tier:seconds``: what the per-second price list needs."""
        return f"{params['model']}@{params['resolution']}:{params['duration']}"


RULES = WanRules()


def _image_problem(model: Model, request: Request) -> Optional[Mismatch]:
    if model.needs_image and not request.image_url:
        return Mismatch("model", f"model {model.name!r} makes a video from a first frame: give the segment an "
                                 f"image_url, or use a text-to-video model ({NORMAL!r})")
    return None


def _duration_problem(model: Model, seconds: int) -> Optional[Mismatch]:
    if seconds in model.durations:
        return None
    offered = (f"{model.durations[0]} to {model.durations[-1]}" if len(model.durations) > 3
               else ", ".join(map(str, model.durations)))
    return Mismatch("duration_seconds", f"duration {seconds}s is not offered by {model.name} on the {NAME} provider; "
                                        f"use one of {offered}")


def _tier_and_ratio(model: Model, request: Request) -> Union[Tuple[str, str], Mismatch]:
    """(tier, ratio): a size names both; an orientation takes the block's tier, else quality's, and
    the block's ratio, else its own. A first frame sets the ratio itself: the block cannot name one."""
    block = request.options.get("resolution")
    block = block if block in TIERS else None  # a wrong value is the schema's error, reported already
    block_ratio = request.options.get("ratio")
    block_ratio = block_ratio if block_ratio in RATIOS else None
    if block_ratio is not None and request.image_url:
        return Mismatch(NAME, f"{NAME}.ratio {block_ratio!r}: the first frame (image_url) sets the ratio of "
                              f"{model.name}'s video; drop {NAME}.ratio")
    if request.resolution in ORIENTATIONS:
        tier = block or QUALITY_TIERS.get(request.quality, QUALITY_TIERS["normal"])
        if tier not in model.tiers:
            return Mismatch(NAME, f"{NAME}.resolution {tier!r} is not offered by {model.name}; use one of "
                                  f"{', '.join(map(repr, model.tiers))}")
        ratio = block_ratio or ORIENTATIONS[request.resolution]
        if model.protocol == LEGACY and not request.image_url and (tier, ratio) not in LEGACY_SIZES:
            ratios = [r for t, r in LEGACY_SIZES if t == tier]
            return Mismatch(NAME, f"{NAME}.ratio {ratio!r} is not offered by {model.name} at {tier}; use one of "
                                  f"{', '.join(map(repr, ratios))}")
        return tier, ratio
    named = STORYBOARD_SIZES.get(request.resolution)
    if named is None or named[0] not in model.tiers:
        offered = ", ".join(map(repr, _CHOICES[model.name].resolutions))
        return Mismatch("resolution", f"resolution {request.resolution!r} is not offered by {model.name} on the "
                                      f"{NAME} provider; use one of {offered}")
    if block is not None and block != named[0]:
        return Mismatch("resolution", f"resolution {request.resolution!r} is {named[0]}, but {NAME}.resolution is "
                                      f"{block}; drop one of the two")
    if block_ratio is not None and block_ratio != named[1]:
        return Mismatch("resolution", f"resolution {request.resolution!r} is {named[1]}, but {NAME}.ratio is "
                                      f"{block_ratio}; drop one of the two")
    return named


def _block_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """The block's options sent with the create (values of the wrong type are the schema's errors)."""
    kinds = {"prompt_extend": bool, "seed": int, "negative_prompt": str, "watermark": bool}
    return {key: value for key, value in options.items()
            if key in kinds and type(value) is kinds[key]}


def request_body(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON body of the create for stored parameters, in the model's protocol (``MODELS``): the
    first frame is ``input.img_url`` (legacy) or a ``first_frame`` entry of ``input.media``; the
    size is ``parameters.size`` (legacy, text) or the tier ``parameters.resolution`` with, without a
    frame, ``parameters.ratio``. Parameters stored before the ratio was kept give it by their size.
    The negative prompt goes in ``input``, as in every copy of DashScope's video-synthesis format."""
    model = MODELS.get(str(params["model"]))
    legacy = model is not None and model.protocol == LEGACY
    image = params.get("image_url")
    given: Dict[str, Any] = {"prompt": params["prompt"]}
    parameters: Dict[str, Any] = {}
    if legacy and image:
        given["img_url"] = image
        parameters["resolution"] = params["resolution"]
    elif legacy:
        parameters["size"] = params.get("size") or LEGACY_SIZES[(params["resolution"], params["ratio"])]
    else:
        if image:
            given["media"] = [{"type": "first_frame", "url": image}]
        parameters["resolution"] = params["resolution"]
        if not image:
            parameters["ratio"] = params.get("ratio") or _ratio_of_size(params.get("size"))
    if params.get("negative_prompt") is not None:
        given["negative_prompt"] = params["negative_prompt"]
    parameters.update({"duration": params["duration"], "watermark": bool(params.get("watermark", False))})
    parameters.update({key: params[key] for key in ("prompt_extend", "seed") if key in params})
    return {"model": params["model"], "input": given, "parameters": parameters}


def _ratio_of_size(size: Any) -> str:
    """The ratio of a legacy WIDTH*HEIGHT (16:9 when it is none of the list's)."""
    return next((ratio for (_, ratio), listed in LEGACY_SIZES.items() if listed == size), "16:9")


# --- prices ----------------------------------------------------------------------------------------

# Fen (CNY minor units) per second of video, by model family and tier: the public list.
# wan2.7, wan3.0, HappyHorse 1.1: ArcReel's table (/work/shared/video-apis-facts.md). [I] wan2.6 at
# wan2.7's rates (gateways list the two alike: runpod wan-2-6-i2v $0.10 / $0.15 per second, as for 2.7).
DEFAULT_PRICES: Mapping[str, float] = {
    "wan2.6@720P": 60, "wan2.6@1080P": 100,
    "wan2.7@720P": 60, "wan2.7@1080P": 100,
    "wan3.0@480P": 30, "wan3.0@720P": 60, "wan3.0@1080P": 120,
    "happyhorse-1.1@480P": 45, "happyhorse-1.1@720P": 90, "happyhorse-1.1@1080P": 120,
}
BUILT_IN_PRICES = "the built-in price list; WAN_PRICES overrides it"
_PRICE_ENTRY = re.compile(r"^\s*([A-Za-z0-9._-]+)@(\d+)[pP]\s*[=:]\s*([0-9]+(?:\.[0-9]+)?)\s*$")


def price_overrides(text: Any) -> Tuple[Tuple[str, float], ...]:
    """``MODEL@RESOLUTION=FEN_PER_SECOND, …`` (``wan2.7@720P=60``; MODEL is a model or its family,
    ``wan2.7``), or a mapping of the same from config.yaml."""
    entries = ([f"{key}={value}" for key, value in text.items()] if isinstance(text, Mapping)
               else [part for part in str(text).split(",") if part.strip()])
    return tuple(_price_entry(entry) for entry in entries)


def _price_entry(entry: str) -> Tuple[str, float]:
    match = _PRICE_ENTRY.match(entry)
    if match is None:
        raise ValueError(f"expected MODEL@RESOLUTION=FEN_PER_SECOND (e.g. wan2.7@720P=60), got {entry.strip()!r}")
    name, tier, fen = match.group(1), f"{match.group(2)}P", float(match.group(3))
    tiers = {t for m in MODELS.values() if name in (m.name, m.family) for t in m.tiers}
    if not tiers:
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(FAMILIES + tuple(MODELS))}")
    if tier not in tiers:
        raise ValueError(f"{name} has no {tier}; use one of {', '.join(t for t in TIERS if t in tiers)}")
    return f"{name}@{tier}", fen


@dataclass(frozen=True)
class PerSecond:
    """The price list: fen per second, by model (or its family) and resolution tier."""

    table: Mapping[str, float]
    source: str = BUILT_IN_PRICES
    currency: str = CURRENCY

    def rate(self, model: str, tier: str) -> float:
        """Fen per second of ``model`` at ``tier``: the model's own entry, else its family's."""
        family = MODELS[model].family if model in MODELS else model
        for key in (f"{model}@{tier}", f"{family}@{tier}"):
            if key in self.table:
                return self.table[key]
        raise KeyError(f"no price for {model} at {tier}: add it to WAN_PRICES")

    def price(self, key: str) -> int:
        """Fen for one job by its price key (``model@tier:seconds``)."""
        model_tier, seconds = key.rsplit(":", 1)
        model, tier = model_tier.rsplit("@", 1)
        return round(self.rate(model, tier) * int(seconds))

    def describe(self) -> str:
        """``wan wan2.7@720P ¥0.60/s, … (the built-in price list; …)``."""
        rates = ", ".join(f"{key} {money_rate(value, CURRENCY)}/s" for key, value in self.table.items())
        return f"{NAME} {rates} ({self.source})"


def tariff(settings: Settings) -> PerSecond:
    """The built-in price list with the settings' overrides (WAN_PRICES) on top."""
    overrides = dict(settings.option("wan_prices") or ())
    source = "the built-in price list with WAN_PRICES" if overrides else BUILT_IN_PRICES
    return PerSecond(MappingProxyType({**DEFAULT_PRICES, **overrides}), source)


# --- the client --------------------------------------------------------------------------------------


class _Prompts:
    """What each task id this client sent or was told says its prompt is (a task's prompt never
    changes; ``SILENT``: the task does not tell it), so a run asks each task at most once however
    many look-ups its window falls in. Bounded; safe to share between threads."""

    LIMIT = 20_000
    SILENT = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: "OrderedDict[str, str]" = OrderedDict()

    def learn(self, task_id: str, prompt: Optional[str]) -> None:
        with self._lock:
            self._known[task_id] = self.SILENT if prompt is None else prompt
            self._known.move_to_end(task_id)
            if len(self._known) > self.LIMIT:
                self._known.popitem(last=False)

    def get(self, task_id: str) -> Optional[str]:
        """The prompt, ``SILENT``, or None when the task was never asked."""
        with self._lock:
            return self._known.get(task_id)


class _Pace:
    """At most ``rate`` calls a second, spaced evenly, across threads."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            at = max(time.monotonic(), self._next)
            self._next = at + self._gap
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class WanClient(ApiClient):
    """A client of one DashScope endpoint (region). Safe to share between threads."""

    name = NAME
    balance_refusal = "Arrearage"
    reports_cost = False  # no answer carries a price: the price list is all there is
    # Whether a failed task is billed is not documented: what was booked for it stays booked.
    bills_on_success = False
    tells_progress = False  # status answers tell no progress
    retention = RETENTION
    KEY_SETTING = "DASHSCOPE_API_KEY"
    KEY_EXAMPLE = "sk-..."
    URL_SETTING = "DASHSCOPE_BASE_URL"
    PREFLIGHT_CALL = "GET /tasks"
    API_TITLE = "the DashScope API"
    URL_FIELD = "dashscope_base_url"
    KEY_FIELD = "dashscope_api_key"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prompts = _Prompts()
        self._lookup_pace = _Pace(LOOKUP_RATE)

    @classmethod
    def open(cls, settings: Settings, base_url: Optional[str] = None, pool_size: Optional[int] = None) -> "WanClient":
        """A client from ``settings`` (``base_url``: the endpoint a job was sent to, if not the configured one)."""
        return cls.from_settings(settings, base_url=base_url, pool_size=pool_size)

    # --- the calls ---------------------------------------------------------------------------------

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """The paid create, asynchronous. Never re-sent once it may have reached the API: a lost
        answer is a ``TransientError`` with ``maybe_created``. The API takes no client reference:
        ``ref`` is not sent."""
        data = self._post(CREATE_PATH, request_body(params))
        output = data.get("output") if isinstance(data.get("output"), Mapping) else {}
        task_id = str(output.get("task_id") or "")
        if not task_id:
            raise TransientError(self._redact(f"POST {CREATE_PATH}: answer without a task_id: "
                                              f"{_snippet(repr(dict(data)))}; the task may have been created"),
                                 maybe_created=True)
        problem = task_id_problem(task_id)
        if problem:
            raise InvalidTaskId(self._redact(f"POST {CREATE_PATH}: the task was created and billed, but its id "
                                             f"{_snippet(repr(task_id))} {problem}"))
        self._prompts.learn(task_id, str(params["prompt"]))
        return self._task({"task_status": "PENDING", **output, "orig_prompt": params["prompt"]}, data)

    def get(self, task_id: str) -> RemoteTask:
        """``GET /tasks/{id}``; a task the API answers ``UNKNOWN`` for is ``TaskNotFound``."""
        path = f"/tasks/{quote(task_id, safe='')}"
        data = self._call("GET", path)
        output = data.get("output")
        if not isinstance(output, Mapping):
            raise TransientError(self._redact(f"GET {path}: unexpected answer: {_snippet(repr(dict(data)))}"))
        if STATUSES.get(str(output.get("task_status") or "").strip().upper()) == GONE:
            raise TaskNotFound(f"GET {path}: the API answers UNKNOWN: the task id has expired (tasks are kept "
                               f"{RETENTION / 3600:g} h) or never existed")
        task = self._task(output, data)
        task = task if task.task_id else dataclasses.replace(task, task_id=task_id)
        if task.prompt is not None:
            self._prompts.learn(task.task_id, task.prompt)
        return task

    def recent(self, cursor: Optional[str], limit: int) -> TaskPage:
        """A page of the batch query (the cursor is the page number). Its entries tell no failure
        message and no video URL: a finished task is left out or shown without its URL, so its poll
        asks the task itself."""
        page_no = int(cursor or 1)
        size = max(1, min(limit, LIST_LIMIT))
        items, more = self._page({"page_no": page_no, "page_size": size})
        tasks = [task for task in map(self._listed, items) if task.status not in ("failed", GONE)]
        return TaskPage(tasks, str(page_no + 1) if more else None)

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """Reconciliation: every page of the batch query for the create's time window and model,
        then each task there whose prompt is not known yet asked for its ``orig_prompt``. Covered
        only when every page was read and every task there told its prompt."""
        model = str(params["model"])
        if past_retention(since, RETENTION):
            # The API has dropped what was made then: an empty window proves nothing, and sending
            # again may pay twice. Asking later cannot change that.
            return TaskSearch([], False, 0, f"the create was sent more than {RETENTION / 3600:g} h ago, and "
                                            "DashScope keeps tasks no longer: the batch query cannot show whether it "
                                            "made one", final=True)
        start, end = _query_window(since, until, skew_seconds)
        items, pages, reason = self._read_window(model, start, end)
        wanted = str(params["prompt"]).strip()
        found: List[RemoteTask] = []
        silent = 0
        for item in (item for item in items if _made_within(item, start, end)):
            task = self._with_prompt(item)
            if task is None or task.prompt is None:
                silent += 1
            elif task.prompt.strip() == wanted:
                found.append(task)
        if silent and not reason:
            reason = (f"the batch query shows {silent} task(s) of {model} from the create's time window that do not "
                      "tell their prompt (no orig_prompt): any of them may be the create's")
        return TaskSearch(_nearest(found, _aware(since)), not reason, pages, reason)

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """The model and the seconds of a found task must be the request's. A field the API does
        not show, or a model name it uses that ledger does not know, does not count against it: a
        task wrongly ruled out would be paid for twice."""
        raw = task.raw
        listed = MODELS.get(str(raw.get("model_name") or ""))
        if listed is not None and listed.name != params["model"]:
            return False
        usage = raw.get("usage") if isinstance(raw.get("usage"), Mapping) else {}
        seconds = _int_or_none(usage.get("video_duration"))
        return seconds is None or seconds == int(params["duration"])

    def balance(self) -> Optional[int]:
        """DashScope has no balance endpoint."""
        return None

    # --- looking a lost create up ------------------------------------------------------------------

    def _read_window(self, model: str, start: datetime, end: datetime) -> Tuple[List[Mapping[str, Any]], int, str]:
        """Every entry of the batch query for ``model`` made from ``start`` to ``end``, the pages
        read, and why the reading is incomplete ("" when it reached the end). The zone of
        ``start_time`` / ``end_time`` is not documented: the query asks from the start read as UTC
        to the end read as China time, which holds the window whichever zone the API reads (the
        entries outside it are left out by their ``gmt_create``)."""
        seen: Dict[str, Mapping[str, Any]] = {}
        for page_no in range(1, SEARCH_PAGES + 1):
            data, items = self._page_answer({"start_time": start.astimezone(timezone.utc).strftime(WINDOW_FORMAT),
                                             "end_time": end.astimezone(SERVICE_TZ).strftime(WINDOW_FORMAT),
                                             "model_name": model, "page_no": page_no, "page_size": LIST_LIMIT})
            fresh = {task_id: item for task_id, item in _by_id(items).items() if task_id not in seen}
            if items and not fresh:
                return list(seen.values()), page_no, (f"the batch query answered page {page_no} with the tasks of an "
                                                      "earlier page: it cannot be read to its end")
            seen.update(fresh)
            # The entries read so far, not the page size asked for, tell whether more follow: the
            # API may answer fewer per page than asked.
            total = _int_or_none(data.get("total"))
            if not items or (total is not None and len(seen) >= total) or (total is None and not _more(data, items)):
                return list(seen.values()), page_no, ""
        return list(seen.values()), SEARCH_PAGES, f"read {SEARCH_PAGES} pages of the batch query without its end"

    def _with_prompt(self, item: Mapping[str, Any]) -> Optional[RemoteTask]:
        """A listed task with its prompt: known already, else asked of the task (None: it cannot tell)."""
        task_id = str(item.get("task_id") or "")
        if task_id_problem(task_id):
            return None  # it cannot be asked (nor recorded), but it may be the create's
        known = self._prompts.get(task_id)
        if known is not None:
            return dataclasses.replace(self._listed(item), prompt=known or None)
        self._lookup_pace.wait()
        try:
            task = self.get(task_id)
        except TaskNotFound:
            return None
        self._prompts.learn(task_id, task.prompt)
        return dataclasses.replace(task, raw=MappingProxyType({**item, **task.raw}))

    # --- answers -----------------------------------------------------------------------------------

    def _page(self, query: Mapping[str, Any]) -> Tuple[List[Mapping[str, Any]], bool]:
        """One page of the batch query: its entries, and whether more pages follow."""
        data, items = self._page_answer(query)
        return items, _more(data, items)

    def _page_answer(self, query: Mapping[str, Any]) -> Tuple[Mapping[str, Any], List[Mapping[str, Any]]]:
        """One page of the batch query: the answer, and its entries."""
        data = self._call("GET", "/tasks", params=query)
        items = data.get("data")
        if items is None and _int_or_none(data.get("total")) == 0:
            items = []
        if not isinstance(items, list):
            raise TransientError(self._redact(f"GET /tasks: unexpected page shape: {_snippet(repr(dict(data)))}"))
        return data, [item for item in items if isinstance(item, Mapping)]

    def _task(self, output: Mapping[str, Any], data: Mapping[str, Any]) -> RemoteTask:
        """A task as ``output`` (and the answer's ``usage``) describes it."""
        status = _status(output.get("task_status"))
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        prompt = output.get("orig_prompt")
        return RemoteTask(
            task_id=str(output.get("task_id") or ""),
            status=status,
            progress=100 if status == "completed" else 0,  # the API tells no progress
            prompt=None if prompt is None else str(prompt),
            video_url=_text_or_none(output.get("video_url")) if status == "completed" else None,
            error_msg=self._redact(_failure(output)) if status == "failed" else None,
            cost=None,
            created_at=parse_timestamp(output.get("submit_time")),
            completed_at=parse_timestamp(output.get("end_time")),
            raw=MappingProxyType({**output, "usage": dict(usage)}),
        )

    def _listed(self, item: Mapping[str, Any]) -> RemoteTask:
        """A task as the batch query shows it: status and times, nothing more."""
        status = _status(item.get("status") or item.get("task_status"))
        return RemoteTask(task_id=str(item.get("task_id") or ""), status=status,
                          progress=100 if status == "completed" else 0, prompt=None,
                          video_url=None, error_msg=None, cost=None, created_at=parse_timestamp(item.get("gmt_create")),
                          completed_at=parse_timestamp(item.get("end_time")), raw=MappingProxyType(dict(item)))

    def _post(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """A POST with the async header (``_call`` sends no headers of a call's own). Never
        retried: a paid create that may have gone out is looked up, not sent again."""
        url = self.base_url + path
        self.backoff.wait()
        headers = {"Accept": "application/json", ASYNC_HEADER: "enable", **self._auth_headers()}
        try:
            resp = self._sent_once.post(url, json=body, headers=headers, timeout=self._timeout,
                                      proxies=self._proxies_for(url))  # type: ignore[arg-type]
        except requests.RequestException as exc:
            raise self._transport_error("POST", path, exc) from exc
        self._unreachable_since = None
        return self._unwrap("POST", path, resp)

    def _unwrap(self, method: str, path: str, resp: requests.Response) -> Mapping[str, Any]:
        """The body of a 2xx without an error ``code``; the mapped error otherwise."""
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        body = payload if isinstance(payload, Mapping) else {}
        code = str(body.get("code") or "").strip()
        if 200 <= resp.status_code < 300 and isinstance(payload, Mapping) and not code:
            return payload
        message = str(body.get("message") or "").strip()
        detail = f"{code}: {_snippet(message)}" if code else f"unexpected body: {_snippet(resp.text)!r}"
        raised = self._error_for(method, path, resp, code, message, detail)
        log.debug("%s", raised)
        raise raised

    def _error_for(self, method: str, path: str, resp: requests.Response, code: str, message: str,
                   detail: str) -> ApiError:
        status, where = resp.status_code, f"{method} {path}: HTTP {resp.status_code}"
        kind = _error_kind(method, path, code, status)
        if kind is AuthError:
            shown = mask_key(self._key) if self._key else "(no key set)"
            return AuthError(self._redact(f"{where}, the API key {shown} was rejected ({detail})"), http_status=status)
        if kind is RateLimited:
            return self._rate_limit_error(where, resp, detail, say_which=True)
        if kind is ContentRefused:  # the API's own words, verbatim: they are the job's reason
            return ContentRefused(self._redact(message or code))
        if kind is TransientError:
            suffix = "; the task may have been created" if method == "POST" else ""
            return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=method == "POST",
                                  http_status=status)
        said = _SAID.get(kind) if kind is not None else None
        if kind is None or said is None:
            return ApiError(self._redact(f"{where} ({detail})"), http_status=status)
        return kind(self._redact(f"{where}, {said} ({detail})"), http_status=status)

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> Optional[int]:
        """``GET /tasks?page_size=1``: proves the URL, the key and the proxy without spending
        anything. There is no balance to report (None)."""
        url = self.base_url + "/tasks"
        try:
            resp = session.get(url, params={"page_size": 1}, timeout=timeouts, proxies=self._proxies_for(url),  # type: ignore[arg-type]
                               headers={"Accept": "application/json", **self._auth_headers()})
        except requests.RequestException as exc:
            raise self._unreachable(exc, session, url, timeouts) from exc
        try:
            data = self._unwrap("GET", "/tasks", resp)
        except AuthError as exc:
            raise ConfigError(self._redact(f"the API key {mask_key(self._key or '')} was rejected "
                                           f"(HTTP {exc.http_status}): check {self.KEY_SETTING}")) from exc
        except RateLimited as exc:
            raise _Busy(f"GET /tasks: HTTP {resp.status_code}, rate limited",
                        wait=min(exc.retry_after or 0.5, 5.0)) from exc
        except InsufficientBalance:
            return None  # the key works; the first create will say the account is in arrears and stop the run
        except TransientError as exc:
            if exc.http_status is not None and exc.http_status < 500:
                raise self._not_the_api(resp) from exc
            raise _Busy(f"GET /tasks: HTTP {resp.status_code}, {_snippet(str(exc.message))}") from exc
        except ApiError as exc:
            if not _is_error_body(resp):
                raise self._not_the_api(resp) from exc
            raise ConfigError(self._redact(f"the pre-flight call failed: {exc}")) from exc
        if not isinstance(data.get("data"), list) and "total" not in data:
            raise self._not_the_api(resp)
        return None


# How the errors built alike describe themselves.
_SAID: Mapping[Type[ApiError], str] = {InsufficientBalance: "the account is in arrears",
                                       BadParameters: "bad parameters", TaskNotFound: "the API does not know this task"}


def _error_kind(method: str, path: str, code: str, status: int) -> Optional[Type[ApiError]]:
    """The error an answer is (``ERRORS``); None: an error of no known kind."""
    kind = ERRORS.get(code) or ERRORS.get(code.split(".")[0]) or ERRORS.get(status)
    if kind is None and (status >= 500 or 200 <= status < 300):
        return TransientError
    if kind is TaskNotFound and not (method == "GET" and path.startswith("/tasks/")):
        return None  # a 404 elsewhere is a wrong URL, not a task the API lost
    if kind is TaskNotFound and not code:
        return TransientError  # a 404 without DashScope's body: a proxy or load balancer's, not the task's end
    return kind


def _more(data: Mapping[str, Any], items: List[Mapping[str, Any]]) -> bool:
    """Whether pages follow a page of the batch query, by what the answer holds (not by what was
    asked: the API may cap ``page_size``): ``total_page``, else ``total`` over the answer's own page
    size (the entries of a full page when it tells none); an answer that tells neither is read
    until a page comes back empty."""
    if not items:
        return False
    page_no = _int_or_none(data.get("page_no")) or 1
    pages = _int_or_none(data.get("total_page"))
    if pages is not None:
        return page_no < pages
    total = _int_or_none(data.get("total"))
    if total is None:
        return True
    size = max(_int_or_none(data.get("page_size")) or 0, len(items))
    return (page_no - 1) * size + len(items) < total


def _by_id(items: List[Mapping[str, Any]]) -> Dict[str, Mapping[str, Any]]:
    """Entries by task id."""
    return {str(item.get("task_id") or ""): item for item in items}


def _status(word: Any) -> str:
    """The ledger's word for a status word of the API; an unknown one is itself (not finished)."""
    said = str(word or "").strip().upper()
    status = STATUSES.get(said)
    if status is None:
        _note_unknown(said)
        return said.lower() or "no status"
    return status


def _failure(output: Mapping[str, Any]) -> str:
    """A failed task's message verbatim (its code when it has none)."""
    message = str(output.get("message") or "").strip()
    code = str(output.get("code") or "").strip()
    word = str(output.get("task_status") or "").strip().upper()
    return message or code or f"the task ended {word} without a message"


def _query_window(since: datetime, until: Optional[datetime], skew_seconds: float) -> Tuple[datetime, datetime]:
    """The time window of a create sent from ``since`` to ``until`` (None: now), widened by
    ``skew_seconds`` and to whole seconds, in China time (the batch query's)."""
    skew = timedelta(seconds=skew_seconds)
    start = (_aware(since) - skew).astimezone(SERVICE_TZ).replace(microsecond=0)
    end = (_aware(until or datetime.now(timezone.utc)) + skew + timedelta(seconds=1)).astimezone(SERVICE_TZ)
    return start, end.replace(microsecond=0)


def _made_within(item: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    """Whether a listed task was made in the window (one without a time may have been): an API
    that ignored the time filter does not get every task of the day asked for its prompt."""
    made = parse_timestamp(item.get("gmt_create"))
    return made is None or start <= made <= end


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are UTC (the ledger's)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _is_error_body(resp: requests.Response) -> bool:
    try:
        payload = resp.json()
    except ValueError:
        return False
    return isinstance(payload, Mapping) and bool(payload.get("code"))


def _note_unknown(word: str) -> None:
    """An unknown status word is logged once per process and treated as "not finished"."""
    with _unknown_lock:
        if word in _unknown_words:
            return
        _unknown_words.add(word)
    log.warning("the %s API answered an unknown status %r; taken as not finished and polled again", NAME, word)


OPTIONS = (
    Option("DASHSCOPE_API_KEY", "dashscope_api_key", secret_setting, secret=True),
    Option("DASHSCOPE_BASE_URL", "dashscope_base_url", url_setting, default=DEFAULT_BASE_URL,
           url_example=DEFAULT_BASE_URL),
    Option("WAN_PRICES", "wan_prices", price_overrides, default=()),
)

REGISTRATION = Registration(
    name=NAME, rules=RULES, open=WanClient.open, base_url=lambda settings: settings.option("dashscope_base_url"),
    tariff=tariff, currency=CURRENCY, key_env="DASHSCOPE_API_KEY", url_env="DASHSCOPE_BASE_URL", options=OPTIONS,
    storyboard_options=STORYBOARD_OPTIONS, sim="wan")
