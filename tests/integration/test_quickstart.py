"""A new user's first steps, as processes: a fresh clone following the README's quick start pays
only for the user's storyboard, `ledger init` replaces nothing, and `make demo` talks only to the
simulator it started."""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from click.testing import CliRunner

from ledger.cli import cli
from ledger.settings import load_settings
from tests.helpers import api_env, query

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "input" / "_template.json"


def fresh_clone(dest: Path) -> Path:
    """The repository's files as a clone has them, in a git repository of their own: the tracked
    files only (as they stand in the working tree; a new file counts once `git add`ed), never what a
    user or developer keeps beside them (their .env, storyboards, ledger, output, virtualenv)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=REPO, capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in filter(None, listing.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a deleted file may still be listed until the deletion is committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *command], cwd=dest,
                       capture_output=True, check=True)
    return dest


def git_status(clone: Path) -> List[str]:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, capture_output=True,
                          text=True, check=True).stdout.splitlines()


def quick_start_commands() -> List[str]:
    """The commands of the README's English quick start for "your own key", comments removed."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"With your own key and storyboards:\n\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README's quick start block is gone"
    return [line.split(" #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_a_fresh_clone_following_the_quick_start_pays_only_for_the_users_storyboard(tmp_path, make_sim):
    clone = fresh_clone(tmp_path / "clone")
    ledger = f"{sys.executable} -m ledger"
    ran = []
    for command in quick_start_commands():
        if command.startswith("make install"):
            continue  # the test already runs inside the installed virtualenv
        result = subprocess.run(command.replace(".venv/bin/ledger", ledger), shell=True, cwd=clone,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        ran.append(command)
        init = re.search(r"ledger init(?: --provider (\w+))?$", command)
        if init:
            # What the user does next: their key into .env (and, here, a simulator of that API as the API).
            sim = make_sim(protocol=init.group(1) or "sora_hk")
            env = (clone / ".env").read_text(encoding="utf-8")
            for name, value in api_env(sim).items():
                if name != "PROVIDER":
                    assert f"\n{name}=" in env, (name, env)  # init wrote the setting for the user to fill in
                    env = re.sub(rf"\n{name}=[^\n]*\n", f"\n{name}={value}\n", env)
            (clone / ".env").write_text(env + "POLL_MIN_INTERVAL=0.05\n", encoding="utf-8")
    assert any(c.endswith("ledger run") for c in ran) and any("--dry-run" in c for c in ran)
    assert query(clone, "SELECT path FROM storyboards") == [("input/storyboard_myfilm.json",)]
    assert query(clone, "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 2)]
    prompt = "A drone shot over a neon city at dusk, rain-slick streets reflecting signs."
    assert [t.prompt for t in sim.tasks_newest_first()] == [prompt, prompt]
    assert git_status(clone) == []  # the user's storyboard, key, ledger and videos stay out of git


def test_the_users_own_files_stay_out_of_git_status(tmp_path):
    """Before: storyboards, ledger journals and in-place assets showed up under `git status`, and the
    quick-start test copied them (untracked files) into its clone, where they broke it."""
    clone = fresh_clone(tmp_path / "clone")
    for name in [".env", "ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-journal",
                 "input/storyboard_myfilm.json", "input/ep1/storyboard_b.json", "input/ep1/notes.txt",
                 "input/ep1/storyboard_b_assets/Segment_1/storyboard_b_1_v1.mp4",
                 "output/storyboard_myfilm/Segment_1/storyboard_myfilm_1_v1.mp4", "output/failed_tasks_1.json",
                 "examples/city/storyboard_neon_city_assets/Segment_1/storyboard_neon_city_1_v1.mp4"]:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text("the user's", encoding="utf-8")
    assert git_status(clone) == []
    (clone / "input" / "_template.json").write_text("{}", encoding="utf-8")  # the template stays tracked
    assert git_status(clone) == [" M input/_template.json"]


def test_init_writes_env_and_the_template_and_no_ledger(tmp_path, ws):
    result = ws.cli("init")
    assert result.exit_code == 0, result.output
    env = tmp_path / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # the key goes in it
    assert [line for line in env.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")] == ["SORA_API_KEY="]
    settings = load_settings(tmp_path, {})
    assert settings.api_key is None and settings.sources["api_key"] == ".env"
    assert (tmp_path / "input" / "_template.json").read_bytes() == TEMPLATE.read_bytes()
    assert not (tmp_path / "ledger.db").exists() and not (tmp_path / "output").exists()
    assert "created .env" in result.output and "created input/_template.json" in result.output
    assert "cp input/_template.json input/storyboard_myfilm.json" in result.output
    assert "ledger run --dry-run" in result.output
    # What init made submits nothing: the template is not a storyboard.
    scanned = ws.cli("scan")
    assert scanned.exit_code == 0 and "Scanned 0 storyboard files" in scanned.output


def test_init_never_replaces_an_existing_env_or_template_without_force(tmp_path, ws):
    (tmp_path / "input").mkdir(exist_ok=True)
    (tmp_path / ".env").write_text("SORA_API_KEY=sora-mine\n", encoding="utf-8")
    (tmp_path / "input" / "_template.json").write_text("{}", encoding="utf-8")
    kept = ws.cli("init")
    assert kept.exit_code == 0, kept.output
    assert "kept .env: it exists (--force replaces it)" in kept.output
    assert (tmp_path / ".env").read_text(encoding="utf-8") == "SORA_API_KEY=sora-mine\n"
    assert (tmp_path / "input" / "_template.json").read_text(encoding="utf-8") == "{}"
    forced = ws.cli("init", "--force")
    assert forced.exit_code == 0, forced.output
    assert "replaced .env" in forced.output and "sora-mine" not in (tmp_path / ".env").read_text(encoding="utf-8")
    assert (tmp_path / "input" / "_template.json").read_bytes() == TEMPLATE.read_bytes()
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_init_in_a_folder_it_cannot_write_is_one_line(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        result = subprocess.run([sys.executable, "-m", "ledger", "init"], cwd=folder, capture_output=True,
                                text=True, timeout=60)
    finally:
        folder.chmod(0o700)
    assert result.returncode == 3 and result.stderr.startswith("error: cannot write"), result.stderr
    assert "Traceback" not in result.stderr


def test_init_where_input_is_a_file_says_so_and_writes_nothing(tmp_path, ws):
    (tmp_path / "input").rmdir()
    (tmp_path / "input").write_text("not a folder", encoding="utf-8")
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 3
    assert "input exists and is not a folder" in result.output
    assert not (tmp_path / ".env").exists()


# --- make demo ---------------------------------------------------------------------------------


def _make_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``make demo`` in a fresh clone, with the virtualenv the tests run in (nothing installed)."""
    venv = Path(sys.executable).parent.parent
    if shutil.which("make") is None or not (venv / "bin" / "ledger").exists():
        pytest.skip("needs make and the ledger command in the tests' virtualenv")
    clone = fresh_clone(tmp_path / "clone")
    stamp = f"{venv}/.installed"
    return subprocess.run(["make", "-s", "demo", f"VENV={venv}", "-o", stamp, *args], cwd=clone,
                          capture_output=True, text=True, timeout=300)


class Impostor:
    """Something else listening on a port: counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        self.sock.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


def test_make_demo_with_its_port_taken_fails_clearly_and_talks_to_no_one(tmp_path):
    impostor = Impostor()
    try:
        result = _make_demo(tmp_path, f"SIM_PORT={impostor.port}")
        assert result.returncode != 0
        assert "make demo: the simulator did not start" in result.stderr
        assert f"cannot listen on 127.0.0.1:{impostor.port}" in result.stderr
        assert impostor.connections() == 0
    finally:
        impostor.sock.close()


@pytest.mark.slow
def test_make_demo_runs_the_examples_end_to_end_on_a_free_port(tmp_path):
    result = _make_demo(tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert re.search(r"Simulator: http://127\.0\.0\.1:\d+/v1", result.stdout)
    videos = [line for line in result.stdout.splitlines() if line.endswith(".mp4")]
    assert len(videos) == 9 and all(v.startswith("demo/output/") for v in videos)
    assert "ledger status" in result.stdout and "examples/city/storyboard_" in result.stdout
    assert query(tmp_path / "clone" / "demo", "SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 9)]
