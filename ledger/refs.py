"""Short job references, as users type them: one resolver for ``show``, ``pick`` and the rest.

A reference is a job id (``42``) or ``PATH#SEGMENT`` / ``PATH#SEGMENTvVERSION``, where PATH is the
stored storyboard path or any unique tail of it that starts at a folder boundary, with ``.json``
optional: ``storyboard_a#2v1``, ``storyboard_a.json#2v1``, ``ep1/storyboard_a.json#2v1``,
``input/ep1/storyboard_a.json#2v1``. An empty PATH (``#2v1``) means the only storyboard there is.
Every lookup is an indexed query or a pass over the storyboards table; jobs are never listed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .errors import UsageError
from .states import State
from .store import JobRow, Store, segment_jobs, storyboards_by_suffix
from .storyboard import ledger_path

REF_HELP = ("a job id, or PATH#SEGMENTvVERSION where PATH is any unique tail of the storyboard's path "
            "(.json optional), e.g. storyboard_a#2v1")
_SEGMENT = re.compile(r"^(\d+)(?:[vV](\d+))?$")
_SHOWN = 10  # candidates listed in an "ambiguous" message


class BadReference(UsageError):
    """A reference that names no job, or more than one."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a job id, or a storyboard path (tail), a segment and maybe a version."""

    text: str
    job_id: Optional[int] = None
    path: str = ""
    segment: int = 0
    version: Optional[int] = None


def parse(text: str) -> Reference:
    """Split a reference into its parts; raises ``BadReference`` when it has neither form."""
    cleaned = text.strip()
    if cleaned.isdigit():
        return Reference(cleaned, job_id=int(cleaned))
    path, hash_mark, rest = cleaned.rpartition("#")
    match = _SEGMENT.match(rest) if hash_mark else None
    if match is None:
        raise BadReference(f"{text!r} is not a job reference: use {REF_HELP}")
    return Reference(cleaned, path=path.replace("\\", "/"), segment=int(match.group(1)),
                     version=int(match.group(2)) if match.group(2) else None)


def _names(path: str, cwd: Path) -> List[str]:
    """What a typed PATH may be stored as: itself (normalised like stored paths) and with ``.json``."""
    if os.path.isabs(path) or path.startswith(("./", "../")):
        path = ledger_path(Path(os.path.normpath(path)), cwd)
    path = path.strip("/") if not os.path.isabs(path) else path
    names = [path]
    if not path.lower().endswith(".json"):
        names.append(path + ".json")
    return names


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", … and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def resolve_storyboard(store: Store, ref: Reference, cwd: Path) -> Tuple[int, str]:
    """The (id, stored path) of the one storyboard ``ref.path`` names."""
    names = _names(ref.path, cwd) if ref.path else []
    found = storyboards_by_suffix(store, names, limit=_SHOWN * 5)
    exact = [item for item in found if item[1] in names]
    if exact:
        return exact[0]
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"no storyboard in this ledger is {ref.path!r} or ends with /{ref.path}" if ref.path \
            else "this ledger has no storyboards yet (run `ledger scan`)"
        raise BadReference(f"{ref.text!r}: {what}")
    example = found[0][1].rsplit("/", 2)
    hint = "/".join(example[-2:]) if len(example) > 1 else found[0][1]
    raise BadReference(f"{ref.text!r} is ambiguous: {'its path' if ref.path else 'no path given; it'} matches "
                       f"{len(found)}{'+' if len(found) == _SHOWN * 5 else ''} storyboards: "
                       f"{_listing([path for _, path in found])}; give more of the path, e.g. {hint}#{ref.segment}"
                       + (f"v{ref.version}" if ref.version else ""))


def resolve(store: Store, text: str, cwd: Path) -> JobRow:
    """The one job ``text`` names; ``BadReference`` says why when there is none or several."""
    ref = parse(text)
    if ref.job_id is not None:
        job = store.job(ref.job_id)
        if job is None:
            raise BadReference(f"no job {ref.job_id} in this ledger")
        return job
    board_id, path = resolve_storyboard(store, ref, cwd)
    found = segment_jobs(store, board_id, ref.segment, ref.version)
    if not found:
        versions = [j.version for j in segment_jobs(store, board_id, ref.segment)] if ref.version else []
        if versions:
            raise BadReference(f"{ref.text!r}: segment {ref.segment} of {path} has no version {ref.version} "
                               f"(versions: {', '.join(map(str, versions))})")
        raise BadReference(f"{ref.text!r}: {path} has no segment {ref.segment} in this ledger")
    live = [j for j in found if j.state is not State.REMOVED] or found
    if len(live) > 1:
        raise BadReference(f"{ref.text!r} is ambiguous: segment {ref.segment} has {len(live)} versions: "
                           f"{_listing([f'{j.label} ({j.state.value})' for j in live])}; add the version, "
                           f"e.g. {ref.path or ''}#{ref.segment}v{live[0].version}")
    return live[0]


def resolve_segment(store: Store, text: str, cwd: Path) -> Tuple[int, str, int]:
    """(storyboard id, path, segment index) of the segment ``text`` names: ``PATH#SEGMENT``, or any
    reference to one of its takes."""
    ref = parse(text)
    if ref.job_id is None and ref.version is None:
        board_id, path = resolve_storyboard(store, ref, cwd)
        return board_id, path, ref.segment
    job = resolve(store, text, cwd)
    return job.storyboard_id, job.storyboard_path, job.segment_index
