"""Downloads of generated videos from the simulator's file route, over real sockets."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable, List

import pytest

from ledger.client import SoraClient
from ledger.download import download_file, sidecar_path, video_filename, write_json_atomic
from ledger.errors import DownloadError, Interrupted, UnsafeDownload, UrlExpired
from ledger.sim import SimServer

MakeSim = Callable[..., SimServer]
MakeClient = Callable[..., SoraClient]
VIDEO_BYTES = 600_000  # several chunks at the 64 KiB chunk size used below


def finished_video_url(sim: SimServer, client: SoraClient) -> str:
    """Create a task on a simulator with ``gen_seconds=0`` and return its signed video URL."""
    task = client.create({"prompt": "A lighthouse in a storm."})
    url = client.get(task.task_id).video_url
    assert url is not None
    return url


def leftovers(folder: Path) -> List[str]:
    """Every file under ``folder``: after a failed download there must be none."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def big(make_sim: MakeSim, make_client: MakeClient):
    """(simulator serving 600 kB videos, its client, a finished video's URL)."""
    sim = make_sim(gen_seconds=0, video_bytes=VIDEO_BYTES)
    client = make_client(sim.base_url, get_retries=1)
    return sim, client, finished_video_url(sim, client)


def test_a_finished_video_lands_complete_under_its_final_name(make_sim: MakeSim, make_client: MakeClient,
                                                             tmp_path: Path) -> None:
    sim = make_sim(gen_seconds=0)
    client = make_client(sim.base_url)
    task = client.create({"prompt": "A lighthouse in a storm."})
    url = client.get(task.task_id).video_url
    assert url is not None
    dest = tmp_path / "story" / "Segment_1" / video_filename(1, 2, task.task_id)

    result = client.download(url, dest, root=tmp_path)

    assert result.path == dest.resolve() and dest.name == f"1_v2_{task.task_id[:8]}.mp4"
    data = dest.read_bytes()
    assert data[4:8] == b"ftyp"  # a real MP4
    assert result.size == len(data) == sim.stats()["video_size"]
    assert result.sha256 == hashlib.sha256(data).hexdigest() == sim.stats()["video_sha256"]
    assert result.resumes == 0 and leftovers(tmp_path) == [f"story/Segment_1/{dest.name}"]
    assert sim.stats()["file_requests_with_auth"] == 0, "the API key must not travel to the video host"


def test_a_truncated_download_resumes_with_range(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.inject("file", "truncate", fraction=0.6)
    chunk = 64 * 1024

    result = download_file(client._session, url, tmp_path / "v.mp4", root=tmp_path, timeout=(2, 5),
                           chunk_size=chunk)

    assert result.resumes == 1 and result.size == VIDEO_BYTES
    assert result.sha256 == sim.stats()["video_sha256"]
    assert hashlib.sha256((tmp_path / "v.mp4").read_bytes()).hexdigest() == result.sha256
    # Only the missing part came again (plus at most the chunk that was being read when it broke).
    assert sim.stats()["bytes_served"] < VIDEO_BYTES + chunk


def test_a_server_ignoring_range_makes_the_download_restart_cleanly(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.inject("file", "truncate", fraction=0.5)
    sim.inject("file", "ignore_range")

    result = client.download(url, tmp_path / "v.mp4", root=tmp_path)

    assert result.resumes == 1 and result.sha256 == sim.stats()["video_sha256"]
    assert (tmp_path / "v.mp4").stat().st_size == VIDEO_BYTES
    assert sim.stats()["bytes_served"] == VIDEO_BYTES // 2 + VIDEO_BYTES


def test_a_content_length_larger_than_the_file_fails_and_leaves_nothing(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.inject("file", "bad_length", extra=5000)
    with pytest.raises(DownloadError) as info:
        client.download(url, tmp_path / "out" / "v.mp4", root=tmp_path)
    assert f"announced {VIDEO_BYTES + 5000} bytes" in str(info.value)
    assert leftovers(tmp_path) == []


def test_endless_truncation_gives_up_after_max_resumes(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.inject("file", "truncate", count=10, fraction=0.1)
    with pytest.raises(DownloadError) as info:
        download_file(client._session, url, tmp_path / "v.mp4", root=tmp_path, timeout=(2, 5), max_resumes=2)
    assert "gave up after 2 resume(s)" in str(info.value)
    assert sim.stats()["requests_by_route"]["file"] == 3 and leftovers(tmp_path) == []


def test_a_server_error_on_the_video_is_a_download_error(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.inject("file", "http_502_html", count=5)
    with pytest.raises(DownloadError) as info:
        client.download(url, tmp_path / "v.mp4", root=tmp_path)
    assert type(info.value) is DownloadError and info.value.http_status == 502
    assert leftovers(tmp_path) == []


def test_an_unreachable_video_host_is_a_download_error_naming_the_cause(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.stop()
    with pytest.raises(DownloadError) as info:
        client.download(url, tmp_path / "v.mp4", root=tmp_path)
    assert "refused" in str(info.value) and "sig=" not in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/v.mp4", "javascript:alert(1)", "/v.mp4"])
def test_only_http_urls_are_fetched(client: SoraClient, tmp_path: Path, url: str) -> None:
    with pytest.raises(UnsafeDownload):
        client.download(url, tmp_path / "out" / "v.mp4", root=tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_destination_outside_the_output_root_is_refused(big, tmp_path: Path) -> None:
    sim, client, url = big
    root = tmp_path / "output"
    (root / "story").mkdir(parents=True)
    (root / "story" / "link").symlink_to(tmp_path)
    for dest in (root / ".." / "escaped.mp4", root / "story" / "link" / "escaped.mp4", root):
        with pytest.raises(UnsafeDownload):
            client.download(url, dest, root=root)
    assert leftovers(tmp_path) == [] and sim.stats()["downloads_started"] == 0


def test_an_expired_url_is_reported_as_expired(make_sim: MakeSim, make_client: MakeClient, tmp_path: Path) -> None:
    sim = make_sim(gen_seconds=0, url_ttl=0)
    client = make_client(sim.base_url)
    with pytest.raises(UrlExpired) as info:
        client.download(finished_video_url(sim, client), tmp_path / "v.mp4", root=tmp_path)
    assert info.value.http_status == 403 and "poll the task" in str(info.value)
    assert "sig=" not in str(info.value)  # the signature is not something to print
    assert leftovers(tmp_path) == []


def test_a_fresh_poll_gives_a_working_url_after_an_expiry(big, tmp_path: Path) -> None:
    sim, client, url = big
    sim.inject("file", "expired")
    with pytest.raises(UrlExpired):
        client.download(url, tmp_path / "v.mp4", root=tmp_path)
    [task] = sim.tasks()
    fresh = client.get(task["task_id"]).video_url
    assert fresh is not None
    assert client.download(fresh, tmp_path / "v.mp4", root=tmp_path).size == VIDEO_BYTES


class CancelAfter(threading.Event):
    """An event that reports itself set from its ``calls``-th check on, like a Ctrl+C mid-download."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.remaining = calls

    def is_set(self) -> bool:
        self.remaining -= 1
        return self.remaining < 0 or super().is_set()


def test_cancelling_stops_between_chunks_and_removes_the_part_file(big, tmp_path: Path) -> None:
    sim, client, url = big
    with pytest.raises(Interrupted):
        download_file(client._session, url, tmp_path / "v.mp4", root=tmp_path, timeout=(2, 5),
                      cancel=CancelAfter(3), chunk_size=64 * 1024)
    assert leftovers(tmp_path) == []
    assert 0 < sim.stats()["downloads_started"]


def test_a_sidecar_is_written_atomically_as_readable_utf8(tmp_path: Path) -> None:
    video = tmp_path / video_filename(3, 1, "0f1e2d3c-aaaa")
    sidecar = sidecar_path(video)
    assert sidecar == tmp_path / "3_v1_0f1e2d3c.json"
    write_json_atomic(sidecar, {"prompt": "旧的", "size": 1})

    write_json_atomic(sidecar, {"prompt": "霓虹城市的航拍", "size": 3443, "path": video})

    text = sidecar.read_text(encoding="utf-8")
    assert "霓虹城市的航拍" in text and text.startswith('{\n  "prompt"')
    assert json.loads(text)["path"] == str(video)
    assert os.listdir(tmp_path) == [sidecar.name]


def test_a_failed_json_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json_atomic(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not json": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == {"ok": True}
    assert os.listdir(tmp_path) == ["x.json"]
