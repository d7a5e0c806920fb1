"""Downloads are bounded in size, speed and time, and never decompressed behind ledger's back.

Every test runs the real client against the simulator's file route over real sockets, with the
simulator playing a hostile or odd video host.
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest

from ledger.client import SoraClient
from ledger.download import DownloadLimits, download_file
from ledger.errors import DownloadError, DownloadTooLarge, DownloadTooSlow, UnsafeDownload
from ledger.sim import SimServer

MakeSim = Callable[..., SimServer]
MakeClient = Callable[..., SoraClient]
VIDEO_BYTES = 600_000
MIB = 1 << 20


def leftovers(folder: Path) -> List[str]:
    """Every file under ``folder``: after a failed download there must be none."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def video_url(sim: SimServer, client: SoraClient) -> str:
    """A finished task's signed video URL (the simulator must have ``gen_seconds=0``)."""
    url = client.get(client.create({"prompt": "A lighthouse in a storm."}).task_id).video_url
    assert url is not None
    return url


@pytest.fixture
def host(make_sim: MakeSim, make_client: MakeClient) -> Callable[..., Tuple[SimServer, SoraClient, str]]:
    """Start a simulator serving 600 kB videos (SimConfig fields as keywords) with a client whose
    downloads have ``limits`` (keyword, a DownloadLimits); return (sim, client, a video URL)."""

    def make(limits: DownloadLimits = DownloadLimits(), read_timeout: float = 5.0,
             **config: Any) -> Tuple[SimServer, SoraClient, str]:
        config.setdefault("video_bytes", VIDEO_BYTES)
        sim = make_sim(gen_seconds=0, **config)
        client = make_client(sim.base_url, get_retries=0, read_timeout=read_timeout, download_limits=limits)
        return sim, client, video_url(sim, client)

    return make


def fetch(client: SoraClient, url: str, folder: Path) -> Any:
    return client.download(url, folder / "story" / "v.mp4", root=folder)


def assert_is_the_video(sim: SimServer, folder: Path, result: Any) -> None:
    data = (folder / "story" / "v.mp4").read_bytes()
    assert result.size == len(data) == sim.stats()["video_size"]
    assert result.sha256 == hashlib.sha256(data).hexdigest() == sim.stats()["video_sha256"]
    assert leftovers(folder) == ["story/v.mp4"]


# --- size -----------------------------------------------------------------------------------------


def test_an_announced_length_above_the_limit_is_refused_before_any_byte_is_read(host, tmp_path: Path) -> None:
    sim, client, url = host(limits=DownloadLimits(max_bytes=100_000))
    with pytest.raises(DownloadTooLarge) as info:
        fetch(client, url, tmp_path)
    assert info.value.terminal and info.value.kind == "too_large"
    assert "announces 600,000 bytes, more than MAX_DOWNLOAD_BYTES=100,000" in str(info.value)
    assert "ledger requeue --failed" in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
def test_an_endless_body_without_content_length_is_cut_off_at_the_limit(host, tmp_path: Path, chunked: bool) -> None:
    sim, client, url = host(limits=DownloadLimits(max_bytes=2 * MIB))
    sim.inject("file", "no_length", chunked=chunked, endless=True)
    with pytest.raises(DownloadTooLarge) as info:
        fetch(client, url, tmp_path)
    assert info.value.terminal and "passed MAX_DOWNLOAD_BYTES=2,097,152" in str(info.value)
    assert "Content-Length absent" in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
def test_a_complete_body_without_content_length_is_saved(host, tmp_path: Path, chunked: bool) -> None:
    sim, client, url = host()
    sim.inject("file", "no_length", chunked=chunked)
    assert_is_the_video(sim, tmp_path, fetch(client, url, tmp_path))


@pytest.mark.parametrize("opts", [{"extra": 300_000}, {"endless": True}], ids=["longer", "endless"])
def test_a_body_longer_than_its_content_length_is_read_only_to_its_announced_end(host, tmp_path: Path,
                                                                                  opts) -> None:
    sim, client, url = host()
    sim.inject("file", "overlong", **opts)
    assert_is_the_video(sim, tmp_path, fetch(client, url, tmp_path))
    # The connection carrying the surplus is not reused: the next call gets a clean answer.
    [task] = sim.tasks()
    assert client.get(task["task_id"]).status == "completed"


# --- compressed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
def test_a_compressed_video_is_stored_decoded(host, tmp_path: Path, encoding: str) -> None:
    sim, client, url = host(file_encoding=encoding)
    assert_is_the_video(sim, tmp_path, fetch(client, url, tmp_path))


def test_a_broken_gzip_body_resumes_in_compressed_bytes(host, tmp_path: Path) -> None:
    sim, client, url = host(file_encoding="gzip")
    sim.inject("file", "truncate", fraction=0.5)
    result = download_file(client._session, url, tmp_path / "story" / "v.mp4", root=tmp_path, timeout=(2, 5),
                           chunk_size=64 * 1024)
    assert result.resumes == 1
    assert_is_the_video(sim, tmp_path, result)


def test_a_gzip_bomb_is_stopped_within_megabytes_and_ends_the_job(host, tmp_path: Path) -> None:
    sim, client, url = host()
    sim.inject("file", "gzip_bomb", mib=2048)  # 2 GiB of zeros in ~2 MB
    started = time.monotonic()
    with pytest.raises(DownloadTooLarge) as info:
        fetch(client, url, tmp_path)
    assert info.value.terminal, "a bomb must not be downloaded again at every attempt"
    assert "decompression bomb" in str(info.value)
    decoded = int(re.search(r"expanded to more than ([\d,]+)", str(info.value)).group(1).replace(",", ""))
    assert decoded <= 8 * MIB
    assert leftovers(tmp_path) == []
    assert time.monotonic() - started < 30  # generous: it takes milliseconds


def test_a_decoded_body_counts_against_the_size_limit(host, tmp_path: Path) -> None:
    sim, client, url = host(limits=DownloadLimits(max_bytes=3 * MIB))
    sim.inject("file", "gzip_bomb", mib=64)  # 64 KB on the wire: under the limit as sent
    with pytest.raises(DownloadTooLarge) as info:
        fetch(client, url, tmp_path)
    assert "decoded video passed MAX_DOWNLOAD_BYTES=3,145,728" in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["br", "zstd", "gzip, gzip", "compress"])
def test_an_encoding_ledger_does_not_decode_is_refused_clearly(host, tmp_path: Path, name: str) -> None:
    sim, client, url = host()
    sim.inject("file", "encoding", name=name)
    with pytest.raises(UnsafeDownload) as info:
        fetch(client, url, tmp_path)
    assert info.value.terminal and f"Content-Encoding {name!r}" in str(info.value)
    assert "only gzip and deflate" in str(info.value) and "ledger requeue --failed" in str(info.value)
    assert leftovers(tmp_path) == []


def test_a_corrupt_gzip_body_is_a_download_error_retried_later(host, tmp_path: Path) -> None:
    sim, client, url = host()
    sim.inject("file", "encoding", name="gzip")  # labelled gzip, sent as plain bytes
    with pytest.raises(DownloadError) as info:
        fetch(client, url, tmp_path)
    assert type(info.value) is DownloadError and not info.value.terminal
    assert "gzip-encoded body is corrupt" in str(info.value)
    assert leftovers(tmp_path) == []


# --- speed and time -------------------------------------------------------------------------------


def test_a_dripping_server_is_cut_below_the_minimum_speed(host, tmp_path: Path) -> None:
    sim, client, url = host(limits=DownloadLimits(min_bytes_per_second=1000, speed_time=1.0))
    sim.inject("file", "drip", bytes=1, seconds=0.1)  # 10 B/s, and never silent for long
    started = time.monotonic()
    with pytest.raises(DownloadTooSlow) as info:
        fetch(client, url, tmp_path)
    assert not info.value.terminal and info.value.kind == "too_slow"
    assert "slower than DOWNLOAD_MIN_BYTES_PER_SECOND=1,000" in str(info.value)
    assert time.monotonic() - started < 10  # about 1 s; it used to hang for ever
    assert leftovers(tmp_path) == []


def test_a_server_silent_for_the_whole_speed_window_is_cut(host, tmp_path: Path) -> None:
    sim, client, url = host(limits=DownloadLimits(min_bytes_per_second=1, speed_time=1.0), read_timeout=60)
    sim.inject("file", "drip", bytes=1, seconds=30)
    started = time.monotonic()
    with pytest.raises(DownloadTooSlow) as info:
        fetch(client, url, tmp_path)
    assert "no data for 1 s" in str(info.value)
    assert time.monotonic() - started < 10  # about 1 s, not READ_TIMEOUT's 60
    assert leftovers(tmp_path) == []


def test_the_total_deadline_ends_a_download_that_keeps_just_enough_pace(host, tmp_path: Path) -> None:
    sim, client, url = host(limits=DownloadLimits(min_bytes_per_second=0, total_seconds=3.0), read_timeout=60)
    sim.inject("file", "drip", bytes=1, seconds=2.7)
    started = time.monotonic()
    with pytest.raises(DownloadTooSlow) as info:
        fetch(client, url, tmp_path)
    elapsed = time.monotonic() - started
    assert "not finished within DOWNLOAD_TIMEOUT=3 s" in str(info.value)
    # The read waiting for the third drop (due at 5.4 s) is cut at the deadline (3 s), not after it.
    assert elapsed < 4.8
    assert leftovers(tmp_path) == []


def test_default_limits_let_a_normal_download_through(host, tmp_path: Path) -> None:
    sim, client, url = host(video_bytes=5 * MIB, file_rate=20.0)  # a quarter of a second at 20 MB/s
    assert_is_the_video(sim, tmp_path, fetch(client, url, tmp_path))
