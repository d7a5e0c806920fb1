"""Batch status as data: one list read answers the poll that asked, and tells the run about every
other polled task it shows finished (a read made for one job moves on each job it shows done)."""
from __future__ import annotations

import threading
from typing import List, Optional, Set

from ledger.client import RemoteTask, SharedBackoff, TaskPage
from ledger.policy import PollPolicy, RateGate
from ledger.work.board import StatusBoard


class ListingApi:
    """An account whose task list is fixed data: just enough of a provider for the board."""

    name, base_url = "stub", "http://stub.invalid/v1"

    def __init__(self, tasks: List[RemoteTask]) -> None:
        self.tasks, self.backoff, self.reads = tasks, SharedBackoff(), 0

    def recent(self, cursor: Optional[str], limit: int) -> TaskPage:
        self.reads += 1
        return TaskPage(self.tasks, None)


def task(task_id: str, status: str) -> RemoteTask:
    return RemoteTask.from_api({"task_id": task_id, "status": status, "progress": 100 if status == "completed" else 60,
                                "video_url": "https://files.invalid/v.mp4" if status == "completed" else ""})


def test_a_read_for_one_poll_reports_the_other_finished_tasks_it_shows():
    api = ListingApi([task("a", "processing"), task("b", "completed"), task("c", "failed"), task("d", "processing")])
    told: List[Set[str]] = []
    board = StatusBoard(RateGate(1000), threading.Event(), clock=lambda: 10.0, batch_min=4,
                        on_finished=lambda ids, read_at: told.append(set(ids)))
    for polled in ("b", "c", "d"):  # fewer than batch_min polled: they ask alone, and are known as wanted
        assert board.lookup(api, polled, None, not_before=0.0) is None
    answer = board.lookup(api, "a", None, not_before=0.0)
    assert answer is not None and answer[0].status == "processing"
    assert told == [{"b", "c"}]  # the finished ones besides the asker; "d" is still going
    assert api.reads == 1


def test_the_poll_meant_to_see_the_finish_lands_after_the_latest_finish_the_estimate_allows():
    """Progress is rounded down: at 90 % after 45 s the task runs 45 x 100/91 .. 45 x 100/90 s in all
    (49.45 .. 50 s); the poll comes after 50 s, but not much after."""
    policy = PollPolicy()
    delay = policy.next_delay(45.0, 90, 10.0)
    assert 50.0 < 45.0 + delay < 50.0 * 1.005
