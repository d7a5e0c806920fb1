"""The wan provider's rules and tables, pure: every model's allowed values, each mismatch naming the
allowed ones, the storyboard's "wan" block, the price of each price key, the status and error tables."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ledger.errors import (AuthError, BadParameters, ConfigError, ContentRefused, InsufficientBalance, RateLimited,
                           TaskNotFound, TransientError)
from ledger.providers.base import Mapped, Mismatch, Request
from ledger.providers.wan import (DEFAULT_PRICES, LEGACY, LEGACY_SIZES, MODELS, RULES, STATUSES, _error_kind, _status,
                                  request_body,
                                  tariff)
from ledger.settings import Settings, load_settings

IMAGE = "https://example.com/first.png"


def mapped(prompt: str = "a fox", **fields) -> Mapped:
    result = RULES.map(request(prompt, **fields))
    assert isinstance(result, Mapped), result
    return result


def request(prompt: str = "a fox", **fields) -> Request:
    return Request(prompt=prompt, model=fields.get("model"), is_pro=fields.get("is_pro"),
                   duration=fields.get("duration"), resolution=fields.get("resolution", "horizontal"),
                   quality=fields.get("quality", "normal"), remove_watermark=fields.get("remove_watermark", True),
                   image_url=fields.get("image_url"), options=fields.get("options", {}))


def test_a_prompt_alone_is_a_five_second_720p_16_9_wan27_video_without_watermark():
    result = mapped()
    assert result.params == {"provider": "wan", "model": "wan2.7-t2v", "prompt": "a fox", "duration": 5,
                             "resolution": "720P", "ratio": "16:9", "is_pro": False, "watermark": False}
    assert (result.is_pro, result.price_key) == (False, "wan2.7-t2v@720P:5")
    assert request_body(result.params) == {"model": "wan2.7-t2v", "input": {"prompt": "a fox"},
                                           "parameters": {"resolution": "720P", "ratio": "16:9", "duration": 5,
                                                          "watermark": False}}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_takes_each_of_its_tiers_orientations_and_durations(name):
    model = MODELS[name]
    image = IMAGE if model.needs_image else None
    for tier in model.tiers:
        for orientation, ratio in (("horizontal", "16:9"), ("vertical", "9:16")):
            for seconds in model.durations:
                params = mapped(model=name, image_url=image, resolution=orientation, duration=seconds,
                                options={"resolution": tier}).params
                assert (params["model"], params["resolution"], params["duration"]) == (name, tier, seconds)
                assert params.get("ratio") == (None if image else ratio)
                shown = LEGACY_SIZES[(tier, ratio)].replace("*", "x")  # a storyboard size names tier and ratio
                again = mapped(model=name, image_url=image, resolution=shown, duration=seconds).params
                assert (again["resolution"], again.get("ratio")) == (tier, None if image else ratio)


def test_wan27_takes_every_whole_second_from_2_to_15_and_wan26_5_10_or_15():
    assert [mapped(duration=s).params["duration"] for s in range(2, 16)] == list(range(2, 16))
    assert [mapped(model="wan2.6-t2v", duration=s).params["duration"] for s in (5, 10, 15)] == [5, 10, 15]
    assert RULES.map(request(model="wan2.6-t2v", duration=7)) == [Mismatch(
        "duration_seconds", "duration 7s is not offered by wan2.6-t2v on the wan provider; use one of 5, 10, 15")]


def test_quality_picks_the_tier_the_block_the_ratio_and_is_pro_the_pro_model():
    assert request_body(mapped(quality="high").params)["parameters"]["resolution"] == "1080P"
    assert request_body(mapped(quality="high", resolution="vertical").params)["parameters"]["ratio"] == "9:16"
    for ratio in ("16:9", "9:16", "1:1", "4:3", "3:4"):
        assert request_body(mapped(options={"ratio": ratio}).params)["parameters"]["ratio"] == ratio
    assert request_body(mapped(resolution="960x960").params)["parameters"] == {
        "resolution": "720P", "ratio": "1:1", "duration": 5, "watermark": False}
    pro = mapped(is_pro=True)
    assert (pro.params["model"], pro.is_pro, pro.price_key) == ("wan3.0-video", True, "wan3.0-video@720P:5")


@pytest.mark.parametrize("model, sent", [(None, "wan2.7-i2v"), ("wan2.7-t2v", "wan2.7-i2v"),
                                         ("wan2.7-i2v", "wan2.7-i2v"), ("happyhorse-1.1-t2v", "happyhorse-1.1-i2v"),
                                         ("wan3.0-video", "wan3.0-video")])
def test_an_image_url_is_the_media_first_frame_of_the_new_protocols_image_to_video_model(model, sent):
    result = mapped(model=model, image_url=IMAGE)
    assert result.params["model"] == sent and result.params["image_url"] == IMAGE
    body = request_body(result.params)
    assert body["input"] == {"prompt": "a fox", "media": [{"type": "first_frame", "url": IMAGE}]}
    assert body["parameters"] == {"resolution": "720P", "duration": 5, "watermark": False}  # the frame sets the ratio


def test_wan26_speaks_the_legacy_protocol_img_url_and_size():
    assert MODELS["wan2.6-t2v"].protocol == MODELS["wan2.6-i2v"].protocol == LEGACY
    text = request_body(mapped(model="wan2.6-t2v", resolution="vertical", quality="high").params)
    assert text == {"model": "wan2.6-t2v", "input": {"prompt": "a fox"},
                    "parameters": {"size": "1080*1920", "duration": 5, "watermark": False}}
    framed = request_body(mapped(model="wan2.6-t2v", image_url=IMAGE).params)
    assert framed == {"model": "wan2.6-i2v", "input": {"prompt": "a fox", "img_url": IMAGE},
                      "parameters": {"resolution": "720P", "duration": 5, "watermark": False}}


def test_parameters_stored_before_the_ratio_was_kept_are_sent_in_the_new_protocol():
    stored = {"provider": "wan", "model": "wan2.7-t2v", "prompt": "old", "duration": 5, "resolution": "1080P",
              "size": "1080*1920", "is_pro": False, "watermark": False}
    assert request_body(stored)["parameters"] == {"resolution": "1080P", "ratio": "9:16", "duration": 5,
                                                  "watermark": False}


def test_the_wan_block_adds_its_options_and_the_segment_says_the_watermark():
    result = mapped(options={"prompt_extend": True, "seed": 42, "negative_prompt": "text", "watermark": True,
                             "resolution": "1080P"})
    assert request_body(result.params) == {
        "model": "wan2.7-t2v", "input": {"prompt": "a fox", "negative_prompt": "text"},
        "parameters": {"resolution": "1080P", "ratio": "16:9", "duration": 5, "watermark": True,
                       "prompt_extend": True, "seed": 42}}
    assert mapped(remove_watermark=False).params["watermark"] is True


SIZES_27 = ("'horizontal', 'vertical', '1280x720', '720x1280', '960x960', '1088x832', '832x1088', '1920x1080', "
            "'1080x1920', '1440x1440', '1632x1248', '1248x1632'")


@pytest.mark.parametrize("fields, expected", [
    ({"duration": 1}, [Mismatch("duration_seconds", "duration 1s is not offered by wan2.7-t2v on the wan provider; "
                                                    "use one of 2 to 15")]),
    ({"resolution": "832x480"}, [Mismatch("resolution", "resolution '832x480' is not offered by wan2.7-t2v on the wan "
                                                        f"provider; use one of {SIZES_27}")]),
    ({"resolution": "square"}, [Mismatch("resolution", "resolution 'square' is not offered by wan2.7-t2v on the wan "
                                                       f"provider; use one of {SIZES_27}")]),
    ({"options": {"resolution": "480P"}}, [Mismatch("wan", "wan.resolution '480P' is not offered by wan2.7-t2v; use "
                                                           "one of '720P', '1080P'")]),
    ({"resolution": "1920x1080", "options": {"resolution": "720P"}},
     [Mismatch("resolution", "resolution '1920x1080' is 1080P, but wan.resolution is 720P; drop one of the two")]),
    ({"resolution": "1920x1080", "options": {"ratio": "1:1"}},
     [Mismatch("resolution", "resolution '1920x1080' is 16:9, but wan.ratio is 1:1; drop one of the two")]),
    ({"image_url": IMAGE, "options": {"ratio": "1:1"}},
     [Mismatch("wan", "wan.ratio '1:1': the first frame (image_url) sets the ratio of wan2.7-i2v's video; drop "
                      "wan.ratio")]),
    ({"model": "happyhorse-1.1-i2v"}, [Mismatch("model", "model 'happyhorse-1.1-i2v' makes a video from a first "
                                                         "frame: give the segment an image_url, or use a text-to-video "
                                                         "model ('wan2.7-t2v')")]),
    ({"model": "wan3.0-video", "is_pro": False}, [Mismatch("model", "model 'wan3.0-video' is the Pro model, but "
                                                                    "is_pro is false; drop one of the two")]),
    ({"model": "wan2.5-t2v"}, [Mismatch("model", "model 'wan2.5-t2v' is not offered by the wan provider; use one of "
                                                 "'wan2.6-t2v', 'wan2.6-i2v', 'wan2.7-t2v', 'wan2.7-i2v', "
                                                 "'wan3.0-video', 'happyhorse-1.1-t2v', 'happyhorse-1.1-i2v'")]),
    ({"duration": 16, "resolution": "640x480"}, [
        Mismatch("duration_seconds", "duration 16s is not offered by wan2.7-t2v on the wan provider; use one of 2 to "
                                     "15"),
        Mismatch("resolution", "resolution '640x480' is not offered by wan2.7-t2v on the wan provider; use one of "
                               f"{SIZES_27}")]),
])
def test_values_a_model_does_not_take_are_mismatches_naming_the_allowed_ones(fields, expected):
    assert RULES.map(request(**fields)) == expected


def test_block_values_of_the_wrong_type_are_left_to_the_schemas_error():
    result = mapped(options={"seed": True, "prompt_extend": "yes", "resolution": "4K"})
    assert "seed" not in result.params and "prompt_extend" not in result.params
    assert result.params["resolution"] == "720P"


def test_the_storyboard_block_is_checked_by_the_providers_schema(tmp_path: Path):
    from ledger.storyboard import Layout, read_storyboard

    path = tmp_path / "input" / "storyboard_w.json"
    path.parent.mkdir()
    path.write_text('{"defaults": {"provider": "wan", "wan": {"seed": -1}}, "segments": [{"segment_index": 1, '
                    '"prompt_text": "a", "wan": {"fps": 24, "resolution": "4K"}}]}', encoding="utf-8")
    parsed = read_storyboard(path, Settings(), Layout(tmp_path, tmp_path / "input", tmp_path / "output"))
    problems = " | ".join(p.message for p in parsed.problems)
    assert not parsed.valid
    assert problems == ("-1 is less than the minimum of 0 | unknown option 'fps' for the wan provider (it takes "
                        "'negative_prompt', 'prompt_extend', 'ratio', 'resolution', 'seed', 'watermark') | '4K' is not "
                        "allowed here; use one of '480P', '720P', '1080P'")


@pytest.mark.parametrize("key, fen", [
    ("wan2.7-t2v@720P:5", 300), ("wan2.7-i2v@720P:10", 600), ("wan2.7-t2v@1080P:5", 500), ("wan2.7-i2v@1080P:10", 1000),
    ("wan3.0-video@480P:5", 150), ("wan3.0-video@720P:10", 600), ("wan3.0-video@1080P:5", 600),
    ("happyhorse-1.1-t2v@480P:10", 450), ("happyhorse-1.1-i2v@720P:5", 450), ("happyhorse-1.1-t2v@1080P:10", 1200)])
def test_the_price_of_each_price_key_is_fen_per_second_times_seconds(key, fen):
    assert tariff(Settings()).price(key) == fen
    assert tariff(Settings()).currency == "CNY"


def test_wan_prices_override_a_model_or_its_family_and_wrong_entries_are_named(tmp_path: Path):
    settings = load_settings(tmp_path, {"WAN_PRICES": "wan2.7@720P=50, wan2.7-i2v@720P=70, wan3.0@480P=25.5"})
    prices = tariff(settings)
    assert (prices.price("wan2.7-t2v@720P:10"), prices.price("wan2.7-i2v@720P:10")) == (500, 700)
    assert prices.price("wan3.0-video@480P:5") == 128  # 127.5 fen, rounded
    assert "wan3.0@480P ¥0.255/s" in prices.describe() and "with WAN_PRICES" in prices.describe()
    for wrong, said in [("wan2.7=60", "expected MODEL@RESOLUTION=FEN_PER_SECOND"),
                        ("wan9@720P=60", "unknown model 'wan9'"), ("wan2.7@480P=60", "wan2.7 has no 480P")]:
        with pytest.raises(ConfigError, match=said):
            load_settings(tmp_path, {"WAN_PRICES": wrong})
    assert set(DEFAULT_PRICES) == {f"{m.family}@{tier}" for m in MODELS.values() for tier in m.tiers}


def test_every_status_word_has_its_outcome_and_an_unknown_one_is_not_finished_and_said_once(caplog):
    assert STATUSES == {"PENDING": "pending", "RUNNING": "processing", "SUCCEEDED": "completed", "FAILED": "failed",
                        "CANCELED": "failed", "UNKNOWN": "gone"}
    assert [_status(word) for word in ("pending", " RUNNING ", "SUCCEEDED", "FAILED", "CANCELED")] == [
        "pending", "processing", "completed", "failed", "failed"]
    with caplog.at_level(logging.WARNING, logger="ledger.providers.wan"):
        assert _status("SUSPENDED_FOR_TEST") == _status("SUSPENDED_FOR_TEST") == "suspended_for_test"
    assert [r.getMessage() for r in caplog.records].count(
        "the wan API answered an unknown status 'SUSPENDED_FOR_TEST'; taken as not finished and polled again") == 1


@pytest.mark.parametrize("method, path, code, status, kind", [
    ("POST", "/x", "InvalidApiKey", 401, AuthError),
    ("POST", "/x", "Arrearage", 400, InsufficientBalance),
    ("POST", "/x", "Arrearage", 403, InsufficientBalance),
    ("POST", "/x", "Throttling.RateQuota", 429, RateLimited),
    ("POST", "/x", "Throttling.AllocationQuota", 429, RateLimited),
    ("POST", "/x", "Throttling", 429, RateLimited),
    ("POST", "/x", "DataInspectionFailed", 400, ContentRefused),
    ("POST", "/x", "InvalidParameter", 400, BadParameters),
    ("POST", "/x", "InvalidParameter.NotSupported", 400, BadParameters),
    ("POST", "/x", "AccessDenied", 403, BadParameters),
    ("POST", "/x", "InternalError", 500, TransientError),
    ("POST", "/x", "InternalError.Timeout", 500, TransientError),
    ("POST", "/x", "", 502, TransientError),
    ("GET", "/tasks/abc", "", 200, TransientError),  # a 2xx that is no answer
    ("GET", "/tasks/abc", "NotFound", 404, TaskNotFound),
    ("GET", "/tasks", "NotFound", 404, None),  # a wrong base URL, not a lost task
    ("POST", "/x", "SomethingNew", 409, None),
])
def test_every_error_code_and_status_has_its_outcome(method, path, code, status, kind):
    assert _error_kind(method, path, code, status) is kind


def test_the_demo_storyboard_is_valid_for_wan_with_default_settings():
    from ledger.storyboard import Layout, read_storyboard

    repo = Path(__file__).resolve().parents[2]
    parsed = read_storyboard(repo / "docs" / "providers" / "storyboard_wan.json", Settings(provider="wan"),
                             Layout(repo, repo / "input", repo / "output"))
    assert parsed.valid and parsed.warnings == [], (parsed.problems, parsed.warnings)
    assert [(job.provider, job.price_key) for job in parsed.jobs] == [
        ("wan", "wan2.7-t2v@720P:5"), ("wan", "wan2.7-i2v@720P:10"), ("wan", "wan2.7-t2v@1080P:5")]
