"""Claim: a wrong SORA_BASE_URL or a hung proxy is one line within seconds, not a retry storm.

Runs `ledger run` as a user would (a fresh process, a workspace with one storyboard) against:
a closed port, a server that accepts connections and never answers, and a closed port through a
proxy that never answers; and times from process start to the "cannot reach" line. Baselines in
the same run: `ledger --version` (what starting the process costs at all), and one ``GET /balance``
through the work client, with the urllib3 retries a run's API calls get, against the closed port
(what every job's first call cost before the pre-flight).

    .venv/bin/python bench/preflight_bench.py [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger.client import SoraClient  # noqa: E402
from ledger.errors import ApiError  # noqa: E402

KEY = "sora-bench000000000000000000000000000"
GOAL_SECONDS = 5.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(args: Sequence[str], env: Dict[str, str], cwd: Path) -> "tuple[float, str, int]":
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ledger", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "SORA_API_KEY": KEY, **env})
    return time.perf_counter() - started, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    hung = silent.getsockname()[1]
    cases = {
        "closed port": {"SORA_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1"},
        "server that never answers": {"SORA_BASE_URL": f"http://127.0.0.1:{hung}/v1"},
        "proxy that never answers": {"SORA_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1",
                                     "HTTP_PROXY": f"http://127.0.0.1:{hung}"},
    }
    results: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "input").mkdir()
        (root / "input" / "storyboard_a.json").write_text(json.dumps(
            {"segments": [{"segment_index": 1, "prompt_text": "a drone shot"}]}), encoding="utf-8")
        for _ in range(runs):
            seconds, _, _ = timed(["--version"], {}, root)
            results.setdefault("baseline: `ledger --version`", []).append(seconds)
            for name, env in cases.items():
                seconds, line, code = timed(["run"], env, root)
                assert code == 3 and "cannot reach" in line, (name, code, line)
                results.setdefault(name, []).append(seconds)
                last_line = line
            started = time.perf_counter()
            with SoraClient(cases["closed port"]["SORA_BASE_URL"], KEY) as client:
                try:
                    client.balance()
                except ApiError:
                    pass
            results.setdefault("baseline: one retried GET in-process (per job, before)", []).append(
                time.perf_counter() - started)
        assert not (root / "ledger.db").exists(), "the pre-flight runs before the scan"
    silent.close()
    print(f"pre-flight, {runs} run(s) each, median seconds from process start to the message:")
    for name, values in results.items():
        print(f"  {name:<58} {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    print(f"  last message: {last_line}")
    worst = statistics.median(results["closed port"])
    print(f"goal: closed port < {GOAL_SECONDS:g} s -> {'✔' if worst < GOAL_SECONDS else '✘'}")


if __name__ == "__main__":
    main()
