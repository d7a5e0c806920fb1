"""The one module that talks HTTP to the video API (the api.sora.hk "native" v1 format).

Errors: the envelope's ``code`` and the HTTP status map to the same classes — 401 ``AuthError``,
1001 ``BadParameters``, 1012 ``InsufficientBalance``, 429 ``RateLimited``; 5xx, bodies that are
not an envelope, dropped connections and timeouts are ``TransientError``; anything else is
``ApiError``. Every message is one line and has the API key masked.

Retries: urllib3's ``Retry`` on the session retries GETs on transport errors and 5xx, and retries
*connecting* for every method, since nothing has been sent before a connection exists. A paid
``POST /create`` is otherwise never re-sent: when its answer is lost the ``TransientError`` says
``maybe_created=True`` and ``find_tasks()`` tells whether the task exists.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # stable, untyped

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, MaxRetryError
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.util.retry import Retry

from . import __version__
from .download import DownloadLimits, DownloadResult, describe_request_error, download_file
from .errors import (
    ApiError,
    AuthError,
    BadParameters,
    InsufficientBalance,
    RateLimited,
    RemoteTaskFailed,
    TransientError,
)
from .redact import mask_key, redact
from .settings import Settings

__all__ = ["DownloadResult", "Pricing", "RemoteTask", "SharedBackoff", "SoraClient"]

log = logging.getLogger(__name__)

# The service writes timestamps in China Standard Time, sometimes without saying so.
SERVICE_TZ = timezone(timedelta(hours=8), "+08:00")
TERMINAL_STATUSES = frozenset({"completed", "failed"})
# How long every thread pauses after a 429 that came without a Retry-After header.
RATE_LIMIT_PAUSE = 5.0
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Where a page of tasks may sit when ``data`` is an object rather than the list itself.
_LIST_KEYS = ("tasks", "list", "items", "records", "rows", "results", "data")
_SNIPPET_CHARS = 120
_FRACTION = re.compile(r"\.(\d+)")
_COMPACT_OFFSET = re.compile(r"([+-]\d{2})(\d{2})$")


@dataclass(frozen=True)
class RemoteTask:
    """One generation as the service describes it, normalised (see ``from_api``)."""

    task_id: str
    status: str
    progress: int
    prompt: Optional[str]
    video_url: Optional[str]
    error_msg: Optional[str]
    cost: Optional[int]
    created_at: Optional[datetime]
    completed_at: Optional[datetime]
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True once the task is ``completed`` or ``failed``."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_completed(self) -> bool:
        """True when the video is ready."""
        return self.status == "completed"

    @property
    def is_failed(self) -> bool:
        """True when the task ended without a video (``error_msg`` says why)."""
        return self.status == "failed"

    def raise_if_failed(self) -> None:
        """Raise ``RemoteTaskFailed`` carrying ``error_msg`` verbatim when the task failed."""
        if self.is_failed:
            raise RemoteTaskFailed(self.error_msg or "", task_id=self.task_id)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> "RemoteTask":
        """Build from a task object: status lower-cased, progress clamped to 0..100 (100 once
        completed), ``""`` URLs and messages as None, timestamps timezone-aware."""
        status = str(data.get("status") or "pending").strip().lower()
        prompt = data.get("prompt")
        return cls(
            task_id=str(data.get("task_id") or data.get("id") or ""),
            status=status,
            progress=100 if status == "completed" else _progress(data.get("progress")),
            prompt=None if prompt is None else str(prompt),
            video_url=_text_or_none(data.get("video_url")),
            error_msg=_text_or_none(data.get("error_msg")),
            cost=_cents(data.get("cost")),
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("completed_at")),
            raw=MappingProxyType(dict(data)),
        )


@dataclass(frozen=True)
class Pricing:
    """The price list, in cents per task."""

    normal_price: int
    pro_price: int
    currency: str
    unit: str

    def price_for(self, is_pro: bool) -> int:
        """The price of one generation with the Pro model or the normal one."""
        return self.pro_price if is_pro else self.normal_price

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> "Pricing":
        """Build from ``GET /pricing``'s ``data``; raise ``ApiError`` when a price is missing."""
        normal, pro = _cents(data.get("normal_price")), _cents(data.get("pro_price"))
        if normal is None or pro is None:
            raise ApiError(f"GET /pricing: unexpected answer without prices: {_snippet(repr(dict(data)))}")
        return cls(normal_price=normal, pro_price=pro, currency=str(data.get("currency") or ""),
                   unit=str(data.get("unit") or ""))


class SharedBackoff:
    """One per process: a 429 anywhere pauses every call of every thread until the deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0

    def slow_down(self, seconds: float) -> None:
        """Pause every call for ``seconds`` from now, unless a longer pause is already running."""
        if seconds <= 0:
            return
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self, cancel: Optional[threading.Event] = None) -> None:
        """Block while paused; return early when ``cancel`` gets set."""
        while True:
            remaining = self.paused_until - time.monotonic()
            if remaining <= 0:
                return
            if cancel is None:
                time.sleep(remaining)
            elif cancel.wait(remaining):
                return

    @property
    def paused_until(self) -> float:
        """The ``time.monotonic()`` deadline of the pause, 0 when not paused."""
        with self._lock:
            return self._until if self._until > time.monotonic() else 0.0


class _Session(requests.Session):
    """A session that works out the environment's proxy settings once per host, not per request.

    requests scans the whole process environment (twice) on every request to find proxies; with
    hundreds of polls a second that was a fifth of the client's CPU time. The answers for a host do
    not change while a run lasts.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self._environment_lock = threading.Lock()

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        if proxies:  # explicit proxies from the settings: nothing to look up
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        with self._environment_lock:
            found = self._environment.get(key)
        if found is None:
            found = super().merge_environment_settings(url, {}, None, None, None)
            with self._environment_lock:
                self._environment[key] = found
        merged = dict(found)
        merged["proxies"] = dict(found["proxies"])
        if stream is not None:
            merged["stream"] = stream
        if verify is not None:
            merged["verify"] = verify
        if cert is not None:
            merged["cert"] = cert
        return merged


class SoraClient:
    """A pooled, retrying, key-masking client for one API base URL. Safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str],
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        pool_size: int = 8,
        http_proxy: Optional[str] = None,
        https_proxy: Optional[str] = None,
        no_proxy: Optional[str] = None,
        get_retries: int = 4,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        backoff: Optional[SharedBackoff] = None,
        download_limits: Optional[DownloadLimits] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.download_limits = download_limits or DownloadLimits()
        self.backoff = backoff or SharedBackoff()
        self._key = api_key
        self._timeout: Tuple[float, float] = (connect_timeout, read_timeout)
        # Given proxies describe the whole proxy setup: a scheme without one goes direct.
        self._proxies: Optional[Dict[str, Optional[str]]] = (
            {"http": http_proxy, "https": https_proxy or http_proxy} if (http_proxy or https_proxy) else None
        )
        self._no_proxy = no_proxy
        self._retry = Retry(
            total=get_retries,
            connect=get_retries,
            read=get_retries,
            status=get_retries,
            other=0,  # e.g. TLS failures: not provably before sending, and rarely fixed by retrying
            allowed_methods=frozenset({"GET"}),
            status_forcelist=_RETRY_STATUSES,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_factor,
            # A 429 must reach the caller, which pauses every thread through ``backoff``.
            respect_retry_after_header=False,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=self._retry)
        self._session = _Session()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = f"ledger/{__version__}"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        pool_size: Optional[int] = None,
        backoff: Optional[SharedBackoff] = None,
    ) -> "SoraClient":
        """A client configured from ``settings``; the pool defaults to the task concurrency."""
        return cls(
            settings.base_url,
            settings.api_key,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            pool_size=pool_size or settings.max_concurrent_tasks,
            http_proxy=settings.http_proxy,
            https_proxy=settings.https_proxy,
            no_proxy=settings.no_proxy,
            backoff=backoff,
            download_limits=DownloadLimits(
                max_bytes=settings.max_download_bytes,
                min_bytes_per_second=settings.download_min_bytes_per_second,
                speed_time=settings.download_speed_time,
                total_seconds=settings.download_timeout,
            ),
        )

    # --- API calls -------------------------------------------------------------------------------

    def create(self, params: Mapping[str, Any]) -> RemoteTask:
        """Start one paid generation. ``None`` values are not sent.

        Never re-sent after its body may have reached the server: then ``TransientError`` has
        ``maybe_created=True`` and the caller must look the task up with ``find_tasks``.
        """
        body = {key: value for key, value in params.items() if value is not None}
        data = self._call("POST", "/create", body=body)
        if not isinstance(data, Mapping) or not data.get("task_id"):
            raise TransientError(
                self._redact(f"POST /create: answer without a task_id: {_snippet(repr(data))}; "
                             "the task may have been created"),
                maybe_created=True,
            )
        task = RemoteTask.from_api(data)
        if task.prompt is None and body.get("prompt") is not None:
            task = dataclasses.replace(task, prompt=str(body["prompt"]))
        log.info("created task %s (cost %s)", task.task_id, task.cost)
        return task

    def get(self, task_id: str) -> RemoteTask:
        """The current state of one task."""
        data = self._call("GET", f"/tasks/{quote(task_id, safe='')}")
        if not isinstance(data, Mapping):
            raise TransientError(self._redact(f"GET /tasks/{task_id}: unexpected answer: {_snippet(repr(data))}"))
        task = RemoteTask.from_api(data)
        return task if task.task_id else dataclasses.replace(task, task_id=task_id)

    def list(self, page: int = 1, page_size: int = 20, status: Optional[str] = None) -> List[RemoteTask]:
        """One page of the account's tasks, newest first; ``data`` may be the list or hold it."""
        params: Dict[str, Any] = {"page": page, "page_size": page_size}
        if status is not None:
            params["status"] = status
        data = self._call("GET", "/tasks", params=params)
        return [RemoteTask.from_api(item) for item in self._page_items(data)]

    def find_tasks(
        self,
        prompt: str,
        since: datetime,
        *,
        skew_seconds: float = 120.0,
        max_pages: int = 5,
        page_size: int = 50,
    ) -> List[RemoteTask]:
        """Tasks whose prompt equals ``prompt`` and created_at >= since - skew (a task without
        created_at counts), oldest first. Pages newest-first; stops paging once a page is older
        than the window or is short.

        A naive ``since`` is taken as UTC. Prompts are compared without surrounding whitespace.
        """
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        window_start = since - timedelta(seconds=skew_seconds)
        wanted = prompt.strip()
        found: Dict[str, RemoteTask] = {}
        for page in range(1, max_pages + 1):
            tasks = self.list(page=page, page_size=page_size)
            for task in tasks:
                recent = task.created_at is None or task.created_at >= window_start
                if recent and (task.prompt or "").strip() == wanted:
                    found[task.task_id] = task
            dated = [task.created_at for task in tasks if task.created_at is not None]
            if len(tasks) < page_size or (dated and min(dated) < window_start):
                break
        far_future = datetime.max.replace(tzinfo=timezone.utc)
        return sorted(found.values(), key=lambda task: task.created_at or far_future)

    def balance(self) -> int:
        """The account balance in cents."""
        data = self._call("GET", "/balance")
        cents = _cents(data.get("balance") if isinstance(data, Mapping) else data)
        if cents is None:
            raise ApiError(self._redact(f"GET /balance: unexpected answer: {_snippet(repr(data))}"))
        return cents

    def pricing(self) -> Pricing:
        """The price list."""
        data = self._call("GET", "/pricing")
        if not isinstance(data, Mapping):
            raise ApiError(self._redact(f"GET /pricing: unexpected answer: {_snippet(repr(data))}"))
        return Pricing.from_api(data)

    def download(
        self,
        url: str,
        dest: Path,
        *,
        root: Path,
        cancel: Optional[threading.Event] = None,
    ) -> DownloadResult:
        """Fetch a video with this client's session, timeouts, proxies and download limits (never its key)."""
        return download_file(
            self._session, url, dest, root=root, timeout=self._timeout, cancel=cancel,
            proxies=self._proxies_for(url), limits=self.download_limits,
        )

    def _proxies_for(self, url: str) -> Optional[Dict[str, Optional[str]]]:
        """The ``proxies=`` argument for a request to ``url``: None lets requests use the
        environment; the configured proxies otherwise (all None when ``no_proxy`` matches)."""
        if self._proxies is None:
            return None
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "")
        if self._no_proxy and proxy_bypass_environment(host, {"no": self._no_proxy}):
            # requests drops None entries after merging, so nothing from the environment sneaks in.
            return {"http": None, "https": None}
        return dict(self._proxies)

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def __enter__(self) -> "SoraClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        body: Optional[Mapping[str, Any]] = None,
    ) -> Any:
        """Send one API call and return the envelope's ``data``, or raise the mapped error."""
        url = self.base_url + path
        retry = self._retry
        while True:
            self.backoff.wait()
            try:
                return self._call_once(method, path, url, params, body)
            except TransientError as exc:
                # urllib3 already retried what it can see (transport errors, 5xx statuses); a
                # code 500 inside an HTTP 200 envelope or a garbled 200 body is only visible here.
                seen_by_urllib3 = exc.http_status is None or exc.http_status >= 500
                if method != "GET" or isinstance(exc, RateLimited) or seen_by_urllib3:
                    raise
                try:
                    retry = retry.increment(method, url)
                except MaxRetryError:
                    raise exc from None
                log.debug("%s; retrying", exc)
                retry.sleep()

    def _call_once(
        self,
        method: str,
        path: str,
        url: str,
        params: Optional[Mapping[str, Any]],
        body: Optional[Mapping[str, Any]],
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self._key:
            # Per request, never a session default: video URLs live on another host.
            headers["Authorization"] = f"Bearer {self._key}"
        started = time.monotonic()
        try:
            resp = self._session.request(
                method, url, params=params, json=body, headers=headers, timeout=self._timeout,
                proxies=self._proxies_for(url),  # type: ignore[arg-type]  # None entries mean "direct"
            )
        except requests.RequestException as exc:
            raise self._transport_error(method, path, exc) from exc
        log.debug("%s %s -> HTTP %d in %.2f s", method, path, resp.status_code, time.monotonic() - started)
        return self._unwrap(method, path, resp)

    def _transport_error(self, method: str, path: str, exc: requests.RequestException) -> ApiError:
        detail = describe_request_error(exc)
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                            requests.exceptions.MissingSchema)):
            return ApiError(self._redact(f"{method} {path}: cannot send the request: {detail}"))
        maybe_created = method == "POST" and not _never_sent(exc)
        what = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        message = f"{method} {path}: {what} ({detail})"
        if maybe_created:
            message += "; the task may have been created"
        return TransientError(self._redact(message), maybe_created=maybe_created)

    def _unwrap(self, method: str, path: str, resp: requests.Response) -> Any:
        """The envelope's ``data`` of a successful answer; raise the mapped error otherwise."""
        status = resp.status_code
        try:
            payload = resp.json()
        except ValueError:
            payload = None
            detail = f"non-JSON body: {_snippet(resp.text)!r}"
        else:
            detail = f"unexpected body: {_snippet(resp.text)!r}"
        envelope = payload if isinstance(payload, Mapping) and "code" in payload else None
        code = _int_or_none(envelope.get("code")) if envelope is not None else None
        if envelope is not None and code == 200 and 200 <= status < 300:
            return envelope.get("data")
        if envelope is not None and code is not None:
            detail = f"code {code}: {_snippet(str(envelope.get('message') or ''))}"
        error = self._error_for(method, f"{method} {path}: HTTP {status}", resp, code, detail,
                                malformed=envelope is None or code is None)
        log.debug("%s", error)
        raise error

    def _error_for(self, method: str, where: str, resp: requests.Response, code: Optional[int], detail: str,
                   *, malformed: bool) -> ApiError:
        status = resp.status_code
        # The envelope's code wins when it names an error; otherwise the HTTP status speaks.
        kind = code if code is not None and code != 200 else status
        if kind == 401:
            shown = mask_key(self._key) if self._key else "(no key set)"
            return AuthError(self._redact(f"{where}, the API key {shown} was rejected ({detail})"),
                             code=code, http_status=status)
        if kind == 1001:
            return BadParameters(self._redact(f"{where}, bad parameters ({detail})"), code=code, http_status=status)
        if kind == 1012:
            return InsufficientBalance(self._redact(f"{where}, insufficient balance ({detail})"),
                                       code=code, http_status=status)
        if kind == 429:
            retry_after = self._retry_after(resp)
            pause = RATE_LIMIT_PAUSE if retry_after is None else retry_after
            self.backoff.slow_down(pause)
            log.warning("rate limited (%s); pausing every API call for %.1f s", where, pause)
            hint = f"retry after {retry_after:g} s" if retry_after is not None else "no Retry-After"
            return RateLimited(self._redact(f"{where}, rate limited, {hint} ({detail})"),
                               retry_after=retry_after, code=code, http_status=status)
        if 500 <= kind < 600 or (malformed and 200 <= status < 300):
            maybe_created = method == "POST"
            suffix = "; the task may have been created" if maybe_created else ""
            return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=maybe_created,
                                  code=code, http_status=status)
        return ApiError(self._redact(f"{where} ({detail})"), code=code, http_status=status)

    def _retry_after(self, resp: requests.Response) -> Optional[float]:
        value = resp.headers.get("Retry-After")
        if value is None:
            return None
        try:
            return float(self._retry.parse_retry_after(value))
        except InvalidHeader:
            return None

    def _page_items(self, data: Any) -> List[Mapping[str, Any]]:
        items = _find_list(data)
        if items is None:
            raise TransientError(self._redact(f"GET /tasks: unexpected page shape: {_snippet(repr(data))}"))
        return [item for item in items if isinstance(item, Mapping)]

    def _redact(self, text: str) -> str:
        return redact(text, [self._key])


def parse_timestamp(value: Any) -> Optional[datetime]:
    """A timezone-aware datetime from ISO 8601 (``Z``, ``+08:00``, ``+0800``, any fraction),
    ``YYYY-mm-dd HH:MM:SS`` or epoch seconds/milliseconds; naive times are the service's +08:00.
    None when absent or unreadable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = value / 1000 if value > 1e11 else value  # milliseconds since the epoch are common too
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # Python 3.9's fromisoformat wants exactly 3 or 6 fraction digits and a colon in the offset.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    text = _COMPACT_OFFSET.sub(r"\1:\2", text) if ("T" in text or " " in text) else text
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        log.debug("unreadable timestamp %r", value)
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=SERVICE_TZ)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request provably never reached the API: no connection to it (or to the
    proxy in front of it) was ever made."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError)):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # NewConnectionError (refused, DNS) is a ConnectTimeoutError; urllib3's ProxyError is only
    # raised before the proxy connection is up.
    return isinstance(reason, (ConnectTimeoutError, Urllib3ProxyError))


def _find_list(data: Any) -> Optional[List[Any]]:
    if data is None:
        return []
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        for key in _LIST_KEYS:
            found = _find_list(data[key]) if isinstance(data.get(key), (list, Mapping)) else None
            if found is not None:
                return found
        return next((value for value in data.values() if isinstance(value, list)), None)
    return None


def _progress(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    try:
        number = float(str(value).strip().rstrip("%"))
    except (TypeError, ValueError):
        return 0
    return max(0, min(100, int(number))) if math.isfinite(number) else 0


def _cents(value: Any) -> Optional[int]:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return round(number) if math.isfinite(number) else None


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text_or_none(value: Any) -> Optional[str]:
    return None if value is None or value == "" else str(value)


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET_CHARS else flat[:_SNIPPET_CHARS] + "…"
