"""Adversarial: Wan (DashScope) batch-query answers read tolerantly."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request as WRequest, Response

from ledger.errors import TransientError
from ledger.providers import RULES, Request
from ledger.providers.wan import WanClient

KEY = "sk-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"


def _params(prompt: str):
    return RULES["wan"].map(Request(prompt=prompt, model=None, is_pro=False, duration=None, resolution="horizontal",
                                    quality="normal", remove_watermark=True, image_url=None)).params


def test_a_batch_query_that_counts_tasks_it_does_not_show_is_not_read_as_not_created(httpserver: HTTPServer):
    """`_page_answer` reads an answer without `data` but with `total` as an empty page (right for
    an empty window: total 0). An answer that says `total: 2` and shows no entry (the list under a
    key of another name, or `data: null` for a page size the API will not serve) is read the same:
    an empty first page, the end of the window, "covered" — and the lost create is sent again."""
    params = _params("the lost create")
    sent = datetime.now(timezone.utc) - timedelta(minutes=5)
    made = int((sent + timedelta(seconds=1)).timestamp() * 1000)

    def batch(request: WRequest) -> Response:
        return Response(json.dumps({"request_id": "r1", "total": 2, "total_page": 1, "page_no": 1, "page_size": 100,
                                    "data": None,
                                    "tasks": [{"task_id": "7c87e22d-0001", "status": "SUCCEEDED", "gmt_create": made,
                                               "model_name": params["model"]}]}),
                        content_type="application/json")

    httpserver.expect_request("/tasks").respond_with_handler(batch)
    client = WanClient(httpserver.url_for(""), KEY)
    try:
        search = client.find_tasks(params, "", sent, sent + timedelta(seconds=5))
    except TransientError:
        return  # the reconcile reads a look-up that raises as "cannot tell": unresolved, never sent again
    finally:
        client.close()
    assert not (search.covered and not search.tasks), (
        "an answer counting 2 tasks in the window and showing none was read as 'not created'")
