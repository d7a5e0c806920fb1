"""Adversarial: `ledger check` against APIs that answer in ways its tests did not try."""
from __future__ import annotations

import json
import re
import subprocess

from pytest_httpserver import HTTPServer

from tests.helpers import api_env, spawn
from tests.integration.test_check import KEY, check


def _sora_with_list(server: HTTPServer, entry: dict) -> str:
    server.expect_request("/v1/balance").respond_with_json({"code": 200, "message": "ok", "data": {"balance": 500}})
    server.expect_request("/v1/tasks").respond_with_json({"code": 200, "message": "ok", "data": {
        "tasks": [entry], "total": 1}})
    server.expect_request(re.compile("/v1/tasks/.+"), method="GET").respond_with_json(
        {"code": 404, "message": "no such task"}, status=404)
    return server.url_for("/v1")


def test_a_list_whose_status_field_was_renamed_is_a_mismatch(ws, httpserver: HTTPServer):
    """The status sits under `state`: the client reads every task as `pending` (its default), so
    a real run polls finished videos as pending until the poll timeout. The check must not say ok."""
    base = _sora_with_list(httpserver, {"task_id": "t1", "state": "completed", "prompt": "a fox",
                                        "video_url": "https://example.invalid/v.mp4"})
    code, out, err = check(ws.root, {"PROVIDER": "sora_hk", "SORA_BASE_URL": base, "SORA_API_KEY": KEY}, "--json")
    calls = {c["call"]: c for c in json.loads(out)["checks"][0]["calls"]}
    assert calls["list"]["outcome"] == "mismatch", calls["list"]
    assert code == 3


class _Hanging:
    """A sora.hk-like API whose pre-flight and balance answer at once and whose task list never answers."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.release = threading.Event()
        release = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: D401
                pass

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/v1/balance"):
                    body = json.dumps({"code": 200, "message": "ok", "data": {"balance": 500}}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                release.wait(600)  # the list and the look-up: connected, never answered

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_a_list_that_never_answers_does_not_hold_the_check_for_minutes(ws):
    """`ledger check` is "a user learns in seconds": an API whose list call hangs must be named
    within a bounded time, not after (1 + GET retries) x the 60 s read timeout for each call."""
    api = _Hanging()
    try:
        proc = spawn(ws.root, {"PROVIDER": "sora_hk", "SORA_BASE_URL": api.base, "SORA_API_KEY": KEY}, "check",
                     "--json")
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("ledger check still running after 60 s against a list that never answers")
    finally:
        api.close()
    assert proc.returncode == 3, (out, err)


def test_a_base_url_with_a_password_is_not_printed_with_it(ws, make_sim):
    """A relay behind basic auth is configured as https://user:password@host/v1. The check's
    output is meant to be pasted into a bug report as it is (no secrets in it); the proxy
    messages already hide a password (`_without_password`), the check's table and JSON print it."""
    sim = make_sim(protocol="sora_hk", api_key=KEY)
    password = "Zq8vN3pL7xR2tK9w"
    base = sim.base_url.replace("http://", f"http://relay-user:{password}@", 1)
    env = {**api_env(sim), "SORA_API_KEY": KEY, "SORA_BASE_URL": base, "COLUMNS": "200"}
    code, out, err = check(ws.root, env, "--json")
    assert password not in out + err, "the relay's password is in ledger check's output"
    code, out, err = check(ws.root, env)
    assert password not in out.replace("\n", "") + err, "the relay's password is in ledger check's table"


def test_kling_configured_by_its_access_key_and_secret_key_is_checked(ws, make_sim):
    """`ledger check` checks "PROVIDER and every provider with a key". Kling's own credentials are an
    access key and a secret key (KLING_ACCESS_KEY / KLING_SECRET_KEY, its official form): the key
    ring knows only KLING_API_KEY, so a user whose PROVIDER is another and whose storyboards send
    segments to Kling gets no Kling line at all — and exit 0."""
    sim = make_sim(protocol="sora_hk", api_key=KEY)
    env = {**api_env(sim), "SORA_API_KEY": KEY, "KLING_ACCESS_KEY": "ak-0123456789abcdef",
           "KLING_SECRET_KEY": "sk-0123456789abcdef0123456789abcdef", "KLING_API_KEY": "",
           "KLING_BASE_URL": "http://127.0.0.1:9/v1"}
    code, out, err = check(ws.root, env, "--json")
    providers = [r["provider"] for r in json.loads(out)["checks"]]
    assert "kling" in providers, (providers, code)


def test_a_task_look_up_answered_by_a_web_server_s_404_page_is_not_ok(ws, httpserver: HTTPServer):
    """DashScope answers a task id it does not know with HTTP 200 and `task_status: UNKNOWN`
    (tests/contracts/wan/get_unknown.json). A base URL whose list answers but whose task path is a
    web server's HTML 404 (a gateway that does not route GET /tasks/{id}) is read as "task not
    found" — a recognised answer — so the check says `look-up ok` and exits 0. In a run, every
    poll of a paid task then reads "the API does not know this task": the job fails and the video
    is never fetched."""
    httpserver.expect_request("/api/v1/tasks", method="GET").respond_with_json(
        {"request_id": "r1", "data": [], "total": 0, "total_page": 0, "page_no": 1, "page_size": 10})
    httpserver.expect_request(re.compile("/api/v1/tasks/.+"), method="GET").respond_with_data(
        "<html><body><h1>404 Not Found</h1>nginx</body></html>", status=404, content_type="text/html")
    env = {"PROVIDER": "wan", "DASHSCOPE_BASE_URL": httpserver.url_for("/api/v1"),
           "DASHSCOPE_API_KEY": "sk-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"}
    code, out, err = check(ws.root, env, "--json")
    calls = {c["call"]: c for c in json.loads(out)["checks"][0]["calls"]}
    assert calls["look-up"]["outcome"] != "ok", calls["look-up"]
    assert code == 3
