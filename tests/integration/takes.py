"""A workspace whose storyboards went through the real pipeline (simulator, `ledger run`): done
takes with real MP4 files, and failed ones with the API's message. Shared by the review, pick
and export tests."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

from tests.helpers import query

STORY = {
    "metadata": {"project_name": "霓虹城"},
    "segments": [
        {"segment_index": 1, "prompt_text": "无人机俯瞰黄昏时的霓虹城市。", "director_intent": "开场镜头，建立世界观。"},
        {"segment_index": 2, "prompt_text": "A cat walks across a neon street.", "duration_seconds": 15,
         "resolution": "vertical", "director_intent": "Follow the cat."},
        {"segment_index": 3, "prompt_text": "[policy-reject] a scene the service refuses", "director_intent": "refused"},
    ],
}
BOARD = "input/ep1/storyboard_a.json"


def generate(ws, work_env: Dict[str, str], boards: Dict[str, dict] = None, versions: int = 2) -> None:
    """Write the storyboards and run the whole pipeline against the simulator."""
    for relpath, doc in (boards or {"ep1/storyboard_a.json": STORY}).items():
        ws.storyboard(relpath, doc)
    result = ws.cli("run", "--no-progress", env={**work_env, "GEN_COUNT_PER_SEGMENT": str(versions)})
    assert result.exit_code in (0, 1), result.output


def take(ws, segment: int, version: int, board: str = BOARD) -> Tuple[int, str, str]:
    """(job id, state, video path) of one take."""
    return query(ws.root, "SELECT j.id, j.state, j.video_path FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                          "WHERE s.path = ? AND j.segment_index = ? AND j.version = ?", board, segment, version)[0]


def picks(ws) -> List[Tuple[str, int, int]]:
    """(storyboard, segment, version) of every pick, read with plain sqlite3."""
    return query(ws.root, "SELECT s.path, p.segment_index, j.version FROM picks p JOIN jobs j ON j.id = p.job_id "
                          "JOIN storyboards s ON s.id = p.storyboard_id ORDER BY s.path, p.segment_index")


def make_mp4(path: Path, seconds: float, colour: str = "navy") -> Path:
    """A real H.264 MP4 of ``seconds`` (solid colour), made with imageio-ffmpeg's ffmpeg binary."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"color=c={colour}:s=160x90:r=10:d={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True, timeout=60)
    return path
