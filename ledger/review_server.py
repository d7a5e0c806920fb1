"""``ledger review --serve``: the review page on 127.0.0.1, where choosing a take writes the ledger.

Only loopback is bound. Writes need the random token printed with the URL (in the URL's
fragment, so it never travels in a request line, a log or a Referer); requests whose ``Host`` or
``Origin`` is not this server are refused, so another web page cannot drive it through the
browser (DNS rebinding, cross-site posts). Videos are served by job id, only for done takes, with
``Range`` so the browser can seek.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .errors import LedgerError
from .review import SERVE, Review, render
from .states import State
from .store import PickRefused, Store, clear_pick, record_pick

log = logging.getLogger(__name__)

SOURCE = "review page"
_MEDIA = re.compile(r"^/media/(\d+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 256 * 1024
_MAX_BODY = 64 * 1024


class ReviewServer:
    """Serves the page built by ``build`` (called again on every page load, so it is current)."""

    def __init__(self, store: Store, build: Callable[[], Review]) -> None:
        self.store = store
        self.build = build
        self.token = secrets.token_urlsafe(24)
        self.picks_written = 0
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.review = self
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The address to open, token included (in the fragment)."""
        return f"http://127.0.0.1:{self.port}/#token={self.token}"

    def start(self) -> "ReviewServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="review-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (open connections end with their threads)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- what the handler asks ------------------------------------------------------------------

    def allowed_host(self, host: Optional[str]) -> bool:
        return host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    def token_ok(self, presented: Optional[str]) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.token.encode())

    def page(self) -> bytes:
        return render(self.build(), lambda take: f"media/{take.job_id}", SERVE, page_id="serve").encode("utf-8")

    def video(self, job_id: int) -> Optional[Path]:
        job = self.store.job(job_id)
        if job is None or job.state is not State.DONE or not job.video_path:
            return None
        path = self.store.resolve(job.video_path)
        return path if path.is_file() else None

    def pick(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        job_id = payload.get("job")
        if not isinstance(job_id, int):
            raise PickRefused("expected {\"job\": <job id>}")
        outcome = record_pick(self.store, job_id, SOURCE)
        self.picks_written += outcome.changed
        log.info("picked %s", outcome.job.label)
        return {"ok": True, "picked": outcome.job.id, "ref": outcome.job.label, "replaced": outcome.replaced}

    def clear(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        board, segment = payload.get("storyboard_id"), payload.get("segment")
        if not isinstance(board, int) or not isinstance(segment, int):
            raise PickRefused("expected {\"storyboard_id\": <id>, \"segment\": <index>}")
        outcome = clear_pick(self.store, board, segment, SOURCE)
        self.picks_written += outcome is not None
        return {"ok": True, "cleared": outcome.job.id if outcome else None}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    review: ReviewServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser dropping a video request half-way is routine.
        log.debug("error while serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ledger-review"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("review server: " + format, *args)

    def _refuse_foreign(self) -> bool:
        review = self.server.review
        origin = self.headers.get("Origin")
        if not review.allowed_host(self.headers.get("Host")) or \
                (origin is not None and origin not in (f"http://127.0.0.1:{review.port}", f"http://localhost:{review.port}")):
            self._json(403, {"ok": False, "error": "this server only answers its own page"})
            return True
        return False

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        if self._refuse_foreign():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            try:
                body = self.server.review.page()
            except LedgerError as exc:
                self._json(500, {"ok": False, "error": str(exc)})
                return
            self._send(200, body, "text/html; charset=utf-8", {"Cache-Control": "no-store"})
            return
        match = _MEDIA.match(path)
        video = self.server.review.video(int(match.group(1))) if match else None
        if video is None:
            self._json(404, {"ok": False, "error": "no such page or video"})
            return
        self._file(video)

    def do_POST(self) -> None:  # noqa: N802
        if self._refuse_foreign():
            return
        review = self.server.review
        if not review.token_ok(self.headers.get("X-Ledger-Token")):
            self._json(403, {"ok": False, "error": "missing or wrong token: open the URL `ledger review --serve` printed"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get_content_type() != "application/json" or not 0 < length <= _MAX_BODY:
            self._json(400, {"ok": False, "error": "expected a small JSON body"})
            return
        try:
            payload = json.loads(self.rfile.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._json(400, {"ok": False, "error": "the body is not JSON"})
            return
        action = {"/api/pick": review.pick, "/api/clear": review.clear}.get(self.path)
        if action is None or not isinstance(payload, dict):
            self._json(404, {"ok": False, "error": "no such action"})
            return
        try:
            self._json(200, action(payload))
        except PickRefused as exc:
            self._json(409, {"ok": False, "error": str(exc)})
        except LedgerError as exc:
            self._json(500, {"ok": False, "error": str(exc)})

    # --- plumbing --------------------------------------------------------------------------------

    def _file(self, path: Path) -> None:
        size = path.stat().st_size
        start, end = 0, size
        wanted = _RANGE.match(self.headers.get("Range", "").strip())
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        status = 200
        if wanted and (wanted.group(1) or wanted.group(2)):
            first, last = wanted.groups()
            if first:
                start, end = int(first), min(size, int(last) + 1) if last else size
            else:
                start = max(0, size - int(last))
            if start >= end:
                self._send(416, b"", "video/mp4", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(end - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        with open(path, "rb") as handle:
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except OSError:  # the browser had enough
                    self.close_connection = True
                    return
                remaining -= len(chunk)

    def _json(self, status: int, data: Dict[str, Any]) -> None:
        headers = {}
        if status >= 400:
            # The request body may be unread: do not let it be taken for the next request.
            headers["Connection"] = "close"
            self.close_connection = True
        self._send(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8",
                   headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

