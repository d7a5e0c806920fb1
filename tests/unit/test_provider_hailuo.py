"""The hailuo provider's pure parts: every value the MiniMax models take, each price, the status
and error tables, and how an answer is read (responses built in memory, no network)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from ledger.client import RemoteTask
from ledger.errors import (ApiError, AuthError, BadParameters, ConfigError, ContentRefused, InsufficientBalance,
                           RateLimited, RemoteTaskFailed, TaskNotFound, TransientError)
from ledger.providers import RULES, Mapped, Mismatch, Request
from ledger.providers.hailuo import ERRORS, MODELS, STATUSES, Hailuo, request_body, tariff
from ledger.settings import load_settings

IMAGE = "https://example.com/first.jpg"
KEY = "sk-api-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"


def request(**fields: Any) -> Request:
    values = dict(prompt="a fox", model=None, is_pro=False, duration=None, resolution="horizontal",
                  quality="normal", remove_watermark=True, image_url=None)
    values.update(fields)
    return Request(**values)


def mapped(**fields: Any) -> Mapped:
    result = RULES["hailuo"].map(request(**fields))
    assert isinstance(result, Mapped), result
    return result


def mismatches(**fields: Any) -> list:
    result = RULES["hailuo"].map(request(**fields))
    assert isinstance(result, list), result
    return result


def test_a_segment_that_says_nothing_is_a_six_second_h3_video_at_768p_16_9():
    job = mapped()
    assert job.params == {"provider": "hailuo", "model": "MiniMax-H3", "prompt": "a fox", "duration": 6,
                          "resolution": "768P", "ratio": "16:9"}
    assert (job.is_pro, job.price_key) == (False, "MiniMax-H3@768P:6")
    assert request_body(job.params) == {"model": "MiniMax-H3", "content": [{"type": "text", "text": "a fox"}],
                                        "duration": 6, "resolution": "768P", "ratio": "16:9"}


@pytest.mark.parametrize("duration", range(4, 16))
@pytest.mark.parametrize("fields, resolution", [
    ({}, "768P"), ({"is_pro": True}, "2K"), ({"quality": "high"}, "2K"), ({"resolution": "2K"}, "2K"),
    ({"options": {"resolution": "2K"}}, "2K")])
def test_h3_takes_every_second_from_4_to_15_at_both_resolutions(duration, fields, resolution):
    job = mapped(duration=duration, **fields)
    assert (job.params["duration"], job.params["resolution"], job.is_pro) == (duration, resolution, resolution == "2K")
    assert job.price_key == f"MiniMax-H3@{resolution}:{duration}"


@pytest.mark.parametrize("fields, ratio", [
    ({"resolution": "horizontal"}, "16:9"), ({"resolution": "vertical"}, "9:16"), ({"resolution": "16:9"}, "16:9"),
    ({"resolution": "9:16"}, "9:16"), ({"resolution": "1:1"}, "1:1"), ({"resolution": "768P"}, "16:9"),
    ({"resolution": "vertical", "options": {"ratio": "1:1"}}, "1:1"),  # the block is the most specific
])
def test_h3_takes_its_ratio_from_the_orientation_a_ratio_or_the_block(fields, ratio):
    assert mapped(**fields).params["ratio"] == ratio


@pytest.mark.parametrize("ratio", ["4:3", "3:4", "21:9"])
def test_h3_takes_every_documented_ratio_from_text(ratio):
    assert mapped(resolution=ratio).params["ratio"] == mapped(options={"ratio": ratio}).params["ratio"] == ratio


@pytest.mark.parametrize("resolution", ["horizontal", "vertical"])
def test_h3_from_a_first_frame_sends_ratio_adaptive_the_frames_shape(resolution):
    """MiniMax's CLI sends ``adaptive`` whenever a frame is given; a text-only create must name a ratio."""
    assert mapped(image_url=IMAGE, resolution=resolution).params["ratio"] == "adaptive"


def test_a_listed_task_of_an_adaptive_create_matches_whatever_ratio_it_shows():
    params = mapped(image_url=IMAGE).params
    listed = RemoteTask("1", "pending", 0, "a fox", None, None, None, None, None,
                        raw={"model": "MiniMax-H3", "duration": 6, "resolution": "768P", "ratio": "9:16"})
    assert client().same_request(listed, params)


def test_the_first_frame_goes_as_a_content_item_on_v2_and_first_frame_image_on_v1():
    v2 = mapped(image_url=IMAGE)
    assert request_body(v2.params)["content"][1] == {"type": "image_url", "image_url": {"url": IMAGE},
                                                     "role": "first_frame"}
    v1 = mapped(model="MiniMax-Hailuo-2.3", is_pro=None, image_url=IMAGE, options={"prompt_optimizer": False})
    assert v1.params == {"provider": "hailuo", "model": "MiniMax-Hailuo-2.3", "prompt": "a fox", "duration": 6,
                         "resolution": "768P", "image_url": IMAGE, "prompt_optimizer": False}
    assert request_body(v1.params) == {"model": "MiniMax-Hailuo-2.3", "prompt": "a fox", "duration": 6,
                                       "resolution": "768P", "first_frame_image": IMAGE, "prompt_optimizer": False}


@pytest.mark.parametrize("model", ["MiniMax-Hailuo-2.3", "MiniMax-Hailuo-2.3-Fast", "MiniMax-Hailuo-02"])
@pytest.mark.parametrize("fields, resolution, duration", [
    ({}, "768P", 6), ({"duration": 10}, "768P", 10), ({"is_pro": True}, "1080P", 6), ({"quality": "high"}, "1080P", 6),
    ({"resolution": "1080P"}, "1080P", 6), ({"options": {"resolution": "1080P"}}, "1080P", 6),
    ({"resolution": "vertical"}, "768P", 6),  # with a first frame, whose shape the video takes
])
def test_the_v1_models_take_768p_for_6_or_10_seconds_and_1080p_for_6(model, fields, resolution, duration):
    job = mapped(model=model, image_url=IMAGE, **fields)
    assert (job.params["resolution"], job.params["duration"], job.is_pro) == (resolution, duration,
                                                                            resolution == "1080P")
    assert "ratio" not in job.params and job.price_key == f"{model}@{resolution}:{duration}"


@pytest.mark.parametrize("fields, expected", [
    ({"model": "MiniMax-Hailuo-01"},
     Mismatch("model", "model 'MiniMax-Hailuo-01' is not offered by the hailuo provider; use one of 'MiniMax-H3', "
                       "'MiniMax-Hailuo-2.3', 'MiniMax-Hailuo-2.3-Fast', 'MiniMax-Hailuo-02'")),
    ({"duration": 20}, Mismatch("duration_seconds", "duration 20s is not offered by MiniMax-H3 at 768P on the hailuo "
                                                    "provider; use one of 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15")),
    ({"resolution": "5:4"}, Mismatch("resolution", "resolution '5:4' is not offered by MiniMax-H3 on the hailuo "
                                                   "provider; use one of 'horizontal', 'vertical', '16:9', '9:16', "
                                                   "'1:1', '4:3', '3:4', '21:9', '768P', '2K'")),
    ({"resolution": "1:1", "image_url": IMAGE},
     Mismatch("resolution", "resolution '1:1' is not offered by MiniMax-H3 on the hailuo provider; use one of "
                            "'horizontal', 'vertical', '768P', '2K'")),
    ({"options": {"ratio": "1:1"}, "image_url": IMAGE},
     Mismatch("hailuo", "hailuo.ratio is not taken by MiniMax-H3 with a first frame (the video takes the frame's "
                        "shape); drop it")),
    ({"model": "MiniMax-Hailuo-2.3", "duration": 8},
     Mismatch("duration_seconds", "duration 8s is not offered by MiniMax-Hailuo-2.3 at 768P on the hailuo provider; "
                                  "use one of 6, 10")),
    ({"model": "MiniMax-Hailuo-2.3", "is_pro": True, "duration": 10},
     Mismatch("duration_seconds", "duration 10s is not offered by MiniMax-Hailuo-2.3 at 1080P on the hailuo provider; "
                                  "use one of 6 (10s is offered at 768P)")),
    ({"model": "MiniMax-Hailuo-2.3", "resolution": "vertical"},
     Mismatch("resolution", "resolution 'vertical' is not offered by MiniMax-Hailuo-2.3 on the hailuo provider; use "
                            "one of 'horizontal', '768P', '1080P' ('vertical' only with an image_url: its shape)")),
    ({"model": "MiniMax-Hailuo-2.3-Fast"},
     Mismatch("image_url", "MiniMax-Hailuo-2.3-Fast makes videos from a first frame only: give an image_url, or use "
                           "MiniMax-Hailuo-2.3")),
    ({"options": {"resolution": "1080P"}},
     Mismatch("hailuo", "hailuo.resolution '1080P' is not offered by MiniMax-H3; use one of '768P', '2K'")),
    ({"options": {"ratio": "adaptive"}},
     Mismatch("hailuo", "hailuo.ratio 'adaptive' is not offered by MiniMax-H3; use one of '16:9', '9:16', '1:1', "
                        "'4:3', '3:4', '21:9'")),
    ({"options": {"prompt_optimizer": True}},
     Mismatch("hailuo", "hailuo.prompt_optimizer is not taken by MiniMax-H3; it is for MiniMax-Hailuo-2.3, "
                        "MiniMax-Hailuo-2.3-Fast, MiniMax-Hailuo-02")),
    ({"model": "MiniMax-Hailuo-2.3", "options": {"ratio": "9:16"}},
     Mismatch("hailuo", "hailuo.ratio is not taken by MiniMax-Hailuo-2.3 (a v1 model); drop it")),
])
def test_a_value_the_model_does_not_offer_is_named_with_the_allowed_ones(fields, expected):
    assert mismatches(**fields) == [expected]


def test_every_problem_of_a_segment_is_reported_at_once():
    found = mismatches(model="MiniMax-Hailuo-2.3-Fast", duration=15, options={"ratio": "1:1"})
    assert [m.key for m in found] == ["duration_seconds", "hailuo", "image_url"]


@pytest.mark.parametrize("key, fen", [
    ("MiniMax-H3@768P:4", 200), ("MiniMax-H3@768P:6", 300), ("MiniMax-H3@768P:15", 750),  # ¥0.50 a second
    ("MiniMax-H3@2K:4", 320), ("MiniMax-H3@2K:6", 480), ("MiniMax-H3@2K:15", 1200),  # ¥0.80 a second
    ("MiniMax-Hailuo-2.3@768P:6", 200), ("MiniMax-Hailuo-2.3@768P:10", 400), ("MiniMax-Hailuo-2.3@1080P:6", 350),
    ("MiniMax-Hailuo-2.3-Fast@768P:6", 200), ("MiniMax-Hailuo-2.3-Fast@768P:10", 400),
    ("MiniMax-Hailuo-2.3-Fast@1080P:6", 350),
])
def test_h3_is_priced_by_the_second_and_hailuo_2_3_by_the_video(tmp_path: Path, key, fen):
    prices = tariff(load_settings(tmp_path, {}))
    assert prices.currency == "CNY" and prices.price(key) == fen


def test_every_price_key_the_rules_make_has_a_price(tmp_path: Path):
    prices = tariff(load_settings(tmp_path, {}))
    for model in MODELS.values():
        for resolution, seconds in model.durations.items():
            for duration in seconds:
                job = mapped(model=model.name, image_url=IMAGE, duration=duration, options={"resolution": resolution})
                assert prices.price(job.price_key) > 0


def test_hailuo_prices_overrides_the_list_and_refuses_a_price_it_does_not_have(tmp_path: Path):
    custom = tariff(load_settings(tmp_path, {"HAILUO_PRICES": "MiniMax-H3-768P=45.5, MiniMax-Hailuo-2.3-768P-6s=180"}))
    assert custom.price("MiniMax-H3@768P:6") == 273 and custom.price("MiniMax-Hailuo-2.3@768P:6") == 180
    assert custom.price("MiniMax-H3@2K:6") == 480  # the rest stays as built in
    assert "MiniMax-H3-768P ¥0.455/s" in custom.describe() and "with HAILUO_PRICES" in custom.describe()
    with pytest.raises(ConfigError, match="no price is called MiniMax-H3-4K; use MiniMax-H3-768P, MiniMax-H3-2K"):
        tariff(load_settings(tmp_path, {"HAILUO_PRICES": "MiniMax-H3-4K=100"}))


@pytest.mark.parametrize("word, status", [
    ("queued", "pending"), ("running", "processing"), ("succeeded", "completed"), ("failed", "failed"),
    ("cancelled", "failed"),  # v2
    ("Preparing", "pending"), ("Queueing", "pending"), ("Processing", "processing"), ("Success", "completed"),
    ("Fail", "failed"),  # v1, capitalised
])
def test_every_status_word_of_both_versions_is_one_of_the_ledgers_four(word, status):
    assert STATUSES[word.lower()] == status
    task = client()._task({"id": "1", "status": word}, {})
    assert task.status == status


def test_an_unknown_status_word_is_not_finished_and_logged_once(caplog):
    hailuo = client()
    for _ in range(3):
        task = hailuo._task({"id": "1", "status": "Rendering-Unit-Test"}, {})
        assert not task.is_terminal
    assert caplog.text.count("unknown status 'rendering-unit-test'") == 1


def client() -> Hailuo:
    return Hailuo("https://api.minimaxi.com", KEY)


def answer(payload: Any, status: int = 200, headers: Optional[dict] = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    resp.headers.update(headers or {})
    return resp


def base(code: int, message: str = "") -> dict:
    return {"base_resp": {"status_code": code, "status_msg": message}}


@pytest.mark.parametrize("code, raised", [
    (1000, TransientError), (1001, TransientError), (1013, TransientError), (1002, RateLimited), (1004, AuthError),
    (1008, InsufficientBalance), (1026, ContentRefused), (1027, ContentRefused), (2013, BadParameters),
    (9999, ApiError),  # an undocumented code: an error, neither retried blindly nor terminal
])
def test_every_code_of_the_error_table_raises_its_outcome_on_a_create(code, raised):
    assert ERRORS.get(code, ApiError) is raised
    with pytest.raises(ApiError) as info:
        client()._unwrap("POST", "/v2/video_generation", answer(base(code, "said")))
    assert type(info.value) is raised
    if raised is TransientError:
        assert info.value.maybe_created  # a create that failed this way may have been made


def test_a_refused_create_carries_the_apis_words_and_a_refused_key_is_masked():
    with pytest.raises(RemoteTaskFailed) as refused:
        client()._unwrap("POST", "/v1/video_generation", answer(base(1026, "输入内容涉及敏感内容")))
    assert str(refused.value) == "输入内容涉及敏感内容"
    with pytest.raises(AuthError) as info:
        client()._unwrap("GET", "/v2/query/video_generation", answer(base(1004, f"login fail: {KEY}")))
    assert KEY not in str(info.value) and KEY[8:] not in str(info.value)


@pytest.mark.parametrize("path", ["/v2/query/video_generation/123", "/v1/query/video_generation",
                                  "/v1/files/retrieve"])
def test_a_look_up_of_an_id_the_api_does_not_know_is_task_not_found(path):
    with pytest.raises(TaskNotFound):
        client()._unwrap("GET", path, answer(base(2013, "invalid params, task not found")))
    # A bare 404 is a proxy's or a load balancer's, not MiniMax's word on the task: asked again.
    with pytest.raises(TransientError):
        client()._unwrap("GET", path, answer(b"404 page not found", 404))


def test_a_sensitive_verdict_in_a_query_is_the_tasks_failure_not_an_error_of_the_call():
    data = {"task_id": "7", "status": "Fail", **base(1027, "生成视频涉及敏感内容")}
    payload = client()._unwrap("GET", "/v1/query/video_generation", answer(data))
    task = client()._task(payload, payload)
    assert task.is_failed and task.error_msg == "生成视频涉及敏感内容"
    v2 = client()._task({"id": "8", "status": "failed", "error": {"code": "1027", "message": "视频生成失败"}}, {})
    assert v2.is_failed and v2.error_msg == "1027: 视频生成失败"


@pytest.mark.parametrize("resp, raised", [
    (answer({"error": "gateway"}, 502), TransientError), (answer(b"<html>502</html>", 502), TransientError),
    (answer(b"Too Many Requests", 429, {"Retry-After": "2"}), RateLimited), (answer(b"nope", 401), AuthError),
    (answer(b"not json"), TransientError),
])
def test_http_statuses_from_a_proxy_in_front_map_to_the_same_outcomes(resp, raised):
    with pytest.raises(ApiError) as info:
        client()._unwrap("GET", "/v2/query/video_generation", resp)
    assert type(info.value) is raised
    if raised is RateLimited:
        assert info.value.retry_after == 2


def test_a_v2_task_object_is_read_with_its_url_times_and_prompt():
    data = {"id": "424010985738629", "model": "MiniMax-H3", "status": "succeeded", "created_at": 1785125529,
            "updated_at": 1785125946, "content": {"url": "https://cdn.example.com/out.mp4"}, "resolution": "2K",
            "duration": 5, "ratio": "16:9", "prompt": "a fox"}
    task = client()._task(data, {})
    assert (task.task_id, task.status, task.progress, task.video_url, task.prompt) == (
        "424010985738629", "completed", 100, "https://cdn.example.com/out.mp4", "a fox")
    assert task.created_at is not None and int(task.created_at.timestamp()) == 1785125529
    # a list that shows the request's content instead of a prompt field
    listed = client()._task({"id": "1", "status": "queued", "content": [{"type": "text", "text": "a cat"}]}, {})
    assert listed.prompt == "a cat" and listed.video_url is None
    assert client()._task({"id": "2", "status": "queued"}, {}).prompt is None


def test_a_listed_task_matches_a_request_unless_a_field_it_shows_differs():
    params = mapped(duration=8).params
    listed = RemoteTask("1", "pending", 0, "a fox", None, None, None, None, None,
                        raw={"model": "MiniMax-H3", "duration": 8, "resolution": "768P", "ratio": "16:9"})
    hailuo = client()
    assert hailuo.same_request(listed, params)
    assert hailuo.same_request(RemoteTask("2", "pending", 0, "a fox", None, None, None, None, None, raw={}), params)
    other = RemoteTask("3", "pending", 0, "a fox", None, None, None, None, None, raw={"duration": 6})
    assert not hailuo.same_request(other, params)


def test_a_v2_error_envelope_is_read_for_its_code_and_words_once():
    envelope = {"type": "error", "request_id": "0217", "error": {
        "type": "insufficient_balance_error", "message": "insufficient balance (1008)", "http_code": "402"}}
    with pytest.raises(InsufficientBalance) as info:
        client()._unwrap("POST", "/v2/video_generation", answer(envelope, 402))
    assert info.value.code == 1008 and "code 1008: insufficient balance)" in str(info.value)
