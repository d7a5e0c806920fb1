"""The live view renders what a user looks at: progress with a measured ETA, counts, the jobs in
flight and those waiting to retry; log lines print above it; its last frame is the final state."""
from __future__ import annotations

import io
import logging
import re
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, List

import pytest
from rich.console import Console
from rich.table import Table

from ledger.live import (ConsoleHandler, LiveView, PathCell, PlainView, estimate_eta, make_view, shorten_path)
from ledger.models import utcnow
from ledger.money import Money, parse_money
from ledger.states import State
from ledger.work.types import Action, Active, EventKind, WorkOptions, WorkSummary
from tests.terminal import replay

BOARD = "input/season_one/episode_twelve/storyboard_a.json"


def fake_job(i: int, state: State, board: str = BOARD, **extra: Any) -> Any:
    now = utcnow()
    values = dict(id=i, storyboard_path=board, segment_index=i, version=1, state=state,
                  submitted_at=now - timedelta(seconds=42), submitting_at=now - timedelta(seconds=43),
                  label=f"{board}#{i}v1", remote_task_id=f"task-{i}" if state is not State.PENDING else None,
                  next_attempt_at=None, target_dir=f"output/storyboard_a/Segment_{i}")
    values.update(extra)
    return SimpleNamespace(**values)


def fake_worker(summary: WorkSummary, *actives: Active, total: int = 10, stopping: bool = False) -> Any:
    return SimpleNamespace(summary=summary, expected_total=total, active={a.job.id: a for a in actives},
                           stopping=stopping, options=WorkOptions(concurrency=2), client=None)


def terminal(width: int = 80) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=width, height=30,
                   color_system=None)


def screen(console: Console) -> List[str]:
    return replay(console.file.getvalue(), console.width)  # type: ignore[attr-defined]


def test_live_view_shows_progress_counts_and_the_jobs_in_flight():
    console = terminal()
    generating = Active(job=fake_job(1, State.SUBMITTED), action=Action.POLL, progress=37)
    looking = Active(job=fake_job(2, State.SUBMITTING), action=Action.RECONCILE)
    worker = fake_worker(WorkSummary(done=3, failed=1, creates=6, spent=Money.of(180, "USD")), generating, looking)
    view = LiveView(console)
    with view:
        view.tick(worker)
        text = "\n".join(screen(console))
        view.worker = None  # leave the frame as it was drawn mid-run
    assert "4/10" in text and "ETA estimating" in text  # no generation finished yet: no guess
    assert "done 3 · failed 1 · in flight 2 · paid $1.80 for 6 generations" in text
    assert re.search(r"input/…/storyboard_a\.json#1v1 +submitted +37% +42 s", text), text
    assert re.search(r"storyboard_a\.json#2v1 +looking up its task", text), text


def test_the_last_frame_is_the_final_state():
    """Before: the last frame stayed at ``1/2 ETA -:--:--`` above the summary."""
    console = terminal()
    summary = WorkSummary(creates=1, spent=Money.of(30, "USD"))
    worker = fake_worker(summary, Active(job=fake_job(1, State.SUBMITTED), action=Action.POLL), total=2)
    with LiveView(console) as view:
        view.tick(worker)
        summary.done, summary.skipped_existing, summary.seconds = 1, 1, 75.0
        worker.active.clear()
    lines = screen(console)
    frames = [line for line in lines if line.startswith("ledger work")]
    assert len(frames) == 1 and frames[0].endswith(" 2/2 1:15 finished")
    assert lines[lines.index(frames[0]) + 1] == "done 1 · on disk already 1 · paid $0.30 for 1 generation"
    assert not any("#1v1" in line for line in lines)  # nothing in flight any more


def test_a_job_waiting_to_retry_is_a_row_with_a_countdown():
    console = terminal()
    worker = fake_worker(WorkSummary())
    waiting = fake_job(5, State.PENDING, next_attempt_at=utcnow() + timedelta(seconds=30))
    polling = Active(job=fake_job(6, State.SUBMITTED), action=Action.POLL, due=time.monotonic() + 8,
                     retry_note="poll failed; asking again in 8 s")
    with LiveView(console) as view:
        view.event(waiting, EventKind.RETRY, "attempt 1 failed (GET /file: HTTP 502); next try in 30 s")
        worker.active[6] = polling
        view.tick(worker)
        text = "\n".join(screen(console))
        view.worker = None
    assert re.search(r"storyboard_a\.json#5v1 +retrying in (30|29) s", text), text
    assert re.search(r"storyboard_a\.json#6v1 +poll failed; asking again in [78] s", text), text
    assert "attempt 1 failed" not in text  # a retry is a state of its row, not a scrolling line
    assert "waiting to retry 1" in text


def test_log_lines_print_above_the_view_and_leave_one_frame(restore_logging):
    """Before: a log handler on the raw stderr wrote over the view and left torn copies of it."""
    console = terminal()
    handler = ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    worker = fake_worker(WorkSummary(), Active(job=fake_job(1, State.SUBMITTED), action=Action.POLL))
    with LiveView(console) as view:
        for i in range(5):
            view.tick(worker)
            view._last = 0.0  # draw every tick
            logging.getLogger("ledger.download").info("connection broke; resuming (%d/5)", i + 1)
            logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2)) after a drop")
    lines = screen(console)
    assert len([line for line in lines if line.startswith("ledger work")]) == 1
    assert [line for line in lines if "resuming" in line] == [f"INFO ledger.download: connection broke; resuming "
                                                              f"({i}/5)" for i in range(1, 6)]
    assert len([line for line in lines if "Retrying" in line]) == 5


def test_api_notices_become_the_status_line_instead_of_scrolling(restore_logging):
    console = terminal(100)
    handler = ConsoleHandler(console, echo_notices=False)
    logging.getLogger().addHandler(handler)
    worker = fake_worker(WorkSummary(), Active(job=fake_job(1, State.SUBMITTED), action=Action.POLL))
    with LiveView(console) as view:
        logging.getLogger("ledger.client").warning("rate limited (GET /tasks/x: HTTP 429); pausing every API call "
                                                   "for 1.0 s")
        view.tick(worker)
        text = "\n".join(screen(console))
        view.worker = None
    assert text.count("rate limited") == 1
    assert "in flight 1 · paid $0.00 · rate limited (GET /tasks/x: HTTP 429)" in text


def test_event_lines_fit_one_line_and_keep_the_job_recognisable():
    console = terminal()
    with LiveView(console) as view:
        view.event(fake_job(2, State.DONE), EventKind.SAVED,
                   "saved output/season_one/episode_twelve/storyboard_a/Segment_2/2_v1_abcdef12.mp4 (3,443 bytes)")
        view.event(fake_job(3, State.SUBMITTED), EventKind.NOTE, "progress 50%")  # not a milestone: not printed
    lines = [line for line in screen(console) if line]
    assert len(lines) == 1 and len(lines[0]) <= 80
    assert lines[0].startswith("input/…/storyboard_a.json#2v1 saved output/") and lines[0].endswith("…")


def test_plain_view_when_not_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    view = make_view(console)
    assert isinstance(view, PlainView)
    view.event(fake_job(1, State.SUBMITTED), EventKind.CREATED, "created task abc ($0.30)")
    assert buffer.getvalue().endswith(f"{BOARD}#1v1 created task abc ($0.30)\n")
    assert isinstance(make_view(terminal()), LiveView)
    assert isinstance(make_view(terminal(), plain=True), PlainView)
    assert isinstance(make_view(terminal(), stdout_is_terminal=False), PlainView)  # `ledger work > log.txt`


# --- the ETA --------------------------------------------------------------------------------------


def test_eta_is_estimating_until_a_generation_finished_then_comes_from_measured_times():
    assert estimate_eta([], running=[5.0], queued=10, slots=2) is None
    # 60 s per job, two slots: the two running end at 20 s and 50 s; four queued take two rounds each.
    assert estimate_eta([60.0], running=[40.0, 10.0], queued=4, slots=2) == pytest.approx(170.0)
    # a job past the typical time holds its slot for a moment more, not forever
    assert estimate_eta([10.0], running=[30.0], queued=0, slots=4) == pytest.approx(1.0)
    # a job waiting 30 s for its retry starts its generation then
    assert estimate_eta([10.0], running=[], queued=0, slots=4, starting=[30.0]) == pytest.approx(40.0)
    # the recent generations count, not the first ones
    assert estimate_eta([100.0] * 5 + [10.0] * 20, running=[], queued=1, slots=1) == pytest.approx(10.0)


# --- paths that fit -------------------------------------------------------------------------------


@pytest.mark.parametrize("width, shown", [
    (80, "input/season_one/episode_twelve_the_long_way_home/storyboard_x.json"),
    (60, "input/…/episode_twelve_the_long_way_home/storyboard_x.json"),
    (50, "input/…/storyboard_x.json"),
    (25, "input/…/storyboard_x.json"),
    (20, "…/storyboard_x.json"),
    (12, "story…x.json"),
])
def test_long_paths_are_shortened_in_the_middle(width, shown):
    path = "input/season_one/episode_twelve_the_long_way_home/storyboard_x.json"
    assert shorten_path(path, width) == shown and len(shown) <= width


def test_wide_characters_count_as_two_cells():
    assert shorten_path("input/第一季/第十二集/storyboard_海边.json", 28) == "input/…/storyboard_海边.json"


def test_a_column_of_paths_keeps_rows_apart_however_narrow():
    paths = [f"input/season_one/part_{i}/storyboard_scene_{i}_with_a_descriptive_name.json" for i in (1, 2)]
    table = Table(box=None)
    table.add_column("storyboard")
    table.add_column("state")
    for cell in PathCell.column(paths):
        table.add_row(cell, "submitted")
    console = terminal(40)
    console.print(table)
    rows = [line for line in screen(console) if "submitted" in line]
    assert len(rows) == 2 and rows[0] != rows[1] and all(len(line) <= 40 for line in rows)
    assert "scene_1" in rows[0] and "scene_2" in rows[1]


# --- money ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, cents, currency", [
    ("5", 500, None), ("5.5", 550, None), ("5.50", 550, None), ("$5", 500, "USD"), ("0", 0, None),
    ("500c", 500, None), ("1,000", 100000, None), (" 2.05 ", 205, None), ("¥50", 5000, "CNY"),
    ("￥50", 5000, "CNY"), ("50CNY", 5000, "CNY"), ("50 元", 5000, "CNY"), ("5usd", 500, "USD"), ("12.5RMB", 1250, "CNY")])
def test_amounts_are_in_the_currency_they_name_else_the_one_in_play(text, cents, currency):
    assert parse_money(text) == (cents, currency)


@pytest.mark.parametrize("text", ["", "-5", "5.555", "five", "5 dollars", "c500", "5.5c", "$5CNY"])
def test_what_is_not_an_amount_is_refused_with_the_forms_that_are(text):
    with pytest.raises(ValueError, match="write 5, 5.50"):
        parse_money(text)


def test_money_of_several_currencies_adds_up_per_currency_and_reads_as_a_sum():
    total = sum([Money.of(30, "USD"), Money.of(500, "CNY"), Money.of(120, "USD")], Money())
    assert total == Money({"USD": 150, "CNY": 500}) and total.text() == "¥5.00 + $1.50"
    assert total.single() is None and Money.of(30, "USD").single() == 30 and Money().single() == 0
    assert Money().text("CNY") == "¥0.00" and Money.of(-5, "EUR").text() == "-0.05 EUR"
