"""Small builders the tests share."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest


def segments(*prompts: str, **extra: Any) -> dict:
    """A storyboard in the format users already have, one segment per prompt."""
    return {"metadata": {"project_name": "test"},
            "segments": [{"segment_index": i, "prompt_text": p, **extra} for i, p in enumerate(prompts, start=1)]}


def query(root: Path, sql: str, *args: Any) -> List[tuple]:
    """Rows from the workspace's real ledger file, read with plain sqlite3 (not our code)."""
    with closing(sqlite3.connect(root / "ledger.db")) as conn:
        return conn.execute(sql, args).fetchall()


def as_generation_failures(root: Path) -> None:
    """Make the ledger's failed jobs ordinary generation failures (not content refusals, which a
    requeue leaves failed): for tests of requeueing itself, whatever made their jobs fail."""
    with closing(sqlite3.connect(root / "ledger.db")) as conn, conn:
        conn.execute("UPDATE jobs SET error_kind = 'remote_failed', error_message = ? WHERE state = 'failed'",
                     (GENERATION_FAILED,))


GENERATION_FAILED = "视频生成失败：服务器繁忙，请稍后重试"  # the simulator's generic failure


def spawn(root: Path, env: Dict[str, str], *args: str) -> "subprocess.Popen[str]":
    """`ledger ARGS` as a separate process in the workspace, as a user would run it."""
    return subprocess.Popen([sys.executable, "-m", "ledger", *args], cwd=root, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leftovers(root: Path) -> List[Path]:
    """Temporary files a run must never leave behind."""
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]


# Shared-behaviour tests run against the simulator speaking the first two protocols ledger knew
# (``both_protocols``), or every protocol it knows (``every_protocol``: the chaos test).
PROTOCOLS = ("sora_hk", "openai")
both_protocols = pytest.mark.parametrize("protocol", PROTOCOLS, indirect=True)


def _registered() -> Tuple[str, ...]:
    from ledger.providers import REGISTRY

    return tuple(REGISTRY)


every_protocol = pytest.mark.parametrize("protocol", _registered(), indirect=True)


def api_env(sim: Any) -> Dict[str, str]:
    """The settings that point ledger at ``sim``, in the protocol it speaks."""
    settings = dict(sim.protocol.settings(sim))
    if sim.config.protocol == "sora_hk" and not sim.config.api_key:
        settings.pop("SORA_API_KEY")  # the key the test chose (work_env's) stays
    return settings


def job_price(sim: Any) -> int:
    """What ``sim`` charges for one job with default parameters (and for ``create_external``'s task)."""
    return int(sim.protocol.job_price(sim))
