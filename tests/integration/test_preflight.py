"""Pre-flight: `work`, `run` and every dry run begin with one cheap authenticated call, so a wrong
key, URL or proxy is one line that says what to fix — exit 3, within seconds, nothing touched."""
from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest
from pytest_httpserver import HTTPServer

from tests.helpers import query, segments, spawn

from .conftest import API_KEY

CONFIG = 3
BALANCE = 4


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung proxy or server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def nothing_moved(ws) -> None:
    assert set(state for (state,) in query(ws.root, "SELECT state FROM jobs")) == {"pending"}
    assert query(ws.root, "SELECT count(*) FROM events WHERE from_state != to_state") == [(0,)]
    assert not (ws.root / "output").exists()


def test_run_against_a_closed_port_says_so_in_one_line_within_seconds_and_records_nothing(ws, unused_port):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    env = {"SORA_BASE_URL": f"http://127.0.0.1:{unused_port}/v1", "SORA_API_KEY": API_KEY}
    started = time.monotonic()
    proc = spawn(ws.root, env, "run")
    out, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - started
    assert proc.returncode == CONFIG, (out, err)
    assert out == ""
    assert one_line(err) == f"error: cannot reach http://127.0.0.1:{unused_port}/v1: connection refused"
    assert seconds < 20, "no retry storm: a refused connection is reported at once"
    assert not (ws.root / "ledger.db").exists()  # checked before the scan
    print(f"closed port: 'cannot reach' after {seconds:.2f} s (process start included)")


def test_work_against_a_closed_port_touches_no_job(ws, unused_port, work_env):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    assert ws.cli("scan", env=work_env).exit_code == 0
    env = {**work_env, "SORA_BASE_URL": f"http://127.0.0.1:{unused_port}/v1"}
    for args in (["work"], ["work", "--dry-run"], ["run", "--dry-run"]):
        result = ws.cli(*args, env=env)
        assert result.exit_code == CONFIG, (args, result.output)
        assert one_line(result.output) == f"error: cannot reach http://127.0.0.1:{unused_port}/v1: connection refused"
    nothing_moved(ws)


def test_a_rejected_key_is_one_line_naming_it_masked(ws, make_sim, work_env):
    sim = make_sim(api_key="sora-theRightKey000000000000000000000")
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    assert ws.cli("scan", env=work_env).exit_code == 0
    wrong = "sora-wrongKeyZZZZZZZZZZZZZZZZZZZZZZZZ9abc"
    env = {**work_env, "SORA_BASE_URL": sim.base_url, "SORA_API_KEY": wrong}
    for args in (["work"], ["work", "--dry-run"], ["run", "--dry-run"], ["-v", "run"]):
        result = ws.cli(*args, env=env)
        assert result.exit_code == CONFIG, (args, result.output)
        assert one_line(result.output) == "error: the API key sora-…9abc was rejected (401): check SORA_API_KEY"
    assert sim.stats()["requests_by_route"] == {"balance": 4}
    nothing_moved(ws)


def test_a_missing_key_says_where_to_set_it(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    env = {k: v for k, v in work_env.items() if k != "SORA_API_KEY"}
    for args in (["run"], ["run", "--dry-run"]):
        result = ws.cli(*args, env=env)
        assert result.exit_code == CONFIG
        assert one_line(result.output) == "error: SORA_API_KEY is not set: set it in .env (SORA_API_KEY=sora-...)"
    assert not (ws.root / "ledger.db").exists()
    assert sim.stats()["requests_by_route"] == {}


@pytest.mark.parametrize("url", ["notaurl", "ftp://example.com/v1", "http:///v1", "api.sora.hk/v1"])
def test_a_base_url_that_is_not_http_is_refused_when_settings_are_built(ws, url):
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--dry-run", env={"SORA_BASE_URL": url, "SORA_API_KEY": API_KEY})
    assert result.exit_code == CONFIG
    assert one_line(result.output) == (f"error: SORA_BASE_URL {url!r} (from environment) is not an http(s) URL; "
                                       f"expected e.g. https://api.sora.hk/v1")
    assert not (ws.root / "ledger.db").exists()


def test_a_proxy_that_does_not_answer_is_named_within_seconds(ws, unused_port, silent_port):
    ws.storyboard("storyboard_a.json", segments("one"))
    env = {"SORA_BASE_URL": f"http://127.0.0.1:{unused_port}/v1", "SORA_API_KEY": API_KEY,
           "HTTP_PROXY": f"http://user:s3cret@127.0.0.1:{silent_port}", "READ_TIMEOUT": "1"}
    started = time.monotonic()
    proc = spawn(ws.root, env, "run", "--dry-run")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == CONFIG, (out, err)
    assert time.monotonic() - started < 20
    assert one_line(err) == (f"error: cannot reach http://127.0.0.1:{unused_port}/v1 through the proxy "
                             f"http://user:***@127.0.0.1:{silent_port}: the proxy accepted the connection but did "
                             f"not answer: check HTTP_PROXY / HTTPS_PROXY / NO_PROXY")


def test_a_proxy_that_refuses_is_named(ws, unused_port, sim):
    ws.storyboard("storyboard_a.json", segments("one"))
    env = {"SORA_BASE_URL": sim.base_url, "SORA_API_KEY": API_KEY, "HTTP_PROXY": f"http://127.0.0.1:{unused_port}"}
    result = ws.cli("run", env=env)
    assert result.exit_code == CONFIG
    assert one_line(result.output) == (f"error: cannot reach {sim.base_url} through the proxy http://127.0.0.1:"
                                       f"{unused_port}: the proxy refused the connection: check HTTP_PROXY / "
                                       f"HTTPS_PROXY / NO_PROXY")


def test_a_server_that_accepts_and_never_answers_is_named(ws, silent_port):
    ws.storyboard("storyboard_a.json", segments("one"))
    env = {"SORA_BASE_URL": f"http://127.0.0.1:{silent_port}/v1", "SORA_API_KEY": API_KEY, "READ_TIMEOUT": "1"}
    result = ws.cli("run", env=env)
    assert result.exit_code == CONFIG
    assert one_line(result.output) == (f"error: cannot reach http://127.0.0.1:{silent_port}/v1: connected, but no "
                                       f"answer came (is something other than the API listening there?)")


def test_a_base_url_that_is_some_other_web_server_is_named(ws, httpserver: HTTPServer):
    httpserver.expect_request("/v1/balance").respond_with_data("<html>Not Found</html>", status=404,
                                                                content_type="text/html")
    ws.storyboard("storyboard_a.json", segments("one"))
    base = httpserver.url_for("/v1")
    result = ws.cli("run", env={"SORA_BASE_URL": base, "SORA_API_KEY": API_KEY})
    assert result.exit_code == CONFIG
    assert one_line(result.output) == (f"error: {base} does not look like the video API (GET /balance answered HTTP "
                                       f"404, text/html: '<html>Not Found</html>'): check SORA_BASE_URL")
    assert len(httpserver.log) == 1  # a wrong address is not tried again


def test_a_busy_service_is_tried_a_few_times_then_named(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("balance", "http_502_html", count=2)
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output  # two 502s, then the answer: the run goes on
    assert sim.stats()["tasks_created"] == 1
    sim.inject("balance", "envelope_500", count=50)
    result = ws.cli("work", env=work_env)
    assert result.exit_code == CONFIG
    said = one_line(result.output)
    assert said.startswith(f"error: {sim.base_url} keeps failing (GET /balance: HTTP 200 (code 500: "), said
    assert said.count("GET /balance") == 1  # before: "GET /balance: HTTP 200, GET /balance: HTTP 200 (code 500…"
    assert "try again later" in result.output


def test_a_dry_run_whose_balance_is_short_exits_4(ws, make_sim, work_env):
    sim = make_sim(balance=40)
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    result = ws.cli("run", "--dry-run", env={**work_env, "SORA_BASE_URL": sim.base_url})
    assert result.exit_code == BALANCE, result.output
    assert "Balance $0.40 does NOT cover it: $0.20 short" in result.output
    assert result.output.splitlines()[-1] == "error: dry run: the balance $0.40 would not cover the estimated $0.60"
    assert sim.stats()["creates_received"] == 0


def test_a_dry_run_beyond_max_spend_exits_4(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    assert ws.cli("scan", env=work_env).exit_code == 0
    short = ws.cli("work", "--dry-run", "--max-spend", "59c", env=work_env)
    assert short.exit_code == BALANCE, short.output
    assert "--max-spend $0.59 does NOT cover it" in short.output
    assert short.output.splitlines()[-1] == "error: dry run: --max-spend $0.59 would not cover the estimated $0.60"
    enough = ws.cli("run", "--dry-run", "--max-spend", "0.60", env=work_env)
    assert enough.exit_code == 0, enough.output
    assert "--max-spend $0.60 covers it." in enough.output
    assert sim.stats()["creates_received"] == 0


def test_urllib3_retry_warnings_show_only_at_vv(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    sim.inject("task", "drop", count=2)  # dropped connections: urllib3 retries, and warns
    quiet = ws.cli("run", "--no-progress", env=work_env)
    assert quiet.exit_code == 0, quiet.output
    assert sim.stats()["faults_injected"]["drop"] == 2
    assert "Retrying" not in quiet.output and "connectionpool" not in quiet.output
    ws.storyboard("storyboard_b.json", segments("two"))
    sim.inject("task", "drop", count=2)
    loud = ws.cli("-vv", "run", "--no-progress", env=work_env)
    assert loud.exit_code == 0, loud.output
    assert "Retrying (Retry(" in loud.output


def test_v_adds_detail_without_tracebacks_or_alembic_lines(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("fine", "forbidden [policy-reject]"))
    result = ws.cli("-v", "run", "--no-progress", env=work_env)
    assert result.exit_code == 1  # a failed job: an expected outcome, not a crash
    assert "error: 1 job(s) failed" in result.output
    assert "Traceback" not in result.output
    assert "alembic" not in result.output  # the first command migrated the new ledger
    assert "pre-flight:" in result.output  # -v does add our own detail
    fresh = f"sqlite:///{(ws.root / 'fresh.db').as_posix()}"  # a new ledger: migrations run again
    loud = ws.cli("-vv", "--database", fresh, "run", "--no-progress", env=work_env)
    assert loud.exit_code == 1
    assert "alembic" in loud.output and "Traceback" in loud.output
