"""Small builders the tests share."""
from __future__ import annotations

from typing import Any


def segments(*prompts: str, **extra: Any) -> dict:
    """A storyboard in the format users already have, one segment per prompt."""
    return {"metadata": {"project_name": "test"},
            "segments": [{"segment_index": i, "prompt_text": p, **extra} for i, p in enumerate(prompts, start=1)]}
