"""Claim: ledger's verified, resumable download keeps up with a bare stream and uses constant memory.

Starts ``ledger sim`` in its own process serving an N MB video, then downloads it in turn with a
plain ``requests`` stream into /dev/null (the baseline of the goal), with the same plain stream
into a file that is then fsynced (the same disk work ledger must do), and with
``ledger.download.download_file`` — each in a fresh child process, so a child's peak RSS is its own.
Goal: ledger >= 0.9x the baseline's throughput, peak RSS < 100 MB whatever the size. Each child
also reports the CPU seconds it spent: on a busy machine wall-clock rates swing, CPU per download
is what shows whether a change made downloading costlier.

It runs twice: over loopback unthrottled (gigabytes a second, where the disk's fsync and the
sha256 set the pace), and with the simulator pacing the video at a fast real link's speed
(``--link-mbps``, default 100 MB/s), which is what a download from object storage meets.

    .venv/bin/python bench/download_bench.py [--mb 500] [--runs 3] [--link-mbps 100]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

CHUNK = 1 << 20
THROUGHPUT_GOAL = 0.9
RSS_GOAL_MB = 100.0


def child(mode: str, url: str, folder: str) -> None:
    """Download once ("plain", "plain-file" or "ledger"); print {"seconds", "bytes", "peak_rss_mb", "cpu"}."""
    import requests

    started = time.perf_counter()
    if mode in ("plain", "plain-file"):
        size = 0
        target = "/dev/null" if mode == "plain" else str(Path(folder) / "plain.bin")
        with requests.get(url, stream=True, timeout=(10, 60)) as resp, open(target, "wb") as sink:
            resp.raise_for_status()
            for chunk in resp.iter_content(CHUNK):
                sink.write(chunk)
                size += len(chunk)
            if mode == "plain-file":
                sink.flush()
                os.fsync(sink.fileno())
        if mode == "plain-file":
            os.unlink(target)
    else:
        from ledger.download import download_file

        with requests.Session() as session:
            result = download_file(session, url, Path(folder) / "bench.mp4", root=Path(folder),
                                   timeout=(10, 60), chunk_size=CHUNK)
        size = result.size
        result.path.unlink()
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = usage.ru_maxrss  # kilobytes on Linux
    print(json.dumps({"seconds": seconds, "bytes": size, "peak_rss_mb": peak_kb / 1024,
                      "cpu": usage.ru_utime + usage.ru_stime}))


def run_child(mode: str, url: str, folder: str) -> Dict[str, float]:
    """Run ``child`` in a fresh interpreter and return what it measured."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, url, folder],
                         check=True, capture_output=True, text=True).stdout
    result: Dict[str, float] = json.loads(out)
    return result


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="video size in MB (default 500)")
    parser.add_argument("--runs", type=int, default=3, help="downloads per method; the best counts (default 3)")
    parser.add_argument("--link-mbps", type=float, default=100.0,
                        help="the second comparison serves at this rate, like a real link (default 100 MB/s)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "URL", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    size = args.mb * 1_000_000
    print(f"download of {args.mb} MB from the simulator, best of {args.runs} (1 MiB chunks)")
    met = True
    for link in (None, args.link_mbps):
        met &= measure(size, args.runs, link)
    return 0 if met else 1


def measure(size: int, runs: int, link: Optional[float]) -> bool:
    """One comparison against a simulator serving at ``link`` MB/s (None: loopback speed)."""
    command = [sys.executable, "-c", "from ledger.sim.command import sim; sim()",
               "--port", "0", "--gen-seconds", "0", "--video-bytes", str(size)]
    if link:
        command += ["--file-rate", str(link)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().split()[-1]
        from ledger.client import SoraClient

        with SoraClient(base_url, "bench") as client:
            url = client.get(client.create({"prompt": "bench"}).task_id).video_url
        assert url is not None
        results: Dict[str, List[Dict[str, float]]] = {"plain": [], "plain-file": [], "ledger": []}
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as folder:
            for _ in range(runs):
                for mode in results:
                    run = run_child(mode, url, folder)
                    if run["bytes"] != size:
                        raise SystemExit(f"{mode}: got {run['bytes']} bytes, expected {size}")
                    results[mode].append(run)
    finally:
        server.terminate()
        server.wait(timeout=10)

    best = {mode: min(runs, key=lambda run: run["seconds"]) for mode, runs in results.items()}
    rate = {mode: size / 1e6 / run["seconds"] for mode, run in best.items()}
    ratio = rate["ledger"] / rate["plain"]
    rss = max(run["peak_rss_mb"] for run in results["ledger"])
    labels = {
        "plain": "plain requests stream -> /dev/null",
        "plain-file": "plain requests stream -> file + fsync",
        "ledger": "ledger download_file (sha256, fsync, rename)",
    }
    print(f"\nserved {'over loopback, unthrottled' if link is None else f'at {link:g} MB/s, a fast real link'}:")
    print(f"{'method':<46} {'MB/s':>7} {'seconds':>8} {'peak RSS MB':>12} {'CPU s':>6}")
    for mode, label in labels.items():
        peak = max(run["peak_rss_mb"] for run in results[mode])
        cpu = min(run["cpu"] for run in results[mode])
        print(f"{label:<46} {rate[mode]:>7.0f} {best[mode]['seconds']:>8.2f} {peak:>12.1f} {cpu:>6.2f}")
    print(f"ledger / plain stream: {ratio:.2f} (goal >= {THROUGHPUT_GOAL}): "
          f"{'met' if ratio >= THROUGHPUT_GOAL else 'MISSED'}")
    print(f"ledger / plain stream with the same fsync'd file: {rate['ledger'] / rate['plain-file']:.2f}")
    print(f"ledger peak RSS {rss:.1f} MB (goal < {RSS_GOAL_MB:.0f} MB): {'met' if rss < RSS_GOAL_MB else 'MISSED'}")
    return ratio >= THROUGHPUT_GOAL and rss < RSS_GOAL_MB


if __name__ == "__main__":
    sys.exit(main())
