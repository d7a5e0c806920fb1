"""`ledger init --provider NAME`, as a process: a newcomer starts on any provider in one step, its
settings named by its registration (the Sora upstream having closed on 2026-09-24)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from ledger.providers import REGISTRY
from ledger.settings import Settings, load_settings, provider_options

REPO = Path(__file__).resolve().parents[2]


def ledger(cwd: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "ledger", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def set_lines(path: Path) -> Dict[str, str]:
    """The settings a .env sets (its uncommented lines)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_init_for_kling_writes_its_key_and_base_url_settings(tmp_path):
    result = ledger(tmp_path, "init", "--provider", "kling")
    assert result.returncode == 0, result.stderr
    assert set_lines(tmp_path / ".env") == {"PROVIDER": "kling", "KLING_API_KEY": "",
                                            "KLING_BASE_URL": "https://api-beijing.klingai.com/v1"}
    assert "your key goes after KLING_API_KEY=" in result.stdout
    assert "Next: put your key after KLING_API_KEY= in .env" in result.stdout
    settings = load_settings(tmp_path, {})
    assert settings.provider == "kling" and settings.sources["provider"] == ".env"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_init_writes_any_registered_provider_from_its_registration(tmp_path, name):
    registration = REGISTRY[name]
    defaults = Settings(extra={option.key: option.default for option in provider_options()})
    assert ledger(tmp_path, "init", "--provider", name).returncode == 0
    assert set_lines(tmp_path / ".env") == {"PROVIDER": name, registration.key_env: "",
                                            registration.url_env: registration.base_url(defaults)}
    assert load_settings(tmp_path, {}).provider == name


def test_an_unknown_provider_is_one_line_with_the_valid_names_and_writes_nothing(tmp_path):
    result = ledger(tmp_path, "init", "--provider", "sora3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "sora3" in result.stderr
    assert ", ".join(REGISTRY) in result.stderr
    assert not (tmp_path / ".env").exists() and not (tmp_path / "input").exists()


def test_an_existing_env_is_kept_without_force_and_replaced_with_it(tmp_path):
    (tmp_path / ".env").write_text("SORA_API_KEY=sora-mine\n", encoding="utf-8")
    kept = ledger(tmp_path, "init", "--provider", "seedance")
    assert kept.returncode == 0 and "kept .env" in kept.stdout
    assert "--provider seedance --force" in kept.stdout
    assert set_lines(tmp_path / ".env") == {"SORA_API_KEY": "sora-mine"}
    replaced = ledger(tmp_path, "init", "--provider", "seedance", "--force")
    assert replaced.returncode == 0 and "replaced .env" in replaced.stdout
    assert set_lines(tmp_path / ".env")["PROVIDER"] == "seedance"


def test_without_a_provider_init_writes_what_it_always_wrote_and_says_sora_has_closed(tmp_path):
    result = ledger(tmp_path, "init")
    assert result.returncode == 0
    assert set_lines(tmp_path / ".env") == {"SORA_API_KEY": ""}
    note = [line for line in result.stdout.splitlines() if "2026-09-24" in line]
    assert len(note) == 1 and "ledger init --provider NAME --force" in note[0] and "kling" in note[0]
    assert "2026-09-24" not in ledger(tmp_path, "init", "--provider", "kling", "--force").stdout
