"""Adversarial: MiniMax v2's task list read as its documentation leaves it open."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request as WRequest, Response

from ledger.providers import RULES, Request
from ledger.providers.hailuo import Hailuo

KEY = "mm-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"


def _params(prompt: str):
    return RULES["hailuo"].map(Request(prompt=prompt, model=None, is_pro=False, duration=None,
                                       resolution="horizontal", quality="normal", remove_watermark=True,
                                       image_url=None)).params


def test_a_list_that_answers_fewer_per_page_than_asked_is_not_read_as_not_created(httpserver: HTTPServer):
    """The v2 list documents `page_num` / `page_size` but no largest page size. An API that answers
    at most 50 a page while ledger asks 100 is paged by what was asked (`page * size < total`): the
    search stops after ceil(total / 100) pages — half the list — and a lost create whose task sits
    past that (150 tasks made on the account since: a team, or a run resumed hours later) is read as
    "not created" and sent again: paid twice. Wan pages by what the answer holds; MiniMax should too."""
    params = _params("the lost create")
    sent = datetime.now(timezone.utc) - timedelta(hours=3)
    lost = {"id": "900000000000001", "model": params["model"], "status": "succeeded",
            "created_at": int(sent.timestamp()) + 1, "updated_at": int(sent.timestamp()) + 100,
            "duration": params["duration"], "resolution": params.get("resolution"), "task_type": "generation"}
    newer = [{"id": str(910000000000000 + i), "model": params["model"], "status": "succeeded",
              "created_at": int(sent.timestamp()) + 3600 + 30 * (159 - i), "updated_at": int(sent.timestamp()) + 7200,
              "task_type": "generation"} for i in range(159)]
    tasks = newer + [lost]  # newest first
    cap = 50

    def listing(request: WRequest) -> Response:
        page = int(request.args.get("page_num", "1"))
        size = min(int(request.args.get("page_size", "10")), cap)
        items = tasks[(page - 1) * size: page * size]
        return Response(json.dumps({"items": items, "total": len(tasks)}), content_type="application/json")

    httpserver.expect_request("/v2/query/video_generation").respond_with_handler(listing)
    client = Hailuo(httpserver.url_for(""), KEY)
    try:
        search = client.find_tasks(params, "ledger-1-1", sent, sent + timedelta(seconds=5))
    finally:
        client.close()
    assert not (search.covered and not search.tasks), (
        f"read {search.pages} page(s) of a {len(tasks)}-task list answered {cap} a page and concluded "
        "'not created': the lost create's task is on the list and would be paid for twice")
