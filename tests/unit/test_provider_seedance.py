"""The seedance provider as data: what each model takes and what each value maps to, the price of
each price key, and the status and error tables (pure: no network)."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import List, Optional

import pytest
import requests

from ledger.client import RemoteTask
from ledger.errors import (ApiError, AuthError, BadParameters, ContentRefused, InsufficientBalance, RateLimited,
                           TaskNotFound, TransientError)
from ledger.providers import RULES, Mapped, Request, TaskPage
from ledger.providers import seedance
from ledger.providers.seedance import (MODELS, NORMAL, PRO, SeedLookup, Seedance, TokenTariff, attempt_seed,
                                       request_body, tariff)
from ledger.settings import load_settings


def request(**fields) -> Request:
    values = dict(prompt="a fox", model=None, is_pro=False, duration=None, resolution="horizontal",
                  quality="normal", remove_watermark=True, image_url=None, options={})
    values.update(fields)
    return Request(**values)


def mapped(**fields) -> Mapped:
    result = RULES["seedance"].map(request(**fields))
    assert isinstance(result, Mapped), result
    return result


def problems(**fields) -> List[tuple]:
    result = RULES["seedance"].map(request(**fields))
    assert isinstance(result, list), result
    return [(m.key, m.message) for m in result]


def test_a_plain_segment_is_the_normal_model_720p_16_9_five_seconds_silent():
    job = mapped(image_url="https://example.com/first.png")
    assert job.params == {"provider": "seedance", "model": NORMAL, "prompt": "a fox", "duration": 5, "ratio": "16:9",
                          "resolution": "720p", "generate_audio": False, "service_tier": "default",
                          "camera_fixed": False, "watermark": False, "is_pro": False,
                          "image_url": "https://example.com/first.png"}
    assert (job.is_pro, job.price_key) == (False, f"{NORMAL}@1248x704:5s:silent:default")
    assert request_body(job.params, 1234) == {
        "model": NORMAL, "content": [
            {"type": "text", "text": "a fox"},
            {"type": "image_url", "image_url": {"url": "https://example.com/first.png"}, "role": "first_frame"}],
        "resolution": "720p", "ratio": "16:9", "duration": 5, "generate_audio": False, "service_tier": "default",
        "camera_fixed": False, "watermark": False, "seed": 1234}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_takes_each_of_its_durations_sizes_and_ratios(name):
    model = MODELS[name]
    for seconds in model.durations:
        assert mapped(model=name, is_pro=None, duration=seconds).params["duration"] == seconds
    for size in model.sizes:
        assert mapped(model=name, is_pro=None, options={"resolution": size}).params["resolution"] == size
    for word, ratio in model.resolutions.items():
        image = "https://example.com/a.png" if ratio == "adaptive" else None
        assert mapped(model=name, is_pro=None, resolution=word, image_url=image).params["ratio"] == ratio
    assert mapped(model=name, is_pro=None).params["is_pro"] is model.pro


def test_the_storyboards_words_map_to_ratio_resolution_model_and_watermark():
    assert mapped(resolution="vertical").params["ratio"] == "9:16"
    assert mapped(resolution="21:9").params["ratio"] == "21:9"
    assert mapped(quality="high").params["resolution"] == "1080p"
    assert mapped(quality="high", options={"resolution": "480p"}).params["resolution"] == "480p"  # the block wins
    assert mapped(is_pro=True).params["model"] == PRO
    assert mapped(remove_watermark=False).params["watermark"] is True
    assert mapped(remove_watermark=False, options={"watermark": False}).params["watermark"] is False


def test_2_5_with_a_first_frame_sends_adaptive_and_names_any_other_ratio_at_scan():
    v25, image = "doubao-seedance-2-5-260628", "https://example.com/first.png"
    assert mapped(model=v25, is_pro=None, image_url=image).params["ratio"] == "adaptive"  # the default resolution
    assert mapped(model=v25, is_pro=None, image_url=image, resolution="adaptive").params["ratio"] == "adaptive"
    assert mapped(model=v25, is_pro=None).params["ratio"] == "16:9"  # without a frame any ratio
    for word in ("vertical", "16:9"):
        assert problems(model=v25, is_pro=None, image_url=image, resolution=word) == [(
            "resolution", f"resolution {word!r} is not offered by {v25} with a first frame (image_url): it takes only "
                          "'adaptive', the ratio of the frame; drop resolution or set 'adaptive'")]
    assert mapped(image_url=image).params["ratio"] == "16:9"  # 2.0 takes any ratio with a frame


def test_a_last_frame_follows_the_first_in_the_content_and_needs_it():
    job = mapped(image_url="https://example.com/a.png", options={"last_frame_url": "https://example.com/z.png"})
    assert request_body(job.params, 1)["content"][1:] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}, "role": "first_frame"},
        {"type": "image_url", "image_url": {"url": "https://example.com/z.png"}, "role": "last_frame"}]
    assert problems(options={"last_frame_url": "https://example.com/z.png"}) == [
        ("seedance", "seedance.last_frame_url needs a first frame: set image_url too")]


def test_the_official_capability_table_decides_1080p_and_flex():
    """ByteDance's Seedance tutorial: 2.0 fast and mini render 480p/720p, 2.5 up to 1080p, and
    only 1.5 pro takes offline inference (service_tier flex)."""
    for name in (seedance.FAST, seedance.MINI):
        assert problems(model=name, is_pro=None, quality="high") == [
            ("quality", f"quality 'high' (1080p) is not offered by {name}; use one of 480p, 720p")]
    assert mapped(model=seedance.V25, is_pro=None, quality="high").params["resolution"] == "1080p"
    assert mapped(is_pro=True, options={"service_tier": "flex"}).params["service_tier"] == "flex"
    assert problems(options={"service_tier": "flex"}) == [
        ("seedance", f"seedance.service_tier 'flex' (offline inference) is not offered by {NORMAL}; use 'default', "
                     f"or a model that offers it: {PRO}")]


def test_the_seedance_block_sets_audio_tier_seed_and_camera():
    job = mapped(is_pro=True, options={"generate_audio": True, "service_tier": "flex", "seed": 42, "camera_fixed": True})
    assert {k: job.params[k] for k in ("generate_audio", "service_tier", "seed", "camera_fixed")} == {
        "generate_audio": True, "service_tier": "flex", "seed": 42, "camera_fixed": True}
    assert job.price_key == f"{PRO}@1248x704:5s:audio:flex"
    assert request_body(job.params, seedance.seed_of(job.params, "ledger-1-1"))["seed"] == 42


@pytest.mark.parametrize("fields, key, words", [
    ({"duration": 3}, "duration_seconds",
     f"duration 3s is not offered by {NORMAL} on the seedance provider; use one of 4, 5, …, 15"),
    ({"is_pro": True, "duration": 15}, "duration_seconds", "use one of 4, 5, …, 12"),
    ({"model": "doubao-seedance-2-5-260628", "is_pro": None, "duration": 31}, "duration_seconds", "4, 5, …, 30"),
    ({"resolution": "1280x720"}, "resolution", "resolution '1280x720' is not offered by doubao-seedance-2-0-260128 "
     "on the seedance provider; use one of 'horizontal' (16:9), 'vertical' (9:16), '16:9', '4:3', '1:1', '3:4', "
     "'9:16', '21:9', 'adaptive'"),
    ({"resolution": "adaptive"}, "resolution", "resolution 'adaptive' takes the ratio of the first frame: it needs "
     "an image_url"),
    ({"model": "doubao-seedance-2-0-fast-260128", "is_pro": None, "quality": "high"}, "quality",
     "quality 'high' (1080p) is not offered by doubao-seedance-2-0-fast-260128; use one of 480p, 720p"),
    ({"model": "doubao-seedance-2-0-mini-260615", "is_pro": None, "options": {"resolution": "1080p"}}, "seedance",
     "seedance.resolution '1080p' is not offered by doubao-seedance-2-0-mini-260615; use one of 480p, 720p"),
    ({"model": "seedance-3", "is_pro": None}, "model", "model 'seedance-3' is not offered by the seedance provider; "
     "use one of 'doubao-seedance-2-0-260128', 'doubao-seedance-1-5-pro-251215'"),
    ({"model": NORMAL, "is_pro": True}, "model", f"model '{NORMAL}' is not a Pro model, but is_pro is true"),
])
def test_values_a_model_does_not_offer_are_named_with_the_allowed_ones(fields, key, words):
    found = problems(**fields)
    assert [k for k, _ in found] == [key] and words in found[0][1], found


def test_every_value_that_is_wrong_is_named_at_once():
    found = problems(duration=40, resolution="square", quality="high", model="doubao-seedance-2-0-fast-260128",
                     is_pro=None)
    assert [k for k, _ in found] == ["duration_seconds", "resolution", "quality"]


def test_the_block_is_declared_as_json_schema_properties():
    properties = seedance.REGISTRATION.storyboard_options["properties"]
    assert sorted(properties) == ["camera_fixed", "generate_audio", "last_frame_url", "resolution", "seed",
                                  "service_tier", "watermark"]
    assert properties["service_tier"]["enum"] == ["default", "flex"]
    assert properties["resolution"]["enum"] == ["480p", "720p", "1080p"]


# --- prices ---------------------------------------------------------------------------------------

BUILT_IN = TokenTariff(seedance.DEFAULT_PRICES)


@pytest.mark.parametrize("key, fen", [
    # 1248 x 704 x (24 fps x 5 s + the first frame) / 1024 = 103,818 tokens
    (f"{NORMAL}@1248x704:5s:silent:default", 478),  # x ¥46/M = ¥4.776
    (f"{NORMAL}@1248x704:5s:silent:flex", 239),  # half: ¥2.388
    (f"{NORMAL}@1248x704:5s:audio:default", 478),  # 2.0 prices audio alike
    (f"{PRO}@1248x704:5s:audio:default", 166),  # ¥16/M: ¥1.661
    (f"{PRO}@1248x704:5s:silent:default", 83),  # ¥8/M: ¥0.831
    (f"{PRO}@1248x704:5s:silent:flex", 42),
    ("doubao-seedance-2-0-fast-260128@1248x704:5s:silent:default", 384),  # ¥37/M
    ("doubao-seedance-2-0-mini-260615@1248x704:5s:silent:default", 239),  # ¥23/M
    ("doubao-seedance-2-5-260628@1248x704:30s:silent:default", 4330),  # 618,618 tokens x ¥70/M
    (f"{NORMAL}@1920x1088:5s:silent:default", 1135),  # 246,840 tokens: the facts' own example (121 frames)
    (f"{NORMAL}@864x480:12s:silent:default", 538),  # 117,045 tokens
])
def test_each_price_key_is_priced_by_its_tokens(key, fen):
    assert BUILT_IN.price(key) == fen


def test_the_price_key_holds_everything_the_price_depends_on():
    keys = {mapped(**fields).price_key for fields in (
        {}, {"duration": 6}, {"resolution": "vertical"}, {"resolution": "1:1"}, {"quality": "high"},
        {"is_pro": True, "options": {"service_tier": "flex"}}, {"is_pro": True},
        {"is_pro": True, "options": {"generate_audio": True}})}
    assert len(keys) == 8
    # adaptive is priced as the largest picture of its resolution (21:9 at 720p): never below the bill
    adaptive = mapped(resolution="adaptive", image_url="https://example.com/a.png")
    assert adaptive.price_key == f"{NORMAL}@1504x640:5s:silent:default"


def test_flex_halves_and_audio_doubles_1_5_pro():
    plain, flex = mapped(is_pro=True), mapped(is_pro=True, options={"service_tier": "flex"})
    assert (BUILT_IN.price(plain.price_key), BUILT_IN.price(flex.price_key)) == (83, 42)  # half, rounded up
    silent, audio = mapped(is_pro=True), mapped(is_pro=True, options={"generate_audio": True})
    assert (BUILT_IN.price(silent.price_key), BUILT_IN.price(audio.price_key)) == (83, 166)


def test_seedance_prices_override_the_built_in_rates(tmp_path):
    settings = load_settings(tmp_path, {"SEEDANCE_PRICES": f"{NORMAL}=50, {PRO}.silent=10"})
    prices = tariff(settings)
    assert prices.price(f"{NORMAL}@1248x704:5s:silent:default") == 519  # 103,818 x ¥50/M
    assert prices.price(f"{PRO}@1248x704:5s:silent:default") == 104
    assert prices.price(f"{PRO}@1248x704:5s:audio:default") == 166  # untouched
    assert "SEEDANCE_PRICES" in prices.describe() and prices.currency == "CNY"
    assert prices.cost(NORMAL, 103_818, False, "default") == 519  # usage tokens, half up


def test_the_key_is_a_secret_and_the_base_url_has_its_public_default(tmp_path):
    settings = load_settings(tmp_path, {"ARK_API_KEY": "ark-0123456789abcdef0123"})
    assert settings.option("ark_base_url") == "https://ark.cn-beijing.volces.com/api/v3"
    assert "ark-0123456789abcdef0123" in settings.api_keys
    assert "0123456789abcdef0123" not in repr(settings)


# --- the status and error tables --------------------------------------------------------------------


def task(**fields) -> RemoteTask:
    client = Seedance("https://ark.example/api/v3", "k")
    return client._task({"id": "cgt-1", "model": NORMAL, "service_tier": "default", "generate_audio": False,
                         "created_at": 1_700_000_000, **fields})


@pytest.mark.parametrize("word, status", [("queued", "pending"), ("running", "processing"), ("succeeded", "completed"),
                                          ("failed", "failed"), ("expired", "failed"), ("cancelled", "failed")])
def test_every_status_word_is_one_of_the_ledgers_four(word, status):
    assert task(status=word).status == status


def test_a_finished_task_says_its_video_its_cost_by_usage_and_its_failure_verbatim():
    done = task(status="succeeded", content={"video_url": "https://tos.example/v.mp4"},
                usage={"completion_tokens": 103_818, "total_tokens": 103_818}, updated_at=1_700_000_060)
    assert (done.video_url, done.cost, done.progress) == ("https://tos.example/v.mp4", 478, 100)
    assert done.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    failed = task(status="failed", error={"code": "OutputVideoSensitiveContentDetected", "message": "输出视频可能包含敏感信息"})
    assert (failed.error_msg, failed.cost) == ("输出视频可能包含敏感信息 (OutputVideoSensitiveContentDetected)", None)
    assert "expired" in task(status="expired").error_msg
    # a 1.5 pro task that does not say whether it had audio keeps its estimate: its rate is unknown
    assert task(status="succeeded", model=PRO, generate_audio=None, usage={"completion_tokens": 9}).cost is None


def test_an_unknown_status_is_not_finished_and_logged_once(caplog):
    with caplog.at_level(logging.WARNING, logger="ledger.providers.seedance"):
        first, again = task(status="rendering-unit"), task(status="rendering-unit")
    assert (first.status, first.is_terminal, again.is_terminal) == ("rendering-unit", False, False)
    assert sum("unknown status 'rendering-unit'" in r.getMessage() for r in caplog.records) == 1


def answer(status: int, code: str = "", message: str = "the API says so", body: Optional[bytes] = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body if body is not None else json.dumps(
        {"error": {"code": code, "message": message, "param": "", "type": "BadRequest"}}).encode()
    return resp


@pytest.mark.parametrize("status, code, kind", [
    (401, "AuthenticationError", AuthError),
    (403, "AccountOverdueError", InsufficientBalance),
    (403, "OperationDenied.ServiceOverdue", InsufficientBalance),
    (429, "SetLimitExceeded", InsufficientBalance),
    (429, "RateLimitExceeded.EndpointRPMExceeded", RateLimited),
    (429, "QuotaExceeded", RateLimited),
    (429, "ServerOverloaded", RateLimited),
    (400, "InputTextSensitiveContentDetected", ContentRefused),
    (400, "InputImageSensitiveContentDetected.PrivacyInformation", ContentRefused),
    (400, "InputTextRiskDetection", ContentRefused),
    (400, "InputImageRiskDetection", ContentRefused),
    (400, "OutputVideoSensitiveContentDetected", ContentRefused),
    (400, "OutputVideoSensitiveContentDetected.PolicyViolation", ContentRefused),
    (400, "InputVideoSensitiveContentDetected.PrivacyInformation", ContentRefused),
    (400, "SensitiveContentDetected.Violence", ContentRefused),
    (400, "InvalidParameter", BadParameters),
    (404, "ModelNotOpen", BadParameters),
    (500, "InternalServiceError", TransientError),
    (502, "", TransientError),
    (400, "SomethingNew", BadParameters),
    (403, "AccessDenied", ApiError),
])
def test_every_error_code_maps_to_one_outcome(status, code, kind):
    client = Seedance("https://ark.example/api/v3", "k")
    with pytest.raises(ApiError) as raised:
        client._unwrap("POST", seedance.TASKS, answer(status, code))
    assert type(raised.value) is kind
    if kind is TransientError:
        assert raised.value.maybe_created  # a create that failed this way may have been made
    if kind is ContentRefused:
        assert str(raised.value).startswith("the API says so (")  # the API's words, verbatim


def test_a_404_for_a_task_is_task_not_found_and_a_failed_tasks_error_is_not_an_error_of_the_call():
    client = Seedance("https://ark.example/api/v3", "k")
    with pytest.raises(TaskNotFound):
        client._unwrap("GET", f"{seedance.TASKS}/cgt-1", answer(404, "ResourceNotFound"))
    body = {"id": "cgt-1", "status": "failed", "error": {"code": "InternalServiceError", "message": "x"}}
    assert client._unwrap("GET", f"{seedance.TASKS}/cgt-1", answer(200, body=json.dumps(body).encode())) == body


# --- finding a lost create by its seed --------------------------------------------------------------

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=timezone.utc)
WINDOW = (NOW - timedelta(minutes=2), NOW + timedelta(minutes=2))


def listed(seed: Optional[int], minutes: float = 0, model: str = NORMAL, number: int = 0) -> RemoteTask:
    raw = {"id": f"cgt-{seed}-{minutes}-{number}", "model": model, "status": "running"}
    if seed is not None:
        raw["seed"] = seed
    return RemoteTask(task_id=raw["id"], status="processing", progress=0, prompt=None, video_url=None, error_msg=None,
                      cost=None, created_at=NOW + timedelta(minutes=minutes), completed_at=None, raw=raw)


def lookup(tasks: List[RemoteTask], seed: int = 7, *, user_seed: bool = False, page_size: int = 2):
    pages = [tasks[i:i + page_size] for i in range(0, len(tasks), page_size)] or [[]]
    read: List[int] = []

    def page(cursor: Optional[str]) -> TaskPage:
        number = int(cursor or 0)
        read.append(number)
        return TaskPage(pages[number], str(number + 1) if number + 1 < len(pages) else None)

    return SeedLookup(seed, WINDOW, lambda t: t.raw.get("model") == NORMAL, user_seed=user_seed).run(page), read


def test_the_derived_seed_finds_its_task_and_stops_past_the_window():
    found, read = lookup([listed(1, 1), listed(7, 0), listed(2, -1), listed(3, -10), listed(4, -20), listed(5, -30)])
    assert [t.raw["seed"] for t in found.tasks] == [7] and found.covered and read == [0, 1]


def test_a_list_without_seeds_cannot_prove_anything():
    found, _ = lookup([listed(None, 1), listed(None, -10)])
    assert (found.tasks, found.covered) == ([], False) and "without their seed" in found.reason
    assert found.final  # reading it again shows the same: parked at once


def test_nothing_with_the_seed_in_a_covered_window_means_not_created():
    found, _ = lookup([listed(1, 0), listed(7, 0, model="doubao-seedance-2-5-260628"), listed(2, -10)])
    assert (found.tasks, found.covered) == ([], True)


def test_a_storyboard_seed_two_tasks_share_is_left_unresolved():
    found, _ = lookup([listed(42, 1), listed(42, 0, number=1)], seed=42, user_seed=True)
    assert (found.tasks, found.covered, found.final) == ([], False, True) and "seed 42" in found.reason
    one, _ = lookup([listed(42, 1), listed(3, 0)], seed=42, user_seed=True)
    assert len(one.tasks) == 1 and one.covered


def test_a_list_oldest_first_is_read_to_its_end():
    found, read = lookup([listed(5, -30), listed(4, -20), listed(3, -10), listed(7, 0), listed(1, 1)])
    assert [t.raw["seed"] for t in found.tasks] == [7] and found.covered and read == [0, 1, 2]


def test_the_attempt_seed_is_stable_and_in_range():
    seeds = {attempt_seed(f"ledger-{job}-1700000000000") for job in range(2000)}
    assert len(seeds) == 2000 and all(0 <= s < 2 ** 31 - 1 for s in seeds)
    assert attempt_seed("ledger-1-5") == attempt_seed("ledger-1-5")
