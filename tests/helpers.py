"""Small builders the tests share."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, List

import pytest


def segments(*prompts: str, **extra: Any) -> dict:
    """A storyboard in the format users already have, one segment per prompt."""
    return {"metadata": {"project_name": "test"},
            "segments": [{"segment_index": i, "prompt_text": p, **extra} for i, p in enumerate(prompts, start=1)]}


def query(root: Path, sql: str, *args: Any) -> List[tuple]:
    """Rows from the workspace's real ledger file, read with plain sqlite3 (not our code)."""
    with closing(sqlite3.connect(root / "ledger.db")) as conn:
        return conn.execute(sql, args).fetchall()


def spawn(root: Path, env: Dict[str, str], *args: str) -> "subprocess.Popen[str]":
    """`ledger ARGS` as a separate process in the workspace, as a user would run it."""
    return subprocess.Popen([sys.executable, "-m", "ledger", *args], cwd=root, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leftovers(root: Path) -> List[Path]:
    """Temporary files a run must never leave behind."""
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]


# Shared-behaviour tests run against the simulator speaking each protocol ledger knows.
PROTOCOLS = ("sora_hk", "openai")
both_protocols = pytest.mark.parametrize("protocol", PROTOCOLS, indirect=True)


def api_env(sim: Any) -> Dict[str, str]:
    """The settings that point ledger at ``sim``, in the protocol it speaks."""
    if sim.config.protocol == "openai":
        return {"PROVIDER": "openai", "OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": sim.config.api_key or "sk-any"}
    return {"PROVIDER": "sora_hk", "SORA_BASE_URL": sim.base_url}


def job_price(sim: Any) -> int:
    """What ``sim`` charges for one job with default parameters (and for ``create_external``'s task):
    sora.hk's normal price; for /v1/videos sora-2, 4 s at 10 cents a second."""
    if sim.config.protocol == "openai":
        from ledger.sim import openai_videos

        return openai_videos.price("sora-2", "1280x720", 4)
    return int(sim.config.normal_price)
