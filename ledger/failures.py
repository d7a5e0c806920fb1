"""Failed jobs: the export file users keep, and reading it back to choose what to requeue."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .download import write_json_atomic
from .errors import UsageError
from .models import iso_utc
from .store import JobRow, Store
from .storyboard import ledger_path


def failure_entry(job: JobRow) -> Dict[str, Any]:
    """Everything a user needs to understand and retry one failed job."""
    return {
        "job_id": job.id,
        "storyboard": job.storyboard_path,
        "segment_index": job.segment_index,
        "version": job.version,
        "prompt": job.params.get("prompt"),
        "parameters": dict(job.params),
        "error_message": job.error_message,
        "error_kind": job.error_kind,
        "attempts": job.attempts,
        "remote_task_id": job.remote_task_id,
        "target_dir": job.target_dir,
        "created_at": iso_utc(job.created_at),
        "submitted_at": iso_utc(job.submitted_at),
        "failed_at": iso_utc(job.finished_at or job.updated_at),
    }


def default_export_path(output_dir: Path, now: Optional[datetime] = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return output_dir / f"failed_tasks_{stamp}.json"


def export_failed(store: Store, path: Path) -> int:
    """Write every failed job to ``path`` (atomically); returns how many."""
    entries = [failure_entry(job) for job in store.failed_jobs()]
    write_json_atomic(path, {"exported_at": datetime.now(timezone.utc).isoformat(), "count": len(entries),
                             "failed": entries}, hint=None)
    return len(entries)


@dataclass(frozen=True)
class FileSelection:
    """Which jobs a failed-tasks file names, and the entries it could not place."""

    job_ids: List[int]
    unmatched: List[str]


def _entries(path: Path) -> List[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read a failed-tasks file: {exc}") from exc
    items = data.get("failed", data.get("tasks")) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UsageError(f"{path}: expected a list of failed tasks (or an object with a \"failed\" list)")
    return items


def select_from_file(store: Store, path: Path, cwd: Path) -> FileSelection:
    """The jobs named by an export file (ours, or the earlier tool's list of
    {storyboard, segment_index, version} entries). Storyboard and segment win over ``job_id``,
    which only identifies a job within the ledger that wrote the file."""
    keys: List[Tuple[str, int, Optional[int]]] = []
    ids: List[int] = []
    unmatched: List[str] = []
    for number, entry in enumerate(_entries(path)):
        board = entry.get("storyboard") or entry.get("storyboard_path") or entry.get("storyboard_file")
        segment = entry.get("segment_index", entry.get("segment"))
        if isinstance(board, str) and isinstance(segment, int):
            version = entry.get("version") if isinstance(entry.get("version"), int) else None
            keys.append((ledger_path(Path(board), cwd), segment, version))
        elif isinstance(entry.get("job_id"), int):
            ids.append(entry["job_id"])
        else:
            unmatched.append(f"entry {number}: no storyboard + segment_index (or job_id)")
    found = store.find_jobs(keys) if keys else []
    matched = {(j.storyboard_path, j.segment_index) for j in found}
    unmatched.extend(f"{p} segment {i}" for p, i, _ in keys if (p, i) not in matched)
    return FileSelection(sorted({j.id for j in found} | set(ids)), unmatched)

