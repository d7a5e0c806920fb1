"""Pure parts of downloading: safe file names, bounded decoding, and the download settings."""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import pytest

from ledger.client import SoraClient
from ledger.download import DownloadLimits, _Decoder, video_filename
from ledger.errors import ConfigError
from ledger.settings import Settings, load_settings
from ledger.sim.server import gzip_bomb

MIB = 1 << 20
SAFE_NAME = re.compile(r"^\d+_v\d+_[A-Za-z0-9_-]{1,8}\.mp4$")


# --- file names -----------------------------------------------------------------------------------


def test_a_uuid_task_id_keeps_its_usual_file_name() -> None:
    assert video_filename(3, 2, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0") == "3_v2_0f1e2d3c.mp4"
    assert video_filename(1, 1, "task_0001") == "1_v1_task_000.mp4"
    # /v1/videos ids all start with "video_": the token is what follows
    assert video_filename(2, 1, "video_68d2f0a1c5e48190b1f3") == "2_v1_68d2f0a1.mp4"
    # Ark ids (cgt-<time>-<random>) made in one second share their head: the tail tells them apart
    assert video_filename(2, 1, "cgt-20250331175019-68d9t") == "2_v1_68d9t.mp4"
    assert video_filename(2, 1, "cgt-20250331175019-x7q2k") != video_filename(2, 1, "cgt-20250331175019-68d9t")


@pytest.mark.parametrize("task_id", ["../../x", "..", "a/b\\c", "ab\0cd", "x\ny\rz\x1b", "/etc/passwd",
                                     "", "视频任务", "\ud800", "\0\0\0", " . ", "-" * 20])
def test_a_hostile_task_id_never_reaches_a_file_name_unchecked(task_id: str) -> None:
    name = video_filename(1, 1, task_id)
    assert SAFE_NAME.match(name), name
    assert Path(name).name == name and ".." not in name


def test_an_id_with_nothing_usable_gets_a_stable_short_hash() -> None:
    assert video_filename(1, 1, "视频任务") == video_filename(1, 1, "视频任务")
    assert video_filename(1, 1, "视频任务") != video_filename(1, 1, "视频任务二")
    assert video_filename(1, 1, "../../x") == "1_v1_x.mp4"


# --- decoding -------------------------------------------------------------------------------------


def decode(decoder: _Decoder, body: bytes, feed: int, piece_max: int = 64 * 1024) -> bytes:
    out = bytearray()
    for pos in range(0, len(body), feed):
        for piece in decoder.feed(body[pos:pos + feed]):
            assert len(piece) <= piece_max, "output comes in bounded slices"
            out += piece
    decoder.finish()
    return bytes(out)


@pytest.mark.parametrize("feed, piece", [(1 << 20, 64 * 1024), (64, 1000), (1, 100)])
def test_a_bomb_decodes_fully_in_bounded_slices_when_nothing_stops_it(feed: int, piece: int) -> None:
    length, pieces = gzip_bomb(8)
    body = b"".join(pieces)
    assert len(body) == length and len(body) < 20_000
    # Small reads and slices leave output inside zlib after the input is used up: none may be lost.
    assert decode(_Decoder("gzip", piece), body, feed, piece) == bytes(8 * MIB)


@pytest.mark.parametrize("feed", [1, 7, 4096])
def test_several_gzip_members_and_any_read_sizes_decode(feed: int) -> None:
    body = gzip.compress(b"first member ") + gzip.compress(b"second member")
    assert decode(_Decoder("gzip", 64 * 1024), body, feed) == b"first member second member"


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
@pytest.mark.parametrize("feed", [1, 4096])
def test_deflate_is_decoded_whether_zlib_wrapped_or_raw(wbits: int, feed: int) -> None:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    data = bytes(range(256)) * 100
    assert decode(_Decoder("deflate", 64 * 1024), packer.compress(data) + packer.flush(), feed) == data


def test_a_truncated_or_trailing_stream_is_an_error() -> None:
    body = gzip.compress(b"x" * 1000)
    with pytest.raises(zlib.error):
        decode(_Decoder("gzip", 1024), body[:-4], 100)
    packer = zlib.compressobj()
    with pytest.raises(zlib.error):
        decode(_Decoder("deflate", 1024), packer.compress(b"x" * 1000) + packer.flush() + b"junk", 100)


# --- settings -------------------------------------------------------------------------------------


def test_download_limits_default_the_same_in_settings_and_code() -> None:
    settings = Settings()
    assert DownloadLimits() == DownloadLimits(settings.max_download_bytes, settings.download_min_bytes_per_second,
                                              settings.download_speed_time, settings.download_timeout)
    assert DownloadLimits().max_bytes == 4 << 30


@pytest.mark.parametrize("text, size", [("1000", 1000), ("500MB", 500_000_000), ("4 GiB", 4 << 30),
                                        ("1.5gib", 3 << 29), ("64KiB", 65536)])
def test_max_download_bytes_takes_units(tmp_path: Path, text: str, size: int) -> None:
    assert load_settings(tmp_path, {"MAX_DOWNLOAD_BYTES": text}).max_download_bytes == size


@pytest.mark.parametrize("env, words", [
    ({"MAX_DOWNLOAD_BYTES": "4 parsecs"}, "MAX_DOWNLOAD_BYTES='4 parsecs' from environment"),
    ({"MAX_DOWNLOAD_BYTES": "0"}, "at least 1 byte"),
    ({"DOWNLOAD_MIN_BYTES_PER_SECOND": "-1"}, "at least 0"),
    ({"DOWNLOAD_TIMEOUT": "0"}, "must be positive"),
])
def test_bad_download_settings_name_themselves(tmp_path: Path, env, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env)
    assert words in str(info.value)


def test_the_client_built_from_settings_carries_the_download_limits(tmp_path: Path) -> None:
    env = {"MAX_DOWNLOAD_BYTES": "1GiB", "DOWNLOAD_MIN_BYTES_PER_SECOND": "0", "DOWNLOAD_SPEED_TIME": "5",
           "DOWNLOAD_TIMEOUT": "60"}
    with SoraClient.from_settings(load_settings(tmp_path, env)) as client:
        assert client.download_limits == DownloadLimits(1 << 30, 0, 5.0, 60.0)
