"""A command run in a real pseudo-terminal, and a small terminal that replays what it printed.

The replay keeps the scrollback the way a terminal does: rich's live view moves the cursor up and
erases its last frame before drawing the next one, so a view drawn right leaves exactly one frame
behind; a line written past it (a log line on the raw stderr) leaves torn copies.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import unicodedata
from pathlib import Path
from typing import Dict, List, Tuple

_SEQUENCE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]")


def run_in_terminal(root: Path, env: Dict[str, str], *args: str, columns: int = 80, rows: int = 40,
                    timeout: float = 120.0) -> Tuple[int, str]:
    """`ledger ARGS` with stdin, stdout and stderr on one pseudo-terminal of ``columns`` x ``rows``;
    its exit code and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environ = {**os.environ, **env, "TERM": "xterm-256color"}
    for name in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        if name not in env:  # the machine's, not the test's
            environ.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "ledger", *args], cwd=root, env=environ, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    written = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                written += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"ledger {' '.join(args)} did not end within {timeout} s")
    finally:
        os.close(master)
    return proc.wait(timeout=10), written.decode("utf-8", "replace")


def replay(text: str, columns: int) -> List[str]:
    """The lines a terminal of ``columns`` shows (scrollback included) after receiving ``text``:
    printable characters, CR, LF, wrapping at the edge, cursor up, erase line; colours ignored."""
    lines: List[List[str]] = [[]]
    row = col = 0
    pos = 0
    while pos < len(text):
        match = _SEQUENCE.match(text, pos)
        if match:
            args, command = match.group(1), match.group(2)
            if command == "A":
                row = max(0, row - int(args or 1))
            elif command == "K":
                if args == "2":
                    lines[row] = []
                else:
                    del lines[row][col:]
            elif command == "G":
                col = int(args or 1) - 1
            pos = match.end()
            continue
        char = text[pos]
        pos += 1
        if char == "\n":  # a terminal's line discipline turns LF into CR LF (onlcr)
            row, col = row + 1, 0
            if row == len(lines):
                lines.append([])
        elif char == "\r":
            col = 0
        elif char >= " ":
            width = 2 if unicodedata.east_asian_width(char) in "WF" else 1
            if col + width > columns:  # the terminal wraps a line that reaches its edge
                row, col = row + 1, 0
                if row == len(lines):
                    lines.append([])
            line = lines[row]  # one entry per cell: a wide character and an empty cell after it
            line.extend(" " * (col - len(line)))
            cells = [char] + [""] * (width - 1)
            line[col:col + width] = cells
            col += width
    return ["".join(line).rstrip() for line in lines]
