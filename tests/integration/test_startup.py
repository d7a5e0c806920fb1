"""What a `ledger work` process spends around the generations themselves (issue 16, point 3): it
loads only what it needs, the pre-flight's connection carries the whole run, a finished generation's
slot is filled again while its video downloads, and the process ends as soon as the work is done.
Against the independent fake API (``tests/fake_api.py``), `ledger` as a process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fake_api import FakeApi
from tests.helpers import query, segments, spawn

FAST = {"GEN_COUNT_PER_SEGMENT": "1", "POLL_MIN_INTERVAL": "0.05"}


def test_work_loads_none_of_what_only_other_commands_need():
    """Before: every command loaded jsonschema, YAML, PostgreSQL's dialect, the simulator and the
    review page, about a tenth of a second of a `ledger work` start-up."""
    code = ("import sys, ledger.__main__, ledger.cli, ledger.work\n"
            "print(' '.join(sorted(m for m in sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "sqlalchemy" in loaded and "requests" in loaded  # the check itself sees modules
    for module in ("jsonschema", "jsonschema_rs", "yaml", "sqlalchemy.dialects.postgresql", "ledger.sim.server",
                   "ledger.review", "opentimelineio", "psycopg"):
        assert module not in loaded, module


@pytest.mark.parametrize("protocol", ["sora_hk", "openai"])
def test_the_pre_flight_connection_carries_the_whole_run(ws, protocol):
    """Before: the pre-flight had a connection of its own, and the run opened another (a second TCP
    and TLS handshake to a far-away API before the first create)."""
    with FakeApi(protocol=protocol, gen_seconds=0.2) as api:
        ws.storyboard("storyboard_a.json", segments("one"))
        proc = spawn(ws.root, {**api.env(), **FAST}, "run", "--no-progress", "--concurrency", "1")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        pre_flight = "balance" if protocol == "sora_hk" else "tasks"
        assert api.requests[pre_flight] >= 1 and api.requests["create"] == 1
        assert api.connections == 1, api.requests


def test_a_finished_generation_frees_its_slot_while_its_video_downloads(ws):
    """--concurrency counts generations in flight: the second create goes out while the first
    video is still arriving over a slow link. Before: it waited for the download."""
    with FakeApi(gen_seconds=0.2, file_delay=1.5) as api:
        ws.storyboard("storyboard_a.json", segments("first", "second"))
        proc = spawn(ws.root, {**api.env(), **FAST}, "run", "--no-progress", "--concurrency", "1")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        creates = [t for t, route, what in api.timeline if route == "create"]
        files_done = sorted(t for t, route, what in api.timeline if route == "file" and what == "end")
        assert len(creates) == 2 and len(files_done) == 2
        assert creates[1] < files_done[0], "the second create waited for the first download"
        # never more than one generation at a time: the second was created after the first finished
        first_done = min(t.created for t in api.own_tasks()) + api.gen_seconds
        assert creates[1] >= first_done
    assert query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 2)]


def test_a_piped_command_ends_with_everything_said_and_the_ledger_closed(ws):
    """The process ends without unloading every module one by one, yet its output is all there, its
    exit code is the command's, and the SQLite ledger is closed cleanly (no -wal file left)."""
    with FakeApi(gen_seconds=0.1) as api:
        ws.storyboard("storyboard_a.json", segments("one", "[two]"))
        env = {**api.env(), **FAST}
        run = spawn(ws.root, env, "run", "--no-progress")
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0 and out.rstrip().endswith("Videos are in output/storyboard_a/"), (out, err)
        status = spawn(ws.root, env, "status", "--json")
        out, err = status.communicate(timeout=60)
        assert status.returncode == 0, err
        assert out.rstrip().endswith("}") and '"total": 2' in out
        missing = spawn(ws.root, env, "show", "storyboard_a#9v1")
        _, err = missing.communicate(timeout=60)
        assert missing.returncode == 2 and err.startswith("error: ")
    assert not (ws.root / "ledger.db-wal").exists()
