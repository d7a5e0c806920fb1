"""The one module that talks HTTP to the video API (the api.sora.hk "native" v1 format).

Errors: the envelope's ``code`` and the HTTP status map to the same classes — 401 ``AuthError``,
1001 ``BadParameters``, 1012 ``InsufficientBalance``, 429 ``RateLimited``; 5xx, bodies that are
not an envelope, dropped connections and timeouts are ``TransientError``; anything else is
``ApiError``. Every message is one line and has the API key masked.

Retries: urllib3's ``Retry`` on the session retries GETs on transport errors and 5xx, and retries
*connecting* for every method, since nothing has been sent before a connection exists. A paid
``POST /create`` is otherwise never re-sent: when its answer is lost the ``TransientError`` says
``maybe_created=True`` and ``find_tasks()`` tells whether the task exists.

Pre-flight: ``preflight()`` makes one cheap authenticated call without urllib3 retries and with
short timeouts, so a wrong URL, key or proxy is one line within seconds, before anything is spent.
"""
from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, TypeVar
from urllib.parse import quote, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # stable, untyped

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.util.retry import Retry

from . import __version__
from .download import DownloadLimits, DownloadResult, describe_request_error, download_file
from .errors import (
    ApiError,
    AuthError,
    BadParameters,
    ConfigError,
    InsufficientBalance,
    RateLimited,
    InvalidTaskId,
    ServiceClosed,
    TaskNotFound,
    TransientError,
    remote_failure,
)
from .i18n import tr
from .redact import mask_key, redact
from .settings import Settings
from .sunset import closed_message, says_closed

__all__ = ["ApiClient", "DownloadResult", "Pricing", "RemoteTask", "SharedBackoff", "SoraClient"]

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
# The pre-flight's (connect, read) timeouts: long enough for a slow proxy, short enough that a
# wrong address is reported within seconds rather than after a retry storm.
PREFLIGHT_TIMEOUT: Tuple[float, float] = (5.0, 10.0)
# Answers that prove the API is there but busy (5xx, 429, a dropped connection) are tried this
# many times in all, PREFLIGHT_PAUSE seconds apart (doubling); nothing else is tried again.
PREFLIGHT_ATTEMPTS = 4
PREFLIGHT_PAUSE = 0.5
# The calls whose refusal may say Sora is gone (``ledger.sunset``): the create, and the pre-flight's.
_SORA_GONE_PATHS = frozenset({"/create", "/balance"})


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
    # The service's own hint for the next poll (seconds), e.g. an ``openai-poll-after-ms`` header.
    poll_after: Optional[float] = dataclasses.field(default=None, compare=False)

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
        """Raise ``RemoteTaskFailed`` (``ContentRefused`` for a content-policy verdict) carrying
        ``error_msg`` verbatim when the task failed."""
        if self.is_failed:
            raise remote_failure(self.error_msg or "", task_id=self.task_id)

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
            cost=_whole_cents(data.get("cost")),
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("completed_at")),
            raw=MappingProxyType(dict(data)),
        )


@dataclass(frozen=True)
class TaskSearch:
    """What a look-up in the task list found, and whether it covered the whole time window (only
    then does finding nothing prove that nothing was created)."""

    tasks: List[RemoteTask]
    covered: bool
    pages: int
    reason: str = ""
    # Looking again cannot settle it (the API has no list, the create carried nothing to find it
    # by, its tasks are gone): the job is left unresolved at once rather than after MAX_ATTEMPTS.
    final: bool = False


def _nearest(tasks: Any, when: datetime) -> List[RemoteTask]:
    """``tasks`` ordered by how close their creation is to ``when``; undated ones last."""
    return sorted(tasks, key=lambda t: abs((t.created_at - when).total_seconds()) if t.created_at else float("inf"))


@dataclass(frozen=True)
class TaskPage:
    """One page of an account's tasks, newest first, and the cursor of the next (None: the end)."""

    tasks: List[RemoteTask]
    next_cursor: Optional[str]
    poll_after: Optional[float] = None


# How much older than its write-ahead a create's task may be by the API's reckoning (the write-ahead
# comes first; the two clocks' offset cancels out of an age): the margin of ``past_retention``.
RETENTION_MARGIN = 120.0


def past_retention(since: datetime, retention: float) -> bool:
    """Whether a create sent at ``since`` (this machine's clock, as ``now`` is) may be older than an
    API keeps tasks: then a window without it proves nothing. Neither the look-up's clock-skew
    allowance nor the API's clock offset counts here: an age is measured on one clock."""
    aware = since if since.tzinfo is not None else since.replace(tzinfo=timezone.utc)
    return aware - timedelta(seconds=RETENTION_MARGIN) < datetime.now(timezone.utc) - timedelta(seconds=retention)


def search_pages(pages: Callable[[Optional[str]], TaskPage], prompt: str, since: datetime,
                 until: Optional[datetime] = None, *, skew_seconds: float = 120.0, stale_pages: int = 3,
                 max_pages: int = 10_000) -> TaskSearch:
    """Tasks whose prompt equals ``prompt`` created between ``since - skew`` and ``until + skew``
    (a task without a creation time counts), nearest to ``since`` first, read from a cursor-paged
    list that is newest first.

    Reads on **until the list is older than the window or ends**: only then does "not found" mean
    "not created" (``covered``). A list that keeps answering with nothing new (a relay ignoring the
    cursor) for ``stale_pages`` pages cannot cover the window, nor can one that shows tasks in the
    window without their prompt (a relay that leaves it out). Naive datetimes are UTC."""
    since = since if since.tzinfo is not None else since.replace(tzinfo=timezone.utc)
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    window_start = since - timedelta(seconds=skew_seconds)
    window_end = (until + timedelta(seconds=skew_seconds)) if until is not None else None
    wanted = prompt.strip()
    seen: set = set()
    found: Dict[str, RemoteTask] = {}
    unknown = 0  # tasks in the window whose prompt the list does not show
    repeats = pages_read = 0
    cursor: Optional[str] = None
    while pages_read < max_pages:
        page = pages(cursor)
        pages_read += 1
        fresh = [task for task in page.tasks if task.task_id not in seen]
        seen.update(task.task_id for task in fresh)
        repeats = repeats + 1 if page.tasks and not fresh else 0
        if repeats >= stale_pages:
            return TaskSearch(_nearest(found.values(), since), False, pages_read,
                              f"the task list repeated itself for {repeats} pages (page {pages_read}); "
                              "it never reached the time of the create")
        for task in fresh:
            created = task.created_at
            recent = created is None or (created >= window_start and (window_end is None or created <= window_end))
            if recent and task.prompt is None:
                unknown += 1
            elif recent and task.prompt.strip() == wanted and not task_id_problem(task.task_id):
                found[task.task_id] = task
        dated = [task.created_at for task in page.tasks if task.created_at is not None]
        if page.next_cursor is None or (dated and min(dated) < window_start):
            if unknown and not found:
                return TaskSearch([], False, pages_read, f"the list shows {unknown} task(s) of that time without "
                                                         "their prompt: any of them may be the create's")
            return TaskSearch(_nearest(found.values(), since), True, pages_read)
        cursor = page.next_cursor
    return TaskSearch(_nearest(found.values(), since), False, pages_read,
                      f"read {pages_read} pages without reaching the time of the create")


# In UTF-8 bytes: PostgreSQL's unique index on remote_task_id cannot hold an entry over 2,704 bytes
# (1,000 CJK characters are 3,000), so the cap is in bytes, well below that, on every database.
_TASK_ID_MAX_BYTES = 1000


def task_id_problem(task_id: str) -> Optional[str]:
    """Why ``task_id`` cannot be stored in the ledger and used in URLs, or None when it can."""
    if not task_id:
        return "is empty"
    if any(ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF for ch in task_id):
        return "contains control characters or invalid Unicode"
    size = len(task_id.encode("utf-8"))
    if size > _TASK_ID_MAX_BYTES:
        return f"is {size:,} bytes long (more than {_TASK_ID_MAX_BYTES:,})"
    return None


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
        for name in ("normal_price", "pro_price"):
            # The API prices a task in whole cents; a fraction (0.3) is a list in another unit, and
            # read as cents it would make every generation look free to --max-spend.
            value = float(str(data[name]).strip())
            if value < 1 or value != int(value):
                raise ApiError(f"GET /pricing: {name} {data[name]!r} is not a whole number of cents per task "
                               f"(the documented unit): {_snippet(repr(dict(data)))}")
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


_C = TypeVar("_C", bound="ApiClient")


class ApiClient:
    """The HTTP plumbing every protocol shares: a pooled session, urllib3 retries on GETs and on
    connecting, proxies, the shared 429 back-off, outage tracking, key masking, the pre-flight's
    one-line diagnosis and bounded downloads. A protocol subclass says how its answers read
    (``_unwrap``) and what its pre-flight call is (``_preflight_once``). Safe to share between threads."""

    # The settings users set for this protocol's key and URL, named in messages.
    KEY_SETTING = "SORA_API_KEY"
    KEY_EXAMPLE = "sora-..."
    URL_SETTING = "SORA_BASE_URL"
    PREFLIGHT_CALL = "GET /balance"
    API_TITLE = "the video API"  # "<base URL> does not look like <API_TITLE>"
    # The Settings fields holding this protocol's base URL and key.
    URL_FIELD = "base_url"
    KEY_FIELD = "api_key"

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
        # Since when no connection to the API could be made (None: the last call got through).
        self._unreachable_since: Optional[float] = None
        self.last_unreachable: str = ""
        self._clock_offset = 0.0
        self._watchers: List[Callable[[requests.Response], None]] = []
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
        self._adapter = adapter
        self._session = _Session()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = f"ledger/{__version__}"
        # Everything but a GET goes out once, never again by urllib3 — not even after a refused
        # connection: a retry after its back-off could send a paid create past the lease check
        # (``Store.clear_to_send``) after another worker took the job over. The steps decide.
        once = HTTPAdapter(max_retries=Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0,
                                             raise_on_status=False))
        once.poolmanager, once.proxy_manager = adapter.poolmanager, adapter.proxy_manager
        self._sent_once = _Session()
        self._sent_once.mount("http://", once)
        self._sent_once.mount("https://", once)
        self._sent_once.headers["User-Agent"] = self._session.headers["User-Agent"]

    @classmethod
    def from_settings(
        cls: Type[_C],
        settings: Settings,
        *,
        pool_size: Optional[int] = None,
        backoff: Optional[SharedBackoff] = None,
        base_url: Optional[str] = None,
    ) -> _C:
        """A client configured from ``settings``; the pool defaults to the task concurrency and the
        base URL to this protocol's setting (``base_url``: a job's API, recorded when it was sent)."""
        return cls(
            base_url or _setting(settings, cls.URL_FIELD),
            _setting(settings, cls.KEY_FIELD),
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

    def preflight(self, *, timeout: Tuple[float, float] = PREFLIGHT_TIMEOUT) -> Any:
        """One cheap authenticated call (``PREFLIGHT_CALL``) before anything is spent: what
        ``_preflight_once`` makes of the answer (the balance in cents, for the sora.hk protocol).

        Raises ``ConfigError`` with one line saying what to fix: no key, a refused key, an
        unreachable or wrong base URL, a proxy that refuses or does not answer. Only answers that
        show the API is there but busy are tried again (``PREFLIGHT_ATTEMPTS``)."""
        if not self._has_credentials():
            raise ConfigError(tr("{setting} is not set: set it in .env ({setting}={example})").format(
                setting=self.KEY_SETTING, example=self.KEY_EXAMPLE))
        timeouts = (min(timeout[0], self._timeout[0]), min(timeout[1], self._timeout[1]))
        session = _Session()
        # No urllib3 retries here: one refused connection already says what is wrong. The
        # connections are the client's own (retries are the adapter's, connections its pool
        # manager's): the run goes on over the one the pre-flight opened, with no second TCP and
        # TLS handshake. The session is not closed — that would close the client's connections.
        adapter = HTTPAdapter(max_retries=Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0,
                                                raise_on_status=False))
        adapter.poolmanager, adapter.proxy_manager = self._adapter.poolmanager, self._adapter.proxy_manager
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = self._session.headers["User-Agent"]
        session.hooks["response"].append(self._seen)
        pause = PREFLIGHT_PAUSE
        for _ in range(PREFLIGHT_ATTEMPTS - 1):
            try:
                return self._preflight_once(session, timeouts)
            except _Busy as busy:
                log.info("pre-flight: %s; trying again in %.1f s", busy, busy.wait or pause)
                time.sleep(busy.wait or pause)
                pause *= 2
        try:
            return self._preflight_once(session, timeouts)
        except _Busy as busy:
            raise ConfigError(self._redact(
                f"{self.base_url} keeps failing ({busy}): the service, or a proxy in front of it, "
                f"is in trouble; try again later")) from busy

    def _unreachable(self, exc: requests.RequestException, session: requests.Session, url: str,
                     timeouts: Tuple[float, float]) -> Exception:
        """What to say when the pre-flight call got no HTTP answer at all (``_Busy`` when the
        connection was made and then dropped: the server is there, another try may do)."""
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                            requests.exceptions.MissingSchema)):
            return ConfigError(self._redact(f"{self.URL_SETTING} {self.base_url!r} cannot be used: "
                                            f"{describe_request_error(exc)}"))
        causes = _causes(exc)
        proxy = _proxy_for(session, url, self._proxies_for(url))
        refused = any(isinstance(c, ConnectionRefusedError) for c in causes)
        unknown = any(isinstance(c, socket.gaierror) for c in causes)
        connect_timeout = any(isinstance(c, ConnectTimeoutError) and not isinstance(c, NewConnectionError)
                              for c in causes) or isinstance(exc, requests.exceptions.ConnectTimeout)
        read_timeout = any(isinstance(c, (ReadTimeoutError, socket.timeout)) for c in causes)
        if refused:
            why = "the proxy refused the connection" if proxy else "connection refused"
        elif unknown:
            host = urlsplit(proxy).hostname if proxy else urlsplit(self.base_url).hostname
            why = f"unknown host {host!r}"
        elif connect_timeout:
            why = f"no connection within {timeouts[0]:g} s"
        elif read_timeout:
            why = ("the proxy accepted the connection but did not answer" if proxy else
                   "connected, but no answer came (is something other than the API listening there?)")
        elif isinstance(exc, requests.exceptions.SSLError):
            why = f"TLS failed ({describe_request_error(exc)})"
        elif isinstance(exc, requests.exceptions.ProxyError):
            why = f"the proxy failed ({describe_request_error(exc)})"
        else:
            return _Busy(f"{self.PREFLIGHT_CALL}: {describe_request_error(exc)}")
        if proxy:
            return ConfigError(self._redact(f"cannot reach {self.base_url} through the proxy {_without_password(proxy)}: "
                                            f"{why}: check HTTP_PROXY / HTTPS_PROXY / NO_PROXY"))
        return ConfigError(self._redact(f"cannot reach {self.base_url}: {why}"))

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

    def no_retries(self) -> None:
        """Every call once (``ledger check``: an answer in seconds, not after the retries' patience)."""
        self._adapter.max_retries = self._retry.new(total=0, connect=0, read=0, status=0)

    def watch(self, callback: Callable[[requests.Response], None]) -> None:
        """Also hand every answer of the API to ``callback`` (``ledger check`` reads their shapes)."""
        self._watchers.append(callback)

    def _seen(self, resp: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        """An answer of the API (also a ``requests`` response hook, for the pre-flight's session)."""
        self._note_clock(resp)
        for callback in self._watchers:
            callback(resp)

    def _note_clock(self, resp: requests.Response) -> None:
        """Read how far this machine's clock is from the API's off its ``Date`` header (whole
        seconds: an offset under 2 s is not told apart from the header's rounding)."""
        stamp = resp.headers.get("Date")
        if not stamp:
            return
        try:
            theirs = email.utils.parsedate_to_datetime(stamp)
        except (TypeError, ValueError, IndexError):
            return
        if theirs is None or theirs.tzinfo is None:
            return
        # The answer was dated somewhere between sending and its headers arriving: compare with the middle.
        now = datetime.now(timezone.utc) - resp.elapsed / 2
        offset = (theirs - now).total_seconds()
        self._clock_offset = 0.0 if abs(offset) < 2.0 else offset

    def clock_offset(self) -> float:
        """Seconds the API's clock is ahead of this machine's (negative: behind), as its last
        dated answer showed; 0 when none did."""
        return self._clock_offset

    def unreachable_for(self) -> float:
        """Seconds since calls stopped reaching the API at all (0 while they get through)."""
        since = self._unreachable_since
        return 0.0 if since is None else time.monotonic() - since

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def __enter__(self: _C) -> _C:
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
            if method == "GET":  # a create waited out the pauses before its lease check (``clear_to_send``)
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
        # Per request, never a session default: video URLs live on another host.
        headers.update(self._auth_headers())
        started = time.monotonic()
        try:
            session = self._session if method == "GET" else self._sent_once
            resp = session.request(
                method, url, params=params, json=body, headers=headers, timeout=self._timeout,
                proxies=self._proxies_for(url),  # type: ignore[arg-type]  # None entries mean "direct"
            )
        except requests.RequestException as exc:
            raise self._transport_error(method, path, exc) from exc
        log.debug("%s %s -> HTTP %d in %.2f s", method, path, resp.status_code, time.monotonic() - started)
        self._unreachable_since = None
        self._seen(resp)
        return self._unwrap(method, path, resp)

    def _transport_error(self, method: str, path: str, exc: requests.RequestException) -> ApiError:
        detail = describe_request_error(exc)
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                            requests.exceptions.MissingSchema)):
            return ApiError(self._redact(f"{method} {path}: cannot send the request: {detail}"))
        never_sent = _never_sent(exc)
        if never_sent:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            self.last_unreachable = self._redact(f"cannot reach {self.base_url}: {plain_cause(exc, detail)}")
        maybe_created = method == "POST" and not never_sent
        what = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        message = f"{method} {path}: {what} ({detail})"
        if maybe_created:
            message += "; the task may have been created"
        return TransientError(self._redact(message), maybe_created=maybe_created, unreachable=never_sent)

    def _retry_after(self, resp: requests.Response) -> Optional[float]:
        value = resp.headers.get("Retry-After")
        if value is None:
            return None
        try:
            return float(self._retry.parse_retry_after(value))
        except InvalidHeader:
            return None

    def _has_credentials(self) -> bool:
        """Whether anything to authenticate with is set (a provider with other credentials overrides this)."""
        return bool(self._key)

    def _auth_headers(self) -> Dict[str, str]:
        """The headers that authenticate a call to the API (a provider signing its calls overrides this)."""
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _secrets(self) -> List[Optional[str]]:
        """What must never be printed (a provider with more secrets than its key overrides this)."""
        return [self._key]

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())

    def _unwrap(self, method: str, path: str, resp: requests.Response) -> Any:
        """What a successful answer holds; raise the mapped error otherwise."""
        raise NotImplementedError

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> Any:
        """Make the pre-flight call once; ``_Busy`` when another try may do."""
        raise NotImplementedError

    def _not_the_apis_404(self, where: str, detail: str, status: int) -> TransientError:
        """A 404 on a task's path without the API's own error body: a proxy's or load balancer's
        page, not the API's word that the task is gone — asked again, never "task not found"."""
        return TransientError(self._redact(f"{where}, not the API's own answer ({detail}); asked again"),
                              http_status=status)

    def _not_the_api(self, resp: requests.Response) -> ConfigError:
        """The pre-flight's answer is not this API's: the base URL points elsewhere."""
        kind = resp.headers.get("Content-Type", "no content type").split(";")[0]
        return ConfigError(self._redact(
            f"{self.base_url} does not look like {self.API_TITLE} ({self.PREFLIGHT_CALL} answered HTTP "
            f"{resp.status_code}, {kind}: {_snippet(resp.text)!r}): check {self.URL_SETTING}"))

    def _rate_limit_error(self, where: str, resp: requests.Response, detail: str, code: Optional[int] = None,
                          *, say_which: bool = False) -> RateLimited:
        """A rate (or concurrency) limit: every call to this API pauses for the answer's
        Retry-After, else ``RATE_LIMIT_PAUSE``; the error says which. ``say_which``: the warning
        names the limit too (an API whose one status answers for several limits)."""
        retry_after = self._retry_after(resp)
        pause = RATE_LIMIT_PAUSE if retry_after is None else retry_after
        self.backoff.slow_down(pause)
        log.warning("rate limited (%s); pausing every call to %s for %.1f s",
                    self._redact(f"{where}, {detail}") if say_which else where, self.base_url, pause)
        hint = f"retry after {retry_after:g} s" if retry_after is not None else "no Retry-After"
        return RateLimited(self._redact(f"{where}, rate limited, {hint} ({detail})"), retry_after=retry_after,
                           code=code, http_status=resp.status_code)


class SoraClient(ApiClient):
    """The api.sora.hk v1 ("native") protocol: envelopes, codes 401/1001/1012, paged task lists."""

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
        problem = task_id_problem(task.task_id)
        if problem:
            raise InvalidTaskId(self._redact(f"POST /create: the task was created and billed, but its id "
                                             f"{_snippet(repr(task.task_id))} {problem}"), cost=task.cost)
        if task.prompt is None and body.get("prompt") is not None:
            task = dataclasses.replace(task, prompt=str(body["prompt"]))
        log.debug("created task %s (cost %s)", task.task_id, task.cost)
        return task

    def get(self, task_id: str) -> RemoteTask:
        """The current state of one task."""
        data = self._call("GET", f"/tasks/{quote(task_id, safe='')}")
        if not isinstance(data, Mapping):
            raise TransientError(self._redact(f"GET /tasks/{task_id}: unexpected answer: {_snippet(repr(data))}"))
        task = self._task(data)
        return task if task.task_id else dataclasses.replace(task, task_id=task_id)

    def list(self, page: int = 1, page_size: int = 20, status: Optional[str] = None) -> List[RemoteTask]:
        """One page of the account's tasks, newest first; ``data`` may be the list or hold it."""
        params: Dict[str, Any] = {"page": page, "page_size": page_size}
        if status is not None:
            params["status"] = status
        data = self._call("GET", "/tasks", params=params)
        return [self._task(item) for item in self._page_items(data)]

    def _task(self, data: Mapping[str, Any]) -> RemoteTask:
        """A task as the API described it, its message masked: it is stored in the ledger and
        printed, and a server may echo the key in it."""
        task = RemoteTask.from_api(data)
        return dataclasses.replace(task, error_msg=self._redact(task.error_msg)) if task.error_msg else task

    def recent(self, cursor: Optional[str], limit: int) -> TaskPage:
        """``GET /tasks?page=N`` as a cursor-paged list: the cursor is the page number."""
        page = int(cursor or 1)
        tasks = self.list(page=page, page_size=limit)
        return TaskPage(tasks, str(page + 1) if len(tasks) >= limit else None)

    def find_tasks(
        self,
        prompt: str,
        since: datetime,
        until: Optional[datetime] = None,
        *,
        skew_seconds: float = 120.0,
        page_size: int = 50,
        stale_pages: int = 3,
    ) -> "TaskSearch":
        """Tasks whose prompt equals ``prompt`` created in the window around ``since``..``until``,
        read ``page_size`` at a time until the list is older than the window (``search_pages``)."""
        return search_pages(lambda cursor: self.recent(cursor, page_size), prompt, since, until,
                            skew_seconds=skew_seconds, stale_pages=stale_pages)

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

    def _preflight_once(self, session: requests.Session, timeouts: Tuple[float, float]) -> int:
        url = self.base_url + "/balance"
        try:
            resp = session.get(url, headers={"Accept": "application/json", "Authorization": f"Bearer {self._key}"},
                               timeout=timeouts, proxies=self._proxies_for(url))  # type: ignore[arg-type]
        except requests.RequestException as exc:
            raise self._unreachable(exc, session, url, timeouts) from exc
        try:
            data = self._unwrap("GET", "/balance", resp)
        except ServiceClosed as exc:
            raise ConfigError(exc.message) from exc
        except AuthError as exc:
            raise ConfigError(self._redact(f"the API key {mask_key(self._key or '')} was rejected "
                                           f"({exc.code or exc.http_status}): check SORA_API_KEY")) from exc
        except RateLimited as exc:
            raise _Busy(f"GET /balance: HTTP {resp.status_code}, rate limited",
                        wait=min(exc.retry_after or PREFLIGHT_PAUSE, 5.0)) from exc
        except TransientError as exc:
            if exc.http_status is not None and exc.http_status < 500 and exc.code is None:
                raise self._not_the_api(resp) from exc  # a 2xx that is not an envelope
            said = _snippet(str(exc.message))
            where = "GET /balance: "  # most errors already say where they came from; say it once
            raise _Busy(said if said.startswith(where) else f"{where}HTTP {resp.status_code}, {said}") from exc
        except ApiError as exc:
            if exc.code is None:  # not an envelope: a web server or proxy, not this API
                raise self._not_the_api(resp) from exc
            raise ConfigError(self._redact(f"the pre-flight call failed: {exc}")) from exc
        cents = _cents(data.get("balance") if isinstance(data, Mapping) else data)
        if cents is None:
            raise self._not_the_api(resp)
        return cents

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
        if path in _SORA_GONE_PATHS and says_closed(status, resp.text):
            closed = ServiceClosed(self._redact(closed_message(self.base_url, status, detail, "sora_hk")),
                                   code=code, http_status=status)
            log.debug("%s", closed)
            raise closed
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
        if kind == 404 and method == "GET" and where.startswith("GET /tasks/"):
            return TaskNotFound(self._redact(f"{where}, the API does not know this task ({detail})"),
                                code=code, http_status=status)
        if kind == 1012:
            return InsufficientBalance(self._redact(f"{where}, insufficient balance ({detail})"),
                                       code=code, http_status=status)
        if kind == 429:
            return self._rate_limit_error(where, resp, detail, code)
        if 500 <= kind < 600 or (malformed and 200 <= status < 300):
            maybe_created = method == "POST"
            suffix = "; the task may have been created" if maybe_created else ""
            return TransientError(self._redact(f"{where} ({detail}){suffix}"), maybe_created=maybe_created,
                                  code=code, http_status=status)
        return ApiError(self._redact(f"{where} ({detail})"), code=code, http_status=status)

    def _page_items(self, data: Any) -> List[Mapping[str, Any]]:
        items = _find_list(data)
        if items is None:
            raise TransientError(self._redact(f"GET /tasks: unexpected page shape: {_snippet(repr(data))}"))
        return [item for item in items if isinstance(item, Mapping)]


class _Busy(Exception):
    """The pre-flight reached the service, which is busy or failing for now: worth another try."""

    def __init__(self, message: str, *, wait: Optional[float] = None) -> None:
        super().__init__(message)
        self.wait = wait


_OS_CAUSE = re.compile(r"\[Errno -?\d+\] ([^\]\)'\"]+)")


def plain_cause(exc: requests.RequestException, detail: str) -> str:
    """What a user can act on in a connection failure: "connection refused", "timed out", "Name
    or service not known" — not urllib3's whole repr."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    found = _OS_CAUSE.findall(detail)
    return found[-1].strip().rstrip(".").lower() if found else detail


def _proxy_for(session: requests.Session, url: str, proxies: Optional[Dict[str, Optional[str]]]) -> Optional[str]:
    """The proxy a request to ``url`` goes through: the configured ones, else the environment's."""
    merged = session.merge_environment_settings(url, proxies or {}, None, None, None)
    return select_proxy(url, {k: v for k, v in merged["proxies"].items() if v})


def _setting(settings: Settings, name: str) -> Any:
    """A setting by its ``Settings`` field, or a provider's by its ``Option`` key."""
    return getattr(settings, name) if name in Settings.__dataclass_fields__ else settings.option(name)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _causes(exc: BaseException) -> List[BaseException]:
    """``exc`` and everything beneath it: causes, contexts and the reasons urllib3 wraps."""
    found: List[BaseException] = []
    pending: List[Optional[BaseException]] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        beneath = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending += [item for item in beneath if isinstance(item, BaseException)]
    return found


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


def _whole_cents(value: Any) -> Optional[int]:
    """A cost in whole cents, the documented unit; a fraction (0.3: dollars, say) is not one, and
    is taken as no cost at all rather than as a free task."""
    cents = _cents(value)
    return cents if cents is not None and float(str(value).strip()) == cents else None


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
