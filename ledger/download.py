"""Resumable, verified, atomic downloads of generated videos, and atomic JSON writes.

A video is streamed in chunks to ``NAME.mp4.part`` beside its final name, resumed with ``Range``
when the connection breaks, checked against the length the server announced, fsynced and renamed
into place: a file under its final name is always complete, and no ``.part`` file outlives a call.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import MaxRetryError

from .errors import DownloadError, Interrupted, UnsafeDownload, UrlExpired

log = logging.getLogger(__name__)

# Object storage answers these for a signed URL that is past its expiry (or was revoked).
EXPIRED_STATUSES = frozenset({403, 404, 410})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_RESUME_DELAY_MAX = 5.0
_HASH_BLOCK = 1 << 20
_SYNC_EVERY = 32 << 20


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: where it is, how big, its sha256, how long it took, how often it resumed."""

    path: Path
    size: int
    sha256: str
    seconds: float
    resumes: int


def video_filename(segment_index: int, version: int, task_id: str) -> str:
    """The file name of one generated video: ``{segment_index}_v{version}_{task_id[:8]}.mp4``."""
    return f"{segment_index}_v{version}_{task_id[:8]}.mp4"


def sidecar_path(video_path: Path) -> Path:
    """The JSON sidecar describing a video: same folder and stem, ``.json``."""
    return video_path.with_suffix(".json")


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
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` (which must lie inside ``root``), resuming and verifying.

    Raises ``UnsafeDownload`` for a non-http(s) URL or a destination outside ``root`` (before
    anything is written), ``UrlExpired`` for 403/404/410, ``Interrupted`` when ``cancel`` is set,
    and ``DownloadError`` for anything else. ``proxies`` is passed to requests per request.
    """
    _check_scheme(url)
    final = _inside_root(dest, root)
    part = final.with_name(final.name + ".part")
    started = time.monotonic()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # Always start from an empty part file: one left by a crash may hold unsynced garbage.
        with open(part, "wb") as fh:
            size, resumes, digest = _fetch(
                session, url, fh, timeout=timeout, cancel=cancel, chunk_size=chunk_size,
                max_resumes=max_resumes, proxies=proxies,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, final)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot write {final}: {exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    seconds = time.monotonic() - started
    log.debug("downloaded %s: %d bytes in %.2f s, %d resume(s)", final.name, size, seconds, resumes)
    return DownloadResult(path=final, size=size, sha256=digest, seconds=seconds, resumes=resumes)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as UTF-8 JSON (``ensure_ascii=False``, indent 2) so readers never see half a file.

    The text goes to a temporary file in the same folder, is fsynced, replaces ``path`` and the
    folder is fsynced. Datetimes are written in ISO 8601 and paths as strings.
    """
    payload = (json.dumps(data, ensure_ascii=False, indent=2, default=_json_default) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    final = dest.resolve()
    base = root.resolve()
    if final == base or base not in final.parents:
        raise UnsafeDownload(f"refusing to write {dest}: it is outside the output folder {root}")
    return final


def _fetch(
    session: requests.Session,
    url: str,
    fh: IO[bytes],
    *,
    timeout: Tuple[float, float],
    cancel: Optional[threading.Event],
    chunk_size: int,
    max_resumes: int,
    proxies: Optional[Mapping[str, Optional[str]]],
) -> Tuple[int, int]:
    """Stream ``url`` into ``fh``; return (size, resumes, sha256 of the bytes written).

    The bytes are hashed as they are written, and flushed to disk every ``_SYNC_EVERY`` bytes: the
    disk then keeps pace with the network instead of taking a long final fsync at the end.
    """
    name = _shown_url(url)
    hasher = hashlib.sha256()
    unsynced = 0
    received = 0
    total: Optional[int] = None
    resumes = 0
    while True:
        _check_cancel(cancel, name)
        headers = {"Accept-Encoding": "identity"}  # byte offsets and lengths must be of the stored file
        if received:
            headers["Range"] = f"bytes={received}-"
        try:
            resp = session.get(url, headers=headers, stream=True, timeout=timeout,
                               proxies=proxies)  # type: ignore[arg-type]  # None entries mean "direct"
        except requests.RequestException as exc:
            # The session's urllib3 Retry has already retried connecting; no body was broken here.
            raise DownloadError(f"{name}: {describe_request_error(exc)}") from exc
        broken: Optional[BaseException] = None
        with resp:
            start, announced = _check_answer(resp, received, total, name)
            usable = start in (0, received)
            if start != received:
                # A 200 to a range request (or a range from elsewhere) cannot be appended: start over.
                log.info("%s: the server did not resume at byte %d; starting again from 0", name, received)
                fh.seek(0)
                fh.truncate()
                received = 0
                hasher = hashlib.sha256()
            if announced is not None and total is not None and announced != total:
                raise DownloadError(f"{name}: the server announced {total} bytes, then {announced}: "
                                    "its Content-Length is wrong or the file changed")
            total = announced
            if usable:
                try:
                    for chunk in resp.iter_content(chunk_size):
                        _check_cancel(cancel, name)
                        fh.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        unsynced += len(chunk)
                        if unsynced >= _SYNC_EVERY:
                            fh.flush()
                            _datasync(fh.fileno())
                            unsynced = 0
                except requests.RequestException as exc:
                    broken = exc
        if usable and broken is None and (total is None or received == total):
            return received, resumes, hasher.hexdigest()
        if total is not None and received > total:
            raise DownloadError(f"{name}: received {received} bytes but the server announced {total}")
        if resumes >= max_resumes:
            raise DownloadError(
                f"{name}: gave up after {resumes} resume(s) at {received} of {total if total is not None else '?'} "
                f"bytes ({describe_request_error(broken) if broken else 'connection closed early'})"
            )
        resumes += 1
        log.info("%s: connection broke at %d of %s bytes; resuming (%d/%d)", name, received, total, resumes, max_resumes)
        delay = min(_RESUME_DELAY_MAX, 0.1 * 2 ** (resumes - 1))
        if cancel is not None:
            cancel.wait(delay)
        else:
            time.sleep(delay)


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _check_answer(
    resp: requests.Response, requested_from: int, total: Optional[int], name: str
) -> Tuple[int, Optional[int]]:
    """Return (first byte offset of the body, total file size if announced) or raise."""
    status = resp.status_code
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


def _check_cancel(cancel: Optional[threading.Event], name: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Interrupted(f"download of {name} cancelled")


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
    finally:
        os.close(fd)
