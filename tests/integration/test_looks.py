"""Colour where it helps — `error:` red, `warning:` yellow, `invalid:` and failed jobs labelled and
red — only on a terminal, never with NO_COLOR or when piped; `--help` puts the everyday commands
first and never cuts a description off mid-phrase."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import segments, spawn
from tests.integration.test_failures import REJECT
from tests.terminal import run_in_terminal

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[1-7]|9[1-7])[0-9;]*m")  # a foreground colour


def _bad_and_failing(ws):
    ws.storyboard("storyboard_good.json", segments("fine", f"bad {REJECT}"))
    ws.storyboard("storyboard_broken.json", {"segments": [{"segment_index": 1}]})


def test_labels_are_coloured_on_a_terminal_and_plain_with_no_color(ws, sim, work_env):
    _bad_and_failing(ws)
    code, written = run_in_terminal(ws.root, work_env, "run", columns=120)
    assert code == 1, written  # a failed job outranks the invalid file (both are named)
    for label in ("invalid:", "failed:", "error:"):
        assert re.search(COLOUR.pattern + r"[^\n]{0,12}" + re.escape(label), written), (label, written)
    ws.cli("requeue", "--failed", env=work_env)
    code, written = run_in_terminal(ws.root, {**work_env, "NO_COLOR": "1"}, "run", columns=120)
    assert "invalid:" in written and "error:" in written and not COLOUR.search(written), written


def test_piped_output_has_no_escape_codes_and_failed_jobs_are_labelled(ws, sim, work_env):
    _bad_and_failing(ws)
    proc = spawn(ws.root, work_env, "run", "--no-progress")
    out, err = proc.communicate(timeout=60)
    assert "\x1b[" not in out + err
    assert re.search(r"storyboard_good\.json#2v1 failed: ", err), err  # the live stream labels it
    assert "failed: input/storyboard_good.json#2v1 [" in out


def test_help_lists_the_everyday_commands_first_and_cuts_no_description():
    shown = subprocess.run([sys.executable, "-m", "ledger", "--help"], capture_output=True, text=True,
                           env={"COLUMNS": "80", "PATH": ""}).stdout
    section = shown[shown.index("Commands:"):]
    names = re.findall(r"^  (\S+)", section, re.M)
    assert names[:6] == ["init", "run", "status", "review", "pick", "export"], names
    assert "..." not in section and "…" not in section, section
