"""Commands at any ledger size: each `ledger` command as a process beside its bare query.

    python bench/scale_bench.py [--jobs 1000000] [--work 1000]

Builds (once, cached under bench/.work/) a SQLite ledger of JOBS jobs — JOBS/20 storyboards x 10
segments x 2 versions, through the real scan — and times, each as a `ledger` process against the
same query run bare with sqlite3 in this process:

  * `ledger status`, `ledger status --json`           vs  the counting GROUP BY
  * `ledger show PATH#SEGvVER`, `ledger show ID`       vs  one indexed SELECT
  * `ledger requeue --from-file` naming 1,000 jobs     vs  their SELECT by storyboard and segment
  * `ledger work --limit N --concurrency 64` at G=0    in the big ledger vs in a ledger of N jobs

Goal (issue "Providers", point 7): each command within 2x of its bare query (plus the process start,
printed too), and `ledger work` as fast per job in the big ledger as in the small one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger.db import open_ledger  # noqa: E402
from ledger.scan import scan  # noqa: E402
from ledger.settings import load_settings  # noqa: E402
from ledger.store import Store  # noqa: E402

KEY = "sora-bench000000000000000000000000000"


def build(root: Path, jobs: int) -> None:
    """JOBS/20 storyboards x 10 segments x 2 versions, scanned into root/ledger.db."""
    files = max(1, jobs // 20)
    for f in range(files):
        folder = root / "input" / f"ep{f % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"segments": [{"segment_index": s, "prompt_text": f"shot {f}-{s}"} for s in range(1, 11)]}
        (folder / f"storyboard_{f:06d}.json").write_text(json.dumps(doc), encoding="utf-8")
    settings = load_settings(root, {"SORA_API_KEY": KEY})
    store = Store(open_ledger(settings.database_url), cwd=root)
    scan(settings, root, store)
    store.engine.dispose()
    with closing(sqlite3.connect(root / "ledger.db")) as conn:  # a ledger that has lived a while
        conn.execute("UPDATE jobs SET state = 'done', spent_cents = 30 WHERE id % 10 < 6")
        conn.execute("UPDATE jobs SET state = 'failed', error_kind = 'remote_failed', error_message = 'no' "
                     "WHERE id % 10 = 6")
        conn.commit()


def ledger_process(root: Path, *args: str, env: Dict[str, str] = {}) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ledger", *args], cwd=root, env={**os.environ, **env},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"ledger {' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    return took


def bare(root: Path, sql: str, args: Tuple = ()) -> float:
    started = time.perf_counter()
    with closing(sqlite3.connect(root / "ledger.db")) as conn:
        conn.execute(sql, args).fetchall()
    return time.perf_counter() - started


def best(runs: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(runs))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def work_rate(root: Path, n: int) -> Tuple[float, float]:
    """jobs/s and CPU-ms per job of `ledger work --limit n --concurrency 64` at G=0."""
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "ledger", "sim", "--port", str(port), "--gen-seconds", "0",
                            "--balance", str(10**9)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        sim.stdout.readline()
        env = {"SORA_BASE_URL": f"http://127.0.0.1:{port}/v1", "SORA_API_KEY": KEY, "GEN_COUNT_PER_SEGMENT": "2",
               "POLL_MAX_PER_SECOND": "1000"}  # the cost of the ledger, not of the poll cap
        started = time.perf_counter()
        usage = os.times()
        ledger_process(root, "work", "--no-progress", "--limit", str(n), "--concurrency", "64", env=env)
        after = os.times()
        wall = time.perf_counter() - started
        cpu = (after.children_user - usage.children_user) + (after.children_system - usage.children_system)
        return n / wall, 1000 * cpu / n
    finally:
        sim.terminate()
        sim.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--work", type=int, default=1000, help="jobs worked in each ledger")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cache = ROOT / "bench" / ".work" / f"scale-{args.jobs}"
    if not (cache / "ledger.db").exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        started = time.perf_counter()
        build(cache, args.jobs)
        print(f"built a ledger of {args.jobs:,} jobs in {time.perf_counter() - started:.0f} s (cached in {cache})")
    root = cache / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    shutil.copy(cache / "ledger.db", root / "ledger.db")
    (root / "input").symlink_to(cache / "input")
    with closing(sqlite3.connect(root / "ledger.db")) as conn:
        (jobs,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        (board,) = conn.execute("SELECT path FROM storyboards ORDER BY id DESC LIMIT 1").fetchone()
        (job_id,) = conn.execute("SELECT max(id) FROM jobs").fetchone()
        failed = conn.execute("SELECT s.path, j.segment_index, j.version FROM jobs j JOIN storyboards s "
                              "ON s.id = j.storyboard_id WHERE j.state = 'failed' LIMIT 1000").fetchall()
    print(f"scale benchmark ({os.cpu_count()} cores): a SQLite ledger of {jobs:,} jobs; best of {args.runs}\n")
    start = best(args.runs, lambda: ledger_process(root, "--version"))
    print(f"process start (`ledger --version`): {start:.2f} s\n")
    rows: List[Tuple[str, float, float]] = []
    counting = ("SELECT s.path, j.state, j.is_pro, count(j.id), sum(j.spent_cents) FROM jobs j "
                "JOIN storyboards s ON s.id = j.storyboard_id GROUP BY s.path, j.state, j.is_pro")
    rows.append(("ledger status", best(args.runs, lambda: ledger_process(root, "status")),
                 best(args.runs, lambda: bare(root, counting))))
    rows.append(("ledger status --json", best(args.runs, lambda: ledger_process(root, "status", "--json")),
                 best(args.runs, lambda: bare(root, counting))))
    one = ("SELECT j.* FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
           "WHERE s.path = ? AND j.segment_index = 2 AND j.version = 1")
    short = Path(board).stem
    rows.append((f"ledger show {short}#2v1", best(args.runs, lambda: ledger_process(root, "show", f"{short}#2v1")),
                 best(args.runs, lambda: bare(root, one, (board,)))))
    rows.append((f"ledger show {job_id}", best(args.runs, lambda: ledger_process(root, "show", str(job_id))),
                 best(args.runs, lambda: bare(root, "SELECT * FROM jobs WHERE id = ?", (job_id,)))))
    export = root / "failed.json"
    export.write_text(json.dumps({"failed": [{"storyboard": p, "segment_index": i, "version": v}
                                             for p, i, v in failed]}), encoding="utf-8")
    shutil.copy(root / "ledger.db", root / "pristine.db")

    def requeue() -> float:
        shutil.copy(root / "pristine.db", root / "ledger.db")
        return ledger_process(root, "requeue", "--from-file", str(export))

    def bare_requeue() -> float:
        started = time.perf_counter()
        with closing(sqlite3.connect(root / "ledger.db")) as conn:
            conn.execute("CREATE TEMP TABLE wanted (path TEXT, segment INTEGER, version INTEGER)")
            conn.executemany("INSERT INTO wanted VALUES (?, ?, ?)", failed)
            conn.execute("SELECT j.id FROM wanted w JOIN storyboards s ON s.path = w.path JOIN jobs j ON "
                         "j.storyboard_id = s.id AND j.segment_index = w.segment AND j.version = w.version").fetchall()
        return time.perf_counter() - started

    rows.append((f"ledger requeue --from-file ({len(failed):,} jobs)", best(args.runs, requeue),
                 best(args.runs, bare_requeue)))
    width = max(len(name) for name, _, _ in rows)
    for name, took, query in rows:
        verdict = "✔" if took <= 2 * query + start else "✘"
        print(f"{name:<{width}}  {took:6.2f} s   bare query {query:6.2f} s   "
              f"(2x bare + start = {2 * query + start:5.2f} s) {verdict}")

    shutil.copy(root / "pristine.db", root / "ledger.db")
    big_rate, big_cpu = work_rate(root, args.work)
    small = cache / "small"
    shutil.rmtree(small, ignore_errors=True)
    small.mkdir()
    (small / "input").mkdir()
    doc = {"segments": [{"segment_index": s, "prompt_text": f"small {s}"} for s in range(1, args.work // 2 + 1)]}
    (small / "input" / "storyboard_small.json").write_text(json.dumps(doc), encoding="utf-8")
    ledger_process(small, "scan", env={"SORA_API_KEY": KEY})
    small_rate, small_cpu = work_rate(small, args.work)
    print(f"\nledger work --limit {args.work} --concurrency 64, G=0: {big_rate:.0f} jobs/s, {big_cpu:.0f} CPU-ms/job "
          f"in the {jobs:,}-job ledger; {small_rate:.0f} jobs/s, {small_cpu:.0f} CPU-ms/job in a {args.work:,}-job "
          f"ledger (same cost goal: ratio {big_cpu / small_cpu:.2f})")


if __name__ == "__main__":
    main()
