"""The review page at size: 1,000 segments x 2 takes, written and then loaded in headless Chromium.

    python bench/review_bench.py [--segments 1000] [--takes 2] [--runs 3] [--screenshot docs/review.png]

Builds a ledger of SEGMENTS segments (50 storyboards) x TAKES takes, every take done with a real
MP4 (hard links to the simulator's sample) except one in 20 failed, then measures in the same run:
  * `ledger review` as a user runs it (a process): seconds to write the page, and its size, beside
    `ledger picks` (a process that starts and opens the ledger, nothing more);
  * the page served over loopback HTTP (so every request can be counted) in Debian's headless
    Chromium: first contentful paint, the load event, and how many video requests it makes before
    anything is scrolled -- in all, and for takes outside the first screen;
  * the baseline: the same takes as the page one writes first -- a plain
    `<video controls preload="metadata" src=...>` per take, nothing lazy.
Goal (issue #10): fast with 1,000 x 2 takes; no video downloads before it is scrolled into view.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "ledger" / "sim" / "sample.mp4"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PROMPTS = ["无人机俯瞰黄昏时的霓虹城市，雨后的街道反射着招牌的光。", "A red fox steps onto a mossy log at dawn.",
           "Close-up of rain running down a window at night, a city blurred behind it.",
           "Waves crash on black rocks in slow motion, spray lit by a low sun."]


def build(root: Path, segments: int, takes: int) -> None:
    """Storyboards, a scanned ledger, and every take done (one in 20 failed) with a real file."""
    boards = 50
    per_board = max(1, segments // boards)
    for b in range(boards):
        doc = {"metadata": {"project_name": f"episode {b + 1}"},
               "segments": [{"segment_index": s, "prompt_text": f"{PROMPTS[s % 4]} (shot {b + 1}-{s})",
                             "director_intent": "Establishing shot." if s % 2 else "Close on the subject."}
                            for s in range(1, per_board + 1)]}
        path = root / "input" / f"ep{b // 10}" / f"storyboard_{b:03d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "GEN_COUNT_PER_SEGMENT": str(takes)}
    subprocess.run([sys.executable, "-m", "ledger", "scan"], cwd=root, env=env, check=True, capture_output=True)
    with sqlite3.connect(root / "ledger.db") as conn:
        rows = conn.execute("SELECT id, segment_index, version, target_dir FROM jobs").fetchall()
        updates = []
        for job_id, segment, version, target in rows:
            task = str(uuid.uuid4())
            if job_id % 20 == 0:
                updates.append(("failed", None, task, "内容审核未通过：提示词可能违反内容政策", "remote_failed", job_id))
                continue
            video = Path(target) / f"{segment}_v{version}_{task[:8]}.mp4"
            (root / video).parent.mkdir(parents=True, exist_ok=True)
            os.link(SAMPLE, root / video)
            updates.append(("done", video.as_posix(), task, None, None, job_id))
        conn.executemany("UPDATE jobs SET state = ?, video_path = ?, remote_task_id = ?, error_message = ?, "
                         "error_kind = ?, cost_cents = 30, spent_cents = 30, progress = 100, "
                         "submitted_at = '2026-11-30 01:00:00', finished_at = '2026-11-30 01:04:31' WHERE id = ?",
                         updates)


def write_review(root: Path) -> Tuple[float, Path]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ledger", "review"], cwd=root, check=True, capture_output=True,
                          text=True)
    return time.perf_counter() - started, root / done.stdout.strip().splitlines()[-1]


def opening(root: Path) -> float:
    """Seconds for a ledger process that does next to nothing (start, open the ledger, one query)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ledger", "picks"], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - started


def write_baseline(root: Path) -> Path:
    """The page one writes first: every take a <video preload="metadata" src=...>, no script."""
    with sqlite3.connect(root / "ledger.db") as conn:
        rows = conn.execute("SELECT s.path, j.segment_index, j.version, j.video_path FROM jobs j JOIN storyboards s "
                            "ON s.id = j.storyboard_id WHERE j.state = 'done' ORDER BY s.path, j.segment_index, "
                            "j.version").fetchall()
    page = root / "output" / "baseline.html"
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>baseline</title></head><body>"]
    for path, segment, version, video in rows:
        rel = os.path.relpath(root / video, page.parent)
        parts.append(f"<div><h3>{html.escape(path)} #{segment} v{version}</h3>"
                     f"<video controls muted preload='metadata' width='320' src='{html.escape(rel)}'></video></div>")
    page.write_text("".join(parts) + "</body></html>", encoding="utf-8")
    return page


class Counting(SimpleHTTPRequestHandler):
    """Serves the output folder and counts the video requests it gets."""

    hits: List[str] = []
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0].endswith(".mp4"):
            with self.lock:
                self.hits.append(self.path)
        super().do_GET()


def load(browser, url: str, settle: float = 2.0) -> Dict[str, float]:
    """Open ``url`` in a fresh context; paint and load times, and video requests before any scroll."""
    Counting.hits.clear()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # A media element delays the load event until its metadata is in: a page of 2,000 eager
    # videos takes minutes to "load", so wait for it with a generous bound.
    page.goto(url, wait_until="domcontentloaded", timeout=300_000)
    page.wait_for_function("() => document.readyState === 'complete'", timeout=300_000, polling=100)
    page.wait_for_timeout(settle * 1000)
    timing = page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const paint = performance.getEntriesByName('first-contentful-paint')[0];
        const fold = innerHeight;
        // ledger's players become <video> elements near the screen; the baseline's are videos from the start
        const players = Array.from(document.querySelectorAll('.player, body > div > video'));
        const started = p => p.tagName === 'VIDEO' ? p.currentSrc !== '' : p.querySelector('video') !== null;
        const below = players.filter(p => p.getBoundingClientRect().top > fold);
        return {fcp: paint ? paint.startTime : -1, load: nav.loadEventEnd, videos: players.length,
                first_screen: players.length - below.length, below_started: below.filter(started).length};
    }""")
    timing["requests"] = len(set(Counting.hits))
    context.close()
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--takes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page's first screen here")
    options = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        build(root, options.segments, options.takes)
        print(f"ledger: {options.segments} segments x {options.takes} takes built in "
              f"{time.perf_counter() - started:.1f} s")
        writes = [write_review(root) for _ in range(options.runs)]
        seconds = statistics.median(w[0] for w in writes)
        floor = statistics.median(opening(root) for _ in range(options.runs))
        page = writes[0][1]
        baseline = write_baseline(root)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Counting, directory=str(page.parent)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ours = [load(browser, f"{base}/{page.name}") for _ in range(options.runs)]
            theirs = [load(browser, f"{base}/{baseline.name}")]  # one run: it is slow
            if options.screenshot:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                shot = context.new_page()
                shot.goto(f"{base}/{page.name}", wait_until="load")
                shot.wait_for_timeout(1500)
                options.screenshot.parent.mkdir(parents=True, exist_ok=True)
                shot.screenshot(path=str(options.screenshot))
                context.close()
            browser.close()
        server.shutdown()

        def med(runs: List[Dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"ledger review (a process, median of {options.runs}): {seconds:.2f} s to write "
              f"{page.stat().st_size / 1e6:.2f} MB ({ours[0]['videos']:.0f} videos); "
              f"`ledger picks` (a process that only opens the ledger): {floor:.2f} s")
        print(f"{'':34}{'ledger review':>16}{'baseline page':>16}")
        print(f"{'page size':34}{page.stat().st_size / 1e6:>13.2f} MB{baseline.stat().st_size / 1e6:>13.2f} MB")
        print(f"{'first contentful paint':34}{med(ours, 'fcp'):>13.0f} ms{med(theirs, 'fcp'):>13.0f} ms")
        print(f"{'load event':34}{med(ours, 'load'):>13.0f} ms{med(theirs, 'load'):>13.0f} ms")
        print(f"{'video requests before scrolling':34}{med(ours, 'requests'):>16.0f}{med(theirs, 'requests'):>16.0f}")
        print(f"{'  of takes in the first screen':34}{med(ours, 'first_screen'):>16.0f}"
              f"{med(theirs, 'first_screen'):>16.0f}")
        print(f"{'  of takes below it':34}{med(ours, 'below_started'):>16.0f}{med(theirs, 'below_started'):>16.0f}")


if __name__ == "__main__":
    main()
