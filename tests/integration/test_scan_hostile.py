"""`ledger scan` against hostile files: each is reported on one line (file, JSON pointer, what is wrong)
or skipped with a warning, and every other file is still recorded. Real files, FIFOs, sockets,
symlinks and a real SQLite ledger; a subprocess with a timeout wherever a regression would hang."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from ledger import scan as scan_module
from ledger.db import open_ledger
from ledger.settings import load_settings
from ledger.store import Store
from tests.helpers import query, segments, spawn

GOOD = segments("a calm sea", "a red fox")  # 2 segments x 2 versions = 4 jobs


def recorded(root: Path) -> Dict[str, int]:
    """Jobs per storyboard path, as the ledger file holds them."""
    return dict(query(root, "SELECT s.path, count(*) FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                            "GROUP BY s.path"))


def lines(text: str, prefix: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def scan_process(ws, *args: str, env: Dict[str, str] = None):
    """`ledger scan` as a separate process that must end within a minute, however hostile the files."""
    proc = spawn(ws.root, env or {}, "scan", *args)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("ledger scan still running after 60 s")
    return proc.returncode, stdout, stderr


def test_a_file_name_with_invalid_utf8_bytes_is_invalid_and_the_others_are_recorded(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    with open(os.fsencode(ws.input) + b"/storyboard_\xff.json", "w", encoding="utf-8") as handle:
        json.dump(GOOD, handle)
    result = ws.cli("scan")
    assert result.exit_code == 2, result.output
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_\\xff.json: /: the file name is not valid UTF-8 (shown with its bytes escaped); "
        "rename the file"]
    assert "Traceback" not in result.output
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_a_lone_surrogate_in_a_prompt_is_invalid_with_its_pointer(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    ws.storyboard("storyboard_s.json", '{"segments": [{"segment_index": 1, "prompt_text": "ok"}, '
                                       '{"segment_index": 2, "prompt_text": "bad \\ud800 half"}]}')
    result = ws.cli("scan")
    assert result.exit_code == 2, result.output
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_s.json: /segments/1/prompt_text: contains \\ud800, half of a UTF-16 surrogate "
        "pair on its own, which is not valid text"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_json_nested_100000_deep_is_invalid_not_a_recursion_error(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    ws.storyboard("storyboard_deep.json", '{"segments": ' + "[" * 100_000 + "]" * 100_000 + "}")
    ws.storyboard("storyboard_bible.json", '{"segments": [{"segment_index": 1, "prompt_text": "x"}], '
                                           '"character_bible": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}")
    result = ws.cli("scan")
    assert result.exit_code == 2, result.output
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_bible.json: /: nested deeper than 64 levels of arrays and objects",
        "invalid: input/storyboard_deep.json: /: nested deeper than 64 levels of arrays and objects"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_integers_must_be_whole_and_within_the_databases_range(ws):
    ws.storyboard("storyboard_good.json", segments("max", segment_index=2147483647))
    ws.storyboard("storyboard_float.json", {"segments": [{"segment_index": 1.0, "prompt_text": "x"}]})
    ws.storyboard("storyboard_versions.json", {"segments": [{"segment_index": 1, "prompt_text": "x", "versions": 2.0}]})
    ws.storyboard("storyboard_int4.json", {"segments": [{"segment_index": 2147483648, "prompt_text": "x"}]})
    ws.storyboard("storyboard_int8.json", {"segments": [{"segment_index": 2 ** 63, "prompt_text": "x"}]})
    result = ws.cli("scan")
    assert result.exit_code == 2, result.output
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_float.json: /segments/0/segment_index: segment_index must be a whole number "
        "without a decimal point (1, not 1.0)",
        "invalid: input/storyboard_int4.json: /segments/0/segment_index: 2147483648 is greater than the maximum "
        "of 2147483647",
        "invalid: input/storyboard_int8.json: /segments/0/segment_index: 9223372036854775808 is greater than the "
        "maximum of 2147483647",
        "invalid: input/storyboard_versions.json: /segments/0/versions: versions must be a whole number without "
        "a decimal point (2, not 2.0)"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 2}
    assert query(ws.root, "SELECT DISTINCT segment_index, target_dir FROM jobs") == [
        (2147483647, "output/storyboard_good/Segment_2147483647")]


def test_a_fifo_is_skipped_with_a_warning_instead_of_blocking_the_scan(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    os.mkfifo(ws.input / "storyboard_x.json")
    code, stdout, stderr = scan_process(ws)
    assert code == 0, stderr
    assert lines(stderr, "warning:") == [
        "warning: input/storyboard_x.json: /: skipped: a named pipe (FIFO), not a regular file"]
    assert "Traceback" not in stderr
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_a_symlink_to_dev_zero_is_skipped_not_read_until_memory_runs_out(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    os.symlink("/dev/zero", ws.input / "storyboard_zero.json")
    code, stdout, stderr = scan_process(ws)
    assert code == 0, stderr
    assert lines(stderr, "warning:") == [
        "warning: input/storyboard_zero.json: /: skipped: a symlink to a character device, not a regular file"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_a_socket_is_skipped_and_a_symlink_to_a_regular_file_is_followed(ws):
    target = ws.storyboard("elsewhere/board.json", GOOD)  # not a storyboard name: found only through the link
    os.symlink(target, ws.input / "storyboard_link.json")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("input/storyboard_sock.json")  # relative: socket paths are short; the test runs in ws.root
        result = ws.cli("scan")
    assert result.exit_code == 0, result.output
    assert lines(result.output, "warning:") == [
        "warning: input/storyboard_sock.json: /: skipped: a socket, not a regular file"]
    assert recorded(ws.root) == {"input/storyboard_link.json": 4}


def test_a_recorded_storyboard_replaced_by_a_fifo_keeps_its_jobs(ws):
    path = ws.storyboard("storyboard_a.json", GOOD)
    assert ws.cli("scan").exit_code == 0
    path.unlink()
    os.mkfifo(path)
    code, stdout, stderr = scan_process(ws)
    assert code == 0, stderr
    assert "no change" in stdout and "removed" not in stdout and "skipped: a named pipe" in stderr
    assert query(ws.root, "SELECT DISTINCT state FROM jobs") == [("pending",)]


def test_a_broken_symlink_is_invalid_with_the_reason(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    os.symlink(ws.input / "gone.json", ws.input / "storyboard_dangling.json")
    result = ws.cli("scan")
    assert result.exit_code == 2
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_dangling.json: /: cannot read the file: No such file or directory"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_an_oversized_file_is_refused_without_reading_it_all(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    with open(ws.input / "storyboard_huge.json", "wb") as handle:
        handle.truncate(8 * 1024 ** 3)  # 8 GiB, sparse: reading it whole would take minutes and all memory
    ws.storyboard("storyboard_limit.json", b'{"segments": [{"segment_index": 1, "prompt_text": "x"}]}'
                  + b" " * (16 * 1024 * 1024))
    code, stdout, stderr = scan_process(ws)
    assert code == 2, stderr
    assert lines(stderr, "invalid:") == [
        "invalid: input/storyboard_huge.json: /: larger than 16 MiB, the limit for a storyboard file; "
        "split it into several files",
        "invalid: input/storyboard_limit.json: /: larger than 16 MiB, the limit for a storyboard file; "
        "split it into several files"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_undecodable_content_is_named_as_invalid(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    ws.storyboard("storyboard_latin1.json", '{"segments": [{"segment_index": 1, "prompt_text": "café"}]}'.encode("latin-1"))
    result = ws.cli("scan")
    assert result.exit_code == 2
    assert lines(result.output, "invalid:") == ["invalid: input/storyboard_latin1.json: /: not UTF-8 text (byte 54)"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def test_one_scan_reports_every_problem_of_a_file_and_its_warnings(ws):
    ws.storyboard("storyboard_good.json", GOOD)
    ws.storyboard("storyboard_bad.json", {
        "defaults": {"duration_seconds": 25, "qualty": "high", "frame_rate": 24},
        "segments": [{"segment_index": 1, "promt_text": "x"},
                     {"segment_index": 1, "prompt_text": "y", "image_url": "www.x.com/a.jpg"},
                     {"segment_index": 2, "prompt_text": "z", "image_url": "C:\\img.png", "resolution": "square"}]})
    result = ws.cli("scan")
    assert result.exit_code == 2
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_bad.json: /defaults/duration_seconds: duration 25s needs the Pro model "
        "(is_pro: true); normal generations take 10 or 15 seconds",
        "invalid: input/storyboard_bad.json: /defaults/qualty: unknown key — did you mean quality?",
        "invalid: input/storyboard_bad.json: /segments/0/promt_text: unknown key 'promt_text': did you mean "
        "'prompt_text'? ('prompt_text' is required)",
        "invalid: input/storyboard_bad.json: /segments/1/image_url: image_url needs http:// or https:// in front "
        "(https://www.x.com/a.jpg)",
        "invalid: input/storyboard_bad.json: /segments/1/segment_index: segment_index 1 is used twice "
        "(first at /segments/0)",
        "invalid: input/storyboard_bad.json: /segments/2/image_url: image_url is a local file; the API only "
        "accepts http(s) URLs (upload the image first)",
        "invalid: input/storyboard_bad.json: /segments/2/resolution: 'square' is not allowed here; use one of "
        "'horizontal', 'vertical'"]
    assert lines(result.output, "warning:") == [  # far from any key: a note, not a paid key misspelt
        "warning: input/storyboard_bad.json: /defaults/frame_rate: unknown key 'frame_rate' ignored (prefix it "
        "with '_' to mark a comment)"]
    assert "1 storyboard file(s) are invalid" in result.output
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def many_good_files(ws, count: int) -> None:
    for i in range(count):
        ws.storyboard(f"ep{i % 10}/storyboard_{i:04d}.json", segments(f"shot {i}"))


def test_the_parallel_scan_survives_every_hostile_file(ws):
    many_good_files(ws, 1000)  # >= POOL_THRESHOLD: parsed in worker processes
    with open(os.fsencode(ws.input) + b"/storyboard_\xfe.json", "w", encoding="utf-8") as handle:
        json.dump(GOOD, handle)
    ws.storyboard("storyboard_deep.json", "[" * 200_000)
    ws.storyboard("storyboard_s.json", '{"segments": [{"segment_index": 1, "prompt_text": "\\udc00"}]}')
    ws.storyboard("storyboard_f.json", {"segments": [{"segment_index": 1.0, "prompt_text": "x"}]})
    os.mkfifo(ws.input / "storyboard_fifo.json")
    os.symlink("/dev/zero", ws.input / "storyboard_zero.json")
    code, stdout, stderr = scan_process(ws, env={"GEN_COUNT_PER_SEGMENT": "1"})
    assert code == 2, stderr
    assert [line.split(": /")[0] for line in lines(stderr, "invalid:")] == [
        "invalid: input/storyboard_deep.json", "invalid: input/storyboard_f.json",
        "invalid: input/storyboard_s.json", "invalid: input/storyboard_\\xfe.json"]
    assert len(lines(stderr, "warning:")) == 2
    assert "Traceback" not in stderr
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(1000,)]


@pytest.fixture
def forked_workers() -> None:
    """Faults are planted by patching our own module before the pool forks its workers."""
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("needs worker processes started by fork")


def scan_in_pool(ws) -> scan_module.ScanReport:
    settings = load_settings(ws.root, {"GEN_COUNT_PER_SEGMENT": "1"})
    store = Store(open_ledger(settings.database_url), cwd=ws.root)
    return scan_module.scan(settings, ws.root, store, processes=2)


def test_an_exception_in_a_worker_process_makes_one_file_invalid_not_the_scan(ws, monkeypatch, forked_workers):
    many_good_files(ws, 1000)
    parent, real = os.getpid(), scan_module.read_storyboard

    def failing(path, *args):
        if os.getpid() != parent and path.name == "storyboard_0700.json":
            raise RuntimeError("unforeseen")
        return real(path, *args)

    monkeypatch.setattr(scan_module, "read_storyboard", failing)
    report = scan_in_pool(ws)
    assert [str(p) for p in report.problems] == [
        "input/ep0/storyboard_0700.json: /: could not be read: unexpected RuntimeError: unforeseen"]
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(999,)]


def test_a_worker_process_that_dies_does_not_lose_its_files(ws, monkeypatch, forked_workers, caplog):
    many_good_files(ws, 1000)
    parent, real = os.getpid(), scan_module.read_storyboard

    def dying(path, *args):
        if os.getpid() != parent and path.name == "storyboard_0500.json":
            os._exit(1)
        return real(path, *args)

    monkeypatch.setattr(scan_module, "read_storyboard", dying)
    with caplog.at_level(logging.WARNING, logger="ledger.scan"):
        report = scan_in_pool(ws)
    assert report.problems == []
    assert "a scan worker process failed (BrokenProcessPool" in caplog.text
    assert query(ws.root, "SELECT count(*) FROM jobs") == [(1000,)]


@pytest.mark.postgres
def test_the_largest_segment_index_fits_postgres_and_a_larger_one_is_reported(ws, pg_url):
    ws.storyboard("storyboard_good.json", segments("max", segment_index=2147483647))
    ws.storyboard("storyboard_big.json", segments("too big", segment_index=2147483648))
    result = ws.cli("scan", env={"LEDGER_DATABASE_URL": pg_url})
    assert result.exit_code == 2, result.output
    assert lines(result.output, "invalid:") == [
        "invalid: input/storyboard_big.json: /segments/0/segment_index: 2147483648 is greater than the maximum "
        "of 2147483647"]
    status = json.loads(ws.cli("status", "--json", env={"LEDGER_DATABASE_URL": pg_url}).output)
    assert status["total"] == 2 and [s["path"] for s in status["storyboards"]] == ["input/storyboard_good.json"]


def test_a_json_file_not_named_storyboard_is_mentioned_once_the_template_never(ws):
    """Before: `input/ep1/myfilm.json` was silently never generated, and the scan said nothing."""
    ws.storyboard("storyboard_good.json", GOOD)
    ws.storyboard("ep1/myfilm.json", GOOD)
    ws.storyboard("_template.json", GOOD)  # the documented example, edited: never scanned, never mentioned
    ws.storyboard("notes.txt", "not JSON at all")
    ws.storyboard("ep1/storyboard_b.json.bak", GOOD)
    ws.storyboard("ep1/storyboard_c_assets/Segment_1/1_v1_0a1b2c3d.json", {"task_id": "x"})  # a video's sidecar
    for _ in range(2):  # every scan says it, once
        result = ws.cli("scan")
        assert result.exit_code == 0, result.output
        assert lines(result.output, "warning:") == [
            "warning: input/ep1/myfilm.json: not scanned — storyboard files are named storyboard*.json"]
    assert recorded(ws.root) == {"input/storyboard_good.json": 4}


def _unreadable_to_the_scan() -> List[str]:
    """The command prefix under which a folder with mode 000 cannot be listed: as is, or for root
    (whom chmod does not stop) without the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return []
    if subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "true"],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root without setpriv: a folder cannot be made unreadable to the scan")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_an_unreadable_folder_is_named_and_its_storyboards_keep_their_jobs(ws):
    """Before: os.walk skipped the folder in silence, and its storyboards' jobs left the queue as gone."""
    ws.storyboard("storyboard_good.json", GOOD)
    ws.storyboard("ep2/storyboard_b.json", GOOD)
    assert ws.cli("scan").exit_code == 0
    locked = ws.input / "ep2"
    locked.chmod(0)
    try:
        proc = subprocess.run([*_unreadable_to_the_scan(), sys.executable, "-m", "ledger", "scan"], cwd=ws.root,
                              capture_output=True, text=True, timeout=60)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert lines(proc.stderr, "invalid:") == ["invalid: input/ep2: cannot read the folder: Permission denied"]
    assert "removed" not in proc.stdout and "gone" not in proc.stdout
    assert query(ws.root, "SELECT s.path, j.state, count(*) FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                          "GROUP BY s.path, j.state ORDER BY s.path") == [
        ("input/ep2/storyboard_b.json", "pending", 4), ("input/storyboard_good.json", "pending", 4)]
