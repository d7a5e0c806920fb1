"""A server that echoes the key in other shapes never gets it onto the screen or into the ledger."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from tests.helpers import segments

from .conftest import API_KEY

BARE = API_KEY[len("sora-"):]


def envelope(data=None, code: int = 200, message: str = "操作成功") -> Response:
    return Response(json.dumps({"code": code, "message": message, "data": data}, ensure_ascii=False),
                    content_type="application/json")


def echoing_server(httpserver: HTTPServer) -> str:
    """An API that answers like the real one but quotes the key back, without its prefix, in its
    error message (create) and URL-encoded in a failed task's error_msg (poll)."""

    def create(request: Request) -> Response:
        if request.get_json()["prompt"] == "one":
            return envelope(code=1001, message=f"参数错误: duration not allowed for key {BARE}")
        return envelope({"task_id": "task-two", "status": "pending", "cost": 30})

    httpserver.expect_request("/v1/balance").respond_with_handler(lambda r: envelope({"balance": 10_000}))
    httpserver.expect_request("/v1/pricing").respond_with_handler(
        lambda r: envelope({"normal_price": 30, "pro_price": 150, "currency": "USD", "unit": "task"}))
    httpserver.expect_request("/v1/create", method="POST").respond_with_handler(create)
    httpserver.expect_request("/v1/tasks/task-two").respond_with_handler(lambda r: envelope(
        {"task_id": "task-two", "status": "failed", "progress": 0, "prompt": "two",
         "error_msg": f"生成失败: quota of {quote('key=' + API_KEY, safe='')} used up"}))
    return httpserver.url_for("/v1")


def ledger_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.glob("ledger.db*")))


def test_a_key_echoed_without_its_prefix_or_url_encoded_never_reaches_the_screen_or_the_ledger(
        ws, httpserver: HTTPServer) -> None:
    env = {"SORA_BASE_URL": echoing_server(httpserver), "SORA_API_KEY": API_KEY, "GEN_COUNT_PER_SEGMENT": "1",
           "POLL_MIN_INTERVAL": "0.05"}
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    run = ws.cli("-vv", "run", "--no-progress", env=env)
    assert run.exit_code == 1, run.output  # both jobs failed, with the server's own words
    assert "参数错误: duration not allowed for key sora-…J0xA" in run.output
    assert "生成失败: quota of key%3Dsora-…J0xA used up" in run.output
    outputs = [run.output] + [ws.cli(*args, env=env).output for args in
                              (["status", "--json"], ["show", "1"], ["show", "2"], ["export-failed"])]
    exported = next(ws.output.glob("failed_tasks_*.json")).read_bytes()
    for text in outputs:
        assert BARE not in text and quote(API_KEY, safe="") not in text
    for data in (ledger_bytes(ws.root), exported):
        assert BARE.encode() not in data
        assert b"J0xA" in data  # the messages were kept, masked
