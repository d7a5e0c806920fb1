"""Log lines: ours at the chosen level, third-party chatter only at -vv, tracebacks only at -vv."""
from __future__ import annotations

import logging

import pytest

from ledger.cli import _configure_logging
from ledger.redact import RedactingFilter

KEY = "sora-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"


pytestmark = pytest.mark.usefixtures("restore_logging")


def log_an_error(name: str) -> None:
    try:
        raise OSError(f"disk trouble for {KEY[5:]}")
    except OSError:
        logging.getLogger(name).exception("step failed; the job is left as it was")


@pytest.mark.parametrize("verbose", [0, 1])
def test_an_exception_below_vv_is_its_one_line_cause(capsys: pytest.CaptureFixture[str], verbose: int) -> None:
    _configure_logging(verbose, RedactingFilter([KEY]))
    log_an_error("ledger.worker")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.rstrip().endswith("ERROR ledger.worker: step failed; the job is left as it was "
                                 "(OSError: disk trouble for sora-…J0xA)")


def test_vv_shows_the_traceback_with_the_key_masked(capsys: pytest.CaptureFixture[str]) -> None:
    _configure_logging(2, RedactingFilter([KEY]))
    log_an_error("ledger.worker")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "OSError: disk trouble for sora-…J0xA" in err
    assert KEY[5:] not in err


@pytest.mark.parametrize("verbose, shown", [(0, ["ledger.a WARNING", "urllib3 ERROR"]),
                                            (1, ["ledger.a WARNING", "ledger.a INFO", "urllib3 ERROR"]),
                                            (2, ["ledger.a WARNING", "ledger.a INFO", "urllib3 ERROR",
                                                 "urllib3 WARNING", "alembic INFO"])])
def test_third_party_info_and_warnings_only_at_vv(capsys: pytest.CaptureFixture[str], verbose: int, shown) -> None:
    _configure_logging(verbose, RedactingFilter())
    for name, level in [("ledger.a", logging.WARNING), ("ledger.a", logging.INFO), ("urllib3", logging.ERROR),
                        ("urllib3", logging.WARNING), ("alembic", logging.INFO)]:
        logging.getLogger(name).log(level, "%s %s", name, logging.getLevelName(level))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == shown
