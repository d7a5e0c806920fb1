"""``python -m ledger`` and the ``ledger`` command.

Loading the command's modules takes about a second on a busy machine; a Ctrl+C in that second
ends as one later does (``interrupted``, exit 130), not with a traceback of whatever was loading.
"""
from __future__ import annotations

import sys


def main() -> None:
    """Console entry point."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
