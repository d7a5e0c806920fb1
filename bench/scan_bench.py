"""Scan throughput: first scan and unchanged re-scan of a large tree, against a naive ORM baseline.

    python bench/scan_bench.py [--files 5000] [--segments 10] [--versions 2]

Generates FILES storyboards x SEGMENTS segments (x VERSIONS jobs each) in a temp folder, then in the
same run times:
  * ledger's first scan (discover, validate in parallel, bulk upsert into a fresh SQLite ledger);
  * an unchanged re-scan of the same tree (must write nothing);
  * the baseline: the same files validated the same way, then inserted one ORM object per statement
    (``session.add`` + ``flush`` per job) into another fresh ledger.
Goals (issue #2): first scan >= 20,000 jobs/s; re-scan >= 5x faster than the first and writing no rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.db import open_ledger  # noqa: E402
from ledger.models import Job, Storyboard, path_key  # noqa: E402
from ledger.scan import parse_batches, scan  # noqa: E402
from ledger.settings import load_settings  # noqa: E402
from ledger.states import State  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.storyboard import Layout, discover  # noqa: E402

PROMPTS = ["A drone shot over a neon city at dusk", "Close-up of rain on a window at night",
           "A red fox steps onto a mossy log", "Waves crash on black rocks in slow motion"]


def generate(root: Path, files: int, segments: int) -> None:
    for f in range(files):
        folder = root / "input" / f"ep{f % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"metadata": {"project_name": f"project {f}"},
               "segments": [{"segment_index": s, "prompt_text": f"{PROMPTS[s % 4]}, shot {f}-{s}.",
                             "duration_seconds": 10 if s % 3 else 15, "resolution": "horizontal",
                             "is_pro": False, "director_intent": "Establishing shot.",
                             **({"image_url": f"https://example.com/ref/{f}/{s}.jpg"} if s % 2 else {})}
                            for s in range(1, segments + 1)]}
        (folder / f"storyboard_{f:05d}.json").write_text(json.dumps(doc), encoding="utf-8")


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def naive_baseline(root: Path, settings, layout: Layout) -> float:
    """Same discovery and validation, then one ORM INSERT per row (what a first version would do)."""
    engine = open_ledger(f"sqlite:///{root / 'naive.db'}")
    started = time.perf_counter()
    parsed = [item for batch in parse_batches(discover(layout.input_dir), settings, layout, {})
              for item in batch]
    with Session(engine) as session:
        for item in parsed:
            board = Storyboard(path=item.path, path_key=path_key(item.path), project_name=item.project_name, fingerprint=item.fingerprint,
                               segment_count=item.segment_count, present=True)
            session.add(board)
            session.flush()
            for spec in item.jobs:
                job = Job(storyboard_id=board.id, segment_index=spec.segment_index, version=spec.version,
                          state=State.PENDING, params=dict(spec.params), params_sha=spec.params_sha,
                          is_pro=spec.is_pro, target_dir=spec.target_dir)
                session.add(job)
                session.flush()
        session.commit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--versions", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-scan-bench-") as tmp:
        root = Path(tmp)
        generate(root, args.files, args.segments)
        settings = load_settings(root, {"GEN_COUNT_PER_SEGMENT": str(args.versions)})
        layout = Layout.from_settings(settings, root)
        expected = args.files * args.segments * args.versions

        store = Store(open_ledger(settings.database_url), cwd=root)
        started = time.perf_counter()
        first = scan(settings, root, store)
        first_s = time.perf_counter() - started
        assert first.outcome.added == expected and not first.problems, (first.outcome, first.problems[:3])
        events_before = count(root / "ledger.db", "events")

        started = time.perf_counter()
        again = scan(settings, root, store)
        rescan_s = time.perf_counter() - started
        assert again.outcome.writes == 0 and count(root / "ledger.db", "events") == events_before

        naive_s = naive_baseline(root, settings, layout)
        assert count(root / "naive.db", "jobs") == expected

    cores = os.cpu_count()
    print(f"scan benchmark: {args.files} storyboards x {args.segments} segments x {args.versions} versions "
          f"= {expected:,} jobs ({cores} cores)")
    print(f"{'':34}{'seconds':>10}{'jobs/s':>12}")
    print(f"{'baseline: one ORM insert per row':34}{naive_s:>10.2f}{expected / naive_s:>12,.0f}")
    print(f"{'ledger first scan':34}{first_s:>10.2f}{expected / first_s:>12,.0f}")
    print(f"{'ledger unchanged re-scan':34}{rescan_s:>10.2f}{expected / rescan_s:>12,.0f}")
    print(f"first scan vs baseline: {naive_s / first_s:.1f}x faster (goal: >= 20,000 jobs/s -> "
          f"{'met' if expected / first_s >= 20000 else 'NOT met'})")
    print(f"re-scan vs first scan:  {first_s / rescan_s:.1f}x faster, rows written: 0 (goal: >= 5x -> "
          f"{'met' if first_s / rescan_s >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
