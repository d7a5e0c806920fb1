"""``ledger scan``: find storyboards, validate them, and bring the ledger in step with them."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence

from .errors import UsageError
from .settings import Settings
from .store import ScanOutcome, Store
from .storyboard import Layout, ParsedStoryboard, Problem, discover, ledger_path, read_storyboard

BATCH = 250  # files per batch: one batch is stored while the next ones are parsed
POOL_THRESHOLD = 1000  # below this many files a process pool costs more to start than it saves


@dataclass
class ScanReport:
    """Everything ``ledger scan`` tells the user."""

    files: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)
    outcome: ScanOutcome = field(default_factory=ScanOutcome)

    @property
    def invalid_files(self) -> List[str]:
        return sorted({p.path for p in self.problems})


def _read_many(paths: Sequence[Path], settings: Settings, layout: Layout,
               fingerprints: Sequence[Optional[str]]) -> List[ParsedStoryboard]:
    return [read_storyboard(p, settings, layout, f) for p, f in zip(paths, fingerprints)]


def parse_batches(paths: Sequence[Path], settings: Settings, layout: Layout, known: Mapping[str, str],
                  processes: Optional[int] = None) -> Iterator[List[ParsedStoryboard]]:
    """Read every file, ``BATCH`` at a time and in order, skipping the parse of files whose
    fingerprint is known. With many files, other processes parse while the caller stores."""
    fingerprints = [known.get(ledger_path(p, layout.cwd)) for p in paths]
    starts = range(0, len(paths), BATCH)
    path_batches = [paths[i:i + BATCH] for i in starts]
    print_batches = [fingerprints[i:i + BATCH] for i in starts]
    workers = (os.cpu_count() or 1) if processes is None else processes
    if workers < 2 or len(paths) < POOL_THRESHOLD:
        yield from map(_read_many, path_batches, repeat(settings), repeat(layout), print_batches)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_read_many, path_batches, repeat(settings), repeat(layout), print_batches)


def scan(settings: Settings, cwd: Path, store: Store, *, dry_run: bool = False, requeue_changed: bool = False,
         processes: Optional[int] = None) -> ScanReport:
    """Discover, validate and upsert. Invalid files are reported and left as the ledger knew them."""
    layout = Layout.from_settings(settings, cwd)
    if not layout.input_dir.is_dir():
        raise UsageError(f"input folder not found: {layout.input_dir}")
    skip = [layout.output_dir] if layout.output_mode == "centralized" else []
    paths = discover(layout.input_dir, skip=skip)
    scope = ledger_path(layout.input_dir, cwd)
    report = ScanReport(files=[ledger_path(p, cwd) for p in paths])

    def collect(batches: Iterable[List[ParsedStoryboard]]) -> Iterator[List[ParsedStoryboard]]:
        for batch in batches:
            for item in batch:
                report.problems.extend(item.problems)
                report.warnings.extend(item.warnings)
            yield batch

    batches = parse_batches(paths, settings, layout, store.fingerprints(scope), processes)
    report.outcome = store.apply_scan(collect(batches), set(report.files), scope, dry_run=dry_run,
                                      requeue_changed=requeue_changed)
    return report
