"""``ledger scan``: find storyboards, validate them, and bring the ledger in step with them."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import UsageError
from .settings import Settings
from .store import ScanOutcome, Store
from .storyboard import Layout, ParsedStoryboard, Problem, discover, ledger_path, read_storyboard

# Below this many files a process pool costs more to start than it saves.
POOL_THRESHOLD = 200
FILES_PER_TASK = 50


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


def _read_many(paths: Sequence[Path], settings: Settings, layout: Layout, known: Dict[str, Optional[str]]) -> List[ParsedStoryboard]:
    return [read_storyboard(p, settings, layout, known.get(ledger_path(p, layout.cwd))) for p in paths]


def parse_all(paths: Sequence[Path], settings: Settings, layout: Layout, known: Dict[str, Optional[str]],
              processes: Optional[int] = None) -> List[ParsedStoryboard]:
    """Read every file, in parallel when there are many: JSON Schema validation is CPU-bound."""
    workers = processes if processes is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(paths) < POOL_THRESHOLD:
        return _read_many(paths, settings, layout, known)
    batches = [paths[i:i + FILES_PER_TASK] for i in range(0, len(paths), FILES_PER_TASK)]
    parsed: List[ParsedStoryboard] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for chunk in pool.map(_read_many, batches, [settings] * len(batches), [layout] * len(batches),
                              [{ledger_path(p, layout.cwd): known.get(ledger_path(p, layout.cwd)) for p in b} for b in batches]):
            parsed.extend(chunk)
    return parsed


def scan(settings: Settings, cwd: Path, store: Store, *, dry_run: bool = False, requeue_changed: bool = False,
         processes: Optional[int] = None) -> ScanReport:
    """Discover, validate and upsert. Invalid files are reported and left as the ledger knew them."""
    layout = Layout.from_settings(settings, cwd)
    if not layout.input_dir.is_dir():
        raise UsageError(f"input folder not found: {layout.input_dir}")
    skip = [layout.output_dir] if layout.output_mode == "centralized" else []
    paths = discover(layout.input_dir, skip=skip)
    scope = ledger_path(layout.input_dir, cwd)
    known: Dict[str, Optional[str]] = dict(store.fingerprints(scope))
    parsed = parse_all(paths, settings, layout, known, processes)
    report = ScanReport(files=[p.path for p in parsed])
    for item in parsed:
        report.problems.extend(item.problems)
        report.warnings.extend(item.warnings)
    report.outcome = store.apply_scan(parsed, scope, dry_run=dry_run, requeue_changed=requeue_changed)
    return report
