"""Disk trouble while saving a video or its sidecar ends with one classified ``OutputError``.

Real conditions, no mocks: a regular file where a folder should be, a read-only tmpfs mount, an
immutable folder (``chattr +i``: tests run as root, which chmod does not stop), and a tiny tmpfs
that fills up. Tests needing mount or chattr skip, saying why, where the machine does not allow them.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

from ledger.client import SoraClient
from ledger.download import write_json_atomic
from ledger.errors import DownloadError, OutputError
from ledger.sim import SimServer

MakeSim = Callable[..., SimServer]
MakeClient = Callable[..., SoraClient]
VIDEO_BYTES = 600_000


def leftovers(folder: Path) -> List[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _run(*command: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(command, 127, "", str(exc))


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs with ``options`` on a folder (skips the test where mounting is not allowed)."""
    mounted: List[Path] = []

    def mount(folder: Path, options: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder))
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        _run("umount", "-l", str(folder))


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Make a folder immutable with ``chattr +i`` (skips where chattr is unavailable); undone after."""
    folders: List[Path] = []

    def make(folder: Path) -> None:
        done = _run("chattr", "+i", str(folder))
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here (chattr +i): {done.stderr.strip()}")
        folders.append(folder)

    yield make
    for folder in folders:
        _run("chattr", "-i", str(folder))


@pytest.fixture
def served(make_sim: MakeSim, make_client: MakeClient) -> Tuple[SimServer, SoraClient, str]:
    """(simulator serving 600 kB videos, its client, a finished video's URL)."""
    sim = make_sim(gen_seconds=0, video_bytes=VIDEO_BYTES)
    client = make_client(sim.base_url, get_retries=0)
    url = client.get(client.create({"prompt": "A lighthouse in a storm."}).task_id).video_url
    assert url is not None
    return sim, client, url


def assert_one_line_naming(error: OutputError, path: Path, kind: str, cause: str) -> None:
    text = str(error)
    assert error.kind == kind and error.terminal
    assert "\n" not in text and str(path) in text and cause in text
    assert "paid for" in text and "ledger requeue --failed" in text


# --- the video ------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocker", ["story", "story/Segment_1"], ids=["parent", "folder itself"])
def test_a_file_where_the_output_folder_should_be_is_an_output_error(served, tmp_path: Path, blocker: str) -> None:
    sim, client, url = served
    root = tmp_path / "output"
    root.mkdir()
    (root / blocker).parent.mkdir(parents=True, exist_ok=True)
    (root / blocker).write_text("not a folder")
    with pytest.raises(OutputError) as info:
        client.download(url, root / "story" / "Segment_1" / "1_v1_abcd.mp4", root=root)
    assert_one_line_naming(info.value, root / blocker, "output_unwritable", "a file stands where a folder is needed")
    assert leftovers(root) == [blocker]
    assert sim.stats()["downloads_started"] == 0, "nothing is fetched when it cannot be stored"


def test_a_read_only_output_mount_is_an_output_error(served, tmp_path: Path, tmpfs) -> None:
    sim, client, url = served
    root = tmpfs(tmp_path / "output", "ro,size=1m")
    with pytest.raises(OutputError) as info:
        client.download(url, root / "story" / "v.mp4", root=root)
    assert_one_line_naming(info.value, root / "story", "output_unwritable", "Read-only file system")


def test_an_output_folder_made_read_only_after_it_was_made_is_an_output_error(served, tmp_path: Path,
                                                                              tmpfs) -> None:
    sim, client, url = served
    root = tmpfs(tmp_path / "output", "size=1m")
    (root / "story").mkdir()
    if _run("mount", "-o", "remount,ro", str(root)).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    with pytest.raises(OutputError) as info:
        client.download(url, root / "story" / "v.mp4", root=root)
    assert_one_line_naming(info.value, root / "story" / "v.mp4.part", "output_unwritable", "Read-only file system")
    assert leftovers(root) == []


def test_an_immutable_output_folder_is_an_output_error(served, tmp_path: Path, immutable) -> None:
    sim, client, url = served
    folder = tmp_path / "output" / "story"
    folder.mkdir(parents=True)
    immutable(folder)
    with pytest.raises(OutputError) as info:
        client.download(url, folder / "v.mp4", root=tmp_path / "output")
    assert_one_line_naming(info.value, folder / "v.mp4.part", "output_unwritable", "Operation not permitted")
    assert leftovers(tmp_path) == []


def test_a_name_too_long_for_the_file_system_is_an_output_error(served, tmp_path: Path) -> None:
    sim, client, url = served
    dest = tmp_path / "story" / ("x" * 300 + ".mp4")
    with pytest.raises(OutputError) as info:
        client.download(url, dest, root=tmp_path)
    assert info.value.kind == "output_unwritable" and "File name too long" in str(info.value)


def test_a_full_disk_is_disk_full_and_leaves_no_part_file(served, tmp_path: Path, tmpfs) -> None:
    sim, client, url = served
    root = tmpfs(tmp_path / "output", "size=256k")  # the video is 600 kB
    with pytest.raises(OutputError) as info:
        client.download(url, root / "story" / "v.mp4", root=root)
    assert_one_line_naming(info.value, root / "story" / "v.mp4.part", "disk_full", "No space left on device")
    assert isinstance(info.value, DownloadError)  # the lead's worker maps DownloadError subclasses
    assert leftovers(root) == []


def test_a_folder_locked_mid_download_gives_an_output_error_even_when_cleanup_fails(
        make_sim: MakeSim, make_client: MakeClient, tmp_path: Path, immutable,
        caplog: pytest.LogCaptureFixture) -> None:
    sim = make_sim(gen_seconds=0, video_bytes=VIDEO_BYTES, file_rate=0.5)  # 1.2 s for the video
    client = make_client(sim.base_url, get_retries=0)
    url = client.get(client.create({"prompt": "A lighthouse in a storm."}).task_id).video_url
    folder = tmp_path / "story"
    folder.mkdir()
    part = folder / "v.mp4.part"

    def lock_once_started() -> None:
        deadline = time.monotonic() + 10
        while not part.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        immutable(folder)  # the rename and the removal of the part file now both fail with EPERM

    locker = threading.Thread(target=lock_once_started)
    locker.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ledger.download"):
            with pytest.raises(OutputError) as info:
                client.download(url, folder / "v.mp4", root=tmp_path)
    finally:
        locker.join()
    assert_one_line_naming(info.value, folder / "v.mp4", "output_unwritable", "Operation not permitted")
    assert "could not remove" in caplog.text and str(part) in caplog.text


# --- the sidecar ----------------------------------------------------------------------------------


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system has no space left."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_sidecar_on_a_full_disk_is_disk_full_keeps_the_old_one_and_no_temp_file(tmp_path: Path,
                                                                                   tmpfs) -> None:
    root = tmpfs(tmp_path / "output", "size=64k")
    sidecar = root / "1_v1_abcd.json"
    write_json_atomic(sidecar, {"size": 1})
    fill(root)
    with pytest.raises(OutputError) as info:
        write_json_atomic(sidecar, {"prompt": "霓虹城市的航拍" * 500, "size": 3443})
    assert_one_line_naming(info.value, sidecar, "disk_full", "No space left on device")
    assert json.loads(sidecar.read_text(encoding="utf-8")) == {"size": 1}
    assert sorted(os.listdir(root)) == ["1_v1_abcd.json", "filler"]


@pytest.mark.parametrize("case", ["file in the way", "immutable folder"])
def test_a_sidecar_that_cannot_be_written_is_an_output_error(tmp_path: Path, immutable, case: str) -> None:
    folder = tmp_path / "story"
    if case == "file in the way":
        folder.write_text("not a folder")
        expected = "a file stands where a folder is needed"
    else:
        folder.mkdir()
        immutable(folder)
        expected = "Operation not permitted"
    with pytest.raises(OutputError) as info:
        write_json_atomic(folder / "Segment_1" / "x.json" if case == "file in the way" else folder / "x.json",
                          {"ok": True})
    assert info.value.kind == "output_unwritable" and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_sidecar_error_can_leave_out_the_paid_video_hint(tmp_path: Path) -> None:
    (tmp_path / "exports").write_text("not a folder")
    with pytest.raises(OutputError) as info:
        write_json_atomic(tmp_path / "exports" / "failed.json", {"count": 0}, hint=None)
    assert "paid for" not in str(info.value) and str(tmp_path / "exports") in str(info.value)
