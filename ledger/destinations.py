"""Where the videos of a run go, checked before anything is paid.

A job's folder is worked out at scan time from the settings of that moment. Until its video exists
it follows the settings of the run at hand — a fixed ``OUTPUT_DIR`` is where the next download goes,
also for a job that failed because the old folder could not be written — and before the first
create every folder the run will write to is proved writable: a generation paid for and then
impossible to save is money lost.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Set, Tuple

from .errors import ConfigError
from .i18n import tr
from .settings import Settings
from .storyboard import Layout, ledger_path
from .store import JobScope, Store


def follow_settings(settings: Settings, cwd: Path, store: Store, scope: JobScope) -> Tuple[int, List[Path]]:
    """Move the unfinished jobs of ``scope`` to the folders the settings give now; returns how many
    moved and the folders the run writes under (``OUTPUT_DIR``, and each in-place storyboard's)."""
    layout = Layout.from_settings(settings, cwd)
    moves = []
    roots: Set[Path] = set()
    output_dir = output_root(settings, cwd)
    folders: Dict[str, str] = {}
    for job_id, path, segment, target, state, mode in store.unfinished_targets(scope):
        folder = folders.get(path)
        if folder is None:
            where = replace(layout, output_mode=mode) if mode else layout  # a storyboard keeps its first mode
            folder = folders[path] = ledger_path(where.storyboard_folder(cwd / path), cwd)
            roots.add(output_dir if where.output_mode == "centralized" else (cwd / path).parent)
        new = f"{folder}/Segment_{segment}"
        if new != target:
            moves.append((job_id, state, target, new))
    return (store.retarget(moves) if moves else 0), sorted(roots)


def output_root(settings: Settings, cwd: Path) -> Path:
    return settings.output_dir if settings.output_dir.is_absolute() else cwd / settings.output_dir


def prove_writable(folders: List[Path], output_dir: Path) -> None:
    """Create each folder, then write, fsync, rename and remove a probe file in it, as a download
    does; ``ConfigError`` (one line: the folder, the cause, what to set) at the first that fails."""
    for folder in folders:
        probe = folder / f".ledger-write-test-{uuid.uuid4().hex[:8]}"
        final = probe.with_suffix(".done")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as handle:
                handle.write(b"ledger")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(probe, final)
        except OSError as exc:
            cause = exc.strerror or type(exc).__name__
            fix = (tr("set OUTPUT_DIR (or --output-dir) to a folder this machine can write") if folder == output_dir
                   else tr("make the storyboard's folder writable, or use --output-mode centralized"))
            raise ConfigError(tr("the videos cannot be saved in {folder}: {cause}; nothing was sent — {fix}").format(
                folder=folder, cause=cause, fix=fix)) from exc
        finally:  # also on Ctrl+C: the probe never stays behind
            for leftover in (probe, final):
                try:
                    leftover.unlink()
                except OSError:
                    pass
