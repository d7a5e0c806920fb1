"""Who holds a job: ``host:pid:start`` owner ids, and telling whether such an owner is still alive.

A lease on this machine whose process is gone (or whose pid now belongs to another process) is
adopted at once; a lease held on another machine is only adopted when it expires.
"""
from __future__ import annotations

import os
import socket
import time
from functools import lru_cache
from typing import Optional, Tuple


def _proc_stat(pid: int) -> Optional[list]:
    """Fields 3.. of ``/proc/PID/stat`` (Linux), or None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[-1].split()


def _start_token(pid: int) -> Optional[str]:
    """When ``pid`` started, in clock ticks since boot, to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


@lru_cache(maxsize=1)
def hostname() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1)
def owner_id() -> str:
    """This process's owner id: ``host:pid:start``."""
    pid = os.getpid()
    start = _start_token(pid) or f"t{int(time.time() * 1000)}"
    return f"{hostname()}:{pid}:{start}"


def parse_owner(owner: str) -> Optional[Tuple[str, int, str]]:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    host, pid, start = parts
    return host, int(pid), start


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this machine and that process no longer exists."""
    parsed = parse_owner(owner)
    if parsed is None:
        return False
    host, pid, start = parsed
    # Only where "signal 0" merely asks: on Windows os.kill would terminate the process.
    if os.name != "posix" or host != hostname() or owner == owner_id():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    fields = _proc_stat(pid)
    if not fields:
        return False
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    return not start.startswith("t") and len(fields) > 19 and fields[19] != start
