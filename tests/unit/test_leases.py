"""Telling a dead worker's lease from a live one's."""
from __future__ import annotations

import subprocess
import sys

from ledger.leases import _start_token, hostname, owner_id, owner_is_dead, parse_owner


def test_owner_id_names_this_host_and_process():
    host, pid, start = parse_owner(owner_id())
    assert host == hostname() and pid > 0 and start
    assert not owner_is_dead(owner_id())


def test_a_killed_process_is_dead_a_running_one_is_not():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = f"{hostname()}:{proc.pid}:{_start_token(proc.pid)}"
        assert not owner_is_dead(owner)
        # the same pid with another start time: the pid now belongs to a different process
        assert owner_is_dead(f"{hostname()}:{proc.pid}:1")
    finally:
        proc.kill()
        proc.wait()
    assert owner_is_dead(owner)


def test_other_hosts_and_garbage_are_never_declared_dead():
    assert not owner_is_dead("some-other-host:1:123")
    assert not owner_is_dead("not an owner id")
