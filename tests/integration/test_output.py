"""What a user reads, from `ledger` run as a process: the live view in a real pseudo-terminal with
log lines flowing, `-v` output, the per-storyboard summary, money in dollars, tables that fit.

Each test would fail on the output this replaced (see the comments for what it looked like)."""
from __future__ import annotations

import re
from collections import Counter
from typing import Dict, List

import pytest

from tests.helpers import query, segments, spawn
from tests.terminal import replay, run_in_terminal

LONG_FOLDER = "season_one/episode_twelve_the_long_way_home"


def plain_env(env: Dict[str, str]) -> Dict[str, str]:
    """The environment of a piped run: no terminal width from the test runner's shell."""
    return {**env, "COLUMNS": "", "LINES": ""}


def event_lines(stderr: str) -> List[str]:
    """The plain view's event lines: ``HH:MM:SS input/…#2v1 text``."""
    return [line.split(" ", 1)[1] for line in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d input/", line)]


def test_v_prints_each_event_once_and_no_traceback_for_failed_jobs(ws, make_sim, work_env):
    sim = make_sim(fault_rate=0.2)
    ws.storyboard("storyboard_a.json", segments("waves", "gulls [policy-reject]", "sand"))
    proc = spawn(ws.root, {**work_env, "SORA_BASE_URL": sim.base_url}, "-v", "run")
    out, errors = proc.communicate(timeout=120)
    assert proc.returncode == 1, errors  # a failed job is an expected outcome, not a crash
    assert "Traceback" not in errors and "Traceback" not in out
    events = event_lines(errors)
    assert any("saved output/" in line for line in events) and any("content policy" in line or "[policy" in line
                                                                    or "failed" in line for line in events)
    # Each event is printed once: a line shows up twice only when the ledger recorded it twice (a
    # create answer lost twice for one job is two events with the same words).
    recorded = Counter(detail for (detail,) in query(ws.root, "SELECT detail FROM events"))
    repeated = [line for line, count in Counter(events).items()
                if count > max(1, recorded[line.split(" ", 1)[1]])]
    assert repeated == []
    # -v adds ledger's own detail, and no third-party chatter (alembic, urllib3) below -vv
    assert "INFO ledger: pre-flight:" in errors
    assert "alembic" not in errors and "urllib3" not in errors
    assert errors.rstrip().endswith("error: 1 job(s) failed; see `ledger export-failed`")


def test_live_view_in_a_terminal_leaves_one_true_frame_while_logs_flow(ws, make_sim, work_env):
    """Before: urllib3/ledger log lines written to the raw stderr tore the view (copies of the
    panel in the scrollback) and the last frame stayed on ``1/2 ETA -:--:--``."""
    sim = make_sim(fault_rate=0.3, gen_seconds=0.5)
    for name in ("storyboard_north.json", "storyboard_south.json"):
        ws.storyboard(f"{LONG_FOLDER}/{name}", segments("one", "two", "three"))
    code, written = run_in_terminal(ws.root, {**work_env, "SORA_BASE_URL": sim.base_url}, "-v", "run",
                                    columns=80)
    screen = replay(written, 80)
    transcript = "\n".join(screen)
    assert code == 0, transcript
    assert re.search(r"\d\d:\d\d:\d\d (INFO|WARNING) ledger", transcript), transcript  # log lines did flow
    frames = [line for line in screen if line.startswith("ledger work ")]
    assert len(frames) == 1, transcript  # no torn copies of the view in the scrollback
    assert " 6/6 " in frames[0] and frames[0].endswith("finished")
    counts = screen[screen.index(frames[0]) + 1]
    assert counts.startswith("done 6 · paid $1.80 for 6 generations"), transcript
    assert not any(line.lstrip().startswith("job ") for line in screen)  # the final frame has nothing in flight
    assert all(len(line) <= 80 for line in screen[screen.index(frames[0]):screen.index(frames[0]) + 2])
    # the summary follows the view: per storyboard, money, where the videos are
    summary = screen[screen.index(frames[0]) + 2:]
    assert summary[0].startswith("Finished in ") and summary[0].endswith("6 saved; paid $1.80 for 6 generations.")
    assert "Videos are in output/season_one/episode_twelve_the_long_way_home/" in summary


def test_summary_names_each_storyboard_with_its_counts_money_and_folder(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    ws.storyboard(f"{LONG_FOLDER}/storyboard_b.json", segments("three", "four [policy-reject]"))
    proc = spawn(ws.root, plain_env(work_env), "run")
    out, errors = proc.communicate(timeout=120)
    assert proc.returncode == 1, errors
    lines = out.splitlines()
    head = next(line for line in lines if line.startswith("Finished in "))
    assert head.endswith("3 saved, 1 failed; paid $1.20 for 4 generations.")
    table = lines[lines.index(head) + 1:lines.index(head) + 4]
    assert re.split(r"\s{2,}", table[0].strip()) == ["storyboard", "done", "failed", "paid"]
    rows = {re.split(r"\s{2,}", line.strip())[0]: re.split(r"\s{2,}", line.strip())[1:] for line in table[1:]}
    assert rows == {"input/storyboard_a.json": ["2", "-", "$0.60"],
                    # 80 columns piped: the long path gives way in its middle, on one line
                    "input/…/episode_twelve_the_long_way_home/storyboard_b.json": ["1", "1", "$0.60"]}
    assert "Videos are in output/" in lines
    assert any(line.startswith(f"failed: input/{LONG_FOLDER}/storyboard_b.json#2v1 [refused]") for line in lines)


@pytest.mark.parametrize("given, shown", [("5", "$5.00"), ("5.5", "$5.50"), ("$0.60", "$0.60"), ("500c", "$5.00"),
                                          ("1,000", "$1,000.00")])
def test_max_spend_takes_dollars_or_cents(ws, sim, work_env, given, shown):
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    proc = spawn(ws.root, work_env, "run", "--dry-run", "--max-spend", given)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert f"--max-spend {shown} covers it." in out


def test_max_spend_that_is_not_an_amount_is_a_usage_error(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one"))
    proc = spawn(ws.root, work_env, "run", "--max-spend", "5 dollars")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert "'5 dollars' is not an amount: write 5, 5.50, $5, ¥50, 50CNY, or cents with a c (500c)" in errors
    assert not (ws.root / "ledger.db").exists() and sim.stats()["creates_received"] == 0


def test_max_spend_stops_a_run_at_the_dollar_amount(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("one", "two", "three"))
    proc = spawn(ws.root, plain_env(work_env), "run", "--max-spend", "0.60")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 4, errors
    assert sim.stats()["tasks_created"] == 2
    assert "--max-spend $0.60 reached" in errors
    assert "1 job not submitted: still pending." in out


def test_dry_run_in_a_fresh_folder_writes_nothing_and_says_only_what_happened(ws, sim, work_env):
    """Before: ``Dry run: nothing was written`` while ledger.db was created, ``Jobs (would change):
    +2 new, 0 updated, 0 back, …`` and ``0 already paid for would be collected``."""
    ws.storyboard("storyboard_a.json", segments("one", "two"))
    proc = spawn(ws.root, plain_env(work_env), "run", "--dry-run")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert sorted(p.name for p in ws.root.iterdir()) == ["input"]  # no ledger.db, no output/
    assert out.splitlines()[:3] == ["Scanned 1 storyboard file in input: 1 new.",
                                    "Jobs (dry run, nothing recorded): 2 new.",
                                    out.splitlines()[2]]
    assert out.splitlines()[2].startswith("A run would submit 2 jobs (2 normal): estimated $0.60 at ")
    assert " 0 " not in out and "+0" not in out  # no zero counts
    assert "collect" not in out
    assert out.splitlines()[-1] == "Dry run: nothing was paid for."


def test_a_dry_run_counts_jobs_going_back_to_the_queue(ws, sim, work_env):
    """Before: ``1 to regenerate (video deleted)`` followed by ``Pending: 0 job(s)``."""
    ws.storyboard("storyboard_a.json", segments("one"))
    assert spawn(ws.root, plain_env(work_env), "run").wait(timeout=60) == 0
    (video,) = [ws.root / p for (p,) in query(ws.root, "SELECT video_path FROM jobs")]
    video.unlink()
    proc = spawn(ws.root, plain_env(work_env), "scan", "--dry-run")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert "Jobs (dry run, nothing recorded): 1 back in the queue (video deleted)." in out
    assert "Pending after this scan: 1 job, estimated $0.30 at normal $0.30" in out
    # `run --dry-run` prices the same plan (before: "A run would submit nothing")
    proc = spawn(ws.root, plain_env(work_env), "run", "--dry-run")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert "A run would submit 1 job (1 normal): estimated $0.30 at " in out
    assert query(ws.root, "SELECT state FROM jobs") == [("done",)]


def long_paths(ws) -> List[str]:
    names = [f"{LONG_FOLDER}/part_{i}/storyboard_scene_{i}_with_a_descriptive_name.json" for i in (1, 2)]
    for name in names:
        ws.storyboard(name, segments("one"))
    return [f"input/{name}" for name in names]


def assert_fits_shortened(lines: List[str], paths: List[str], columns: int) -> None:
    """Every line fits; each long path is on one line, shortened with an ellipsis, and keeps what
    tells it from the other (``scene_1`` / ``scene_2``): rows can be told apart."""
    table = [line for line in lines if "storyboard" in line or line.lstrip().startswith("all ")]
    assert all(len(line) <= columns for line in table), "\n".join(lines)
    for i, path in enumerate(paths, start=1):
        row = [line for line in lines if f"storyboard_scene_{i}" in line]
        assert len(row) == 1 and "…" in row[0], "\n".join(lines)
        assert not any(line.strip().startswith(("on ", "json")) for line in lines)  # no wrapped remainders


def test_status_table_piped_shortens_long_paths_in_the_middle(ws):
    """Before: piped at 80 columns the table wrapped names (``Storyboard_Ocean.js`` / ``on``)."""
    paths = long_paths(ws)
    ws.cli("scan")
    proc = spawn(ws.root, {"COLUMNS": ""}, "status")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    assert_fits_shortened(out.splitlines(), paths, 80)


def test_status_table_in_an_80_column_terminal_shortens_long_paths_in_the_middle(ws):
    paths = long_paths(ws)
    ws.cli("scan")
    code, written = run_in_terminal(ws.root, {}, "status", columns=80)
    assert code == 0, written
    assert_fits_shortened(replay(written, 80), paths, 80)
