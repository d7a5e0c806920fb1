"""A command that needs an existing ledger, run where there is none, says so and creates nothing."""
from __future__ import annotations

import pytest

from tests.helpers import segments

from .conftest import API_KEY

NO_LEDGER = "error: no ledger here (./ledger.db) — run `ledger scan` first"


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["show", "1"], ["work"], ["work", "--dry-run"],
                                  ["requeue", "--failed"], ["export-failed"]])
def test_commands_on_an_existing_ledger_say_there_is_none_and_create_nothing(ws, args):
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli(*args, env={"SORA_API_KEY": API_KEY})
    assert result.exit_code == 3
    assert result.output.strip() == NO_LEDGER
    assert sorted(p.name for p in ws.root.iterdir()) == ["input"]  # no ledger.db, no output/, no export file


def test_a_ledger_named_elsewhere_is_named_as_given(ws, tmp_path):
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.db"
    result = ws.cli("--database", f"sqlite:///{elsewhere}", "status")
    assert result.exit_code == 3
    assert result.output.strip() == f"error: no ledger here ({elsewhere}) — run `ledger scan` first"
    assert not elsewhere.exists()


def test_scan_and_db_upgrade_still_start_a_ledger(ws):
    assert ws.cli("--database", f"sqlite:///{ws.root / 'upgraded.db'}", "db", "upgrade").exit_code == 0
    assert (ws.root / "upgraded.db").exists()
    ws.storyboard("storyboard_a.json", segments("one"))
    assert ws.cli("scan").exit_code == 0
    assert ws.cli("status").exit_code == 0


def test_run_still_starts_a_ledger(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    result = ws.cli("run", "--no-progress", env=work_env)
    assert result.exit_code == 0, result.output
    assert (ws.root / "ledger.db").exists()
