"""Pure parts of the client: how task objects, prices and timestamps are read, and the shared backoff."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from ledger.client import Pricing, RemoteTask, SharedBackoff, parse_timestamp
from ledger.errors import ApiError, RemoteTaskFailed

CST = timezone(timedelta(hours=8))


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T12:00:30+08:00", datetime(2024, 5, 1, 12, 0, 30, tzinfo=CST)),
    ("2024-05-01T04:00:30Z", datetime(2024, 5, 1, 12, 0, 30, tzinfo=CST)),
    ("2024-05-01 12:00:30", datetime(2024, 5, 1, 12, 0, 30, tzinfo=CST)),  # naive: the service's zone
    ("2024-05-01T12:00:30.123456789+0800", datetime(2024, 5, 1, 12, 0, 30, 123456, tzinfo=CST)),
    ("2024-05-01T04:00:30.5Z", datetime(2024, 5, 1, 12, 0, 30, 500000, tzinfo=CST)),
    (1714536030, datetime(2024, 5, 1, 12, 0, 30, tzinfo=CST)),
    (1714536030000, datetime(2024, 5, 1, 12, 0, 30, tzinfo=CST)),
])
def test_timestamps_become_aware_datetimes(text: object, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected and parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize("junk", [None, "", "yesterday", "2024-13-45 99:00:00", True])
def test_unreadable_timestamps_are_none(junk: object) -> None:
    assert parse_timestamp(junk) is None


def test_a_task_object_is_normalised() -> None:
    raw = {"task_id": "abc", "status": "Processing", "progress": "42%", "prompt": "霓虹城市",
           "video_url": "", "error_msg": "", "cost": "30", "created_at": "2024-05-01 12:00:30"}
    task = RemoteTask.from_api(raw)
    assert (task.status, task.progress, task.video_url, task.error_msg, task.cost) == ("processing", 42, None, None, 30)
    assert not task.is_terminal and task.raw["progress"] == "42%"
    task.raise_if_failed()  # not failed: nothing happens


@pytest.mark.parametrize("progress, expected", [(None, 0), ("abc", 0), (150, 100), (-5, 0), (37.9, 37)])
def test_progress_is_tolerant(progress: object, expected: int) -> None:
    assert RemoteTask.from_api({"task_id": "t", "status": "processing", "progress": progress}).progress == expected


def test_a_completed_task_is_at_100_percent_whatever_it_says() -> None:
    task = RemoteTask.from_api({"task_id": "t", "status": "completed", "progress": 99, "video_url": "https://v/x.mp4"})
    assert task.is_completed and task.is_terminal and task.progress == 100


def test_a_failed_task_raises_its_message_verbatim() -> None:
    message = "内容审核未通过：提示词可能违反内容政策"
    task = RemoteTask.from_api({"task_id": "t1", "status": "failed", "error_msg": message})
    with pytest.raises(RemoteTaskFailed) as info:
        task.raise_if_failed()
    assert str(info.value) == message and info.value.task_id == "t1"


def test_pricing_reads_cents_and_refuses_an_answer_without_prices() -> None:
    pricing = Pricing.from_api({"normal_price": 30, "pro_price": "150", "currency": "USD", "unit": "task"})
    assert (pricing.price_for(False), pricing.price_for(True)) == (30, 150)
    with pytest.raises(ApiError):
        Pricing.from_api({"currency": "USD"})


def test_the_shared_backoff_only_ever_extends_and_expires() -> None:
    backoff = SharedBackoff()
    assert backoff.paused_until == 0.0
    backoff.slow_down(0.2)
    first = backoff.paused_until
    backoff.slow_down(0.05)  # shorter: does not shorten the running pause
    assert backoff.paused_until == first > time.monotonic()
    started = time.monotonic()
    backoff.wait()
    assert time.monotonic() - started >= 0.15 and backoff.paused_until == 0.0


def test_waiting_on_the_backoff_returns_early_when_cancelled() -> None:
    backoff = SharedBackoff()
    backoff.slow_down(30)
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    started = time.monotonic()
    backoff.wait(cancel)
    assert time.monotonic() - started < 5
