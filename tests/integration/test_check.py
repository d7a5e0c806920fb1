"""`ledger check` as a user runs it: a process, against the simulator of every protocol (every
answer recognised, exit 0) and against servers that answer otherwise — an old shape, a refused key,
nothing at all (named, non-zero exit, no key in the output)."""
from __future__ import annotations

import json
import re
import subprocess
from typing import Any, Dict, Tuple

from pytest_httpserver import HTTPServer

from tests.helpers import api_env, every_protocol, spawn

KEY = "sora-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"


def check(root: Any, env: Dict[str, str], *args: str) -> Tuple[int, str, str]:
    proc = spawn(root, env, "check", *args)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


@every_protocol
def test_every_protocol_s_simulator_answers_as_ledger_expects(ws, make_sim, protocol):
    sim = make_sim()
    code, out, err = check(ws.root, api_env(sim), "--json")
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["matched"] is True
    (row,) = report["checks"]
    assert row["provider"] == protocol and row["reachable"] and row["key_accepted"]
    assert [c["call"] for c in row["calls"]] == ["pre-flight", "balance", "list", "look-up"]
    assert {c["outcome"] for c in row["calls"]} == {"ok"}
    assert sim.stats()["tasks_created"] == 0, "a check must never create (pay for) anything"
    if protocol == "kling":  # resource-pack units, never shown as plain yuan
        assert "resource-pack units" in row["balance"] and "12 h" in row["balance"], row


def test_the_table_names_each_call_and_masks_the_key(ws, make_sim):
    sim = make_sim(protocol="sora_hk", api_key=KEY)
    code, out, err = check(ws.root, {**api_env(sim), "SORA_API_KEY": KEY, "COLUMNS": "200"})
    assert code == 0, (out, err)
    assert "look-up ok" in out and "$1,000.00" in out and "…J0xA" in out.replace("\n", "")
    assert KEY not in out + err and KEY[5:] not in out + err


def _old_sora(server: HTTPServer) -> str:
    """A sora.hk-like API of an older generation: its task list under `data.records`, its statuses
    in words ledger does not read (`FINISHED`)."""
    server.expect_request("/v1/balance").respond_with_json({"code": 200, "message": "ok", "data": {"balance": 500}})
    server.expect_request("/v1/tasks").respond_with_json({"code": 200, "message": "ok", "data": {
        "records": [{"task_id": "t1", "status": "FINISHED", "prompt": "a fox"}], "total": 1}})
    server.expect_request(re.compile("/v1/tasks/.+"), method="GET").respond_with_json(
        {"code": 404, "message": "no such task"}, status=404)
    return server.url_for("/v1")


def test_an_api_answering_an_old_shape_is_named_and_the_exit_is_not_zero(ws, httpserver: HTTPServer):
    base = _old_sora(httpserver)
    env = {"PROVIDER": "sora_hk", "SORA_BASE_URL": base, "SORA_API_KEY": KEY, "COLUMNS": "200"}
    code, out, err = check(ws.root, env, "--json")
    assert code == 3, (out, err)
    report = json.loads(out)
    assert report["matched"] is False
    calls = {c["call"]: c for c in report["checks"][0]["calls"]}
    assert calls["balance"]["outcome"] == "ok"
    assert calls["list"]["outcome"] == "mismatch"
    assert "data.records" in calls["list"]["fields"] and "data.records[].status" in calls["list"]["fields"]
    assert "a fox" not in out, "field names, never their values"
    code, out, err = check(ws.root, env)
    assert code == 3
    assert "list MISMATCH" in out and "fields seen:" in out and "data.records[].status" in out
    assert KEY not in out + err


def test_a_refused_key_and_an_unreachable_api_are_named(ws, make_sim, unused_port):
    sim = make_sim(protocol="sora_hk", api_key=KEY)
    wrong = "sora-WRONGWRONGWRONGWRONGWRONGWRONG1234"
    code, out, err = check(ws.root, {**api_env(sim), "SORA_API_KEY": wrong}, "--json")
    assert code == 3, (out, err)
    (row,) = json.loads(out)["checks"]
    assert row["reachable"] is True and row["key_accepted"] is False
    assert row["calls"][0]["outcome"] == "refused"
    assert wrong not in out + err and wrong[5:] not in out + err
    code, out, err = check(ws.root, {"PROVIDER": "sora_hk", "SORA_BASE_URL": f"http://127.0.0.1:{unused_port}/v1",
                                     "SORA_API_KEY": KEY}, "--json")
    assert code == 3, (out, err)
    (row,) = json.loads(out)["checks"]
    assert row["reachable"] is False and row["calls"][0]["outcome"] == "unreachable"


def test_each_key_of_a_team_is_checked_on_its_own(ws, make_sim):
    sim = make_sim(protocol="sora_hk", api_key=KEY)
    other = "sora-OTHEROTHEROTHEROTHEROTHEROTHER9876"
    code, out, err = check(ws.root, {**api_env(sim), "SORA_API_KEY": "", "SORA_API_KEYS": f"{KEY}@2,{other}@1"},
                           "--json")
    assert code == 3, (out, err)
    rows = json.loads(out)["checks"]
    assert [(r["key"], r["key_accepted"]) for r in rows] == [("sora-…J0xA", True), ("sora-…9876", False)]


def test_only_the_providers_asked_for(ws, make_sim):
    sim = make_sim(protocol="kling")
    env = {**api_env(sim), "SORA_API_KEY": KEY}  # sora_hk has a key too: checked unless --provider says
    code, out, err = check(ws.root, env, "--json", "--provider", "kling")
    assert code == 0, (out, err)
    assert [r["provider"] for r in json.loads(out)["checks"]] == ["kling"]
