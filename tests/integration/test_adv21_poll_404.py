"""Adversarial: one bare HTTP 404 (a load balancer's page, no DashScope error body) on a Wan task poll."""
from __future__ import annotations

import http.server
import re
import threading
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import api_env, query, segments, spawn
from tests.integration.test_paid_once import finish


# The task look-up path of each protocol (a poll of one task).
TASK_PATHS = {"wan": r"/tasks/[^/?]+", "seedance": r"/contents/generations/tasks/[^/?]+",
              "kling": r"/videos/(text2video|image2video)/[^/?]+", "hailuo": r"/v2/query/video_generation/[^/?]+"}
URL_SETTINGS = {"wan": "DASHSCOPE_BASE_URL", "seedance": "ARK_BASE_URL", "kling": "KLING_BASE_URL",
                "hailuo": "MINIMAX_BASE_URL"}


class _Front:
    """A reverse proxy in front of the simulator that answers the first `GET /tasks/{id}` after
    `arm()` with an nginx 404 page, as a load balancer does for a moment while a backend restarts."""

    def __init__(self, upstream: str, task_path: str) -> None:
        self.armed = threading.Event()
        self.served_404 = 0
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self, method: str) -> None:
                if method == "GET" and re.search(task_path, self.path.split("?")[0]) and front.armed.is_set():
                    front.armed.clear()
                    front.served_404 += 1
                    body = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"
                    self.send_response(404)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = requests.request(method, upstream + self.path, data=data, headers=headers, timeout=30)
                self.send_response(resp.status_code)
                for key in ("Content-Type", "Date"):
                    if key in resp.headers:
                        self.send_header(key, resp.headers[key])
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def do_GET(self):  # noqa: N802
                self._relay("GET")

            def do_POST(self):  # noqa: N802
                self._relay("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.mark.parametrize("protocol", ["wan", "seedance", "kling", "hailuo"], indirect=True)
def test_one_load_balancer_404_on_a_poll_does_not_fail_a_paid_job(ws, make_sim, work_env, protocol):
    """DashScope says "no such task" as HTTP 200 with task_status UNKNOWN (contract get_unknown.json).
    Wan's error table maps any HTTP 404 of GET /tasks/{id} — even a body that is not DashScope's —
    to TaskNotFound, and a poll's TaskNotFound past the grace fails the job (task_not_found, which
    `requeue --failed` regenerates: paid again) although the task is running and its video comes."""
    sim = make_sim(gen_seconds=4.0)
    base = sim.base_url
    parts = urlsplit(base)
    upstream = f"{parts.scheme}://{parts.netloc}"
    front = _Front(upstream, TASK_PATHS[protocol])
    env = {**work_env, **api_env(sim), URL_SETTINGS[protocol]: front.url(base[len(upstream):]),
           "RECONCILE_GRACE_SECONDS": "0.5", "POLL_MIN_INTERVAL": "0.5"}
    ws.storyboard("storyboard_a.json", segments("a poll meets a load balancer's 404"))
    proc = spawn(ws.root, env, "run", "--no-progress")
    import time
    deadline = time.monotonic() + 30
    while sim.stats()["tasks_created"] < 1:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    time.sleep(1.0)  # past the grace: the service surely knows its task by now
    front.armed.set()
    code, out, errors = finish(proc)
    assert front.served_404 == 1, "the 404 was never served: the test did not test anything"
    rows = query(ws.root, "SELECT state, error_kind, error_message FROM jobs")
    assert rows[0][0] == "done", (rows, out, errors)
