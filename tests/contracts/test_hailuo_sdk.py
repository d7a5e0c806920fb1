"""MiniMax's own Python code against ledger's: the ``minimax-mcp`` package (MiniMax's MCP server,
the only Python client MiniMax publishes; it speaks v1) makes the same v1 create as ledger, field
by field, at a local capture server; and its client reads the simulator's v1 answers — query, file
retrieval, the 2038 refusal — as it reads the real API's."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict

import pytest

from ledger.providers.hailuo import request_body
from ledger.sim import SimServer
from tests.contracts import runner

KEY = "sk-api-contract-0000000000000000"
IMAGE = "https://cdn.example.com/first.png"
# The documented v1 create answer (tests/contracts/hailuo/create_v1_text.json).
CREATED = next(f for f in runner.fixtures("hailuo") if f.path.stem == "create_v1_text").data["answer"]["body"]


@pytest.fixture
def mcp_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    """MiniMax's MCP server module, as it starts: it reads its key and host from the environment."""
    monkeypatch.setenv("MINIMAX_API_KEY", KEY)
    monkeypatch.setenv("MINIMAX_API_HOST", "http://127.0.0.1:9")  # each test points its client elsewhere
    monkeypatch.setenv("MINIMAX_API_RESOURCE_MODE", "url")  # answer the video's URL, download nothing
    return importlib.import_module("minimax_mcp.server")


@pytest.fixture
def sim(start_sim: Any) -> SimServer:
    return start_sim("hailuo", KEY, gen_seconds=0.0)


def point(server: Any, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    from minimax_mcp.client import MinimaxAPIClient

    monkeypatch.setattr(server, "api_client", MinimaxAPIClient(KEY, url.rstrip("/")))


def captured_create(httpserver: Any) -> Dict[str, Any]:
    (request, _), = [(r, a) for r, a in httpserver.log if r.path == "/v1/video_generation"]
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    return json.loads(request.get_data(as_text=True))


@pytest.mark.parametrize("segment", [
    {"prompt": "a fox", "model": "MiniMax-Hailuo-2.3", "duration": 10},
    {"prompt": "a fox", "model": "MiniMax-Hailuo-2.3", "duration": 6, "is_pro": True, "image_url": IMAGE},
    {"prompt": "a fox", "model": "MiniMax-Hailuo-2.3-Fast", "duration": 6, "image_url": IMAGE},
    {"prompt": "a fox", "model": "MiniMax-Hailuo-02", "duration": 6},
])
def test_ledger_sends_the_v1_create_minimax_own_code_sends(mcp_server, httpserver, monkeypatch, tmp_path: Path,
                                                         segment):
    params = runner.params_for("hailuo", segment)
    httpserver.expect_request("/v1/video_generation", method="POST").respond_with_json(CREATED)
    point(mcp_server, monkeypatch, httpserver.url_for("/"))
    said = mcp_server.generate_video(model=params["model"], prompt=params["prompt"],
                                     first_frame_image=params.get("image_url"), duration=params["duration"],
                                     resolution=params["resolution"], async_mode=True)
    assert "106916112212032" in said.text, said.text
    theirs = captured_create(httpserver)
    httpserver.clear_log()
    client = runner.open_client("hailuo", httpserver.url_for("/"), tmp_path,
                                {"MINIMAX_API_KEY": KEY})
    try:
        task = client.create(params, runner.REF)
    finally:
        client.close()
    ours = captured_create(httpserver)
    assert task.task_id == "106916112212032"
    assert ours == theirs == request_body(params)


def test_minimax_own_code_reads_the_simulators_v1_query_and_file(mcp_server, sim, monkeypatch):
    point(mcp_server, monkeypatch, sim.base_url)
    made = mcp_server.generate_video(model="MiniMax-Hailuo-2.3", prompt="a fox", duration=6, resolution="768P",
                                     async_mode=True)
    task_id = made.text.split("Task ID: ")[1].split(".")[0]
    assert task_id in {t["task_id"] for t in sim.tasks()}
    said = mcp_server.query_video_generation(task_id=task_id)
    assert said.text.startswith("Success. Video URL: ") and sim.base_url in said.text, said.text


def test_minimax_own_client_takes_the_simulators_2038_for_real_name_verification(mcp_server, sim, monkeypatch):
    from minimax_mcp.client import MinimaxAPIClient
    from minimax_mcp.exceptions import MinimaxRequestError

    sim.inject("create", "envelope", code=2038, message="real-name verification required")
    with pytest.raises(MinimaxRequestError, match="real-name verification"):
        MinimaxAPIClient(KEY, sim.base_url).post("/v1/video_generation",
                                                 json={"model": "MiniMax-Hailuo-2.3", "prompt": "a fox"})


def test_minimax_own_code_sees_a_refused_key_on_the_simulator(mcp_server, sim, monkeypatch):
    from minimax_mcp.client import MinimaxAPIClient
    from minimax_mcp.exceptions import MinimaxAuthError

    with pytest.raises(MinimaxAuthError):
        MinimaxAPIClient("sk-api-wrong", sim.base_url).get("/v1/query/video_generation?task_id=1")

