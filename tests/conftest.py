"""Shared fixtures: every test runs in its own workspace with no settings leaking in from outside."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Union

import pytest
from click.testing import CliRunner, Result

# The tests read ledger's English words, whatever the machine's locale; a test of the Chinese ones
# asks for them (LEDGER_LANG, or LEDGER_LANG="" and a LANG). Set before ledger reads it.
os.environ["LEDGER_LANG"] = "en"

from ledger.cli import cli  # noqa: E402
from ledger.settings import SPECS, provider_options

ISOLATED_ENV = ([env for env, _, _ in SPECS] + [option.env for option in provider_options()]
                + ["http_proxy", "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy"])


def pytest_configure(config: pytest.Config) -> None:
    """A test run started in the background (``make test &``, ``nohup``) inherits SIGINT ignored,
    and so would every ``ledger`` process the tests start: a Ctrl+C sent to one before its own
    handler is installed would be lost and the test would wait for nothing. Give the run Python's
    usual handler; a handled signal is reset to the default in each child, as in a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's .env, config.yaml, proxies or key."""
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


class Workspace:
    """A user's project folder: input/, output/, ledger.db — all real files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.input = root / "input"
        self.output = root / "output"
        self.input.mkdir(exist_ok=True)
        self.db_url = f"sqlite:///{(root / 'ledger.db').as_posix()}"

    def storyboard(self, relpath: str, doc: Union[dict, str, bytes]) -> Path:
        path = self.input / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        elif isinstance(doc, str):
            path.write_text(doc, encoding="utf-8")
        else:
            path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    def cli(self, *args: Any, env: Union[dict, None] = None) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], env=env or {}, catch_exceptions=False)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)
