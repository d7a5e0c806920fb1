"""The providers' parameter rules and price lists: allowed values as data, every mismatch named."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List, Optional

import pytest

from ledger.client import RemoteTask
from ledger.errors import ConfigError
from ledger.providers import RULES, Mapped, Mismatch, Request, TaskPage, provider_of
from ledger.client import search_pages
from ledger.providers.openai_videos import STATUSES, model_rules, request_body, tariff
from ledger.settings import load_settings


def request(**fields) -> Request:
    values = dict(prompt="a fox", model=None, is_pro=False, duration=None, resolution="horizontal",
                  quality="normal", remove_watermark=True, image_url=None)
    values.update(fields)
    return Request(**values)


def test_sora_hk_parameters_are_the_ones_ledger_always_sent():
    mapped = RULES["sora_hk"].map(request(image_url="https://example.com/a.jpg"))
    assert isinstance(mapped, Mapped)
    assert mapped.params == {"prompt": "a fox", "is_pro": False, "duration": 10, "resolution": "horizontal",
                             "quality": "normal", "remove_watermark": True, "image_url": "https://example.com/a.jpg"}
    assert (mapped.is_pro, mapped.price_key, provider_of(mapped.params)) == (False, "normal", "sora_hk")
    pro = RULES["sora_hk"].map(request(model="sora-2-pro", is_pro=None, duration=25))
    assert isinstance(pro, Mapped) and pro.params["is_pro"] is True and pro.params["quality"] == "high"
    assert pro.price_key == "pro"


@pytest.mark.parametrize("fields, key, words", [
    ({"duration": 25}, "duration_seconds", "duration 25s needs the Pro model (is_pro: true); normal generations take 10 or 15 seconds"),
    ({"duration": 8}, "duration_seconds", "8 is not allowed here; use one of 10, 15, 25"),
    ({"resolution": "1792x1024"}, "resolution", "'1792x1024' is not allowed here; use one of 'horizontal', 'vertical'"),
    ({"model": "sora-3", "is_pro": None}, "model", "model 'sora-3' is not offered by the sora_hk provider; use one of 'sora-2', 'sora-2-pro'"),
    ({"model": "sora-2", "is_pro": True}, "model", "model 'sora-2' is not a Pro model, but is_pro is true"),
])
def test_sora_hk_mismatches_name_the_allowed_values(fields, key, words):
    mapped = RULES["sora_hk"].map(request(**fields))
    assert isinstance(mapped, list)
    assert [m.key for m in mapped] == [key] and words in mapped[0].message


def test_openai_maps_the_neutral_fields_to_model_seconds_and_size():
    mapped = RULES["openai"].map(request(resolution="vertical", image_url="https://example.com/a.jpg"))
    assert isinstance(mapped, Mapped)
    assert mapped.params == {"provider": "openai", "model": "sora-2", "prompt": "a fox", "duration": 4,
                             "resolution": "vertical", "size": "720x1280", "is_pro": False,
                             "image_url": "https://example.com/a.jpg"}
    assert request_body(mapped.params) == {"model": "sora-2", "prompt": "a fox", "seconds": "4", "size": "720x1280",
                                           "input_reference": {"image_url": "https://example.com/a.jpg"}}
    pro = RULES["openai"].map(request(is_pro=True, duration=12, resolution="1792x1024"))
    assert isinstance(pro, Mapped) and (pro.params["model"], pro.params["size"]) == ("sora-2-pro", "1792x1024")
    assert pro.price_key == "sora-2-pro@1792x1024:12"
    snapshot = RULES["openai"].map(request(model="sora-2-pro-2025-10-06", is_pro=None, resolution="1024x1792"))
    assert isinstance(snapshot, Mapped) and snapshot.params["model"] == "sora-2-pro-2025-10-06" and snapshot.is_pro
    assert model_rules("sora-2-2025-10-06") is model_rules("sora-2") and model_rules("sora-9") is None


def test_openai_mismatches_list_every_value_the_model_offers():
    mapped = RULES["openai"].map(request(duration=10, resolution="1792x1024"))
    assert mapped == [
        Mismatch("duration_seconds", "duration 10s is not offered by sora-2 on the openai provider; use one of 4, 8, 12"),
        Mismatch("resolution", "resolution '1792x1024' is not offered by sora-2 on the openai provider; use one of "
                               "'horizontal' (1280x720), 'vertical' (720x1280), '1280x720', '720x1280'"),
    ]


def test_openai_prices_are_seconds_times_a_per_model_per_size_rate(tmp_path: Path):
    prices = tariff(load_settings(tmp_path, {}))
    assert prices.price("sora-2@1280x720:4") == 40
    assert prices.price("sora-2-pro@1280x720:8") == 240  # $0.30/s at 720p
    assert prices.price("sora-2-pro@1792x1024:8") == 400  # $0.50/s above
    assert prices.price("sora-2-pro-2025-10-06@1024x1792:4") == 200  # a snapshot costs what its model costs
    custom = tariff(load_settings(tmp_path, {"OPENAI_PRICE_CENTS_PER_SECOND": "sora-2=12.5, sora-2-pro@1280x720: 20"}))
    assert custom.price("sora-2@1280x720:4") == 50 and custom.price("sora-2-pro@1280x720:4") == 80
    assert custom.price("sora-2-pro@1792x1024:4") == 200  # not overridden: the built-in rate
    assert "OPENAI_PRICE_CENTS_PER_SECOND" in custom.describe() and "sora-2 $0.125/s" in custom.describe()


@pytest.mark.parametrize("env, words", [
    ({"OPENAI_PRICE_CENTS_PER_SECOND": "sora-2 ten"}, "OPENAI_PRICE_CENTS_PER_SECOND='sora-2 ten' from environment"),
    ({"PROVIDER": "runway"}, "PROVIDER='runway' from environment: must be one of sora_hk, openai"),
    ({"PROVIDER": "openai", "DEFAULT_DURATION": "10"}, "DEFAULT_DURATION=10: duration 10s is not offered by sora-2 "
                                                       "on the openai provider; use one of 4, 8, 12"),
    ({"DEFAULT_DURATION": "8"}, "DEFAULT_DURATION=8: 8 is not allowed here; use one of 10, 15, 25"),
    ({"OPENAI_BASE_URL": "api.openai.com/v1"}, "OPENAI_BASE_URL 'api.openai.com/v1' (from environment) is not an http(s) URL"),
])
def test_provider_settings_are_checked_when_loaded(tmp_path: Path, env, words):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env)
    assert words in str(info.value)


def test_the_default_duration_is_each_models_own_unless_set(tmp_path: Path):
    assert load_settings(tmp_path, {"PROVIDER": "openai", "DEFAULT_DURATION": "8"}).default_duration == 8
    assert load_settings(tmp_path, {"PROVIDER": "openai"}).default_duration is None


def test_every_status_word_is_one_of_the_ledgers_four():
    assert set(STATUSES.values()) == {"pending", "processing", "completed", "failed"}
    assert STATUSES["succeeded"] == "completed" and STATUSES["processing"] == "processing"
    assert "unknown" not in STATUSES


START = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def task(task_id: str, prompt: str, minutes_after: float) -> RemoteTask:
    return RemoteTask(task_id=task_id, status="completed", progress=100, prompt=prompt, video_url=None,
                      error_msg=None, cost=None, created_at=START + timedelta(minutes=minutes_after), completed_at=None)


def pages_of(tasks: List[RemoteTask], size: int, ignore_cursor: bool = False):
    """A cursor-paged list over ``tasks`` (newest first), as a relay serves it; counts the reads."""
    reads: List[Optional[str]] = []

    def read(cursor: Optional[str]) -> TaskPage:
        reads.append(cursor)
        start = 0 if cursor is None or ignore_cursor else int(cursor)
        chunk = tasks[start:start + size]
        return TaskPage(chunk, str(start + size) if start + size < len(tasks) else None)

    return read, reads


def test_a_cursor_search_reads_until_the_list_is_older_than_the_window():
    newest_first = [task(f"v{i}", f"other {i}", 60 - i * 0.1) for i in range(250)]
    newest_first.append(task("mine", "the lost one", 0))
    newest_first += [task(f"old{i}", "older", -30 - i) for i in range(100)]
    read, reads = pages_of(newest_first, 100)
    found = search_pages(read, "the lost one", START, START + timedelta(seconds=70), skew_seconds=120)
    assert found.covered and [t.task_id for t in found.tasks] == ["mine"] and found.pages == 3
    assert reads == [None, "100", "200"]  # not a page more: the third one reaches before the window


def test_a_cursor_the_relay_ignores_never_covers_the_window():
    newest_first = [task(f"v{i}", f"other {i}", 60) for i in range(150)] + [task("mine", "the lost one", 0)]
    read, _ = pages_of(newest_first, 100, ignore_cursor=True)
    found = search_pages(read, "the lost one", START, skew_seconds=120)
    assert not found.covered and found.tasks == [] and "repeated itself" in found.reason


def test_a_list_without_prompts_cannot_prove_a_create_was_not_made():
    blind = [RemoteTask(task_id="v1", status="queued", progress=0, prompt=None, video_url=None, error_msg=None,
                        cost=None, created_at=START, completed_at=None)]
    read, _ = pages_of(blind, 100)
    found = search_pages(read, "the lost one", START, skew_seconds=120)
    assert not found.covered and "without their prompt" in found.reason


def test_a_relays_own_name_for_the_model_does_not_rule_a_task_out():
    from ledger.providers.openai_videos import OpenAIVideos

    client = OpenAIVideos("http://127.0.0.1:9/v1", None)
    params = {"provider": "openai", "model": "sora-2", "prompt": "p", "duration": 4, "size": "1280x720"}

    def listed(**raw):
        return RemoteTask(task_id="v", status="queued", progress=0, prompt="p", video_url=None, error_msg=None,
                          cost=None, created_at=START, completed_at=None, raw=raw)

    assert client.same_request(listed(model="sora-2-2025-10-06", seconds="4", size="1280x720"), params)
    assert client.same_request(listed(), params)  # a relay that shows nothing but the prompt
    assert not client.same_request(listed(model="sora-2-pro", seconds="4", size="1280x720"), params)
    assert not client.same_request(listed(model="sora-2", seconds="8", size="1280x720"), params)
    client.close()


def test_the_gateway_example_is_valid_and_all_openai():
    from ledger.settings import Settings
    from ledger.storyboard import Layout, read_storyboard

    repo = Path(__file__).resolve().parents[2]
    parsed = read_storyboard(repo / "docs" / "providers" / "storyboard_gateway.json", Settings(),
                             Layout(repo, repo / "input", repo / "output"))
    assert parsed.valid and parsed.warnings == [], (parsed.problems, parsed.warnings)
    assert [(job.provider, job.price_key) for job in parsed.jobs] == [
        ("openai", "sora-2@1280x720:4"), ("openai", "sora-2@720x1280:8"), ("openai", "sora-2-pro@1792x1024:4")]
