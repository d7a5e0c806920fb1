"""The kling provider's tables, pure: the storyboard mapping, the price of each tier, the status
and error tables, the resource packs, the JWT."""
from __future__ import annotations

import itertools
from pathlib import Path

import jwt
import pytest

from ledger.errors import ConfigError
from ledger.providers import RULES, Mapped, Mismatch, Request
from ledger.providers import kling
from ledger.providers.kling import (ASPECT_RATIOS, ERRORS, MODELS, STATUSES, KlingClient, kind_of, outcome_of,
                                    packs_fen, request_body, tariff)
from ledger.settings import load_settings

ALL_MODELS = ("kling-v2-5-turbo", "kling-v2-6", "kling-v2-1-master", "kling-v3")


def request(**fields) -> Request:
    values = dict(prompt="a fox", model=None, is_pro=False, duration=None, resolution="horizontal",
                  quality="normal", remove_watermark=True, image_url=None)
    values.update(fields)
    return Request(**values)


def mapped(**fields) -> Mapped:
    result = RULES["kling"].map(request(**fields))
    assert isinstance(result, Mapped), result
    return result


def test_a_prompt_alone_is_a_five_second_standard_16_9_text_to_video_on_the_default_model():
    result = mapped()
    assert result.params == {"provider": "kling", "model": "kling-v2-5-turbo", "prompt": "a fox", "duration": 5,
                             "mode": "std", "is_pro": False, "resolution": "horizontal", "aspect_ratio": "16:9"}
    assert (result.is_pro, result.price_key, kind_of(result.params)) == (False, "std:5", "text2video")
    assert request_body(result.params, "ledger-7-1700000000000") == {
        "model_name": "kling-v2-5-turbo", "prompt": "a fox", "mode": "std", "duration": "5", "aspect_ratio": "16:9",
        "external_task_id": "ledger-7-1700000000000"}


@pytest.mark.parametrize("model, seconds, resolution", list(itertools.product(ALL_MODELS, (5, 10), ASPECT_RATIOS)))
def test_every_model_takes_every_duration_and_aspect_ratio(model, seconds, resolution):
    result = mapped(model=model, is_pro=None, duration=seconds, resolution=resolution)
    assert (result.params["model"], result.params["duration"]) == (model, seconds)
    assert result.params["aspect_ratio"] == {"horizontal": "16:9", "vertical": "9:16"}.get(resolution, resolution)
    assert request_body(result.params)["duration"] == str(seconds)  # sent as a string


def test_an_image_url_is_the_first_frame_of_an_image_to_video_task_with_no_aspect_ratio():
    result = mapped(image_url="https://example.com/a.jpg", resolution="vertical", duration=10)
    assert kind_of(result.params) == "image2video"
    assert "aspect_ratio" not in result.params and "resolution" not in result.params
    assert request_body(result.params, "r-1") == {"model_name": "kling-v2-5-turbo", "prompt": "a fox", "mode": "std",
                                                  "duration": "10", "image": "https://example.com/a.jpg",
                                                  "external_task_id": "r-1"}


@pytest.mark.parametrize("fields, mode", [
    ({}, "std"), ({"is_pro": True}, "pro"), ({"quality": "high"}, "pro"), ({"is_pro": None}, "std"),
    ({"options": {"mode": "pro"}}, "pro"), ({"options": {"mode": "std"}, "quality": "high"}, "std"),
])
def test_is_pro_or_high_quality_mean_pro_mode_unless_the_block_names_one(fields, mode):
    result = mapped(**fields)
    assert (result.params["mode"], result.is_pro, result.price_key) == (mode, mode == "pro", f"{mode}:5")


@pytest.mark.parametrize("model", ["kling-v2-6", "kling-v3"])
def test_the_models_with_sound_are_silent_unless_the_block_turns_it_on(model):
    assert mapped(model=model, is_pro=None).params["sound"] == "off"
    loud = mapped(model=model, is_pro=None, options={"sound": "on", "mode": "pro"}, duration=10)
    assert (loud.params["sound"], loud.price_key) == ("on", "pro+sound:10")
    assert request_body(loud.params)["sound"] == "on"


def test_the_block_passes_negative_prompt_and_cfg_scale_through():
    result = mapped(model="kling-v3", options={"negative_prompt": "blur, text", "cfg_scale": 0.3})
    assert request_body(result.params)["negative_prompt"] == "blur, text"
    assert request_body(result.params)["cfg_scale"] == 0.3


@pytest.mark.parametrize("fields, key, words", [
    ({"model": "kling-v1", "is_pro": None}, "model",
     "model 'kling-v1' is not offered by the kling provider; use one of 'kling-v2-5-turbo', 'kling-v2-6', "
     "'kling-v2-1-master', 'kling-v3'"),
    ({"duration": 8}, "duration_seconds",
     "duration 8s is not offered by kling-v2-5-turbo on the kling provider; use one of 5, 10"),
    ({"resolution": "1280x720"}, "resolution",
     "resolution '1280x720' is not offered by kling-v2-5-turbo on the kling provider; use one of 'horizontal' "
     "(16:9), 'vertical' (9:16), '16:9', '9:16', '1:1'"),
    ({"prompt": "x" * 2501}, "prompt_text", "the prompt has 2,501 characters; the kling provider takes at most 2,500"),
    ({"options": {"sound": "on"}}, "kling",
     "sound is taken only by kling-v2-6, kling-v3; kling-v2-5-turbo makes silent videos"),
    ({"model": "kling-v2-1-master", "is_pro": None, "options": {"sound": "off"}}, "kling",
     "sound is taken only by kling-v2-6, kling-v3; kling-v2-1-master makes silent videos"),
    ({"is_pro": True, "options": {"mode": "std"}}, "kling",
     "is_pro is true, but the kling block says mode 'std'; drop one of the two"),
    ({"model": "kling-v2-6", "is_pro": None, "options": {"sound": "on"}}, "kling",
     "sound 'on' is taken by kling-v2-6 in pro mode only; set mode 'pro' (or is_pro: true), or sound 'off'"),
    ({"options": {"cfg_scale": 0.5}}, "kling",
     "cfg_scale is not taken by the kling-v2.x models (kling-v2-5-turbo); only by kling-v3: drop it"),
    ({"model": "kling-v3", "is_pro": None, "duration": 2}, "duration_seconds",
     "duration 2s is not offered by kling-v3 on the kling provider; use one of 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
     "13, 14, 15"),
])
def test_values_kling_cannot_take_are_mismatches_naming_the_allowed_ones(fields, key, words):
    assert RULES["kling"].map(request(**fields)) == [Mismatch(key, words)]


def test_every_wrong_value_is_named_at_once():
    result = RULES["kling"].map(request(duration=7, resolution="4:3", options={"sound": "on"}))
    assert [m.key for m in result] == ["duration_seconds", "resolution", "kling"]


def test_the_block_is_declared_as_json_schema_properties():
    properties = kling.REGISTRATION.storyboard_options["properties"]
    assert sorted(properties) == ["cfg_scale", "mode", "negative_prompt", "sound"]
    assert properties["mode"]["enum"] == ["std", "pro"] and properties["sound"]["enum"] == ["on", "off"]
    assert (properties["cfg_scale"]["minimum"], properties["cfg_scale"]["maximum"]) == (0, 1)
    assert properties["negative_prompt"]["maxLength"] == 2500


@pytest.mark.parametrize("key, fen", [("std:5", 300), ("std:10", 600), ("pro:5", 400), ("pro:10", 800),
                                      ("std+sound:5", 400), ("std+sound:10", 800), ("pro+sound:5", 500),
                                      ("pro+sound:10", 1000)])
def test_each_price_key_costs_its_tier_per_second_in_fen(tmp_path: Path, key, fen):
    prices = tariff(load_settings(tmp_path, {}))
    assert (prices.currency, prices.price(key)) == ("CNY", fen)


def test_kling_prices_override_tiers_and_refuse_unknown_ones(tmp_path: Path):
    custom = tariff(load_settings(tmp_path, {"KLING_PRICES": "pro=90, std+sound: 72.5"}))
    assert (custom.price("pro:10"), custom.price("std+sound:5"), custom.price("std:5")) == (900, 362, 300)
    assert custom.describe() == ("kling std ¥0.60/s, pro ¥0.90/s, std+sound ¥0.725/s, pro+sound ¥1.00/s "
                                 "(the built-in price list with KLING_PRICES)")
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, {"KLING_PRICES": "4k=300"})
    assert "TIER one of std, pro, std+sound, pro+sound, got '4k=300'" in str(info.value)


def test_the_status_table_covers_the_documented_words_of_both_api_generations():
    assert STATUSES == {"submitted": "pending", "processing": "processing", "succeed": "completed",
                        "succeeded": "completed", "failed": "failed"}


@pytest.mark.parametrize("code, status, outcome", [
    *[(code, 401, "auth") for code in (1000, 1001, 1002, 1003, 1004)],
    (1100, 429, "balance"), (1101, 429, "balance"), (1102, 429, "balance"),
    (1200, 400, "parameters"), (1201, 400, "parameters"),
    (1300, 400, "refused"), (1301, 400, "refused"),
    (1302, 429, "rate_limited"), (1303, 429, "rate_limited"),
    (5000, 500, "transient"), (5001, 503, "transient"), (5002, 200, "transient"),
    (1303, 200, "rate_limited"),  # the code speaks, whatever the HTTP status
    (None, 502, "transient"), (None, 200, "transient"), (None, 401, "auth"), (None, 429, "rate_limited"),
    (None, 404, "not_found"), (1999, 403, "other"),
])
def test_the_error_table_maps_each_code_to_one_outcome(code, status, outcome):
    assert outcome_of(code, status) == outcome


def test_every_code_of_the_table_is_one_the_facts_name():
    assert set(ERRORS) == {1000, 1001, 1002, 1003, 1004, 1100, 1101, 1102, 1103, 1200, 1201, 1202, 1203, 1300, 1301,
                           1302, 1303, 1304}


def test_the_balance_sums_the_credits_of_the_packs_valid_now_in_fen():
    now = 1_700_000_000_000
    packs = {"resource_pack_subscribe_infos": [
        {"status": "online", "remaining_quantity": 118.5, "effective_time": now - 1, "invalid_time": now + 1},
        {"status": "online", "remaining_quantity": 20, "effective_time": now - 1, "invalid_time": now - 1},
        {"status": "expired", "remaining_quantity": 50.0},
        {"status": "toBeOnline", "remaining_quantity": 300.0, "effective_time": now + 10},
        {"remaining_quantity": "1.25"},
    ]}
    assert packs_fen(packs, now) == 11975
    assert packs_fen({"resource_pack_subscribe_infos": []}, now) == 0
    assert packs_fen({"balance": 3}, now) is None and packs_fen([], now) is None


def test_the_jwt_names_the_access_key_lives_half_an_hour_and_is_renewed_before_it_ends(monkeypatch):
    client = KlingClient("http://127.0.0.1:1/v1", None)
    client.sign_with("AK-access-0123456789", "SK-secret-0123456789abcdef0123456789")
    clock = [1_700_000_000.0]
    monkeypatch.setattr(kling.time, "time", lambda: clock[0])
    first = client._auth_headers()["Authorization"][len("Bearer "):]
    claims = jwt.decode(first, "SK-secret-0123456789abcdef0123456789", algorithms=["HS256"],
                        options={"verify_exp": False, "verify_nbf": False})
    assert claims == {"iss": "AK-access-0123456789", "exp": 1_700_001_800, "nbf": 1_699_999_995}
    assert jwt.get_unverified_header(first) == {"alg": "HS256", "typ": "JWT"}
    clock[0] += 1400  # 400 s left: still good
    assert client._auth_headers()["Authorization"] == f"Bearer {first}"
    clock[0] += 101  # 299 s left: a new one
    renewed = client._auth_headers()["Authorization"][len("Bearer "):]
    assert renewed != first
    assert renewed in client._secrets()  # a server echoing the token does not get it printed


def test_an_api_key_wins_over_an_access_key():
    client = KlingClient("http://127.0.0.1:1/v1", "kling-api-key-0123456789")
    client.sign_with("AK-access-0123456789", "SK-secret-0123456789abcdef0123456789")
    assert client._auth_headers() == {"Authorization": "Bearer kling-api-key-0123456789"}


@pytest.mark.parametrize("key, access, secret, said", [
    (None, None, None, "no Kling key is set"),
    (None, "AK-access-0123456789", None, "KLING_ACCESS_KEY is set but KLING_SECRET_KEY is not"),
    (None, None, "SK-secret-0123456789", "KLING_SECRET_KEY is set but KLING_ACCESS_KEY is not"),
])
def test_the_preflight_without_credentials_names_the_settings_to_set(key, access, secret, said):
    client = KlingClient("http://127.0.0.1:1/v1", key)
    client.sign_with(access, secret)
    with pytest.raises(ConfigError) as info:
        client.preflight()
    assert str(info.value) == f"{said}: set KLING_API_KEY, or KLING_ACCESS_KEY and KLING_SECRET_KEY in .env"


def test_the_models_table_is_the_decided_one():
    assert list(MODELS) == list(ALL_MODELS)
    assert [m.name for m in MODELS.values() if m.sound] == ["kling-v2-6", "kling-v3"]
    assert [m.name for m in MODELS.values() if m.cfg_scale] == ["kling-v3"]
    assert MODELS["kling-v2-6"].sound_modes == ("pro",)
    assert all(m.durations == (5, 10) and m.default_duration == 5 for m in MODELS.values() if m.name != "kling-v3")
    assert MODELS["kling-v3"].durations == tuple(range(3, 16))


@pytest.mark.parametrize("seconds", [3, 7, 15])
def test_kling_v3_takes_3_to_15_seconds(seconds):
    result = mapped(model="kling-v3", is_pro=None, duration=seconds)
    assert (request_body(result.params)["duration"], result.price_key) == (str(seconds), f"std:{seconds}")


def test_kling_v2_6_makes_sound_in_pro_mode_and_takes_sound_off_in_either():
    assert mapped(model="kling-v2-6", is_pro=True, options={"sound": "on"}).params["sound"] == "on"
    assert mapped(model="kling-v2-6", is_pro=None, options={"sound": "off"}).params["sound"] == "off"
