"""``python -m ledger`` and the ``ledger`` command.

Loading the command's modules takes about half a second on a busy machine; a Ctrl+C in that time
ends as one later does (``interrupted``, exit 130), not with a traceback of whatever was loading.
"""
from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import Any


def main() -> None:
    """Console entry point."""
    # Loading SQLAlchemy and the rest allocates hundreds of thousands of objects that live as long as
    # the process: collecting garbage among them while they load is wasted (about a tenth of the
    # start-up), and keeping them out of every later collection is cheaper for the whole run.
    gc.disable()
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    finally:
        gc.enable()
    gc.freeze()
    try:
        run()
    except SystemExit as exc:
        leave(exc.code)
    leave(0)


def leave(code: Any) -> None:
    """End the process with ``code`` (``sys.exit``'s meaning) without tearing every module down.

    The command is over and has closed what it opened (the ledger, downloads, files: each is
    written atomically and fsynced before it is recorded). What is left is Python unloading
    SQLAlchemy and the rest object by object, which takes about 0.2 s — as long as a `ledger status`
    on a small ledger takes to answer. The exit handlers (logging's flush among them) still run.
    While a thread the command started is still running, Python's own exit waits for it as usual."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`ledger status | head`) has nothing left to take
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
