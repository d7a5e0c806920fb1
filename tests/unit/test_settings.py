"""Settings precedence: flag > environment > .env > config.yaml > default."""
from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import ConfigError
from ledger.settings import load_settings


def test_each_layer_overrides_the_one_below(tmp_path: Path):
    (tmp_path / "config.yaml").write_text(
        "MAX_CONCURRENT_TASKS: 3\nGEN_COUNT_PER_SEGMENT: 4\nsora_base_url: http://yaml/v1\nDEFAULT_RESOLUTION: vertical\n")
    (tmp_path / ".env").write_text("GEN_COUNT_PER_SEGMENT=5\nSORA_BASE_URL=http://dotenv/v1\nMAX_CONCURRENT_TASKS=6\n")
    env = {"SORA_BASE_URL": "http://env/v1/", "MAX_CONCURRENT_TASKS": "7"}
    s = load_settings(tmp_path, env, {"max_concurrent_tasks": 9, "input_dir": None})
    assert s.max_concurrent_tasks == 9 and s.sources["max_concurrent_tasks"] == "flag"
    assert s.base_url == "http://env/v1" and s.sources["base_url"] == "environment"
    assert s.gen_count_per_segment == 5 and s.sources["gen_count_per_segment"] == ".env"
    assert s.default_resolution == "vertical" and s.sources["default_resolution"] == "config.yaml"
    # no DEFAULT_DURATION: each provider's model takes its own default (sora_hk 10 s, openai 4 s)
    assert s.default_duration is None and s.sources["default_duration"] == "default"
    assert s.input_dir == tmp_path / "input"


def test_defaults_on_an_empty_folder(tmp_path: Path):
    s = load_settings(tmp_path, {})
    assert s.base_url == "https://api.sora.hk/v1"
    assert s.max_concurrent_tasks == 8 and s.gen_count_per_segment == 2
    assert s.database_url == f"sqlite:///{tmp_path.as_posix()}/ledger.db"
    assert (s.default_duration, s.default_resolution, s.default_is_pro, s.default_remove_watermark) == (None, "horizontal", False, True)
    assert (s.provider, s.openai_base_url, s.openai_prices) == ("sora_hk", "https://api.openai.com/v1", ())


def test_lower_case_proxy_variables_count(tmp_path: Path):
    s = load_settings(tmp_path, {"https_proxy": "http://127.0.0.1:10808"})
    assert s.https_proxy == "http://127.0.0.1:10808"


@pytest.mark.parametrize("env, words", [
    ({"MAX_CONCURRENT_TASKS": "many"}, "MAX_CONCURRENT_TASKS='many' from environment"),
    ({"GEN_COUNT_PER_SEGMENT": "0"}, "at least 1"),
    ({"DEFAULT_RESOLUTION": "square"}, "horizontal, vertical"),
    ({"DEFAULT_DURATION": "25"}, "needs the Pro model"),
    ({"DEFAULT_IS_PRO": "maybe"}, "not a boolean"),
])
def test_bad_values_name_the_setting_and_its_source(tmp_path: Path, env, words):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env)
    assert words in str(info.value)


def test_key_from_dotenv_is_used_and_repr_masks_it(tmp_path: Path):
    (tmp_path / ".env").write_text("SORA_API_KEY=sora-abcdefghijklmnopqrstuvwxyz123456\n")
    s = load_settings(tmp_path, {})
    assert s.api_key == "sora-abcdefghijklmnopqrstuvwxyz123456"
    assert "abcdefghijklmnopqrstuvwxyz" not in repr(s)
    assert s.masked_api_key == "sora-…3456"
