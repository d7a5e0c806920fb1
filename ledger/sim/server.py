"""A local stand-in for the video API over real sockets, for tests and for rehearsals.

It speaks either protocol ledger knows (``SimConfig.protocol``): the api.sora.hk v1 one (envelopes,
codes 401/1001/1012, paged task lists, signed expiring video URLs on a separate ``/files/`` path
with ``Range`` support) or the OpenAI-compatible ``/v1/videos`` one (``openai_videos.py``: HTTP
statuses with error objects, cursor-paged lists, the video behind the key). Either can inject the
faults a real deployment shows: HTML 502 pages, code-500 envelopes, dropped connections, 429s,
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
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import openai_videos as openai

__all__ = ["SimConfig", "SimServer", "POLICY_TRIGGER", "POLICY_MESSAGE", "GENERATION_FAILED_MESSAGE"]

log = logging.getLogger(__name__)

ROUTES = ("create", "task", "tasks", "balance", "pricing", "file", "content")
PROTOCOLS = ("sora_hk", "openai")
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
STATUSES = ("pending", "processing", "completed", "failed")
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
_TASK_PATH = re.compile(r"^/v1/tasks/([^/]+)$")
_FILE_PATH = re.compile(r"^/files/([^/]+)\.mp4$")


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
    unit: str = "task"
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
    protocol: str = "sora_hk"  # or "openai": the /v1/videos format
    # openai: status words said instead of the format's own, as gateways do ({"completed": "succeeded"}).
    status_words: Mapping[str, str] = dataclasses.field(default_factory=dict)
    poll_after_ms: Optional[int] = None  # openai: an openai-poll-after-ms header on every status answer
    # openai: answer /content with a redirect to a signed URL on this host (e.g. "localhost", another
    # host name of the same server), like a relay in front of object storage; None serves it there.
    content_host: Optional[str] = None


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
    is_pro: bool
    duration: int
    resolution: str
    quality: str
    remove_watermark: bool
    image_url: str
    cost: int
    outcome: str  # "ok", "policy" or "error"
    created_wall: datetime
    created_mono: float
    model: str = ""  # openai: the model asked for
    size: str = ""  # openai: the size asked for


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
        if self.config.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.config.protocol!r}")
        if self.config.file_encoding not in (None,) + FILE_ENCODINGS:
            raise ValueError(f"file_encoding must be one of {', '.join(FILE_ENCODINGS)}, not {self.config.file_encoding!r}")
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
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
        """The API base URL, e.g. ``http://127.0.0.1:8765/v1``."""
        return self.origin + "/v1"

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
        if route not in ROUTES and route != "any":
            raise ValueError(f"unknown route {route!r}; use one of {', '.join(ROUTES)} or any")
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
        """Make (and bill) a task as another client of the same account would; returns its id."""
        if self.config.protocol == "openai":
            status, answer = self._create_openai({"prompt": prompt, **params})
            if status != 200:
                raise ValueError(answer["error"]["message"])
            return str(answer["id"])
        code, message, data = self._create({"prompt": prompt, **params})
        if code != 200:
            raise ValueError(message)
        return str(data["task_id"])

    def forget(self, task_id: str) -> None:
        """Make the service lose a task: it answers 404 for it from now on and lists it no more."""
        with self._lock:
            self._tasks.pop(task_id, None)

    def tasks(self) -> List[Dict[str, Any]]:
        """Every task as the API would show it now, oldest first; in either protocol with its id
        also under ``task_id``."""
        with self._lock:
            tasks = sorted(self._tasks.values(), key=lambda task: task.seq)
        return [{**self._view(task, self.origin), "task_id": task.task_id} for task in tasks]

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
        with self._lock:
            if self._balance < price:
                return None
            self._balance -= price
            if POLICY_TRIGGER in prompt.lower():
                outcome = "policy"
            else:
                outcome = "error" if self._rng.random() < self.config.fail_rate else "ok"
            task = _Task(task_id=task_id if task_id is not None else self._new_id(), seq=len(self._tasks),
                         prompt=prompt, cost=price, outcome=outcome,
                         created_wall=datetime.now(SIM_TZ).replace(microsecond=0), created_mono=time.monotonic(),
                         **fields)
            self._tasks[task.task_id] = task
            self._stats["tasks_created"] += 1
            per_prompt = self._stats["creates_per_prompt"]
            per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
        log.debug("created task %s (%s)", task.task_id, outcome)
        return task

    def _new_id(self) -> str:
        return f"video_{uuid.uuid4().hex}" if self.config.protocol == "openai" else str(uuid.uuid4())

    def _create(self, body: Any, task_id: Optional[str] = None) -> Tuple[int, str, Any]:
        """Validate, charge and record a task; return (code, message, data)."""
        problem = _validate(body)
        if problem:
            return 1001, f"参数错误：{problem}", None
        is_pro = bool(body.get("is_pro", False))
        price = self.config.pro_price if is_pro else self.config.normal_price
        task = self._record_task(
            body["prompt"], price, task_id, is_pro=is_pro, duration=int(body.get("duration", 10)),
            resolution=str(body.get("resolution", "horizontal")),
            quality="high" if is_pro else str(body.get("quality", "normal")),
            remove_watermark=bool(body.get("remove_watermark", True)), image_url=str(body.get("image_url") or ""))
        if task is None:
            balance = self._current_balance()
            return 1012, f"余额不足：当前余额 {balance} 分，本次需要 {price} 分", None
        return 200, "操作成功", {
            "task_id": task.task_id,
            "status": "pending",
            "cost": price,
            "created_at": task.created_wall.isoformat(),
        }

    def _create_openai(self, body: Any, task_id: Optional[str] = None) -> Tuple[int, Any]:
        """``POST /v1/videos``: validate, charge and record; (HTTP status, body object)."""
        problem = openai.validate(body)
        if problem:
            param, message = problem
            return 400, json.loads(openai.error(message, param=param))
        model, size = str(body.get("model", "sora-2")), str(body.get("size", "720x1280"))
        seconds = int(body.get("seconds", "4"))
        price = openai.price(model, size, seconds)
        reference = body.get("input_reference") or {}
        task = self._record_task(body["prompt"], price, task_id, is_pro=openai.family(model) == "sora-2-pro",
                                 duration=seconds, resolution=size, quality="", remove_watermark=False,
                                 image_url=str(reference.get("image_url") or ""), model=model, size=size)
        if task is None:
            return 429, json.loads(openai.error("You exceeded your current quota, please check your plan and "
                                                "billing details.", "insufficient_quota", code="insufficient_quota"))
        return 200, self._view(task, self.origin)

    def _get_task(self, task_id: str, origin: str, *, poll: bool) -> Optional[Dict[str, Any]]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and poll:
                polls = self._stats["polls_per_task"]
                polls[task_id] = polls.get(task_id, 0) + 1
        return None if task is None else self._view(task, origin)

    def _list_openai(self, origin: str, query: Mapping[str, List[str]]) -> Tuple[int, Any]:
        with self._lock:
            tasks = sorted(self._tasks.values(), key=lambda task: task.seq, reverse=True)
        return openai.page([self._view(task, origin) for task in tasks], query, self.config.list_ignores_page)

    def _content_problem(self, task_id: str, expired: bool) -> Optional[Tuple[int, bytes]]:
        """Why ``/v1/videos/{id}/content`` cannot be served (status, error body), or None."""
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            return 404, openai.error(f"Video with id {task_id!r} not found.")
        status, _, ends_at = self._timeline(task)
        if status != "completed":
            return 404, openai.error(f"Video {task_id!r} has no content yet (status {status}).")
        if expired or time.monotonic() >= task.created_mono + ends_at + self.config.url_ttl:
            return 410, openai.error(f"The content of video {task_id!r} has expired.")
        return None

    def _list_tasks(self, origin: str, page: int, page_size: int, status: Optional[str]) -> Any:
        with self._lock:
            tasks = sorted(self._tasks.values(), key=lambda task: task.seq, reverse=True)
        views = [self._task_view(task, origin) for task in tasks]
        if status is not None:
            views = [view for view in views if view["status"] == status]
        first = 0 if self.config.list_ignores_page else (page - 1) * page_size
        page_items = views[first: first + page_size]
        if self.config.list_shape == "list":
            return page_items
        return {"tasks": page_items, "total": len(views), "page": page, "page_size": page_size}

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

    def _view(self, task: _Task, origin: str) -> Dict[str, Any]:
        """A task as this simulator's protocol shows it."""
        if self.config.protocol != "openai":
            return self._task_view(task, origin)
        status, progress, ends_at = self._timeline(task)
        completed = int(task.created_wall.timestamp() + round(ends_at)) if status in ("completed", "failed") else None
        expires = int(completed + self.config.url_ttl) if status == "completed" and completed is not None else None
        return openai.view(task, status, progress, completed, expires, self.config.status_words)

    def _task_view(self, task: _Task, origin: str) -> Dict[str, Any]:
        status, progress, ends_at = self._timeline(task)
        done = status in ("completed", "failed")
        view = {
            "task_id": task.task_id,
            "status": status,
            "progress": progress,
            "prompt": task.prompt,
            "is_pro": task.is_pro,
            "duration": task.duration,
            "resolution": task.resolution,
            "quality": task.quality,
            "remove_watermark": task.remove_watermark,
            "image_url": task.image_url,
            "video_url": self._signed_url(task.task_id, origin) if status == "completed" else "",
            "error_msg": {"policy": POLICY_MESSAGE, "error": GENERATION_FAILED_MESSAGE}.get(task.outcome, "")
            if status == "failed" else "",
            "cost": task.cost,
            "created_at": task.created_wall.isoformat(),
            "completed_at": (task.created_wall + timedelta(seconds=round(ends_at))).isoformat() if done else None,
        }
        if not self.config.list_shows_cost:
            del view["cost"]
        return view

    def _signed_url(self, task_id: str, origin: str) -> str:
        # Signed afresh at every poll, as object storage URLs are: re-polling yields a live URL.
        expires = int(time.time() + self.config.url_ttl)
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
        if time.time() >= expires:
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

    def _charge_info(self) -> Dict[str, Any]:
        return {
            "normal_price": self.config.normal_price,
            "pro_price": self.config.pro_price,
            "currency": self.config.currency,
            "unit": self.config.unit,
        }


def _validate(body: Any) -> Optional[str]:
    """The first problem with a create request body, in the service's words, or None."""
    if not isinstance(body, dict):
        return "请求体必须是 JSON 对象 (the body must be a JSON object)"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt 不能为空 (prompt must be a non-empty string)"
    for name in ("is_pro", "remove_watermark"):
        if name in body and not isinstance(body[name], bool):
            return f"{name} 必须是布尔值 ({name} must be true or false, got {body[name]!r})"
    is_pro = body.get("is_pro", False)
    duration = body.get("duration", 10)
    allowed = (10, 15, 25) if is_pro else (10, 15)
    if isinstance(duration, bool) or not isinstance(duration, int) or duration not in allowed:
        model = "Pro" if is_pro else "normal"
        return (f"duration 不支持 (duration must be one of {', '.join(map(str, allowed))} seconds for the "
                f"{model} model, got {duration!r})")
    if body.get("resolution", "horizontal") not in ("horizontal", "vertical"):
        return f"resolution 不支持 (resolution must be horizontal or vertical, got {body['resolution']!r})"
    if body.get("quality", "normal") not in ("normal", "high"):
        return f"quality 不支持 (quality must be normal or high, got {body['quality']!r})"
    image_url = body.get("image_url")
    if image_url not in (None, "") and (
        not isinstance(image_url, str) or urlsplit(image_url).scheme not in ("http", "https")
    ):
        return f"image_url 必须是 http(s) 链接 (image_url must be an http(s) URL, got {image_url!r})"
    return None


def _envelope(code: int, message: str, data: Any = None) -> bytes:
    return json.dumps({"code": code, "message": message, "data": data}, ensure_ascii=False).encode("utf-8")


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
        speaks_openai = sim.config.protocol == "openai"
        route, arg = (openai.route if speaks_openai else _route)(method, path)
        if route is None:
            self._send_json(404, openai.error(f"Invalid URL ({method} {path})") if speaks_openai
                            else _envelope(404, f"接口不存在 (no such endpoint: {method} {path})"))
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
        if not self._authorised():
            return
        if speaks_openai:
            self._openai(route, arg, query, body, fault)
        elif route == "create":
            self._answer_create(body, lost=fault is not None and fault.kind == "lost_create",
                                task_id=fault.opts.get("task_id") if fault is not None and fault.kind == "task_id" else None)
        elif route == "task":
            task = sim._get_task(arg, self._origin(), poll=True)
            if task is None:
                self._send_json(404, _envelope(404, f"任务不存在 (no task {arg})"))
            else:
                self._send_json(200, _envelope(200, "操作成功", task))
        elif route == "tasks":
            self._answer_list(query)
        elif route == "balance":
            self._send_json(200, _envelope(200, "操作成功", {"balance": sim._current_balance()}))
        else:
            self._send_json(200, _envelope(200, "操作成功", sim._charge_info()))

    def _openai(self, route: str, arg: str, query: Mapping[str, List[str]], body: bytes,
                fault: Optional[_Fault]) -> None:
        """The /v1/videos routes, once the key was checked."""
        sim = self.server.sim
        hint = {"openai-poll-after-ms": str(sim.config.poll_after_ms)} if sim.config.poll_after_ms else {}
        if route == "create":
            self._answer_create(body, lost=fault is not None and fault.kind == "lost_create",
                                task_id=fault.opts.get("task_id") if fault is not None and fault.kind == "task_id" else None)
        elif route == "task":
            task = sim._get_task(arg, self._origin(), poll=True)
            if task is None:
                self._send_json(404, openai.error(f"Video with id {arg!r} not found."))
            else:
                self._send_json(200, json.dumps(task, ensure_ascii=False).encode("utf-8"), headers=hint)
        elif route == "tasks":
            status, answer = sim._list_openai(self._origin(), query)
            self._send_json(status, answer if isinstance(answer, bytes) else
                            json.dumps(answer, ensure_ascii=False).encode("utf-8"), headers=hint)
        else:  # the content, behind the key
            problem = sim._content_problem(arg, expired=fault is not None and fault.kind == "expired")
            if problem is not None:
                self._send_json(*problem)
            elif sim.config.content_host:
                location = sim._signed_url(arg, f"http://{sim.config.content_host}:{sim.port}")
                self._send(302, b"", "text/plain", headers={"Location": location})
            else:
                self._serve_video(fault)

    def _answer_create(self, raw_body: bytes, *, lost: bool, task_id: Optional[str] = None) -> None:
        sim = self.server.sim
        try:
            body = json.loads(raw_body.decode("utf-8")) if raw_body else None
        except (UnicodeDecodeError, ValueError):
            body = None
        if sim.config.protocol == "openai":
            status, answer = sim._create_openai(body, task_id)
            made, reply = status == 200, (status, json.dumps(answer, ensure_ascii=False).encode("utf-8"))
        else:
            code, message, data = sim._create(body, task_id)
            made, reply = code == 200, (200, _envelope(code, message, data))
        if made and sim.config.create_latency:
            # The real service answers a create after a while, with the task already made and billed.
            time.sleep(sim.config.create_latency)
        if lost and made:
            self.close_connection = True  # made and billed, but the answer never leaves
            return
        self._send_json(*reply)

    def _answer_list(self, query: Mapping[str, List[str]]) -> None:
        try:
            page = int(query.get("page", ["1"])[0])
            page_size = int(query.get("page_size", ["20"])[0])
        except ValueError:
            self._send_json(200, _envelope(1001, "参数错误：page 和 page_size 必须是整数"))
            return
        status = query.get("status", [None])[0]
        if page < 1 or not 1 <= page_size <= 100 or (status is not None and status not in STATUSES):
            self._send_json(200, _envelope(1001, "参数错误：page ≥ 1，1 ≤ page_size ≤ 100，status 取值无效"))
            return
        data = self.server.sim._list_tasks(self._origin(), page, page_size, status)
        self._send_json(200, _envelope(200, "操作成功", data))

    def _authorised(self) -> bool:
        expected = self.server.sim.config.api_key
        header = self.headers.get("Authorization", "")
        if expected is None or header == f"Bearer {expected}":
            return True
        presented = header[7:] if header.lower().startswith("bearer ") else header
        # Like many services, the answer echoes the key it got, so clients must mask it.
        if self.server.sim.config.protocol == "openai":
            self._send_json(401, openai.error(f"Incorrect API key provided: {presented or '(none)'}.",
                                              code="invalid_api_key"))
        else:
            self._send_json(401, _envelope(401, f"API密钥无效或已禁用: {presented or '(未提供)'}"))
        return False

    def _answer_fault(self, fault: _Fault) -> None:
        kind = fault.kind
        if self.server.sim.config.protocol == "openai" and kind in ("envelope_500", "http_500_json", "envelope"):
            if kind == "envelope":  # a gateway answering HTTP 200 with an error object
                self._send_json(200, openai.error(str(fault.opts.get("message", "Invalid request")),
                                                  code=str(fault.opts.get("code", "invalid_request"))))
            else:
                self._send_json(500, openai.error("The server had an error while processing your request.",
                                                  "server_error"))
            return
        if kind == "drop":
            self.close_connection = True
        elif kind == "http_502_html":
            self._send(502, HTML_502, "text/html")
        elif kind == "envelope_500":
            self._send_json(200, _envelope(500, "服务器内部错误"))
        elif kind == "http_500_json":
            self._send_json(500, _envelope(500, "服务器内部错误"))
        elif kind == "envelope":  # any documented (or undocumented) error code, inside an HTTP 200
            self._send_json(200, _envelope(int(fault.opts.get("code", 1001)), str(fault.opts.get("message", "参数错误"))))
        else:  # rate_limit
            retry_after = fault.opts.get("retry_after")
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            if fault.opts.get("body", "json") == "text":
                self._send(429, b"Too Many Requests", "text/plain", headers=headers)
            elif self.server.sim.config.protocol == "openai":
                self._send_json(429, openai.error("Rate limit reached for requests.", "requests",
                                                  code="rate_limit_exceeded"), headers=headers)
            else:
                self._send_json(429, _envelope(429, "请求过于频繁，请稍后再试"), headers=headers)

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


def _route(method: str, path: str) -> Tuple[Optional[str], str]:
    if method == "POST":
        return ("create", "") if path == "/v1/create" else (None, "")
    if path == "/v1/tasks":
        return "tasks", ""
    if path in ("/v1/balance", "/v1/pricing"):
        return path[4:], ""
    match = _TASK_PATH.match(path)
    if match:
        return "task", unquote(match.group(1))
    match = _FILE_PATH.match(path)
    if match:
        return "file", unquote(match.group(1))
    return None, ""


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
