"""A local record of paid tasks whose id the ledger could not store yet.

After a paid ``POST /create`` answers, its task id must reach the ledger before anything else
happens to that job. If the database is unavailable at that moment (locked past its timeout,
unreachable), the worker keeps the id in memory and appends it here — one fsynced JSON line per task,
in a file per worker process — and keeps trying. A later ``ledger work`` replays the files of
workers that are gone, so the task is adopted instead of looked for (or, worse, paid again).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from sqlalchemy.engine import make_url

from .leases import owner_is_dead

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Entry:
    """One created task waiting for its job's row."""

    job_id: int
    task_id: str
    cost_cents: Optional[int]
    created_at: str  # ISO 8601, UTC, when the create answered


def journal_folder(database_url: str, cwd: Path) -> Path:
    """Beside a SQLite ledger file (``ledger.db-created/``); in the working folder otherwise."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database).expanduser()
        db = db if db.is_absolute() else cwd / db
        return db.with_name(db.name + "-created")
    return cwd / ".ledger-created"


class Journal:
    """The journal file of one worker process (``owner``) inside ``folder``."""

    def __init__(self, folder: Path, owner: str) -> None:
        self.folder = folder
        self.owner = owner
        self.path = folder / (_UNSAFE.sub("_", owner) + ".jsonl")

    def append(self, entry: Entry) -> None:
        """Add one entry, durably (fsynced) before returning."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({**asdict(entry), "owner": self.owner}, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Forget this worker's file (every entry in it reached the ledger)."""
        try:
            self.path.unlink()
        except OSError:
            pass


def orphaned(folder: Path, me: str) -> Iterator[Tuple[Path, List[Entry]]]:
    """The files of workers that are no longer running, with their entries."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        entries: List[Entry] = []
        owner = ""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            log.warning("cannot read the task journal %s: %s", path, exc)
            continue
        for line in lines:
            try:
                data = json.loads(line)
                owner = str(data.pop("owner", owner))
                entries.append(Entry(**data))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash: its task is found by reconciliation instead
        if owner and (owner == me or not owner_is_dead(owner)):
            continue  # still being written by a live worker, which records these itself
        yield path, entries
