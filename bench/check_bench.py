"""`ledger check` as a user runs it: a process, against each protocol's simulator in another process.

    python bench/check_bench.py [--runs 3]

For every provider: the wall time of `ledger check --provider NAME --json` (median and worst of
the runs) and its exit code, beside the baseline from the same run: `ledger --version`, a process
that only starts. Also a silent API (it accepts connections and never answers): how long the check
takes to name it, against its own bound (two calls of at most 5 + 10 s each).
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
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.providers import REGISTRY  # noqa: E402
from ledger.sim.server import SimConfig, SimServer  # noqa: E402


def timed(args: List[str], env: Dict[str, str], cwd: str) -> Tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ledger", *args], env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, proc.returncode, proc.stdout


def silent_server() -> Tuple[socket.socket, str]:
    """Accepts connections and reads requests, never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: List[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cwd = tempfile.mkdtemp(prefix="ledger-check-bench-")
    base_env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_KEYS", "_BASE_URL"))}
    print(f"ledger check benchmark ({os.cpu_count()} cores); every command a process, every simulator in this one\n")
    start = sorted(timed(["--version"], base_env, cwd)[0] for _ in range(args.runs))
    print(f"baseline `ledger --version` (start-up only): median {statistics.median(start):.2f} s, "
          f"worst {start[-1]:.2f} s")
    for name in REGISTRY:
        sim = SimServer(SimConfig(protocol=name, gen_seconds=1.0)).start()
        try:
            env = {**base_env, **sim.protocol.settings(sim)}
            runs = [timed(["check", "--provider", name, "--json"], env, cwd) for _ in range(args.runs)]
        finally:
            sim.stop()
        walls = sorted(r[0] for r in runs)
        codes = {r[1] for r in runs}
        matched = all(json.loads(r[2])["matched"] for r in runs)
        print(f"  {name:9} check: median {statistics.median(walls):.2f} s, worst {walls[-1]:.2f} s "
              f"(+{statistics.median(walls) - statistics.median(start):.2f} s over start-up); exit {sorted(codes)}, "
              f"every shape matched: {matched}")
    listener, url = silent_server()
    try:
        env = {**base_env, "PROVIDER": "sora_hk", "SORA_BASE_URL": url, "SORA_API_KEY": "sora-" + "b" * 32}
        wall, code, _ = timed(["check", "--json"], env, cwd)
    finally:
        listener.close()
    print(f"a silent API (connects, never answers): named in {wall:.1f} s, exit {code} "
          f"(bound: the pre-flight's own timeouts, then every call once with at most 5 + 10 s)")


if __name__ == "__main__":
    main()
