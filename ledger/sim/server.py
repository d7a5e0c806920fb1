"""A local stand-in for the video APIs over real sockets, for tests and for rehearsals.

It speaks any protocol ledger knows (``SimConfig.protocol``: a provider's name), through that
provider's simulator module (``protocol.py`` says what one is): the api.sora.hk v1 one
(``sora_hk.py``: envelopes, codes 401/1001/1012, paged task lists), the OpenAI-compatible
``/v1/videos`` one (``openai_videos.py``: HTTP statuses with error objects, cursor-paged lists, the
video behind the key), and the others registered. This module keeps what they share: the tasks
and their timeline, the balance, signed expiring video URLs on a separate ``/files/`` path with
``Range`` support, and the faults a real deployment shows, in every protocol: HTML 502 pages, code-500 envelopes, dropped connections, 429s,
truncated downloads and create answers lost after the task was made and billed. Its file route can
also play a hostile or odd video host: no Content-Length (chunked or close-delimited), a body
longer than announced or endless, a drip of single bytes, gzip/deflate-encoded videos, a gzip
bomb and encodings no client decodes.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import os
import random
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy as email_policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple
from urllib.parse import parse_qs, quote, urlsplit

from . import protocol as protocols

__all__ = ["SimConfig", "SimServer", "POLICY_TRIGGER", "POLICY_MESSAGE", "GENERATION_FAILED_MESSAGE"]

log = logging.getLogger(__name__)

ROUTES = ("create", "task", "tasks", "balance", "pricing", "file", "content")
GENERIC_FAULTS = frozenset({"http_502_html", "envelope_500", "http_500_json", "drop", "rate_limit", "delay", "envelope"})
FILE_FAULTS = frozenset({"truncate", "expired", "ignore_range", "bad_length", "no_length", "overlong", "drip",
                         "gzip_bomb", "encoding"})
FILE_ENCODINGS = ("gzip", "deflate", "deflate-raw")
# Create-only: the answer is lost after the task was made ("lost_create"); the task gets the id given
# as ``task_id`` ("task_id": over-long, NUL, path-like ids a hostile or broken server might send).
CREATE_FAULTS = frozenset({"lost_create", "task_id"})
FAULT_KINDS = GENERIC_FAULTS | FILE_FAULTS | CREATE_FAULTS
# What a random fault (``fault_rate``) may be on each route: transport trouble, not quirks.
RANDOM_FAULTS: Mapping[str, Tuple[str, ...]] = {
    "create": ("http_502_html", "envelope_500", "drop", "rate_limit", "lost_create"),
    "file": ("truncate", "drop", "http_502_html"),
}
RANDOM_API_FAULTS = ("http_502_html", "envelope_500", "http_500_json", "drop", "rate_limit")

POLICY_TRIGGER = "[policy-reject]"
POLICY_MESSAGE = "内容审核未通过：提示词可能违反内容政策"
GENERATION_FAILED_MESSAGE = "视频生成失败：服务器繁忙，请稍后重试"
SIM_TZ = timezone(timedelta(hours=8))
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
# The generated video repeats with a prime period, so bytes misplaced by any power-of-two offset
# (a resume at the wrong place) change the file's hash.
_PERIOD = 1_048_573
_CHUNK = 512 * 1024
_MIB = 1 << 20
_RANGE = re.compile(r"^\s*bytes=(\d*)-(\d*)\s*$")


def protocol_names() -> Tuple[str, ...]:
    """The protocols the simulator speaks: one per provider ledger knows."""
    from ..providers import REGISTRY

    return tuple(REGISTRY)


@dataclass(frozen=True)
class SimConfig:
    """How the simulated service behaves."""

    api_key: Optional[str] = None  # None accepts any key
    gen_seconds: float = 10.0  # 0: a task is complete at its first poll
    fail_rate: float = 0.0  # fraction of tasks that end failed with a generic Chinese error_msg
    balance: int = 100_000  # cents
    normal_price: int = 30
    pro_price: int = 150
    currency: str = "USD"
    unit: str = "cents"  # what api.sora.hk's /pricing answers: the prices are cents per task
    url_ttl: float = 2 * 86400.0  # seconds a video URL stays valid
    list_shape: str = "list"  # "list": data is the page; "object": {"tasks": [...], "total", ...}
    list_ignores_page: bool = False  # a broken server: every page of GET /tasks is the first one
    list_shows_cost: bool = True  # False: task objects carry no ``cost`` (only the create answer does)
    fault_rate: float = 0.0  # probability that a request meets a random transport fault
    lost_create_rate: float = 0.0  # probability that a create's answer is lost after the task was made
    video_bytes: Optional[int] = None  # None serves the shipped sample.mp4
    seed: Optional[int] = None
    create_latency: float = 0.0  # seconds between making (and billing) a task and answering the create
    file_rate: Optional[float] = None  # MB/s per video download (a real link); None: as fast as possible
    # Serve every video with this Content-Encoding (and the encoded length; ranges count encoded
    # bytes): "gzip", "deflate" (zlib) or "deflate-raw" (raw deflate labelled "deflate").
    file_encoding: Optional[str] = None
    protocol: str = "sora_hk"  # a provider's name (``ledger/providers``): the API this simulator speaks
    # openai: status words said instead of the format's own, as gateways do ({"completed": "succeeded"}).
    status_words: Mapping[str, str] = dataclasses.field(default_factory=dict)
    poll_after_ms: Optional[int] = None  # openai: an openai-poll-after-ms header on every status answer
    # openai: answer /content with a redirect to a signed URL on this host (e.g. "localhost", another
    # host name of the same server), like a relay in front of object storage; None serves it there.
    content_host: Optional[str] = None
    # Team mode: the keys the account has, each with its limit of generations at once (None: no
    # limit), instead of ``api_key``; a task belongs to the key that made it (another key's request
    # does not see it), and a create past the key's limit is refused with a 429.
    keys: Optional[Mapping[str, Optional[int]]] = None
    broke_keys: Tuple[str, ...] = ()  # keys whose creates are refused for lack of balance
    # Seconds the service's clock runs ahead of this machine's (negative: behind): its task times
    # and its Date header both show it.
    clock_offset: float = 0.0
    # Seconds a new task takes to show in the task list and in look-ups by reference (an index that
    # catches up later, as behind a relay); its id answers at once.
    list_lag: float = 0.0


@dataclass
class _Fault:
    kind: str
    count: int
    opts: Dict[str, Any]


@dataclass
class _Task:
    task_id: str
    seq: int
    prompt: str
    cost: int  # what the account was charged for it (so far: ``SimServer.adjust_charge``)
    outcome: str  # "ok", "policy" or "error"
    created_wall: datetime
    created_mono: float
    is_pro: bool = False
    duration: int = 0
    resolution: str = ""
    quality: str = ""
    remove_watermark: bool = False
    image_url: str = ""
    model: str = ""  # the model asked for
    size: str = ""  # openai: the size asked for
    # Whatever else a protocol keeps of the request (a client reference, a seed, the body itself).
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    key: str = ""  # the key that made it (team mode)


class _Video:
    """The bytes every task's video URL serves, produced chunk by chunk (never whole in memory)."""

    def __init__(self, size: Optional[int], seed: Optional[int]) -> None:
        if size is None:
            self._data: Optional[memoryview] = memoryview(
                resources.files("ledger.sim").joinpath("sample.mp4").read_bytes()
            )
            self.size = len(self._data)
            self._block: Optional[memoryview] = None
        else:
            self._data = None
            self.size = size
            base = random.Random(seed).randbytes(_PERIOD)
            self._block = memoryview(base + base)
        self._sha256: Optional[str] = None
        self._lock = threading.Lock()

    def chunks(self, start: int, end: int) -> Iterator[memoryview]:
        """Bytes [start, end) in chunks of at most 512 KiB."""
        pos = start
        while pos < end:
            count = min(_CHUNK, end - pos)
            if self._data is not None:
                yield self._data[pos:pos + count]
            else:
                assert self._block is not None
                offset = pos % _PERIOD
                yield self._block[offset:offset + count]
            pos += count

    @property
    def sha256(self) -> str:
        """The hex sha256 of the whole video (computed once)."""
        with self._lock:
            if self._sha256 is None:
                hasher = hashlib.sha256()
                for chunk in self.chunks(0, self.size):
                    hasher.update(chunk)
                self._sha256 = hasher.hexdigest()
            return self._sha256


class _Encoded:
    """A video as compressed bytes, served like ``_Video`` (sliced in chunks)."""

    def __init__(self, video: _Video, encoding: str) -> None:
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "deflate-raw": -zlib.MAX_WBITS}[encoding]
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        parts = [packer.compress(chunk) for chunk in video.chunks(0, video.size)]
        self._data = memoryview(b"".join(parts) + packer.flush())
        self.size = len(self._data)
        self.header = "deflate" if encoding == "deflate-raw" else encoding

    def chunks(self, start: int, end: int) -> Iterator[memoryview]:
        """Bytes [start, end) in chunks of at most 512 KiB."""
        for pos in range(start, end, _CHUNK):
            yield self._data[pos:min(end, pos + _CHUNK)]


@functools.lru_cache(maxsize=1)
def _bomb_blocks() -> Tuple[bytes, bytes, bytes]:
    """(first, repeat, last) raw-deflate blocks: first and repeat each inflate to 1 MiB of zeros.

    A full flush makes each block independent of what came before, so the repeat block can be
    sent any number of times: a bomb of any size costs nothing to build."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(_MIB)
    first = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    repeat = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    return first, repeat, packer.flush()


def gzip_bomb(decoded_mib: int) -> Tuple[int, Iterator[bytes]]:
    """A valid gzip stream inflating to ``decoded_mib`` MiB of zeros: (its length, its pieces)."""
    first, repeat, last = _bomb_blocks()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    length = len(header) + len(first) + (decoded_mib - 1) * len(repeat) + len(last) + 8

    def pieces() -> Iterator[bytes]:
        zeros = bytes(_MIB)
        crc = 0
        yield header + first
        crc = zlib.crc32(zeros, crc)
        for _ in range(decoded_mib - 1):
            yield repeat
            crc = zlib.crc32(zeros, crc)
        yield last + crc.to_bytes(4, "little") + ((decoded_mib * _MIB) & 0xFFFFFFFF).to_bytes(4, "little")

    return length, pieces()


class SimServer:
    """The simulated API on a real socket. ``start()`` serves from a background thread."""

    def __init__(self, config: Optional[SimConfig] = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        if self.config.list_shape not in ("list", "object"):
            raise ValueError(f"list_shape must be 'list' or 'object', not {self.config.list_shape!r}")
        if self.config.protocol not in protocol_names():
            raise ValueError(f"protocol must be one of {', '.join(protocol_names())}, not {self.config.protocol!r}")
        from ..providers import REGISTRY

        self.protocol = protocols.load(REGISTRY[self.config.protocol].sim)
        if self.config.file_encoding not in (None,) + FILE_ENCODINGS:
            raise ValueError(f"file_encoding must be one of {', '.join(FILE_ENCODINGS)}, not {self.config.file_encoding!r}")
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._request = threading.local()  # the key of the request a handler thread answers
        self._rng = random.Random(self.config.seed)
        self._secret = os.urandom(16)
        self._video = _Video(self.config.video_bytes, self.config.seed)
        self._encoded: Optional[_Encoded] = None
        self._tasks: Dict[str, _Task] = {}
        self._balance = self.config.balance
        self._faults: Dict[str, List[_Fault]] = {}
        self._request_times: List[Tuple[str, float]] = []
        self._stats: Dict[str, Any] = {
            "creates_received": 0,
            "tasks_created": 0,
            # Team mode: the most generations each key had running at once, and creates refused
            # because the key was at its limit.
            "peak_running_by_key": {},
            "key_limit_refusals": 0,
            "tasks_by_key": {},
            "creates_per_prompt": {},
            "polls_per_task": {},
            "downloads_started": 0,
            "bytes_served": 0,
            "requests_by_route": {},
            "proxied_requests": 0,
            "connect_requests": [],
            "file_requests_with_auth": 0,
            "faults_injected": {},
        }
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "SimServer":
        """Bind and serve from a daemon thread; returns self."""
        httpd = _HTTPServer((self.host, self._requested_port), _Handler)
        httpd.sim = self
        self._httpd = httpd
        # shutdown() waits for the serving loop to look up; a short poll keeps stop() quick.
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="sora-sim", daemon=True)
        self._thread.start()
        log.info("simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_all()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port actually bound."""
        if self._httpd is None:
            raise RuntimeError("the simulator is not running")
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        """``http://HOST:PORT``, with a wildcard bind address shown as 127.0.0.1."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:8765/v1`` (the protocol's own path)."""
        return self.origin + self.protocol.base_path

    # --- for tests and the admin endpoints ------------------------------------------------------

    def inject(self, route: str, kind: str, count: int = 1, **opts: Any) -> None:
        """Queue ``count`` faults of ``kind`` for the next requests on ``route`` ("any" for all).

        Options: ``retry_after`` and ``body`` ("json"/"text") for rate_limit, ``code`` and ``message``
        for envelope (an error code inside an HTTP 200), ``seconds`` for
        delay, ``fraction`` or ``bytes`` for truncate, ``extra`` for bad_length.

        File faults beyond those: ``no_length`` (no Content-Length; ``chunked`` for chunked transfer
        encoding, else the body ends when the connection closes; ``endless`` never ends it),
        ``overlong`` (the true Content-Length, then ``extra`` bytes more, or ``endless``), ``drip``
        (``bytes`` bytes every ``seconds`` seconds), ``gzip_bomb`` (a valid gzip body of ``mib`` MiB
        of zeros, ~1 KiB per MiB, with its true Content-Length), ``encoding`` (the body labelled
        with Content-Encoding ``name``, default "br", but sent as is).
        """
        routes = ROUTES + tuple(self.protocol.routes)
        if route not in routes and route != "any":
            raise ValueError(f"unknown route {route!r}; use one of {', '.join(routes)} or any")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; use one of {', '.join(sorted(FAULT_KINDS))}")
        if kind in FILE_FAULTS and route != "file":
            raise ValueError(f"fault {kind!r} only applies to the file route")
        if kind in CREATE_FAULTS and route != "create":
            raise ValueError(f"fault {kind!r} only applies to the create route")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.setdefault(route, []).append(_Fault(kind, count, dict(opts)))

    def clear_faults(self) -> None:
        """Drop every queued fault (the service "recovers")."""
        with self._lock:
            self._faults.clear()

    def stats(self) -> Dict[str, Any]:
        """A copy of the counters, the balance and the video's size and sha256."""
        with self._lock:
            snapshot = copy.deepcopy(self._stats)
            snapshot["balance"] = self._balance
        snapshot["video_size"] = self._video.size
        snapshot["video_sha256"] = self._video.sha256
        return snapshot

    def request_times(self) -> List[Tuple[str, float]]:
        """(route, time.monotonic()) of every API and file request so far, in arrival order."""
        with self._lock:
            return list(self._request_times)

    def create_external(self, prompt: str, **params: Any) -> str:
        """Make (and bill) a task as another client of the same account would; returns its id.
        ``params``: the protocol's create body besides the prompt (``body`` for one given whole)."""
        body = params.pop("body", None) or {"prompt": prompt, **params}
        reply, made = self.protocol.create(self, body, None)
        if not made:
            raise ValueError(reply.body.decode("utf-8", "replace"))
        with self._lock:
            return max(self._tasks.values(), key=lambda task: task.seq).task_id

    def forget(self, task_id: str) -> None:
        """Make the service lose a task: it answers 404 for it from now on and lists it no more."""
        with self._lock:
            self._tasks.pop(task_id, None)

    def tasks(self) -> List[Dict[str, Any]]:
        """Every task as the API would show it now, oldest first; in any protocol with its id
        also under ``task_id``."""
        with self._lock:
            tasks = sorted(self._tasks.values(), key=lambda task: task.seq)
        return [{**self.protocol.view(self, task, self.origin), "task_id": task.task_id} for task in tasks]

    # --- what the protocols use (``protocol.py``) ---------------------------------------------

    def record_task(self, prompt: str, price: int, task_id: Optional[str], **fields: Any) -> Optional[_Task]:
        """Charge ``price`` and record a task (None when the balance is short)."""
        return self._record_task(prompt, price, task_id, **fields)

    def current_balance(self) -> int:
        return self._current_balance()

    def adjust_charge(self, task: _Task, cost: int) -> None:
        """Bill ``task`` ``cost`` in all instead of what was charged at its create (an API that
        bills what a finished task used, or nothing for a failed one)."""
        with self._lock:
            self._balance -= cost - task.cost
            task.cost = cost

    def find_task(self, predicate: Any) -> Optional[_Task]:
        """The newest task ``predicate(task)`` is true of (a look-up by a client reference)."""
        with self._lock:
            return max((t for t in self._tasks.values() if predicate(t) and self._listed(t)), key=lambda t: t.seq,
                       default=None)

    def get_task(self, task_id: str, *, poll: bool) -> Optional[_Task]:
        """A task by id (``poll``: count it as a poll of that task), None when unknown."""
        with self._lock:
            task = self._visible(self._tasks.get(task_id))
            if task is not None and poll:
                polls = self._stats["polls_per_task"]
                polls[task_id] = polls.get(task_id, 0) + 1
        return task

    def tasks_newest_first(self) -> List[_Task]:
        with self._lock:
            return sorted((t for t in self._tasks.values() if self._listed(t)), key=lambda task: task.seq,
                          reverse=True)

    def timeline(self, task: _Task) -> Tuple[str, int, float]:
        return self._timeline(task)

    def wall_now(self) -> float:
        """Unix time by the service's clock (``SimConfig.clock_offset``): what its URLs expire by."""
        return time.time() + self.config.clock_offset

    def signed_url(self, task_id: str, origin: str, expires: Optional[int] = None) -> str:
        """A video URL; ``expires`` (unix seconds) for one signed once, as a service that keeps
        the video a fixed time signs it (default: signed afresh, valid ``url_ttl``)."""
        return self._signed_url(task_id, origin, expires)

    # --- internals used by the handler ------------------------------------------------------------

    def _count(self, route: str, proxied: bool) -> None:
        with self._lock:
            self._request_times.append((route, time.monotonic()))
            by_route = self._stats["requests_by_route"]
            by_route[route] = by_route.get(route, 0) + 1
            if proxied:
                self._stats["proxied_requests"] += 1
            if route == "create":
                self._stats["creates_received"] += 1

    def _record_connect(self, target: str) -> None:
        with self._lock:
            self._stats["connect_requests"].append(target)

    def _current_balance(self) -> int:
        with self._lock:
            return self._balance

    def _bump(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[key] += amount

    def _take_fault(self, route: str) -> Optional[_Fault]:
        """The next queued fault for ``route`` (or "any"), else maybe a random one."""
        with self._lock:
            queue = self._faults.get(route) or self._faults.get("any")
            if queue:
                fault = queue[0]
                fault.count -= 1
                if fault.count == 0:
                    queue.pop(0)
            elif route == "create" and self.config.lost_create_rate and self._rng.random() < self.config.lost_create_rate:
                fault = _Fault("lost_create", 1, {})
            elif self.config.fault_rate and self._rng.random() < self.config.fault_rate:
                kind = self._rng.choice(RANDOM_FAULTS.get(route, RANDOM_API_FAULTS))
                fault = _Fault(kind, 1, {"retry_after": 1} if kind == "rate_limit" else {})
            else:
                return None
            injected = self._stats["faults_injected"]
            injected[fault.kind] = injected.get(fault.kind, 0) + 1
            return fault

    def _record_task(self, prompt: str, price: int, task_id: Optional[str], **fields: Any) -> Optional[_Task]:
        """Charge ``price`` and record a task (None when the balance is short)."""
        key = self.request_key()
        with self._lock:
            if self._balance < price or (key and key in self.config.broke_keys):
                return None
            self._balance -= price
            if POLICY_TRIGGER in prompt.lower():
                outcome = "policy"
            else:
                outcome = "error" if self._rng.random() < self.config.fail_rate else "ok"
            task = _Task(task_id=task_id if task_id is not None else self._new_id(), seq=len(self._tasks),
                         prompt=prompt, cost=price, outcome=outcome,
                         created_wall=(datetime.now(SIM_TZ) + timedelta(seconds=self.config.clock_offset)
                                       ).replace(microsecond=0), created_mono=time.monotonic(),
                         **fields)
            self._tasks[task.task_id] = task
            self._stats["tasks_created"] += 1
            if self.config.keys is not None:
                task.key = key
                running = sum(1 for t in self._tasks.values() if t.key == key and self._running(t))
                peaks = self._stats["peak_running_by_key"]
                peaks[key] = max(peaks.get(key, 0), running)
                by_key = self._stats["tasks_by_key"]
                by_key[key] = by_key.get(key, 0) + 1
            per_prompt = self._stats["creates_per_prompt"]
            per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
        log.debug("created task %s (%s)", task.task_id, outcome)
        return task

    def _new_id(self) -> str:
        return self.protocol.new_id()

    def _running(self, task: _Task) -> bool:
        """Whether ``task``'s generation is still going (it holds one of its key's slots)."""
        return time.monotonic() - task.created_mono < self._timeline(task)[2]

    def request_key(self) -> str:
        """The key of the request this thread answers ("" outside one)."""
        return getattr(self._request, "key", "")

    def _visible(self, task: Optional[_Task]) -> Optional[_Task]:
        """Team mode: a task only its own key sees."""
        if task is None or self.config.keys is None or task.key == self.request_key():
            return task
        return None

    def _listed(self, task: _Task) -> bool:
        """Whether the task list (and a look-up by reference) shows ``task`` yet (``list_lag``)."""
        return self._visible(task) is not None and time.monotonic() - task.created_mono >= self.config.list_lag

    def key_at_limit(self) -> bool:
        """Team mode: the request's key already runs as many generations as it may."""
        if self.config.keys is None:
            return False
        key = self.request_key()
        limit = self.config.keys.get(key)
        with self._lock:
            if limit is None or sum(1 for t in self._tasks.values() if t.key == key and self._running(t)) < limit:
                return False
            self._stats["key_limit_refusals"] += 1
            return True

    def _timeline(self, task: _Task) -> Tuple[str, int, float]:
        """(status, progress, seconds from creation to the end) of a task now."""
        gen = self.config.gen_seconds
        elapsed = time.monotonic() - task.created_mono
        # Policy rejections come early, generic failures midway, videos at the end.
        ends_at = {"ok": gen, "policy": 0.1 * gen, "error": 0.6 * gen}[task.outcome]
        if elapsed >= ends_at:
            status = "completed" if task.outcome == "ok" else "failed"
            progress = 100 if status == "completed" else int(100 * ends_at / gen) if gen else 0
        elif elapsed < 0.1 * gen:
            status, progress = "pending", 0
        else:
            status, progress = "processing", max(1, min(99, int(100 * elapsed / gen)))
        return status, progress, ends_at

    def _signed_url(self, task_id: str, origin: str, expires: Optional[int] = None) -> str:
        # Signed afresh at every poll, as object storage URLs are: re-polling yields a live URL.
        expires = int(self.wall_now() + self.config.url_ttl) if expires is None else expires
        return f"{origin}/files/{quote(task_id, safe='')}.mp4?expires={expires}&sig={self._signature(task_id, expires)}"

    def _signature(self, task_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{task_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _file_problem(self, task_id: str, query: Mapping[str, List[str]]) -> Optional[Tuple[int, str]]:
        """Why the video URL cannot be served (status, S3-style error code), or None."""
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or self._timeline(task)[0] != "completed":
            return 404, "NoSuchKey"
        try:
            expires = int(query.get("expires", [""])[0])
        except ValueError:
            return 403, "AccessDenied"
        if not hmac.compare_digest(query.get("sig", [""])[0], self._signature(task_id, expires)):
            return 403, "SignatureDoesNotMatch"
        if self.wall_now() >= expires:
            return 403, "AccessDenied: Request has expired"
        return None

    def _file_body(self) -> Any:
        """What the file route serves: the video, or its encoded form (built once)."""
        encoding = self.config.file_encoding
        if encoding is None:
            return self._video
        with self._lock:
            if self._encoded is None:
                self._encoded = _Encoded(self._video, encoding)
            return self._encoded


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    sim: SimServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: Set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Cut idle keep-alive connections so their threads end with the server."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients abandoning downloads are routine here; keep stderr quiet.
        log.debug("error while serving %s", client_address, exc_info=True)


_FORM_KEY = re.compile(r"^([^\[\]]+)\[([^\[\]]+)\]$")


def form_fields(raw_body: bytes, content_type: str) -> Dict[str, Any]:
    """A multipart/form-data body as the JSON object it stands for: ``input_reference[image_url]``
    becomes ``{"input_reference": {"image_url": …}}``; file parts are kept as bytes."""
    message = BytesParser(policy=email_policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + raw_body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    fields: Dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        value: Any = data if part.get_filename() else data.decode("utf-8")
        nested = _FORM_KEY.match(str(name))
        if nested:
            fields.setdefault(nested.group(1), {})[nested.group(2)] = value
        else:
            fields[str(name)] = value
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SoraSim/1.0"
    timeout = 60  # idle keep-alive connections go away eventually
    disable_nagle_algorithm = True  # headers and body are separate writes; do not wait for ACKs
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_CONNECT(self) -> None:  # noqa: N802
        # Record the tunnel a client asked for (an https URL through this "proxy"), then refuse it.
        self.server.sim._record_connect(self.path)
        self._send(502, b"", "text/plain", close=True)

    def date_time_string(self, timestamp: Optional[float] = None) -> str:
        """The Date header, by the service's clock (``SimConfig.clock_offset``)."""
        now = time.time() if timestamp is None else timestamp
        return super().date_time_string(now + self.server.sim.config.clock_offset)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    # --- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        proxied = self.path.startswith(("http://", "https://"))
        target = urlsplit(self.path)
        path, query = target.path, parse_qs(target.query)
        body = self._read_body()
        if path.startswith("/_sim/"):
            self._admin(method, path, body)
            return
        proto = sim.protocol
        route, arg = proto.route(method, path, query)
        if route is None:
            self._reply(proto.error("no_route", f"{method} {path}"))
            return
        sim._count(route, proxied)
        # The content endpoint that serves the bytes itself meets the faults of a file host.
        fault = sim._take_fault("file" if route == "content" and not sim.config.content_host else route)
        if fault is not None and fault.kind == "delay":
            time.sleep(float(fault.opts.get("seconds", 1.0)))
            fault = None
        if fault is not None and fault.kind in GENERIC_FAULTS:
            self._answer_fault(fault)
            return
        if route == "file":
            self._file(arg, query, fault)
            return
        header = self.headers.get("Authorization", "")
        sim._request.key = header[7:] if header.lower().startswith("bearer ") else header
        if sim.config.keys is not None:  # team mode: any of the account's keys
            denied = None if sim._request.key in sim.config.keys else proto.authorise(self.headers, "\0")
        else:
            denied = proto.authorise(self.headers, sim.config.api_key)
        if denied is not None:
            self._reply(denied)
            return
        if route == "create" and sim.key_at_limit():
            self._reply(proto.error("rate_limited", "this key runs as many generations as it may at once"))
            return
        if route == "create":
            self._answer_create(body, lost=fault is not None and fault.kind == "lost_create",
                                task_id=fault.opts.get("task_id") if fault is not None and fault.kind == "task_id" else None)
        elif route == "content":  # the video behind the key
            problem = proto.content_problem(sim, arg, expired=fault is not None and fault.kind == "expired")
            if problem is not None:
                self._reply(problem)
            elif sim.config.content_host:
                location = sim._signed_url(arg, f"http://{sim.config.content_host}:{sim.port}")
                self._send(302, b"", "text/plain", headers={"Location": location})
            else:
                self._serve_video(fault)
        else:
            self._reply(proto.answer(sim, route, arg, query, self._origin()))

    def _reply(self, reply: protocols.Reply) -> None:
        self._send(reply.status, reply.body, reply.content_type, headers=reply.headers)

    def _answer_create(self, raw_body: bytes, *, lost: bool, task_id: Optional[str] = None) -> None:
        sim = self.server.sim
        content_type = self.headers.get("Content-Type", "")
        try:
            if content_type.lower().startswith("multipart/form-data"):
                body = form_fields(raw_body, content_type)  # the official OpenAI SDK always sends a form
            else:
                body = json.loads(raw_body.decode("utf-8")) if raw_body else None
        except (UnicodeDecodeError, ValueError):
            body = None
        reply, made = sim.protocol.create(sim, body, task_id)
        if made and sim.config.create_latency:
            # The real service answers a create after a while, with the task already made and billed.
            time.sleep(sim.config.create_latency)
        if lost and made:
            self.close_connection = True  # made and billed, but the answer never leaves
            return
        self._reply(reply)

    def _answer_fault(self, fault: _Fault) -> None:
        kind, proto = fault.kind, self.server.sim.protocol
        if kind == "drop":
            self.close_connection = True
        elif kind == "http_502_html":
            self._send(502, HTML_502, "text/html")
        elif kind == "envelope_500":  # a server error said in an HTTP 200, where the format allows it
            self._reply(proto.error("server_in_200", "server error"))
        elif kind == "http_500_json":
            self._reply(proto.error("server", "server error"))
        elif kind == "envelope":  # any documented (or undocumented) error code, inside an HTTP 200
            self._reply(proto.error("in_200", str(fault.opts.get("message", "")), code=fault.opts.get("code")))
        else:  # rate_limit
            retry_after = fault.opts.get("retry_after")
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            if fault.opts.get("body", "json") == "text":
                self._send(429, b"Too Many Requests", "text/plain", headers=headers)
            else:
                self._reply(proto.retry_after(proto.error("rate_limited", "rate limited"), retry_after))

    def _file(self, name: str, query: Mapping[str, List[str]], fault: Optional[_Fault]) -> None:
        sim = self.server.sim
        if "Authorization" in self.headers:
            sim._bump("file_requests_with_auth")
        kind = fault.kind if fault else None
        problem = (403, "AccessDenied: Request has expired") if kind == "expired" else \
            sim._file_problem(name, query)
        if problem is not None:
            status, code = problem
            body = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code></Error>\n".encode()
            self._send(status, body, "application/xml")
            return
        self._serve_video(fault)

    def _serve_video(self, fault: Optional[_Fault]) -> None:
        """Send the video (honouring ``Range``), as spoilt as ``fault`` asks."""
        sim = self.server.sim
        kind = fault.kind if fault else None
        opts = fault.opts if fault else {}
        if kind == "gzip_bomb":
            length, bomb = gzip_bomb(int(opts.get("mib", 2048)))
            self._send_file(200, {"Content-Encoding": "gzip", "Content-Length": str(length)}, bomb)
            return
        video = sim._file_body()
        size = video.size
        start, end = 0, size
        wanted = self.headers.get("Range")
        if wanted is not None and kind != "ignore_range":
            parsed = _parse_range(wanted, size)
            if parsed is None:
                self._send(416, b"", "video/mp4", headers={"Content-Range": f"bytes */{size}"})
                return
            start, end = parsed
        partial = (start, end) != (0, size)
        headers = {"Accept-Ranges": "bytes"}
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if isinstance(video, _Encoded):
            headers["Content-Encoding"] = video.header
        if kind == "encoding":
            headers["Content-Encoding"] = str(opts.get("name", "br"))
        length = end - start
        send_until = end
        if kind == "truncate":
            cut = int(opts.get("bytes", length * float(opts.get("fraction", 0.5))))
            send_until = start + max(0, min(length - 1, cut))
        announced = length + int(opts.get("extra", 1024)) if kind == "bad_length" else length
        chunked = kind == "no_length" and bool(opts.get("chunked"))
        if kind == "no_length":
            headers["Transfer-Encoding" if chunked else "Connection"] = "chunked" if chunked else "close"
        else:
            headers["Content-Length"] = str(announced)
        if send_until != end or announced != length or kind == "overlong":
            headers["Connection"] = "close"
        pieces: Iterator[Any] = video.chunks(start, send_until)
        if kind in ("no_length", "overlong") and opts.get("endless"):
            pieces = _endless(video, start, send_until)
        elif kind == "overlong":
            pieces = _followed_by(pieces, video, int(opts.get("extra", _MIB)))
        elif kind == "drip":
            pieces = _dripping(pieces, int(opts.get("bytes", 1)), float(opts.get("seconds", 1.0)))
        self._send_file(206 if partial else 200, headers, pieces, chunked=chunked)

    def _send_file(self, status: int, headers: Mapping[str, str], pieces: Iterator[Any], *,
                   chunked: bool = False) -> None:
        """Send a video answer: headers, then ``pieces`` (paced by ``file_rate``) until done or the
        client goes away."""
        sim = self.server.sim
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        for key, value in headers.items():
            self.send_header(key, value)
        if headers.get("Connection") == "close":
            self.close_connection = True
        self.end_headers()
        sim._bump("downloads_started")
        rate = sim.config.file_rate
        began, sent = time.monotonic(), 0
        for chunk in pieces:
            try:
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), bytes(chunk)))
                else:
                    self.wfile.write(chunk)
                self.wfile.flush()
            except OSError:  # the client went away
                self.close_connection = True
                return
            sim._bump("bytes_served", len(chunk))
            sent += len(chunk)
            if rate:  # pace the body like a link of that speed
                ahead = sent / (rate * 1e6) - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if chunked:
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True

    def _admin(self, method: str, path: str, body: bytes) -> None:
        sim = self.server.sim
        if method == "GET" and path == "/_sim/stats":
            self._send_json(200, json.dumps(sim.stats(), ensure_ascii=False).encode("utf-8"))
            return
        if method == "POST" and path == "/_sim/faults":
            try:
                spec = json.loads(body.decode("utf-8"))
                sim.inject(spec.pop("route"), spec.pop("kind"), int(spec.pop("count", 1)), **spec)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self._send_json(400, json.dumps({"ok": False, "error": str(exc)}).encode("utf-8"))
                return
            self._send_json(200, b'{"ok": true}')
            return
        self._send_json(404, json.dumps({"ok": False, "error": f"no admin endpoint {method} {path}"}).encode())

    # --- plumbing --------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _origin(self) -> str:
        # Video URLs use the host the client addressed, so they work through a proxy as well.
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.sim.origin

    def _send_json(self, status: int, body: bytes, headers: Optional[Mapping[str, str]] = None) -> None:
        self._send(status, body, "application/json; charset=utf-8", headers=headers)

    def _send(self, status: int, body: bytes, content_type: str, *,
              headers: Optional[Mapping[str, str]] = None, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def _endless(video: Any, start: int, end: int) -> Iterator[Any]:
    """The video's bytes from ``start``, then the video again and again, for ever."""
    yield from video.chunks(start, end)
    while True:
        yield from video.chunks(0, video.size)


def _followed_by(pieces: Iterator[Any], video: Any, extra: int) -> Iterator[Any]:
    """``pieces``, then ``extra`` more bytes (the video's first ones): a body past its length."""
    yield from pieces
    yield from video.chunks(0, min(extra, video.size))
    if extra > video.size:
        yield bytes(extra - video.size)


def _dripping(pieces: Iterator[Any], size: int, seconds: float) -> Iterator[Any]:
    """``pieces`` re-cut into ``size``-byte drops, one every ``seconds`` seconds."""
    for piece in pieces:
        for pos in range(0, len(piece), max(1, size)):
            yield piece[pos:pos + max(1, size)]
            time.sleep(seconds)


def _parse_range(header: str, size: int) -> Optional[Tuple[int, int]]:
    """[start, end) for a single ``bytes=a-b`` / ``a-`` / ``-n`` range, None when unsatisfiable.
    Several ranges are answered with the whole file, as servers may."""
    match = _RANGE.match(header)
    if match is None:
        return (0, size) if "," in header else None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(0, size - int(last)), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        return None
    return start, end
