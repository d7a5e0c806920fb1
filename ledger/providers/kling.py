"""The Kling (可灵) official API: ``https://api-beijing.klingai.com/v1``.

Facts this module is built on (``/work/shared/video-apis-facts.md``, "Kling (official)"):
``POST /videos/text2video`` or ``/videos/image2video`` creates (paid: credits are taken at once)
and takes ``external_task_id``, a client reference "unique within your account";
``GET /videos/{kind}/{task_id}`` polls, ``GET /videos/{kind}?pageNum&pageSize`` lists; answers are
``{"code", "message", "request_id", "data"}`` envelopes with an HTTP status, code 0 meaning
success; statuses ``submitted|processing|succeed|failed`` with the reason in
``task_status_msg``; no progress; videos at ``task_result.videos[].url``, cleaned after 30 days;
``GET /account/costs`` (at the domain root) tells the units left in the resource packs, up to 12 h
late (taken as ¥1 each, as the price list is; shown with ``balance_caveat``). Auth is a Bearer API key,
or a Bearer JWT (HS256, ``iss`` = the access key) signed with the secret key.

Paid once by construction: every create carries the attempt's own ``ref`` as
``external_task_id``, and a create whose answer was lost is looked up by it — no list scan. The
copies of the documentation disagree on the look-up's form (``?external_task_id=`` on the list, or
the external id in the task path): both are tried (``find_tasks``).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple, Union
from urllib.parse import quote

import jwt
import requests

from ..client import (PREFLIGHT_PAUSE, PREFLIGHT_TIMEOUT, ApiClient, RemoteTask, TaskSearch, _Busy,
                      _snippet, parse_timestamp, task_id_problem)
from ..errors import (ApiError, AuthError, BadParameters, ConfigError, ContentRefused, InsufficientBalance,
                      InvalidTaskId, RateLimited, TaskNotFound, TransientError)
from ..money import rate as money_rate
from ..redact import mask_key
from ..settings import Option, Settings, secret_setting, url_setting
from .base import Mapped, Mismatch, Registration, Request, TaskPage

log = logging.getLogger(__name__)

NAME = "kling"
DEFAULT_BASE_URL = "https://api-beijing.klingai.com/v1"
TEXT, IMAGE = "text2video", "image2video"  # the two kinds of task, each with its own paths
KINDS = (TEXT, IMAGE)


@dataclass(frozen=True)
class KlingModel:
    """What one model takes: durations in seconds (sent as strings), the modes in which it takes
    ``sound: on`` (none: a silent model, which takes no ``sound`` at all), and whether it takes
    ``cfg_scale``."""

    name: str
    sound_modes: Tuple[str, ...] = ()
    durations: Tuple[int, ...] = (5, 10)
    default_duration: int = 5
    cfg_scale: bool = False

    @property
    def sound(self) -> bool:
        return bool(self.sound_modes)


DEFAULT_MODEL = "kling-v2-5-turbo"
# Sources: the official Chinese doc pages as mirrored in WHQ25/rawgenai docs/research/kling/ (git
# commit b3f9cef, 2026-02-03): text-to-video.md (model_name enum; duration "5"/"10"; sound "仅V2.6及后续版本模型
# 支持"; cfg_scale "kling-v2.x模型不支持") and capability-map.md (kling-v2-5-turbo std/pro 5 s,
# 10 s; kling-v2-6 std "仅无声视频", 声音控制 in pro only); kling-v3 from the gateways that copy the
# official v3 table (docs.cloudsway.net MaaS_KL_v3: std/pro 3~15 s; docs.anyfast.ai: duration 3-15).
MODELS: Mapping[str, KlingModel] = {m.name: m for m in (
    KlingModel(DEFAULT_MODEL),
    KlingModel("kling-v2-6", sound_modes=("pro",)),  # std makes silent videos only
    KlingModel("kling-v2-1-master"),
    # [I] sound in both modes and cfg_scale: no source says v3 lacks them (the pages name v2.x only).
    KlingModel("kling-v3", sound_modes=("std", "pro"), durations=tuple(range(3, 16)), cfg_scale=True),
)}
# The storyboard's resolution → the aspect_ratio sent (text2video only: an image sets its own frame).
ASPECT_RATIOS: Mapping[str, str] = {"horizontal": "16:9", "vertical": "9:16", "16:9": "16:9", "9:16": "9:16",
                                    "1:1": "1:1"}
MODES = ("std", "pro")
SOUNDS = ("on", "off")
MAX_TEXT = 2500  # characters of prompt and of negative_prompt
# Fen per second of video by tier (1 credit = ¥1; std ¥0.6/s silent, ¥0.8/s with sound; pro ¥0.8, ¥1.0).
DEFAULT_PRICES: Mapping[str, float] = {"std": 60, "pro": 80, "std+sound": 80, "pro+sound": 100}
# Every status word the API says, as the ledger's four. An unknown word is "not finished". The
# /v1/videos API answers "succeed"; Kling's newer API generation (POST /text-to-video/kling-2.6,
# GET /tasks?external_task_ids=) answers "succeeded" for the same: both are done.
STATUSES: Mapping[str, str] = {"submitted": "pending", "processing": "processing", "succeed": "completed",
                               "succeeded": "completed", "failed": "failed"}
# What each error code means (the envelope's ``code``; the HTTP status speaks only for codes not here).
AUTH, BALANCE, PARAMETERS, REFUSED, RATE, NOT_FOUND, TRANSIENT, OTHER = (
    "auth", "balance", "parameters", "refused", "rate_limited", "not_found", "transient", "other")
# The official 错误码 table (mirror: WHQ25/rawgenai@b3f9cef docs/research/kling/common-info.md).
ERRORS: Mapping[int, str] = {
    1000: AUTH, 1001: AUTH, 1002: AUTH, 1003: AUTH, 1004: AUTH,
    1100: BALANCE, 1101: BALANCE, 1102: BALANCE,  # account abnormal, in arrears; resource pack exhausted
    1103: AUTH,  # HTTP 403: the account may not use this interface or model; no job of it can go
    1200: PARAMETERS, 1201: PARAMETERS,
    1202: PARAMETERS,  # HTTP 404: "the request method is invalid": not a missing task
    1203: NOT_FOUND,  # "the requested resource does not exist, such as the model"
    1300: REFUSED, 1301: REFUSED,  # platform policy, content security: nothing is created
    1302: RATE, 1303: RATE,  # rate limit, concurrency limit
    1304: AUTH,  # HTTP 429: the platform's IP allow-list refuses this machine; waiting does not help
}
SERVER_CODES = 5000  # 5000 and above: the service's own trouble
_BY_STATUS: Mapping[int, str] = {400: PARAMETERS, 401: AUTH, 404: NOT_FOUND, 429: RATE}
RETENTION = 30 * 86400.0  # "cleaned after 30 days"
LIST_LIMIT = 500  # the largest pageSize
LAST_PAGE = 1000  # the largest pageNum
# The account costs are at the domain root (the official "Account Information Inquiry" page:
# https://api-beijing.klingai.com/account/costs), not under the API's /v1: asked there first, then
# under the base URL on a 404 (one third-party test expects /v1/account/costs).
COSTS = "/account/costs"
API_PATH = "/v1"
COSTS_WINDOW_MS = 365 * 86400 * 1000  # packs are asked for over the past year, which any valid pack overlaps
TOKEN_SECONDS = 1800  # a JWT's life
TOKEN_RENEW = 300  # a JWT is renewed this long before it expires
TOKEN_NBF_SKEW = 5  # a JWT is valid from this long before it was made (the service's clock may lag)
# Errors that say nothing about whether a look-up form is understood: they end the look-up.
_TROUBLE = (AuthError, InsufficientBalance, TransientError)
_TASK_PATH = re.compile(r"^/videos/(text2video|image2video)/[^/]+$")

_unknown_words: Set[str] = set()
_unknown_lock = threading.Lock()


# --- storyboard → parameters ----------------------------------------------------------------------


class KlingRules:
    """Storyboard fields → a create: ``model`` the model (default kling-v2-5-turbo),
    ``duration_seconds`` what the model takes (5 or 10; 3 to 15 on kling-v3), ``resolution`` the
    aspect ratio, ``image_url`` the first frame (an image2video task), ``is_pro`` or ``quality:
    high`` the pro mode; the ``kling`` block adds ``mode``, ``negative_prompt``, ``cfg_scale`` and
    ``sound``. Values the schema already refuses (a mode that is not std or pro) are the schema's to
    report, not repeated here."""

    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        model = MODELS.get(request.model or DEFAULT_MODEL)
        if model is None:
            return [Mismatch("model", f"model {request.model!r} is not offered by the {NAME} provider; use one of "
                                      f"{', '.join(map(repr, MODELS))}")]
        problems = _offered(model, request)
        mode = _mode(request, problems)
        sound = _sound(model, mode, request.options, problems)
        if "cfg_scale" in request.options and not model.cfg_scale:
            takers = ", ".join(m.name for m in MODELS.values() if m.cfg_scale)
            problems.append(Mismatch(NAME, f"cfg_scale is not taken by the kling-v2.x models ({model.name}); "
                                           f"only by {takers}: drop it"))
        if problems:
            return problems
        seconds = model.default_duration if request.duration is None else request.duration
        params: Dict[str, Any] = {"provider": NAME, "model": model.name, "prompt": request.prompt,
                                  "duration": seconds, "mode": mode, "is_pro": mode == "pro"}
        if request.image_url:
            params["image_url"] = request.image_url
        else:
            params.update(resolution=request.resolution, aspect_ratio=ASPECT_RATIOS[request.resolution])
        if sound is not None:
            params["sound"] = sound
        params.update({key: request.options[key] for key in ("negative_prompt", "cfg_scale") if key in request.options})
        return Mapped(params, mode == "pro", self.price_key(params))

    def price_key(self, params: Mapping[str, Any]) -> str:
        """``tier:seconds`` (``std:5``, ``pro+sound:10``): what the per-second price list needs."""
        return f"{tier_of(params)}:{params['duration']}"


def _offered(model: KlingModel, request: Request) -> List[Mismatch]:
    """The request's duration, resolution and prompt length, where ``model`` does not take them."""
    problems: List[Mismatch] = []
    seconds = model.default_duration if request.duration is None else request.duration
    where = f"offered by {model.name} on the {NAME} provider; use one of"
    if seconds not in model.durations:
        problems.append(Mismatch("duration_seconds", f"duration {seconds}s is not {where} "
                                                     f"{', '.join(map(str, model.durations))}"))
    if request.resolution not in ASPECT_RATIOS:
        offered = ", ".join(repr(name) + (f" ({ratio})" if name != ratio else "")
                            for name, ratio in ASPECT_RATIOS.items())
        problems.append(Mismatch("resolution", f"resolution {request.resolution!r} is not {where} {offered}"))
    if len(request.prompt) > MAX_TEXT:
        problems.append(Mismatch("prompt_text", f"the prompt has {len(request.prompt):,} characters; the {NAME} "
                                                f"provider takes at most {MAX_TEXT:,}"))
    return problems


def _mode(request: Request, problems: List[Mismatch]) -> str:
    """The block's ``mode`` when it names one, else pro for ``is_pro`` or ``quality: high``."""
    named = request.options.get("mode")
    if named not in MODES:
        return "pro" if request.is_pro or request.quality == "high" else "std"
    if named == "std" and request.is_pro:
        problems.append(Mismatch(NAME, "is_pro is true, but the kling block says mode 'std'; drop one of the two"))
    return str(named)


def _sound(model: KlingModel, mode: str, options: Mapping[str, Any], problems: List[Mismatch]) -> Optional[str]:
    """``on``/``off`` for a model that takes ``sound`` (off unless the block says on); None otherwise."""
    if model.sound:
        if options.get("sound") == "on" and mode not in model.sound_modes:
            problems.append(Mismatch(NAME, f"sound 'on' is taken by {model.name} in {' or '.join(model.sound_modes)} "
                                           f"mode only; set mode '{model.sound_modes[-1]}' (or is_pro: true), or "
                                           "sound 'off'"))
        return "on" if options.get("sound") == "on" else "off"
    if "sound" in options:
        takers = ", ".join(m.name for m in MODELS.values() if m.sound)
        problems.append(Mismatch(NAME, f"sound is taken only by {takers}; {model.name} makes silent videos"))
    return None


def tier_of(params: Mapping[str, Any]) -> str:
    """``std``, ``pro``, ``std+sound`` or ``pro+sound``: the price tier of stored parameters."""
    return f"{params['mode']}+sound" if params.get("sound") == "on" else str(params["mode"])


def kind_of(params: Mapping[str, Any]) -> str:
    """The kind of task stored parameters make: image2video with a first frame, else text2video."""
    return IMAGE if params.get("image_url") else TEXT


def request_body(params: Mapping[str, Any], ref: str = "") -> Dict[str, Any]:
    """The JSON body of the create for stored parameters; ``ref`` goes as ``external_task_id``."""
    body: Dict[str, Any] = {"model_name": params["model"], "prompt": params["prompt"], "mode": params["mode"],
                            "duration": str(params["duration"])}
    if params.get("image_url"):
        body["image"] = params["image_url"]
    else:
        body["aspect_ratio"] = params["aspect_ratio"]
    body.update({key: params[key] for key in ("negative_prompt", "cfg_scale", "sound") if key in params})
    if ref:
        body["external_task_id"] = ref
    return body


RULES = KlingRules()
STORYBOARD_OPTIONS: Mapping[str, Any] = {"properties": {
    "mode": {"description": "std or pro (is_pro: true or quality: high mean pro); pro costs more.",
             "enum": list(MODES)},
    "negative_prompt": {"description": "What the video must not show.", "type": "string", "maxLength": MAX_TEXT},
    "cfg_scale": {"description": "How closely the video follows the prompt, 0 to 1 (kling-v3; the kling-v2.x "
                               "models do not take it).", "type": "number",
                  "minimum": 0, "maximum": 1},
    "sound": {"description": "on or off: a soundtrack, on the models that make one (kling-v2-6 in pro mode, "
                             "kling-v3); costs more.", "enum": list(SOUNDS)},
}}


# --- money -----------------------------------------------------------------------------------------


_PRICE_ENTRY = re.compile(r"^\s*((?:std|pro)(?:\+sound)?)\s*[=:]\s*([0-9]+(?:\.[0-9]+)?)\s*$")


def price_overrides(text: Any) -> Tuple[Tuple[str, float], ...]:
    """``std=60, pro+sound=100`` (fen per second by tier), or a mapping of the same from config.yaml."""
    entries = [f"{k}={v}" for k, v in text.items()] if isinstance(text, Mapping) else \
        [part for part in str(text).split(",") if part.strip()]
    table = []
    for entry in entries:
        match = _PRICE_ENTRY.match(entry)
        if match is None:
            raise ValueError(f"expected TIER=FEN_PER_SECOND with TIER one of {', '.join(DEFAULT_PRICES)}, "
                             f"got {entry.strip()!r}")
        table.append((match.group(1), float(match.group(2))))
    return tuple(table)


BUILT_IN_PRICES = "the built-in price list; KLING_PRICES overrides it"


@dataclass(frozen=True)
class PerSecond:
    """Kling's price list: fen per second of video by tier."""

    rates: Mapping[str, float]
    source: str = BUILT_IN_PRICES
    currency: str = "CNY"

    def price(self, key: str) -> int:
        """Fen for one job by its price key (``tier:seconds``)."""
        tier, seconds = key.rsplit(":", 1)
        return round(self.rates[tier] * int(seconds))

    def describe(self) -> str:
        """``kling std ¥0.60/s, pro ¥0.80/s, … (from …)``."""
        rates = ", ".join(f"{tier} {money_rate(fen, 'CNY')}/s" for tier, fen in self.rates.items())
        return f"{NAME} {rates} ({self.source})"


# --- settings --------------------------------------------------------------------------------------


API_KEY = Option("KLING_API_KEY", "kling_api_key", secret_setting, secret=True)
ACCESS_KEY = Option("KLING_ACCESS_KEY", "kling_access_key", secret_setting, secret=True)
SECRET_KEY = Option("KLING_SECRET_KEY", "kling_secret_key", secret_setting, secret=True)
BASE_URL = Option("KLING_BASE_URL", "kling_base_url", url_setting, DEFAULT_BASE_URL, url_example=DEFAULT_BASE_URL)
PRICES = Option("KLING_PRICES", "kling_prices", price_overrides, ())
CREDENTIALS = f"{API_KEY.env}, or {ACCESS_KEY.env} and {SECRET_KEY.env}"


def tariff(settings: Settings) -> PerSecond:
    """The built-in price list with the settings' overrides on top."""
    overrides = dict(settings.option(PRICES.key) or ())
    source = "the built-in price list with KLING_PRICES" if overrides else BUILT_IN_PRICES
    return PerSecond(MappingProxyType({**DEFAULT_PRICES, **overrides}), source)


# --- the client ------------------------------------------------------------------------------------


class _Signer:
    """HS256 JWTs of an access key, each made when the last is within ``TOKEN_RENEW`` of expiring."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._expires = 0.0

    def token(self) -> str:
        """A token valid for at least ``TOKEN_RENEW`` seconds more."""
        with self._lock:
            now = time.time()
            if self._token is None or now >= self._expires - TOKEN_RENEW:
                self._expires = now + TOKEN_SECONDS
                claims = {"iss": self.access_key, "exp": int(self._expires), "nbf": int(now) - TOKEN_NBF_SKEW}
                self._token = jwt.encode(claims, self.secret_key, algorithm="HS256", headers={"typ": "JWT"})
            return self._token

    @property
    def current(self) -> Optional[str]:
        """The last token made (a server may echo it: it is masked like a key)."""
        return self._token


class _Lookup(NamedTuple):
    """What one form of the look-up by ``external_task_id`` said: the task, or that there is none
    (``absent``), or neither (``unclear`` says why)."""

    task: Optional[RemoteTask] = None
    absent: bool = False
    unclear: str = ""


class KlingClient(ApiClient):
    """A client of one Kling API. Safe to share between threads."""

    name = NAME
    balance_refusal = "codes 1100-1102: account in arrears or resource pack exhausted"
    # The official page: the remaining quantity is in resource-pack units and "has a 12h delay".
    balance_caveat = "Kling resource-pack units taken as ¥1 each; Kling's figure lags up to 12 h"
    reports_cost = False  # a create's answer tells no price; a finished task's final_unit_deduction does
    bills_on_success = False  # credits are taken at the create; a refund of a failed task is undocumented
    tells_progress = False  # status answers tell no progress
    retention = RETENTION
    KEY_SETTING = API_KEY.env
    KEY_EXAMPLE = "..."
    URL_SETTING = BASE_URL.env
    PREFLIGHT_CALL = f"GET {COSTS}"
    API_TITLE = "the Kling API"
    URL_FIELD = BASE_URL.key
    KEY_FIELD = API_KEY.key

    def __init__(self, base_url: str, api_key: Optional[str], **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._access_key: Optional[str] = None
        self._secret_key: Optional[str] = None
        self._signer: Optional[_Signer] = None
        # Which kind (text2video / image2video) each task is: its paths say it, its id does not.
        self._kinds: Dict[str, str] = {}
        self._kinds_lock = threading.Lock()
        self._costs_url: Optional[str] = None  # where GET /account/costs answered

    @classmethod
    def open(cls, settings: Settings, base_url: Optional[str] = None, pool_size: Optional[int] = None) -> "KlingClient":
        """A client from ``settings`` (``base_url``: the API a job was sent to, if not the configured one)."""
        client = cls.from_settings(settings, base_url=base_url, pool_size=pool_size)
        client.sign_with(settings.option(ACCESS_KEY.key), settings.option(SECRET_KEY.key))
        return client

    def sign_with(self, access_key: Optional[str], secret_key: Optional[str]) -> None:
        """Authenticate with JWTs of this access key and secret key when no API key is set (an API
        key works for every model; an access key only for models up to 3.0). Call before sharing."""
        self._access_key, self._secret_key = access_key, secret_key
        self._signer = _Signer(access_key, secret_key) if access_key and secret_key and not self._key else None

    # --- the calls ---------------------------------------------------------------------------------

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """``POST /videos/{kind}`` with ``external_task_id`` = ``ref``. Never re-sent once it may have
        reached the API: a lost answer is looked up by ``ref`` (``find_tasks``)."""
        kind = kind_of(params)
        data = self._call("POST", f"/videos/{kind}", body=request_body(params, ref))
        if not isinstance(data, Mapping) or not data.get("task_id"):
            raise TransientError(self._redact(f"POST /videos/{kind}: answer without a task_id: "
                                              f"{_snippet(repr(data))}; the task may have been created"),
                                 maybe_created=True)
        task = self._task(data)
        problem = task_id_problem(task.task_id)
        if problem:
            raise InvalidTaskId(self._redact(f"POST /videos/{kind}: the task was created and billed, but its id "
                                             f"{_snippet(repr(task.task_id))} {problem}"))
        self._remember(task.task_id, kind)
        return dataclasses.replace(task, prompt=str(params["prompt"]))

    def get(self, task_id: str) -> RemoteTask:
        """``GET /videos/{kind}/{id}``: of the kind it is known to be, else text2video, then image2video."""
        known = self._kind(task_id)
        missing: Optional[TaskNotFound] = None
        for kind in (known,) if known else KINDS:
            try:
                data = self._call("GET", f"/videos/{kind}/{quote(task_id, safe='')}")
            except TaskNotFound as exc:
                missing = exc
                continue
            self._remember(task_id, kind)
            return self._checked(data, f"GET /videos/{kind}/{task_id}", task_id)
        assert missing is not None
        raise missing

    def recent(self, cursor: Optional[str], limit: int = LIST_LIMIT) -> TaskPage:
        """Page ``cursor`` (a page number) of both kinds' lists, merged newest first; there is a
        next page while either list filled this one."""
        page, size = int(cursor or 1), max(1, min(limit, LIST_LIMIT))
        tasks: List[RemoteTask] = []
        full = False
        for kind in KINDS:
            listed = self._list(kind, {"pageNum": page, "pageSize": size})
            tasks += listed
            full = full or len(listed) >= size
        tasks.sort(key=lambda t: t.created_at.timestamp() if t.created_at else float("-inf"), reverse=True)
        return TaskPage(tasks, str(page + 1) if full and page < LAST_PAGE else None)

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """The task the create of attempt ``ref`` made, looked up by its ``external_task_id`` (the
        time window is not needed): ``GET /videos/{kind}?external_task_id=`` (reading A), then
        ``GET /videos/{kind}/{ref}`` (reading B). "Not created" (``covered``) needs a form whose
        answer is unambiguous to say so: A's empty list (an API that ignores the filter answers
        other tasks). B's "no such task" alone is not: an API that does not take an external id in
        the path says the same of any id. Then the list of the create's kind of task is read back
        past the create's time (each task shows its ``external_task_id``), and only a list read that
        far proves that no task was made."""
        if not ref:
            return TaskSearch([], False, 0, "the create carried no external_task_id to look it up by", final=True)
        kind = kind_of(params)
        by_query = self._by_query(kind, ref)
        if by_query.task is not None:
            return TaskSearch([by_query.task], True, 1)
        by_path = self._by_path(kind, ref)
        if by_path.task is not None:
            return TaskSearch([by_path.task], True, 2)
        if by_query.absent:
            return TaskSearch([], True, 2)
        scan, pages = self._by_scan(kind, ref, since, skew_seconds)
        if scan.task is not None:
            return TaskSearch([scan.task], True, 2 + pages)
        if scan.absent:
            return TaskSearch([], True, 2 + pages)
        path = by_path.unclear or "the task path answered that no such task exists (by task id or by external id?)"
        return TaskSearch([], False, 2 + pages, f"no look-up by external_task_id {ref} was conclusive: "
                                                f"{by_query.unclear}; {path}; {scan.unclear}")

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """A task found by the attempt's own ``external_task_id`` is that attempt's: nothing else
        carries it (and a task view shows neither prompt nor model to compare)."""
        return True

    def balance(self) -> Optional[int]:
        """The credits left in the resource packs valid now, in fen (1 credit taken as ¥1; the
        figure lags up to 12 h: ``balance_caveat``)."""
        urls = self._costs_urls()
        data: Any = None
        for url in urls:
            self.backoff.wait()
            try:
                data = self._call_once("GET", COSTS, url, _costs_window(), None)
            except ApiError as exc:
                if exc.http_status == 404 and url != urls[-1]:
                    continue
                raise
            self._costs_url = url
            break
        fen = packs_fen(data)
        if fen is None:
            raise ApiError(self._redact(f"GET {COSTS}: unexpected answer: {_snippet(repr(data))}"))
        return fen

    def preflight(self, *, timeout: Tuple[float, float] = PREFLIGHT_TIMEOUT) -> Any:
        """As ``ApiClient.preflight``; without credentials, one line names the settings to set."""
        if not self._has_credentials():
            raise ConfigError(f"{self._missing_credentials()}: set {CREDENTIALS} in .env")
        return super().preflight(timeout=timeout)

    # --- look-ups by external_task_id ----------------------------------------------------------------

    def _by_query(self, kind: str, ref: str) -> _Lookup:
        """Reading A: ``GET /videos/{kind}?external_task_id=``, answered with the one task object
        (the official page: "as the query by task id") or with a list of the tasks that match
        (a gateway's reading); either form is taken."""
        try:
            data = self._call("GET", f"/videos/{kind}", params={"external_task_id": ref})
        except _TROUBLE:
            raise
        except ApiError as exc:
            return _Lookup(unclear=f"the filter was refused ({exc})")
        if isinstance(data, Mapping) and data.get("task_id"):
            data = [data]
        items = data if isinstance(data, list) else None
        if items is None:
            return _Lookup(unclear=f"GET /videos/{kind}?external_task_id= answered {_snippet(repr(data))}")
        tasks = [self._listed(item, kind) for item in items if isinstance(item, Mapping)]
        mine = [task for task in tasks if _external_id(task) == ref and not task_id_problem(task.task_id)]
        if mine:
            return _Lookup(task=mine[0])
        return _Lookup(absent=True) if not items else \
            _Lookup(unclear=f"the filter was ignored (it answered {len(items)} other task(s))")

    def _by_scan(self, kind: str, ref: str, since: datetime, skew_seconds: float,
                 max_pages: int = 200) -> Tuple[_Lookup, int]:
        """The create's own kind of task, listed newest first and read back past ``since`` (less the
        clock skew): the one that carries ``ref`` as its external id, or — read that far, every task
        there showing its external id — that there is none. One kind's list alone: merged with the
        other kind's, an older task of that one ended the read before this one's later pages (paid
        twice on a busy account). A page holding fewer tasks than asked is not taken for the last:
        only an empty one is. Returns the look-up and the pages read."""
        start = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)) - timedelta(seconds=skew_seconds)
        silent = 0
        for page in range(1, min(max_pages, LAST_PAGE) + 1):
            try:
                tasks = self._list(kind, {"pageNum": page, "pageSize": LIST_LIMIT})
            except _TROUBLE:
                raise
            except ApiError as exc:
                return _Lookup(unclear=f"the task list could not be read ({exc})"), page
            mine = [task for task in tasks if _external_id(task) == ref]
            if mine:
                return _Lookup(task=mine[0]), page
            newer = [t for t in tasks if t.created_at is None or t.created_at >= start]
            # a task made without a reference shows an empty task_info; one without it says nothing
            silent += sum(1 for t in newer if not isinstance(t.raw.get("task_info"), Mapping))
            if not tasks or len(newer) < len(tasks):
                if silent:
                    return _Lookup(unclear=f"the task list shows {silent} task(s) from the create's time "
                                           "without their external_task_id"), page
                return _Lookup(absent=True), page
        return _Lookup(unclear=f"the {kind} list was not read back past the create's time in {max_pages} pages"), \
            max_pages

    def _by_path(self, kind: str, ref: str) -> _Lookup:
        """Reading B: the external id in the task path."""
        path = f"/videos/{kind}/{quote(ref, safe='')}"
        try:
            data = self._call("GET", path)
        except TaskNotFound:
            return _Lookup(absent=True)
        except _TROUBLE:
            raise
        except ApiError as exc:
            return _Lookup(unclear=f"the path form was refused ({exc})")
        task = self._checked(data, f"GET {path}", "")
        if _external_id(task) != ref or task_id_problem(task.task_id):  # no task_info: cannot tell it is ours
            return _Lookup(unclear=f"GET {path} answered another task ({_snippet(task.task_id)})")
        self._remember(task.task_id, kind)
        return _Lookup(task=task)

    # --- answers -----------------------------------------------------------------------------------

    def _list(self, kind: str, query: Mapping[str, Any]) -> List[RemoteTask]:
        data = self._call("GET", f"/videos/{kind}", params=query)
        if not isinstance(data, list):
            raise TransientError(self._redact(f"GET /videos/{kind}: unexpected page shape: {_snippet(repr(data))}"))
        return [self._listed(item, kind) for item in data if isinstance(item, Mapping)]

    def _listed(self, item: Mapping[str, Any], kind: str) -> RemoteTask:
        task = self._task(item)
        self._remember(task.task_id, kind)
        return task

    def _checked(self, data: Any, where: str, task_id: str) -> RemoteTask:
        if not isinstance(data, Mapping):
            raise TransientError(self._redact(f"{where}: unexpected answer: {_snippet(repr(data))}"))
        task = self._task(data)
        return task if task.task_id or not task_id else dataclasses.replace(task, task_id=task_id)

    def _task(self, data: Mapping[str, Any]) -> RemoteTask:
        word = str(data.get("task_status") or "").strip().lower()
        status = STATUSES.get(word) or _note_unknown(word)
        message = str(data.get("task_status_msg") or "").strip()
        terminal = status in ("completed", "failed")
        return RemoteTask(
            task_id=str(data.get("task_id") or ""),
            status=status,
            progress=100 if status == "completed" else 0,  # the API tells no progress
            prompt=None,
            video_url=_video_url(data) if status == "completed" else None,
            error_msg=self._redact(message) if message and status == "failed" else None,
            cost=_deduction_fen(data) if status == "completed" else None,
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("updated_at")) if terminal else None,
            raw=MappingProxyType(dict(data)),
        )

    def _remember(self, task_id: str, kind: str) -> None:
        with self._kinds_lock:
            self._kinds[task_id] = kind

    def _kind(self, task_id: str) -> Optional[str]:
        with self._kinds_lock:
            return self._kinds.get(task_id)

    def _unwrap(self, method: str, path: str, resp: requests.Response) -> Any:
        """The envelope's ``data`` of an answer with code 0; the mapped error otherwise."""
        envelope = _envelope(resp)
        code = _int_or_none(envelope.get("code"))
        if code == 0 and 200 <= resp.status_code < 300:
            return envelope.get("data")
        message = str(envelope.get("message") or "").strip()
        if code is None:
            detail = f"unexpected body: {_snippet(resp.text)!r}"
        else:
            request_id = envelope.get("request_id")
            detail = f"code {code}: {_snippet(message)}" + (f", request_id {request_id}" if request_id else "")
        error = self._error_for(method, path, resp, code, message, detail)
        log.debug("%s", error)
        raise error

    def _error_for(self, method: str, path: str, resp: requests.Response, code: Optional[int], message: str,
                   detail: str) -> ApiError:
        status = resp.status_code
        where = f"{method} {path}: HTTP {status}"
        outcome = outcome_of(code, status)
        if outcome == AUTH:
            return AuthError(self._redact(f"{where}, {self._credential()} was rejected ({detail})"), code=code,
                             http_status=status)
        if outcome == BALANCE:
            return InsufficientBalance(self._redact(f"{where}, the account cannot pay ({detail})"), code=code,
                                       http_status=status)
        if outcome == PARAMETERS:
            return BadParameters(self._redact(f"{where}, bad parameters ({detail})"), code=code, http_status=status)
        if outcome == REFUSED:  # the API's own words, verbatim: they are the job's reason
            return ContentRefused(self._redact(message or detail))
        if outcome == RATE:
            return self._rate_limit_error(where, resp, detail, code)
        if outcome == NOT_FOUND and method == "GET" and _TASK_PATH.match(path) and code is None:
            # Not Kling's envelope: a proxy or load balancer answered, not the task's end.
            return self._not_the_apis_404(where, detail, status)
        if outcome == NOT_FOUND and method == "GET" and _TASK_PATH.match(path):
            return TaskNotFound(self._redact(f"{where}, the API does not know this task ({detail})"), code=code,
                                http_status=status)
        if outcome == TRANSIENT:
            suffix = "; the task may have been created" if method == "POST" else ""
            return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=method == "POST",
                                  code=code, http_status=status)
        return ApiError(self._redact(f"{where} ({detail})"), code=code, http_status=status)

    # --- credentials and the pre-flight -----------------------------------------------------------

    def _has_credentials(self) -> bool:
        return bool(self._key or self._signer)

    def _auth_headers(self) -> Dict[str, str]:
        if self._key:
            return {"Authorization": f"Bearer {self._key}"}
        return {"Authorization": f"Bearer {self._signer.token()}"} if self._signer else {}

    def _secrets(self) -> List[Optional[str]]:
        return [self._key, self._access_key, self._secret_key, self._signer.current if self._signer else None]

    def _missing_credentials(self) -> str:
        if bool(self._access_key) != bool(self._secret_key):
            given, missing = (ACCESS_KEY, SECRET_KEY) if self._access_key else (SECRET_KEY, ACCESS_KEY)
            return f"{given.env} is set but {missing.env} is not"
        return "no Kling key is set"

    def _credential(self) -> str:
        """The credential in use, as messages name it (never its secret part)."""
        if self._key:
            return f"the API key {mask_key(self._key)}"
        if self._signer:
            return f"the JWT of the access key {mask_key(self._signer.access_key)}"
        return "the call without a key"

    def _costs_urls(self) -> List[str]:
        """Where ``GET /account/costs`` is asked: where it answered before, else at the domain root
        (the base URL without its ``/v1``), then under the base URL."""
        if self._costs_url:
            return [self._costs_url]
        root = self.base_url[:-len(API_PATH)] if self.base_url.endswith(API_PATH) else self.base_url
        return list(dict.fromkeys((root + COSTS, self.base_url + COSTS)))

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> Optional[int]:
        """``GET /account/costs``: proves the URL, the credentials and the proxy, and tells the balance."""
        urls = self._costs_urls()
        for url in urls:
            proxies: Any = self._proxies_for(url)  # None entries mean "direct", which requests' stubs do not say
            try:
                resp = session.get(url, params=_costs_window(), timeout=timeouts, proxies=proxies,
                                   headers={"Accept": "application/json", **self._auth_headers()})
            except requests.RequestException as exc:
                raise self._unreachable(exc, session, url, timeouts) from exc
            if resp.status_code != 404 or url == urls[-1]:
                break
        try:
            data = self._unwrap("GET", COSTS, resp)
        except AuthError as exc:
            which = API_KEY.env if self._key else f"{ACCESS_KEY.env} and {SECRET_KEY.env}"
            fix = {1103: "the account may not use this interface: check its permissions in Kling's console",
                   1304: "Kling's IP allow-list refuses this machine: add its address in Kling's console"
                   }.get(exc.code or 0, f"check {which}")
            raise ConfigError(self._redact(f"{self._credential()} was rejected (code {exc.code or exc.http_status}): "
                                           f"{fix}")) from exc
        except RateLimited as exc:
            raise _Busy(f"GET {COSTS}: HTTP {resp.status_code}, rate limited",
                        wait=min(exc.retry_after or PREFLIGHT_PAUSE, 5.0)) from exc
        except InsufficientBalance:
            return None  # the credentials work; the first create will say the account cannot pay and stop
        except TransientError as exc:
            if exc.http_status is not None and exc.http_status < 500 and exc.code is None:
                raise self._not_the_api(resp) from exc
            raise _Busy(f"GET {COSTS}: HTTP {resp.status_code}, {_snippet(str(exc.message))}") from exc
        except ApiError as exc:
            if exc.code is None:
                raise self._not_the_api(resp) from exc
            raise ConfigError(self._redact(f"the pre-flight call failed: {exc}")) from exc
        fen = packs_fen(data)
        if fen is None:
            raise self._not_the_api(resp)
        self._costs_url = url
        return fen


def outcome_of(code: Optional[int], http_status: int) -> str:
    """What an answer means: the error table by its code, else the HTTP status."""
    if code is not None and code in ERRORS:
        return ERRORS[code]
    if (code is not None and code >= SERVER_CODES) or http_status >= 500 or 200 <= http_status < 300:
        return TRANSIENT  # in a 2xx: not an envelope, or one with a code nobody documented
    return _BY_STATUS.get(http_status, OTHER)


def packs_fen(data: Any, now_ms: Optional[int] = None) -> Optional[int]:
    """The credits left in the resource packs valid now, in fen (1 credit = ¥1); None when ``data``
    is not an answer of ``GET /account/costs``."""
    packs = data.get("resource_pack_subscribe_infos") if isinstance(data, Mapping) else None
    if not isinstance(packs, list):
        return None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    left = sum(_number(pack.get("remaining_quantity")) or 0.0 for pack in packs
               if isinstance(pack, Mapping) and _valid(pack, now))
    return round(left * 100)


def _valid(pack: Mapping[str, Any], now_ms: int) -> bool:
    """A pack that can be spent now: online (or no status said), in effect, not yet invalid."""
    starts, ends = _number(pack.get("effective_time")), _number(pack.get("invalid_time"))
    return (str(pack.get("status") or "online") == "online" and (starts is None or starts <= now_ms)
            and (ends is None or ends > now_ms))


def _costs_window() -> Dict[str, int]:
    now = int(time.time() * 1000)
    return {"start_time": now - COSTS_WINDOW_MS, "end_time": now}


def _envelope(resp: requests.Response) -> Mapping[str, Any]:
    """The answer's envelope; empty when the body is not one (an HTML error page, a proxy's text)."""
    try:
        payload = resp.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, Mapping) and "code" in payload else {}


def _video_url(data: Mapping[str, Any]) -> Optional[str]:
    result = data.get("task_result")
    videos = result.get("videos") if isinstance(result, Mapping) else None
    first = videos[0] if isinstance(videos, list) and videos and isinstance(videos[0], Mapping) else {}
    return str(first.get("url") or "") or None


def _deduction_fen(data: Mapping[str, Any]) -> Optional[int]:
    """Kling's own charge for a task, ``final_unit_deduction`` (units, a string; 1 unit taken as ¥1,
    as the price list is), in fen: the booked cost where the answer gives it."""
    units = _number(data.get("final_unit_deduction"))
    return None if units is None or units < 0 else round(units * 100)


def _external_id(task: RemoteTask) -> Optional[str]:
    info = task.raw.get("task_info")
    found = info.get("external_task_id") if isinstance(info, Mapping) else None
    return None if found is None else str(found)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _note_unknown(word: str) -> str:
    """An unknown status word is logged once per process and taken as "not finished"."""
    with _unknown_lock:
        seen = word in _unknown_words
        _unknown_words.add(word)
    if not seen:
        log.warning("the %s API answered an unknown status %r; taken as not finished and polled again", NAME, word)
    return "unknown"


REGISTRATION = Registration(
    name=NAME, rules=RULES, open=KlingClient.open, base_url=lambda settings: settings.option(BASE_URL.key),
    tariff=tariff, currency="CNY", key_env=API_KEY.env, url_env=BASE_URL.env,
    options=(API_KEY, ACCESS_KEY, SECRET_KEY, BASE_URL, PRICES), storyboard_options=STORYBOARD_OPTIONS, sim="kling")
