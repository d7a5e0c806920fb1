"""Bounded, resumable, verified, atomic downloads of generated videos, and atomic JSON writes.

A video is streamed to ``NAME.mp4.part`` beside its final name, resumed with ``Range`` when the
connection breaks, checked against the length the server announced, fsynced and renamed into
place: a file under its final name is always complete, and no ``.part`` file outlives a call.

Every download is bounded (``DownloadLimits``): in size (announced, sent, or once decompressed),
in speed (a curl-like ``--speed-limit``/``--speed-time`` window) and in total time. The body is
read as the server sent it (``read1``: whatever has arrived, so a server dripping single bytes
cannot hold a read open), never through requests' transparent decompression; a ``gzip`` or
``deflate`` body is decoded here, in bounded slices, and a decompression bomb is refused early.
Disk trouble of any kind becomes ``OutputError`` naming the path and the cause.
"""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from .errors import (
    ContentExpired,
    DownloadError,
    DownloadTooLarge,
    DownloadTooSlow,
    Interrupted,
    OutputError,
    UnsafeDownload,
    UrlExpired,
)

log = logging.getLogger(__name__)

# Object storage answers these for a signed URL that is past its expiry (or was revoked).
EXPIRED_STATUSES = frozenset({403, 404, 410})
DEFAULT_MAX_BYTES = 4 << 30
# What a failed video write tells the user: nothing is lost but the time to fetch it again.
PAID_VIDEO_HINT = ("the generation is paid for; once this is fixed, `ledger requeue --failed` "
                   "downloads it again without paying")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_RESUME_DELAY_MAX = 5.0
_HASH_BLOCK = 1 << 20
_SYNC_EVERY = 32 << 20
# Content-Encoding values decoded here; anything else (br, zstd, compress, chains) is refused.
_DECODED_ENCODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
# A video is already compressed: gzip barely shrinks it (ratio ~1). A body that expands more than
# this is a decompression bomb; it is judged once this much has been decoded, i.e. within MBs.
_MAX_EXPANSION = 100
_EXPANSION_GRACE = 4 << 20
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_IN_THE_WAY = frozenset({errno.ENOTDIR, errno.EEXIST})
# Some file systems cannot fsync a folder at all; that is no reason to fail a finished download.
_DIR_SYNC_UNSUPPORTED = frozenset({errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL),
                                   getattr(errno, "EOPNOTSUPP", errno.EINVAL)})
_SAFE_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_OPENAI_ID_PREFIX = "video_"
_ARK_ID_HEAD = re.compile(r"^cgt-\d{8,14}-")
# Redirects followed by hand for an authenticated download (see ``OriginAuth``).
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class DownloadLimits:
    """How big, how slow and how long one download may be.

    ``max_bytes`` bounds the stored file and the body as sent. A transfer averaging fewer than
    ``min_bytes_per_second`` over a ``speed_time``-second window, or silent for that long, is cut
    (``0`` turns the speed check off); so is one still running ``total_seconds`` after it began.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    min_bytes_per_second: int = 1024
    speed_time: float = 30.0
    total_seconds: float = 3600.0


@dataclass(frozen=True)
class OriginAuth:
    """Headers (the API key) that a download sends to one origin only, ``scheme://host:port``.

    A video behind an authenticated content endpoint is often answered with a redirect to object
    storage on another host: redirects are then followed here, one hop at a time, and the headers
    go only to a URL of this very origin — never to the storage host, whatever its answer."""

    origin: str
    headers: Mapping[str, str]

    def applies_to(self, url: str) -> bool:
        """Whether ``url`` is on this origin (default ports made explicit)."""
        return origin_of(url) == self.origin


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, with the default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{scheme}://{(parts.hostname or '').lower()}:{port or (443 if scheme == 'https' else 80)}"


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: where it is, how big, its sha256, how long it took, how often it resumed."""

    path: Path
    size: int
    sha256: str
    seconds: float
    resumes: int


def video_filename(segment_index: int, version: int, task_id: str) -> str:
    """The file name of one generated video: ``{segment_index}_v{version}_{token}.mp4``.

    The token is the first 8 of the task id's characters in ``[A-Za-z0-9_-]`` (for the API's
    UUIDs simply ``task_id[:8]``; the ``video_`` every /v1/videos id starts with is left out, or
    every token would be ``video_`` and two hex digits), so no id can add a path separator, ``..``,
    NUL or a control character to a file name; an id with no such character gives a short hash of itself.
    """
    distinct = task_id[len(_OPENAI_ID_PREFIX):] if task_id.startswith(_OPENAI_ID_PREFIX) else task_id
    # Ark's ids (cgt-<creation time>-<random>) differ only in their tail: two made in one second
    # would share a token made of their head.
    distinct = _ARK_ID_HEAD.sub("", distinct)
    token = _SAFE_TOKEN.sub("", distinct)[:8]
    if not token:
        token = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{segment_index}_v{version}_{token}.mp4"


def sidecar_path(video_path: Path) -> Path:
    """The JSON sidecar describing a video: same folder and stem, ``.json``."""
    return video_path.with_suffix(".json")


def output_error(exc: OSError, path: Path, hint: Optional[str] = PAID_VIDEO_HINT) -> OutputError:
    """``exc`` (met while writing ``path``) as an ``OutputError``: kind ``disk_full`` for ENOSPC
    and EDQUOT, ``output_unwritable`` otherwise; a one-line message naming the path and cause."""
    code = exc.errno
    where = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else path
    cause = exc.strerror or type(exc).__name__
    if code in _IN_THE_WAY:
        cause += " (a file stands where a folder is needed)"
    kind = "disk_full" if code in _DISK_FULL else "output_unwritable"
    message = f"cannot write {os.fsdecode(where)}: {cause}"
    return OutputError(f"{message}; {hint}" if hint else message, kind=kind)


def download_file(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    root: Path,
    timeout: Tuple[float, float],
    cancel: Optional[threading.Event] = None,
    chunk_size: int = 1 << 20,
    max_resumes: int = 5,
    proxies: Optional[Mapping[str, Optional[str]]] = None,
    limits: DownloadLimits = DownloadLimits(),
    auth: Optional[OriginAuth] = None,
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` (which must lie inside ``root``), resuming, bounding and verifying.

    Raises ``UnsafeDownload`` for a non-http(s) URL, a destination outside ``root`` or a
    Content-Encoding other than gzip/deflate (before anything is written); ``DownloadTooLarge``
    past ``limits.max_bytes`` or for a decompression bomb; ``DownloadTooSlow`` below the minimum
    speed or past the deadline; ``UrlExpired`` for 403/404/410; ``OutputError`` for any trouble
    with the disk; ``Interrupted`` when ``cancel`` is set; ``DownloadError`` for anything else.
    ``proxies`` is passed to requests per request. ``auth`` headers go to its origin only
    (redirects are then followed one hop at a time). No ``.part`` file is left behind.
    """
    _check_scheme(url)
    final = _inside_root(dest, root)
    part = final.with_name(final.name + ".part")
    started = time.monotonic()
    try:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, final.parent) from exc
        # Always start from an empty part file: one left by a crash may hold unsynced garbage.
        with _PartFile(part) as sink:
            transfer = _Transfer(session, url, sink, timeout=timeout, cancel=cancel, chunk_size=chunk_size,
                                 max_resumes=max_resumes, proxies=proxies, limits=limits, started=started,
                                 auth=auth)
            transfer.run()
            sink.finish()
        try:
            os.replace(part, final)
        except OSError as exc:
            raise output_error(exc, final) from exc
    except BaseException:
        _remove_quietly(part)
        raise
    try:
        _fsync_dir(final.parent)
    except OSError as exc:
        raise output_error(exc, final.parent) from exc
    seconds = time.monotonic() - started
    log.debug("downloaded %s: %d bytes in %.2f s, %d resume(s)", final.name, sink.size, seconds, transfer.resumes)
    return DownloadResult(path=final, size=sink.size, sha256=sink.sha256, seconds=seconds, resumes=transfer.resumes)


def write_json_atomic(path: Path, data: Any, *, hint: Optional[str] = PAID_VIDEO_HINT) -> None:
    """Write ``data`` as UTF-8 JSON (``ensure_ascii=False``, indent 2) so readers never see half a file.

    The text goes to a temporary file in the same folder, is fsynced, replaces ``path`` and the
    folder is fsynced. Datetimes are written in ISO 8601 and paths as strings. Disk trouble raises
    ``OutputError`` (``hint`` ends its message) and leaves no temporary file; ``path`` keeps its
    previous content.
    """
    payload = (json.dumps(data, ensure_ascii=False, indent=2, default=_json_default) + "\n").encode("utf-8")
    tmp_name: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise output_error(exc, path, hint) from exc
    finally:
        if tmp_name is not None:
            _remove_quietly(Path(tmp_name))


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def describe_request_error(exc: BaseException, limit: int = 240) -> str:
    """One line saying what went wrong underneath a requests exception.

    requests' own text ("Max retries exceeded with url: ...") repeats the URL, query string and
    all, and hides the cause; the cause is what a user needs.
    """
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = " ".join(str(reason).split()) or type(reason).__name__
    return text if len(text) <= limit else text[:limit] + "…"


# --- the part file ------------------------------------------------------------------------------


class _PartFile:
    """The ``.part`` file a download goes to: hashed as written, flushed to disk as it grows.

    Syncing every ``_SYNC_EVERY`` bytes lets the disk keep pace with the network instead of
    taking one long fsync at the end. Every OSError becomes ``OutputError``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hasher = hashlib.sha256()
        self._unsynced = 0
        try:
            self._fh: IO[bytes] = open(path, "wb")
        except OSError as exc:
            raise output_error(exc, path) from exc

    def __enter__(self) -> "_PartFile":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._fh.close()
        except OSError as exc:
            if exc_info[0] is None:
                raise output_error(exc, self.path) from exc

    @property
    def sha256(self) -> str:
        """The hex sha256 of everything written since the last restart."""
        return self._hasher.hexdigest()

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        try:
            self._fh.write(data)
            self._unsynced += len(data)
            if self._unsynced >= _SYNC_EVERY:
                self._fh.flush()
                _datasync(self._fh.fileno())
                self._unsynced = 0
        except OSError as exc:
            raise output_error(exc, self.path) from exc
        self._hasher.update(data)
        self.size += len(data)

    def restart(self) -> None:
        """Drop everything written so far."""
        try:
            self._fh.seek(0)
            self._fh.truncate()
        except OSError as exc:
            raise output_error(exc, self.path) from exc
        self._hasher = hashlib.sha256()
        self.size = 0

    def finish(self) -> None:
        """Make the content durable."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise output_error(exc, self.path) from exc


# --- decoding a compressed body -------------------------------------------------------------------


class _Decoder:
    """Undoes a gzip or deflate Content-Encoding, yielding slices of at most ``piece`` bytes.

    Output is produced in bounded slices (zlib's ``max_length``), so a body that expands a
    thousandfold is seen slice by slice and can be stopped before it fills memory or disk.
    Raises ``zlib.error`` for a corrupt stream.
    """

    def __init__(self, encoding: str, piece: int) -> None:
        self.encoding = encoding
        self._piece = piece
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        # HTTP "deflate" means a zlib stream, but some servers send raw deflate: the first two
        # bytes tell which.
        self._head: Optional[bytes] = b"" if encoding == "deflate" else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in slices."""
        if self._head is not None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, None
            if not _is_zlib_header(data):
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        while True:
            out = self._z.decompress(data, self._piece)
            if out:
                yield out
            if self._z.eof:
                data = self._z.unused_data
                if not data:
                    return
                if self.encoding != "gzip":
                    raise zlib.error("data after the end of the deflate stream")
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip allows several members
                continue
            # Output still pending inside zlib (a long match cut by the slice size) comes out with
            # the next call: the stream cannot end before the input that completes it arrives.
            data = self._z.unconsumed_tail
            if not data:
                return

    def finish(self) -> None:
        """Raise ``zlib.error`` unless the stream ended properly."""
        if self._head is not None or not self._z.eof:
            raise zlib.error("the compressed stream ends early")


def _is_zlib_header(head: bytes) -> bool:
    return head[0] & 0x0F == 8 and ((head[0] << 8) | head[1]) % 31 == 0


# --- the transfer ---------------------------------------------------------------------------------


class _Transfer:
    """One download, across its resumes: requests, reads, limits, decoding, into a ``_PartFile``."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        sink: _PartFile,
        *,
        timeout: Tuple[float, float],
        cancel: Optional[threading.Event],
        chunk_size: int,
        max_resumes: int,
        proxies: Optional[Mapping[str, Optional[str]]],
        limits: DownloadLimits,
        started: float,
        auth: Optional[OriginAuth] = None,
    ) -> None:
        self.session = session
        self.auth = auth
        self.url = url
        self.name = _shown_url(url)
        self.sink = sink
        self.timeout = timeout
        self.cancel = cancel
        self.chunk_size = chunk_size
        self.max_resumes = max_resumes
        self.proxies = proxies
        self.limits = limits
        self.deadline = started + limits.total_seconds
        self.resumes = 0
        self.received = 0  # bytes of the body as sent (the offsets Range and Content-Length speak of)
        self.total: Optional[int] = None
        self.decoder: Optional[_Decoder] = None
        self.encoding: Optional[str] = None
        self._window_start = started
        self._window_received = 0
        self._read_timeout = timeout[1]

    def run(self) -> None:
        """Fetch until the body is complete, or raise."""
        while True:
            self._check_cancel()
            self._check_deadline(time.monotonic())
            usable, broken = self._request()
            if usable and broken is None and (self.total is None or self.received == self.total):
                self._finish_decoding()
                return
            if self.total is not None and self.received > self.total:
                raise DownloadError(f"{self.name}: received {self.received} bytes but the server announced {self.total}")
            if self.resumes >= self.max_resumes:
                raise DownloadError(
                    f"{self.name}: gave up after {self.resumes} resume(s) at {self.received} of "
                    f"{self.total if self.total is not None else '?'} bytes "
                    f"({describe_request_error(broken) if broken else 'connection closed early'})"
                )
            self.resumes += 1
            log.info("%s: connection broke at %d of %s bytes; resuming (%d/%d)",
                     self.name, self.received, self.total, self.resumes, self.max_resumes)
            delay = min(_RESUME_DELAY_MAX, 0.1 * 2 ** (self.resumes - 1), max(0.0, self.deadline - time.monotonic()))
            if self.cancel is not None:
                self.cancel.wait(delay)
            else:
                time.sleep(delay)

    def _request(self) -> Tuple[bool, Optional[BaseException]]:
        """One GET from ``received`` on: (was its body usable, what broke it — None if it ended)."""
        # Byte offsets and lengths must be those of the body as sent; anything else is decoded here.
        headers = {"Accept-Encoding": "identity"}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
        remaining = self.deadline - time.monotonic()
        self._read_timeout = min(self.timeout[1], self._silence_limit(), remaining)
        try:
            resp = self._get(headers, (min(self.timeout[0], remaining), self._read_timeout))
        except requests.RequestException as exc:
            self._check_deadline(time.monotonic())
            # The session's urllib3 Retry has already retried connecting; no body was broken here.
            raise DownloadError(f"{self.name}: {describe_request_error(exc)}") from exc
        # Closing the response (rather than reading it to its end) keeps a connection whose body
        # went on past its Content-Length out of the pool.
        with resp:
            if not self._accept(resp):
                return False, None
            return True, self._read_body(resp)

    def _get(self, headers: Mapping[str, str], timeout: Tuple[float, float]) -> requests.Response:
        """The answer to a GET of the video; with ``auth``, redirects are followed here so that its
        headers reach its origin and nothing else."""
        if self.auth is None:
            return self.session.get(self.url, headers=headers, stream=True, timeout=timeout,
                                    proxies=self.proxies)  # type: ignore[arg-type]  # None entries mean "direct"
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            sent = {**headers, **self.auth.headers} if self.auth.applies_to(url) else dict(headers)
            resp = self.session.get(url, headers=sent, stream=True, timeout=timeout, allow_redirects=False,
                                    proxies=self.proxies)  # type: ignore[arg-type]
            if not resp.is_redirect:
                return resp
            location = resp.headers.get("Location", "")
            resp.close()
            url = urljoin(url, location)
            _check_scheme(url)
        raise DownloadError(f"{self.name}: more than {MAX_REDIRECTS} redirects")

    def _accept(self, resp: requests.Response) -> bool:
        """Check an answer's status, length and encoding; False when its body cannot be used."""
        start, announced = _check_answer(resp, self.received, self.total, self.name)
        encoding = _content_encoding(resp, self.name)
        if announced is not None and announced > self.limits.max_bytes:
            raise DownloadTooLarge(
                f"{self.name}: the server announces {announced:,} bytes, more than MAX_DOWNLOAD_BYTES="
                f"{self.limits.max_bytes:,}; not downloaded (raise the limit, then `ledger requeue --failed`)"
            )
        if self.received and start == self.received and encoding != self.encoding:
            raise DownloadError(f"{self.name}: the server changed the Content-Encoding from "
                                f"{self.encoding or 'identity'} to {encoding or 'identity'} while resuming")
        usable = start in (0, self.received)
        if start != self.received:
            # A 200 to a range request (or a range from elsewhere) cannot be appended: start over.
            log.info("%s: the server did not resume at byte %d; starting again from 0", self.name, self.received)
            self.sink.restart()
            self.received = 0
        if announced is not None and self.total is not None and announced != self.total:
            raise DownloadError(f"{self.name}: the server announced {self.total} bytes, then {announced}: "
                                "its Content-Length is wrong or the file changed")
        self.total = announced
        if usable and self.received == 0:
            self.encoding = encoding
            self.decoder = _Decoder(encoding, self.chunk_size) if encoding else None
            if encoding:
                log.info("%s: the server sent a %s-encoded body although identity was asked for; decoding it",
                         self.name, encoding)
        return usable

    def _read_body(self, resp: requests.Response) -> Optional[BaseException]:
        """Read what has arrived, again and again, until the body ends; returns what broke it."""
        raw = resp.raw
        now = time.monotonic()
        self._window_start, self._window_received = now, self.received
        while True:
            self._check_cancel()
            self._bound_read(raw, now)
            try:
                # read1 returns as soon as anything arrived: a dripping server cannot keep it waiting.
                data = raw.read1(self.chunk_size, decode_content=False)
            except ReadTimeoutError as exc:
                self._on_silence(time.monotonic())
                return exc
            except (Urllib3Error, OSError) as exc:
                return exc
            now = time.monotonic()
            if not data:
                return None
            self._take(data)
            self._check_pace(now)

    def _take(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limits.max_bytes:
            raise DownloadTooLarge(
                f"{self.name}: the body passed MAX_DOWNLOAD_BYTES={self.limits.max_bytes:,} without ending "
                f"(Content-Length {'absent' if self.total is None else f'{self.total:,}'}); cut off"
            )
        if self.decoder is None:
            self._store(data)
            return
        try:
            for piece in self.decoder.feed(data):
                self._store(piece)
                if self.sink.size > _EXPANSION_GRACE and self.sink.size > _MAX_EXPANSION * self.received:
                    raise DownloadTooLarge(
                        f"{self.name}: {self.received:,} {self.encoding} bytes expanded to more than "
                        f"{self.sink.size:,} (over {_MAX_EXPANSION}x): refused as a decompression bomb"
                    )
        except zlib.error as exc:
            raise DownloadError(f"{self.name}: the {self.encoding}-encoded body is corrupt ({exc})") from exc

    def _store(self, data: bytes) -> None:
        if self.sink.size + len(data) > self.limits.max_bytes:
            raise DownloadTooLarge(
                f"{self.name}: the decoded video passed MAX_DOWNLOAD_BYTES="
                f"{self.limits.max_bytes:,}; cut off (raise the limit, then `ledger requeue --failed`)"
            )
        self.sink.write(data)

    def _finish_decoding(self) -> None:
        if self.decoder is None:
            return
        try:
            self.decoder.finish()
        except zlib.error as exc:
            raise DownloadError(f"{self.name}: the {self.encoding}-encoded body is incomplete ({exc})") from exc

    # --- pace -------------------------------------------------------------------------------------

    def _silence_limit(self) -> float:
        """How long a read may wait for a first byte: a silence as long as the speed window is
        already too slow, whatever the minimum speed."""
        return self.limits.speed_time if self.limits.min_bytes_per_second > 0 else math.inf

    def _bound_read(self, raw: Any, now: float) -> None:
        """Shorten the socket's read timeout when the deadline is nearer than it."""
        remaining = self.deadline - now
        if remaining >= self._read_timeout:
            return
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is None:
            return
        self._read_timeout = max(remaining, 0.001)
        try:
            sock.settimeout(self._read_timeout)
        except OSError:
            pass  # the socket is gone: the read just after reports it

    def _on_silence(self, now: float) -> None:
        """A read timed out: past the deadline or silent for the whole speed window is too slow;
        a plain read timeout only broke this connection."""
        self._check_deadline(now + 0.05)  # the timeout was the deadline's, give or take the clock
        if self._read_timeout >= self._silence_limit():
            raise DownloadTooSlow(
                f"{self.name}: no data for {self.limits.speed_time:g} s at {self.received:,} bytes "
                f"(DOWNLOAD_SPEED_TIME); will try again later"
            )

    def _check_pace(self, now: float) -> None:
        self._check_deadline(now)
        elapsed = now - self._window_start
        if self.limits.min_bytes_per_second <= 0 or elapsed < self.limits.speed_time:
            return
        got = self.received - self._window_received
        if got < self.limits.min_bytes_per_second * elapsed:
            raise DownloadTooSlow(
                f"{self.name}: {got:,} bytes in {elapsed:.1f} s, slower than DOWNLOAD_MIN_BYTES_PER_SECOND="
                f"{self.limits.min_bytes_per_second:,}; will try again later"
            )
        self._window_start, self._window_received = now, self.received

    def _check_deadline(self, now: float) -> None:
        if now >= self.deadline:
            raise DownloadTooSlow(
                f"{self.name}: not finished within DOWNLOAD_TIMEOUT={self.limits.total_seconds:g} s "
                f"({self.received:,} of {self.total if self.total is not None else '?'} bytes); will try again later"
            )

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted(f"download of {self.name} cancelled")


# --- helpers --------------------------------------------------------------------------------------


def _shown_url(url: str) -> str:
    """The URL without its query string: signed URLs carry their signature there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise UnsafeDownload(f"refusing to download {_shown_url(url)!r}: only http(s) URLs are fetched")


def _inside_root(dest: Path, root: Path) -> Path:
    # resolve() follows symlinks, so a linked folder pointing elsewhere is caught too.
    try:
        final = dest.resolve()
        base = root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        raise OutputError(f"cannot write {dest}: {exc}; {PAID_VIDEO_HINT}") from exc
    if final == base or base not in final.parents:
        raise UnsafeDownload(f"refusing to write {dest}: it is outside the output folder {root}")
    return final


def _content_encoding(resp: requests.Response, name: str) -> Optional[str]:
    """The body's encoding to undo (None for identity), or ``UnsafeDownload`` for one not decoded here."""
    value = resp.headers.get("Content-Encoding", "").strip().lower()
    if value in ("", "identity"):
        return None
    if value in _DECODED_ENCODINGS:
        return _DECODED_ENCODINGS[value]
    raise UnsafeDownload(
        f"{name}: the server sent the video with Content-Encoding {value!r} although identity was asked "
        f"for; only gzip and deflate are decoded ({PAID_VIDEO_HINT})"
    )


def _check_answer(
    resp: requests.Response, requested_from: int, total: Optional[int], name: str
) -> Tuple[int, Optional[int]]:
    """Return (first byte offset of the body, total body size if announced) or raise."""
    status = resp.status_code
    if status == 410:
        raise ContentExpired(f"{name}: HTTP 410 Gone, the server no longer holds this video", http_status=status)
    if status in EXPIRED_STATUSES:
        raise UrlExpired(f"{name}: HTTP {status}, the video URL has expired; poll the task for a fresh one",
                         http_status=status)
    if status == 416:
        raise DownloadError(
            f"{name}: HTTP 416, the server announced {total} bytes but has none from byte {requested_from} on",
            http_status=status,
        )
    length = _int_header(resp, "Content-Length")
    if status == 200:
        return 0, length
    if status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match is None:
            raise DownloadError(f"{name}: HTTP 206 without a usable Content-Range header", http_status=status)
        start = int(match.group(1))
        total = int(match.group(3)) if match.group(3) != "*" else (start + length if length is not None else None)
        return start, total
    raise DownloadError(f"{name}: HTTP {status}", http_status=status)


def _int_header(resp: requests.Response, header: str) -> Optional[int]:
    value = resp.headers.get(header)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there; cleanup on an error path must never raise a second error."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror or exc)


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals the rename itself.
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)
