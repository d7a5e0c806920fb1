"""``ledger scan``: find storyboards, validate them, and bring the ledger in step with them."""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence

from .errors import UsageError
from .settings import Settings
from .store import ScanOutcome, Store, path_in_scope
from .storyboard import Layout, ParsedStoryboard, Problem, ledger_path, printable, read_storyboard, walk_input

log = logging.getLogger(__name__)

BATCH = 250  # files per batch: one batch is stored while the next ones are parsed
POOL_THRESHOLD = 1000  # below this many files a process pool costs more to start than it saves
NOT_SCANNED = "not scanned — storyboard files are named storyboard*.json"


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


def read_guarded(path: Path, settings: Settings, layout: Layout, fingerprint: Optional[str]) -> ParsedStoryboard:
    """``read_storyboard``, except that a failure nobody foresaw makes this one file invalid
    instead of ending the scan: one bad file never stops the others from being recorded."""
    try:
        return read_storyboard(path, settings, layout, fingerprint)
    except Exception as exc:  # noqa: BLE001 - the point is that nothing escapes
        display = printable(ledger_path(path, layout.cwd))
        log.debug("reading %s failed", display, exc_info=True)
        return ParsedStoryboard(display, "", problems=[Problem(
            display, "", f"could not be read: unexpected {type(exc).__name__}: {str(exc)[:200]}")])


def _read_many(paths: Sequence[Path], settings: Settings, layout: Layout,
               fingerprints: Sequence[Optional[str]]) -> List[ParsedStoryboard]:
    return [read_guarded(p, settings, layout, f) for p, f in zip(paths, fingerprints)]


def parse_batches(paths: Sequence[Path], settings: Settings, layout: Layout, known: Mapping[str, str],
                  processes: Optional[int] = None) -> Iterator[List[ParsedStoryboard]]:
    """Read every file, ``BATCH`` at a time and in order, skipping the parse of files whose
    fingerprint is known. With many files, other processes parse while the caller stores."""
    fingerprints = [known.get(ledger_path(p, layout.cwd)) for p in paths]
    starts = range(0, len(paths), BATCH)
    path_batches = [paths[i:i + BATCH] for i in starts]
    print_batches = [fingerprints[i:i + BATCH] for i in starts]
    workers = (os.cpu_count() or 1) if processes is None else processes
    pool = _pool(workers) if workers >= 2 and len(paths) >= POOL_THRESHOLD else None
    if pool is None:
        yield from map(_read_many, path_batches, repeat(settings), repeat(layout), print_batches)
        return
    with pool:
        futures = [pool.submit(_read_many, b, settings, layout, f) for b, f in zip(path_batches, print_batches)]
        try:
            yield from _results(futures, path_batches, print_batches, settings, layout)
        finally:
            # A scan that stopped early (a database error) does not wait for the rest to be parsed.
            pool.shutdown(cancel_futures=True)


def _pool(workers: int) -> Optional[ProcessPoolExecutor]:
    try:
        return ProcessPoolExecutor(max_workers=workers)
    except (OSError, NotImplementedError) as exc:  # no semaphores (some containers): parse here
        log.warning("cannot start scan worker processes (%s); reading every file here", exc)
        return None


def _results(futures: Sequence["Future[List[ParsedStoryboard]]"], path_batches: Sequence[Sequence[Path]],
             print_batches: Sequence[Sequence[Optional[str]]], settings: Settings,
             layout: Layout) -> Iterator[List[ParsedStoryboard]]:
    """Each batch as another process parsed it or, when that process died or its answer was lost,
    parsed again here: the scan still covers every file."""
    failed = False
    for future, batch, prints in zip(futures, path_batches, print_batches):
        try:
            parsed = future.result()
        except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, a pickling failure, ...
            if not failed:
                log.warning("a scan worker process failed (%s: %s); reading its files here instead",
                            type(exc).__name__, exc)
            failed = True
            parsed = _read_many(batch, settings, layout, prints)
        yield parsed


def _output_modes(settings: Settings, layout: Layout, store: Store, files: Sequence[str]) -> Layout:
    """Which output mode each storyboard gets. A storyboard keeps the mode it was first recorded
    with, whatever OUTPUT_MODE says later, so its takes never end up in two folders. An explicit
    ``--output-mode`` applies to every storyboard, and is refused (before anything is written)
    for storyboards that already have videos, paid or under way, in the other mode."""
    if settings.sources.get("output_mode") != "flag":
        if layout.remembered:
            log.info("%d storyboard(s) keep the output mode they were first recorded with, not OUTPUT_MODE=%s "
                     "(--output-mode changes it while they have no videos yet)", len(layout.remembered),
                     layout.output_mode)
        return layout
    present = set(files)
    other = sorted(path for path in layout.remembered if path in present)
    blocked = store.started_jobs(other)
    if blocked:
        shown = [f"{path} ({layout.remembered[path]}, {count} job(s) generated or under way)"
                 for path, count in sorted(blocked.items())[:5]]
        more = f" and {len(blocked) - 5} more" if len(blocked) > 5 else ""
        raise UsageError(f"--output-mode {layout.output_mode}: {len(blocked)} storyboard(s) already have videos in "
                         f"the other output mode, and a storyboard's takes stay in one place: {'; '.join(shown)}{more}. "
                         f"Run without --output-mode to go on where they are; nothing was written")
    return replace(layout, remembered={})


def scan(settings: Settings, cwd: Path, store: Store, *, dry_run: bool = False, requeue_changed: bool = False,
         processes: Optional[int] = None) -> ScanReport:
    """Discover, validate and upsert. Invalid files are reported and left as the ledger knew them."""
    layout = Layout.from_settings(settings, cwd)
    if not layout.input_dir.is_dir():
        raise UsageError(f"input folder not found: {layout.input_dir}")
    scope = ledger_path(layout.input_dir, cwd)
    # Only the modes that differ from the settings' matter, and the layout goes to every parse worker.
    layout = replace(layout, remembered={path: mode for path, mode in store.output_modes(scope).items()
                                         if mode != layout.output_mode})
    skip = [layout.output_dir] if "centralized" in {layout.output_mode, *layout.remembered.values()} else []
    found = walk_input(layout.input_dir, skip=skip)
    paths = found.storyboards
    report = ScanReport(files=[ledger_path(p, cwd) for p in paths])
    report.warnings.extend(Problem(printable(ledger_path(p, cwd)), None, NOT_SCANNED) for p in found.not_storyboards)
    report.problems.extend(Problem(printable(ledger_path(p, cwd)), None, f"cannot read the folder: {why}")
                           for p, why in found.unreadable)
    layout = _output_modes(settings, layout, store, report.files)

    def collect(batches: Iterable[List[ParsedStoryboard]]) -> Iterator[List[ParsedStoryboard]]:
        for batch in batches:
            for item in batch:
                report.problems.extend(item.problems)
                report.warnings.extend(item.warnings)
            yield batch

    known = store.fingerprints(scope)
    # A storyboard in a folder that could not be listed is not gone: left as the ledger knew it, as an
    # unreadable file is.
    hidden = {path for path in known for folder, _ in found.unreadable
              if path_in_scope(path, ledger_path(folder, cwd))}
    batches = parse_batches(paths, settings, layout, known, processes)
    report.outcome = store.apply_scan(collect(batches), set(report.files) | hidden, scope, dry_run=dry_run,
                                      requeue_changed=requeue_changed)
    return report
