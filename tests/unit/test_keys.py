"""Team mode's keys: how they are given, named and masked."""
from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import ConfigError
from ledger.keys import ApiKey, KeyRing, fingerprint, keys_from_config, parse_key_list
from ledger.settings import load_settings

A, B, C = "sora-aaaaaaaaaaaaaaaa1111", "sora-bbbbbbbbbbbbbbbb2222", "sora-cccccccccccccccc3333"


def test_a_key_list_takes_an_optional_limit_per_key():
    assert parse_key_list(f"{A}@2, {B} ,{C}@10,") == ((A, 2), (B, None), (C, 10))
    for bad in (f"{A}@0", f"{A}@x", "@3"):
        with pytest.raises(ValueError) as caught:
            parse_key_list(bad)
        assert A not in str(caught.value)  # the error never shows the key


def test_config_yaml_keys_name_their_provider_limit_and_cap_in_its_currency():
    keys = keys_from_config([{"provider": "sora_hk", "key": A, "concurrency": 2, "max_spend": "$5"},
                             {"provider": "kling", "key": B, "max_spend": "¥50"}], {"sora_hk": "USD", "kling": "CNY"})
    assert keys == [ApiKey("sora_hk", A, 2, 500), ApiKey("kling", B, None, 5000)]
    with pytest.raises(ConfigError, match="max_spend is in CNY, the sora_hk provider charges in USD"):
        keys_from_config([{"provider": "sora_hk", "key": A, "max_spend": "¥5"}], {"sora_hk": "USD"})
    with pytest.raises(ConfigError, match="concurrency must be a whole number"):
        keys_from_config([{"provider": "sora_hk", "key": A, "concurrency": 0}], {"sora_hk": "USD"})


def test_the_ring_keeps_the_order_given_and_a_repeated_key_once_with_its_limit(tmp_path: Path):
    settings = load_settings(tmp_path, {"SORA_API_KEY": A, "SORA_API_KEYS": f"{B}@3,{A}@2", "KLING_API_KEYS": C})
    ring = KeyRing.from_settings(settings)
    assert [(k.provider, k.secret, k.limit) for k in ring.all()] == [("sora_hk", A, 2), ("sora_hk", B, 3),
                                                                    ("kling", C, None)]
    assert ring.several("sora_hk") and not ring.several("kling")
    assert ring.secret("sora_hk", None) == A and ring.secret("sora_hk", fingerprint(B)) == B
    assert ring.retire("sora_hk", fingerprint(A), "refused (401)") is True
    assert [k.secret for k in ring.of("sora_hk")] == [B]
    assert ring.retire("sora_hk", fingerprint(B), "no balance") is False  # none left
    # a fingerprint is 12 hex digits of the key's SHA-256: never the key
    assert len(fingerprint(A)) == 12 and fingerprint(A) not in A


def test_settings_never_show_the_keys_of_a_list(tmp_path: Path):
    settings = load_settings(tmp_path, {"SORA_API_KEYS": f"{A}@1,{B}"})
    assert A not in repr(settings) and B not in repr(settings) and "(2 keys)" in repr(settings)
    assert A in settings.api_keys and B in settings.api_keys  # so every printed line masks them
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, {"SORA_API_KEYS": f"{A}@-1"})
    assert A not in str(caught.value) and "SORA_API_KEYS=***" in str(caught.value)


def test_config_yaml_lists_keys_with_limits_and_caps(tmp_path: Path):
    (tmp_path / "config.yaml").write_text(
        f"keys:\n  - {{provider: sora_hk, key: {A}, concurrency: 2, max_spend: $50}}\n"
        f"  - {{provider: kling, key: {B}, concurrency: 5, max_spend: ¥300}}\n", encoding="utf-8")
    ring = KeyRing.from_settings(load_settings(tmp_path, {}))
    assert [(k.provider, k.secret, k.limit, k.max_spend) for k in ring.all()] == [
        ("sora_hk", A, 2, 5000), ("kling", B, 5, 30000)]
    (tmp_path / "config.yaml").write_text("keys: sora-just-a-string\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings(tmp_path, {})
