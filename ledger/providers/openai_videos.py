"""The OpenAI-compatible ``/v1/videos`` protocol: OpenAI's own endpoint and the relays and gateways
(new-api / one-api style, aggregators) that keep its format.

Facts this module is built on (``/work/shared/openai-videos-api.md``): ``POST /videos`` creates
(paid; no client reference, so a lost answer is found again only by listing), ``GET /videos/{id}``
polls, ``GET /videos?limit&after&order`` pages with a cursor, ``GET /videos/{id}/content`` is the
video behind the key, errors are ``{"error": {"message", "type", "param", "code"}}`` with an HTTP
status, an ``openai-poll-after-ms`` header asks clients to wait, and there is no balance or price
endpoint. Gateways pass through status words of their own: they are normalised in one table.

OpenAI's own endpoint shut down on 2026-09-24; relays may still serve the format. A create or a
pre-flight answered "model not found" (or 410 Gone) stops the run in one line (``ledger.sunset``).
The documented exchanges are in ``tests/contracts/openai/``, cross-checked with the official SDK.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple, Union
from urllib.parse import quote

import requests

from ..client import (ApiClient, RemoteTask, TaskSearch, _Busy, _progress, _snippet, parse_timestamp, search_pages,
                      task_id_problem)
from ..download import DownloadResult, OriginAuth, download_file, origin_of
from ..errors import (ApiError, AuthError, BadParameters, ConfigError, InsufficientBalance, InvalidTaskId,
                      RateLimited, ServiceClosed, TaskNotFound, TransientError)
from ..money import rate as money_rate
from ..redact import mask_key
from ..settings import Settings
from ..sunset import closed_message, official_host, says_closed
from .base import Mapped, Mismatch, ModelRules, Registration, Request, TaskPage, choose_model

log = logging.getLogger(__name__)

NAME = "openai"
NORMAL, PRO = "sora-2", "sora-2-pro"
_STANDARD = {"horizontal": "1280x720", "vertical": "720x1280", "1280x720": "1280x720", "720x1280": "720x1280"}
_LARGE = {"1792x1024": "1792x1024", "1024x1792": "1024x1792"}
# What each model takes (read 2026-12-07). The SDK (pypi:openai==3.51.0 openai/types/video_seconds.py,
# video_size.py, video_model_param.py) lists "4"/"8"/"12" seconds for both models, 720x1280 and 1280x720
# for both, 1024x1792 and 1792x1024 for sora-2-pro, and dated snapshots (sora-2-2025-10-06,
# sora-2-2025-12-08, sora-2-pro-2025-10-06). OpenAI's guide
# (https://developers.openai.com/api/docs/guides/video-generation) adds 16 and 20 s for both and
# 1920x1080 / 1080x1920 for sora-2-pro: not offered here, as no official price of 1080p was found
# and relays follow the SDK's list. The upstream itself closed on 2026-09-24 (``ledger.sunset``).
MODELS: Mapping[str, ModelRules] = {
    NORMAL: ModelRules(NORMAL, pro=False, durations=(4, 8, 12), default_duration=4, resolutions=_STANDARD),
    PRO: ModelRules(PRO, pro=True, durations=(4, 8, 12), default_duration=4, resolutions={**_STANDARD, **_LARGE}),
}
# A dated snapshot (``sora-2-2025-10-06``) takes what its model takes.
_SNAPSHOT = re.compile(r"^(?P<model>.+)-\d{4}-\d{2}-\d{2}$")
# Cents per second of video, by model or model@size (OpenAI's public price list before the shutdown:
# sora-2 $0.10, sora-2-pro $0.30 at 720p and $0.50 at 1024x1792/1792x1024; OPENAI_PRICE_CENTS_PER_SECOND overrides).
DEFAULT_PRICES: Mapping[str, float] = {NORMAL: 10.0, PRO: 30.0, f"{PRO}@1792x1024": 50.0, f"{PRO}@1024x1792": 50.0}
# Every status word seen from this format, as the ledger's four. An unknown word is "not finished".
STATUSES: Mapping[str, str] = {
    "queued": "pending", "pending": "pending", "submitted": "pending", "not_start": "pending",
    "in_progress": "processing", "processing": "processing", "running": "processing", "generating": "processing",
    "completed": "completed", "succeeded": "completed", "success": "completed",
    "failed": "failed", "failure": "failed", "error": "failed", "cancelled": "failed", "canceled": "failed",
}
POLL_AFTER_HEADER = "openai-poll-after-ms"
LIST_LIMIT = 100  # the largest page the API gives

_unknown_words: Set[str] = set()
_unknown_lock = threading.Lock()


def model_rules(name: str) -> Optional[ModelRules]:
    """The rules of ``name``, a model or a dated snapshot of one."""
    if name in MODELS:
        return MODELS[name]
    match = _SNAPSHOT.match(name)
    return MODELS.get(match.group("model")) if match else None


class OpenAIRules:
    """Storyboard fields → a ``POST /videos`` request: ``is_pro`` picks sora-2-pro, ``resolution``
    a size (horizontal 1280x720, vertical 720x1280, or a size the model offers), and
    ``duration_seconds`` the seconds. ``quality`` and ``remove_watermark`` have no counterpart here."""

    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        chosen = choose_model(NAME, MODELS, NORMAL, PRO, request, model_rules)
        if isinstance(chosen, Mismatch):
            return [chosen]
        name, model = chosen
        problems: List[Mismatch] = []
        seconds = model.default_duration if request.duration is None else request.duration
        if seconds not in model.durations:
            problems.append(Mismatch("duration_seconds", f"duration {seconds}s is not offered by {name} on the {NAME} "
                                                         f"provider; use one of {', '.join(map(str, model.durations))}"))
        size = model.resolutions.get(request.resolution)
        if size is None:
            offered = ", ".join(f"{key!r}" + (f" ({value})" if key != value else "")
                                for key, value in model.resolutions.items())
            problems.append(Mismatch("resolution", f"resolution {request.resolution!r} is not offered by {name} on the "
                                                   f"{NAME} provider; use one of {offered}"))
        if problems:
            return problems
        params: Dict[str, Any] = {"provider": NAME, "model": name, "prompt": request.prompt, "duration": seconds,
                                  "resolution": request.resolution, "size": size, "is_pro": model.pro}
        if request.image_url:
            params["image_url"] = request.image_url
        return Mapped(params, model.pro, self.price_key(params))

    def price_key(self, params: Mapping[str, Any]) -> str:
        """``model@size:seconds``: what the per-second price list needs."""
        return f"{params['model']}@{params['size']}:{params['duration']}"


RULES = OpenAIRules()


def request_body(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON body of ``POST /videos`` for stored parameters. ``seconds`` is a string; the
    reference image goes as ``input_reference.image_url`` (storyboards only hold http(s) URLs,
    so no file is ever uploaded as multipart)."""
    body: Dict[str, Any] = {"model": params["model"], "prompt": params["prompt"], "seconds": str(params["duration"]),
                            "size": params["size"]}
    if params.get("image_url"):
        body["input_reference"] = {"image_url": params["image_url"]}
    return body


BUILT_IN_PRICES = "the built-in price list; OPENAI_PRICE_CENTS_PER_SECOND overrides it"


@dataclass(frozen=True)
class PerSecond:
    """The price list of this format: cents per second, by model and size."""

    table: Mapping[str, float]
    source: str = BUILT_IN_PRICES
    currency: str = "USD"

    def rate(self, model: str, size: str) -> float:
        """Cents per second of ``model`` at ``size`` (a snapshot costs what its model costs)."""
        match = _SNAPSHOT.match(model)
        family = match.group("model") if match and match.group("model") in MODELS else model
        for key in (f"{model}@{size}", model, f"{family}@{size}", family):
            if key in self.table:
                return self.table[key]
        raise KeyError(f"no price for {model} at {size}: add it to OPENAI_PRICE_CENTS_PER_SECOND")

    def price(self, key: str) -> int:
        """Cents for one job by its price key (``model@size:seconds``)."""
        model_size, seconds = key.rsplit(":", 1)
        model, size = model_size.rsplit("@", 1)
        return round(self.rate(model, size) * int(seconds))

    def describe(self) -> str:
        """``openai sora-2 $0.10/s, sora-2-pro $0.30/s, … (from …)``."""
        rates = ", ".join(f"{key} {money_rate(value, 'USD')}/s" for key, value in self.table.items())
        return f"openai {rates} ({self.source})"


def tariff(settings: Settings) -> PerSecond:
    """The built-in price list with the settings' overrides on top."""
    table = {**DEFAULT_PRICES, **dict(settings.openai_prices)}
    source = ("the built-in price list with OPENAI_PRICE_CENTS_PER_SECOND" if settings.openai_prices
              else BUILT_IN_PRICES)
    return PerSecond(MappingProxyType(table), source)


class _Answer(NamedTuple):
    data: Any
    poll_after: Optional[float]


class OpenAIVideos(ApiClient):
    """A client of one ``/v1/videos`` API. Safe to share between threads."""

    name = NAME
    balance_refusal = "insufficient_quota"
    reports_cost = False  # a video object carries no price: the price list is all there is
    bills_on_success = False
    tells_progress = True
    retention = None  # the video's own ``expires_at`` ends it (HTTP 410: content_expired)
    KEY_SETTING = "OPENAI_API_KEY"
    KEY_EXAMPLE = "sk-..."
    URL_SETTING = "OPENAI_BASE_URL"
    PREFLIGHT_CALL = "GET /videos"
    API_TITLE = "a /v1/videos API"
    URL_FIELD = "openai_base_url"
    KEY_FIELD = "openai_api_key"

    @classmethod
    def open(cls, settings: Settings, base_url: Optional[str] = None,
             pool_size: Optional[int] = None) -> "OpenAIVideos":
        """A client from ``settings`` (``base_url``: the API a job was sent to, if not the configured one)."""
        return cls.from_settings(settings, base_url=base_url, pool_size=pool_size)

    # --- the calls ---------------------------------------------------------------------------------

    def create(self, params: Mapping[str, Any], ref: str = "") -> RemoteTask:
        """``POST /videos``. Never re-sent once it may have reached the API: a lost answer is a
        ``TransientError`` with ``maybe_created`` and the task is looked for with ``find_tasks``.
        The format has no client reference: ``ref`` is not sent."""
        answer = self._call("POST", "/videos", body=request_body(params))
        data = answer.data
        if not isinstance(data, Mapping) or not data.get("id"):
            raise TransientError(self._redact(f"POST /videos: answer without an id: {_snippet(repr(data))}; "
                                              "the task may have been created"), maybe_created=True)
        task = self._task(data, answer.poll_after)
        problem = task_id_problem(task.task_id)
        if problem:
            raise InvalidTaskId(self._redact(f"POST /videos: the task was created and billed, but its id "
                                             f"{_snippet(repr(task.task_id))} {problem}"))
        if task.prompt is None:
            task = dataclasses.replace(task, prompt=str(params["prompt"]))
        return task

    def get(self, task_id: str) -> RemoteTask:
        """``GET /videos/{id}``."""
        answer = self._call("GET", f"/videos/{quote(task_id, safe='')}")
        if not isinstance(answer.data, Mapping):
            raise TransientError(self._redact(f"GET /videos/{task_id}: unexpected answer: {_snippet(repr(answer.data))}"))
        task = self._task(answer.data, answer.poll_after)
        return task if task.task_id else dataclasses.replace(task, task_id=task_id)

    def recent(self, cursor: Optional[str], limit: int = LIST_LIMIT) -> TaskPage:
        """``GET /videos?limit&order=desc&after=cursor``: the next cursor is the page's last id
        while the API says there is more."""
        params: Dict[str, Any] = {"limit": min(limit, LIST_LIMIT), "order": "desc"}
        if cursor:
            params["after"] = cursor
        answer = self._call("GET", "/videos", params=params)
        data = answer.data
        items = data.get("data") if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            raise TransientError(self._redact(f"GET /videos: unexpected page shape: {_snippet(repr(data))}"))
        tasks = [self._task(item, answer.poll_after) for item in items if isinstance(item, Mapping)]
        more = data.get("has_more")
        more = bool(more) if more is not None else len(items) >= params["limit"]
        last = data.get("last_id") or (tasks[-1].task_id if tasks else None)
        return TaskPage(tasks, str(last) if more and last else None, answer.poll_after)

    def find_tasks(self, params: Mapping[str, Any], ref: str, since: datetime, until: Optional[datetime] = None,
                   *, skew_seconds: float = 120.0) -> TaskSearch:
        """Reconciliation: the list, cursor page after page, until it is older than the window."""
        return search_pages(lambda cursor: self.recent(cursor, LIST_LIMIT), str(params["prompt"]), since, until,
                            skew_seconds=skew_seconds)

    def same_request(self, task: RemoteTask, params: Mapping[str, Any]) -> bool:
        """Model, seconds and size of a listed task must be the request's. Fields it omits, and a
        model it names in words of its own (a relay may answer a dated snapshot for ``sora-2``), do
        not count against it: a task wrongly ruled out would be paid for twice."""
        raw, body = task.raw, request_body(params)
        listed = model_rules(str(raw.get("model") or ""))
        if listed is not None and listed is not model_rules(body["model"]):
            return False
        return not any(raw.get(key) not in (None, "") and str(raw[key]) != str(body[key]) for key in ("seconds", "size"))

    def download(self, url: str, dest: Path, *, root: Path, cancel: Any = None) -> DownloadResult:
        """``GET /videos/{id}/content`` with the key — sent to the API's own origin only: a redirect
        to object storage on another host is followed without it."""
        auth = OriginAuth(origin_of(self.base_url), {"Authorization": f"Bearer {self._key}"}) if self._key else None
        return download_file(self._session, url, dest, root=root, timeout=self._timeout, cancel=cancel,
                             proxies=self._proxies_for(url), limits=self.download_limits, auth=auth)

    def balance(self) -> Optional[int]:
        """This format has no balance endpoint."""
        return None

    # --- answers -----------------------------------------------------------------------------------

    def _task(self, data: Mapping[str, Any], poll_after: Optional[float]) -> RemoteTask:
        word = str(data.get("status") or "").strip().lower()
        status = STATUSES.get(word)
        if status is None:
            _note_unknown(word)
            status = word or "unknown"
        task_id = str(data.get("id") or "")
        error = data.get("error") if isinstance(data.get("error"), Mapping) else {}
        message = str(error.get("message") or "").strip()
        code = str(error.get("code") or "").strip()
        error_msg = f"{message} ({code})" if message and code else message or code or None
        prompt = data.get("prompt")
        return RemoteTask(
            task_id=task_id,
            status=status,
            progress=100 if status == "completed" else _progress(data.get("progress")),
            prompt=None if prompt is None else str(prompt),
            video_url=f"{self.base_url}/videos/{quote(task_id, safe='')}/content" if status == "completed" else None,
            error_msg=self._redact(error_msg) if error_msg and status == "failed" else None,
            cost=None,
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("completed_at")),
            raw=MappingProxyType(dict(data)),
            poll_after=poll_after,
        )

    def _unwrap(self, method: str, path: str, resp: requests.Response, *, preflight: bool = False) -> _Answer:
        """The answer of a 2xx without an ``error`` object; the mapped error otherwise. The create's
        and the pre-flight's refusals may say Sora is gone (``ServiceClosed``); a list read while
        looking for a lost create never does: that look-up must end unresolved, not "not created"."""
        status = resp.status_code
        try:
            payload = resp.json()
        except ValueError:
            payload, detail = None, f"non-JSON body: {_snippet(resp.text)!r}"
        else:
            detail = f"unexpected body: {_snippet(resp.text)!r}"
        error = payload.get("error") if isinstance(payload, Mapping) else None
        # A failed video carries its reason in ``error`` beside its ``id`` and ``status`` (the SDK's
        # ``Video.error``): that is the task's answer, not an error answer of the call.
        if 200 <= status < 300 and isinstance(payload, Mapping) and (not error or _is_video(payload)):
            return _Answer(payload, _poll_after(resp))
        if isinstance(error, Mapping):
            parts = [str(error.get("message") or "").strip()]
            parts += [f"{name} {error[name]}" for name in ("param", "code") if error.get(name)]
            detail = "; ".join(p for p in parts if p) or detail
        else:
            error = None
        if (method == "POST" or preflight) and path == "/videos" and says_closed(
                status, resp.text, official=official_host(self.base_url)):
            raised: ApiError = ServiceClosed(self._redact(closed_message(self.base_url, status, detail, NAME)),
                                             http_status=status)
        else:
            raised = self._error_for(method, f"{method} {path}: HTTP {status}", resp, error, detail)
        log.debug("%s", raised)
        raise raised

    def _error_for(self, method: str, where: str, resp: requests.Response, error: Optional[Mapping[str, Any]],
                   detail: str) -> ApiError:
        status = resp.status_code
        code = str((error or {}).get("code") or "")
        kind = str((error or {}).get("type") or "")
        ok = 200 <= status < 300
        if code == "insufficient_quota" or kind == "insufficient_quota":
            return InsufficientBalance(self._redact(f"{where}, insufficient quota ({detail})"), http_status=status)
        if status == 401 or code == "invalid_api_key":
            shown = mask_key(self._key) if self._key else "(no key set)"
            return AuthError(self._redact(f"{where}, the API key {shown} was rejected ({detail})"), http_status=status)
        if status == 429 or code == "rate_limit_exceeded":
            return self._rate_limit_error(where, resp, detail)
        if status == 400 or (ok and kind == "invalid_request_error"):
            return BadParameters(self._redact(f"{where}, bad parameters ({detail})"), http_status=status)
        if status == 404 and method == "GET" and where.startswith("GET /videos/"):
            return TaskNotFound(self._redact(f"{where}, the API does not know this video ({detail})"),
                                http_status=status)
        if status >= 500 or (ok and (error is None or kind == "server_error")):
            suffix = "; the task may have been created" if method == "POST" else ""
            return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=method == "POST",
                                  http_status=status)
        return ApiError(self._redact(f"{where} ({detail})"), http_status=status)

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> Optional[int]:
        """``GET /videos?limit=1``: proves the URL, the key and the proxy without spending anything.
        There is no balance to report (None)."""
        url = self.base_url + "/videos"
        try:
            resp = session.get(url, params={"limit": 1}, timeout=timeouts, proxies=self._proxies_for(url),  # type: ignore[arg-type]
                               headers={"Accept": "application/json", "Authorization": f"Bearer {self._key}"})
        except requests.RequestException as exc:
            raise self._unreachable(exc, session, url, timeouts) from exc
        try:
            answer = self._unwrap("GET", "/videos", resp, preflight=True)
        except ServiceClosed as exc:
            raise ConfigError(exc.message) from exc
        except AuthError as exc:
            raise ConfigError(self._redact(f"the API key {mask_key(self._key or '')} was rejected "
                                           f"(HTTP {exc.http_status}): check {self.KEY_SETTING}")) from exc
        except RateLimited as exc:
            raise _Busy(f"GET /videos: HTTP {resp.status_code}, rate limited",
                        wait=min(exc.retry_after or 0.5, 5.0)) from exc
        except InsufficientBalance:
            return None  # the key works; the first create will say the quota is spent and stop the run
        except TransientError as exc:
            if exc.http_status is not None and exc.http_status < 500:
                raise self._not_the_api(resp) from exc
            raise _Busy(f"GET /videos: HTTP {resp.status_code}, {_snippet(str(exc.message))}") from exc
        except ApiError as exc:
            if not _is_error_object(resp):
                raise self._not_the_api(resp) from exc
            raise ConfigError(self._redact(f"the pre-flight call failed: {exc}")) from exc
        if not isinstance(answer.data.get("data"), list):
            raise self._not_the_api(resp)
        return None


def _poll_after(resp: requests.Response) -> Optional[float]:
    """The ``openai-poll-after-ms`` header in seconds, when it is a positive number."""
    try:
        milliseconds = float(resp.headers.get(POLL_AFTER_HEADER, ""))
    except ValueError:
        return None
    return milliseconds / 1000.0 if math.isfinite(milliseconds) and milliseconds > 0 else None


def _is_video(payload: Mapping[str, Any]) -> bool:
    """Whether an answer is a video object (an ``id`` and a ``status``), not an error envelope."""
    return bool(payload.get("id")) and "status" in payload


def _is_error_object(resp: requests.Response) -> bool:
    try:
        payload = resp.json()
    except ValueError:
        return False
    return isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping)


def _note_unknown(word: str) -> None:
    """An unknown status word is logged once per process and treated as "not finished"."""
    with _unknown_lock:
        if word in _unknown_words:
            return
        _unknown_words.add(word)
    log.warning("the %s API answered an unknown status %r; taken as not finished and polled again", NAME, word)


REGISTRATION = Registration(
    name=NAME, rules=RULES, open=OpenAIVideos.open, base_url=lambda settings: settings.openai_base_url,
    tariff=tariff, currency="USD", key_env="OPENAI_API_KEY", url_env="OPENAI_BASE_URL", sim="openai_videos")
