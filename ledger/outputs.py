"""What is already on disk in a job's target folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

SUPERSEDED = "superseded"


def existing_videos(target_dir: Path, segment_index: int, version: int) -> List[Path]:
    """Finished, non-empty ``{i}_v{version}_*.mp4`` files (ours or the earlier tool's), oldest first."""
    try:
        candidates = list(target_dir.glob(f"{segment_index}_v{version}_*.mp4"))
    except OSError:
        return []
    found = []
    for path in candidates:
        try:
            if path.is_file() and path.stat().st_size > 0:
                found.append(path)
        except OSError:
            continue
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def supersede(target_dir: Path, segment_index: int, version: int) -> Optional[Path]:
    """Move a version's videos and sidecars into ``superseded/`` before it is generated again,
    so a finished video is never overwritten or lost. Returns the folder when anything moved."""
    moved = False
    keep = target_dir / SUPERSEDED
    for video in existing_videos(target_dir, segment_index, version):
        keep.mkdir(parents=True, exist_ok=True)
        for path in (video, video.with_suffix(".json")):
            if path.exists():
                os.replace(path, keep / path.name)
                moved = True
    return keep if moved else None
