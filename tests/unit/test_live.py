"""The live view renders what a user looks at: progress, counts, the jobs in flight."""
from __future__ import annotations

import io
from datetime import timedelta
from types import SimpleNamespace

from rich.console import Console

from ledger.live import LiveView, PlainView, make_view
from ledger.models import utcnow
from ledger.states import State
from ledger.work.types import Action, Active, EventKind, WorkSummary


def fake_job(i: int, state: State):
    now = utcnow()
    return SimpleNamespace(id=i, storyboard_path="input/storyboard_a.json", segment_index=i, version=1, state=state,
                           submitted_at=now - timedelta(seconds=42), submitting_at=now - timedelta(seconds=43),
                           label=f"input/storyboard_a.json#{i}v1")


def test_live_view_shows_progress_counts_and_active_jobs():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    worker = SimpleNamespace(summary=WorkSummary(done=3, failed=1, creates=6, polls=20), expected_total=10,
                             active={1: Active(job=fake_job(1, State.SUBMITTED), action=Action.POLL, progress=37)},
                             stopping=True)
    with LiveView(console) as view:
        view.tick(worker)
        view.event(fake_job(2, State.DONE), EventKind.SAVED, "saved output/storyboard_a/Segment_2/2_v1_abcdef12.mp4 (3,443 bytes)")
    text = buffer.getvalue()
    assert "4/10" in text  # done + failed of the expected total
    assert "done 3" in text and "failed 1" in text and "in flight 1" in text
    assert "input/storyboard_a.json" in text and "submitted" in text and "37%" in text and "42s" in text
    assert "Ctrl+C again aborts downloads" in text
    assert "saved output/storyboard_a/Segment_2/2_v1_abcdef12.mp4" in text


def test_plain_view_when_not_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    view = make_view(console)
    assert isinstance(view, PlainView)
    view.event(fake_job(1, State.SUBMITTED), EventKind.CREATED, "created task abc ($0.30)")
    assert buffer.getvalue().endswith("input/storyboard_a.json#1v1 created task abc ($0.30)\n")
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(make_view(terminal), LiveView)
    assert isinstance(make_view(terminal, plain=True), PlainView)
    assert isinstance(make_view(terminal, stdout_is_terminal=False), PlainView)  # `ledger work > log.txt`
