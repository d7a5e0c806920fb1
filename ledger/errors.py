"""The one exception root of the project and the one map from errors to exit codes.

Every error a user can cause or meet is a ``LedgerError``; library errors are wrapped at the
boundary (``raise ... from exc``). The CLI turns them into a one-line message and
``exit_code`` — nowhere else decides exit codes.
"""
from __future__ import annotations

import enum
from typing import Optional


class ExitStatus(enum.IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    JOBS_FAILED = 1
    USAGE = 2
    CONFIG = 3
    BALANCE = 4
    INTERRUPTED = 130


class LedgerError(Exception):
    """Root of every error this tool raises on purpose."""

    exit_status: ExitStatus = ExitStatus.JOBS_FAILED


class JobsFailed(LedgerError):
    """The run finished, and some of its jobs ended ``failed`` (their reasons are in the ledger)."""

    exit_status = ExitStatus.JOBS_FAILED


class UsageError(LedgerError):
    """Bad command-line usage or bad input files."""

    exit_status = ExitStatus.USAGE


class InputError(UsageError):
    """One or more storyboards are invalid (the valid ones were still processed)."""


class ConfigError(LedgerError):
    """A setting is missing or invalid."""

    exit_status = ExitStatus.CONFIG


class DatabaseError(ConfigError):
    """The ledger database cannot be opened or migrated."""


class Interrupted(LedgerError):
    """The user pressed Ctrl+C (or the process got SIGTERM)."""

    exit_status = ExitStatus.INTERRUPTED


class BudgetExhausted(LedgerError):
    """The run stopped submitting because the balance or the spend cap would be exceeded."""

    exit_status = ExitStatus.BALANCE


# --- remote API -------------------------------------------------------------------------------


class ApiError(LedgerError):
    """Any failure talking to the video API. ``kind`` is stored in the ledger."""

    kind = "api"

    def __init__(self, message: str, *, code: Optional[int] = None, http_status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class AuthError(ApiError):
    """401: the key is invalid or disabled."""

    kind = "auth"
    exit_status = ExitStatus.CONFIG


class BadParameters(ApiError):
    """1001: the service rejected the request parameters (terminal for that job)."""

    kind = "bad_parameters"


class InsufficientBalance(ApiError):
    """1012: the account cannot pay for another generation."""

    kind = "insufficient_balance"
    exit_status = ExitStatus.BALANCE


class TransientError(ApiError):
    """5xx, a non-JSON body, a dropped connection or a timeout: worth trying again later.

    ``maybe_created`` is True when a paid ``POST /create`` may have reached the server even though
    no answer came back; the caller must look the task up before sending it again.
    """

    kind = "transient"

    def __init__(self, message: str, *, maybe_created: bool = False, **kw):
        super().__init__(message, **kw)
        self.maybe_created = maybe_created


class RateLimited(TransientError):
    """429: slow down. ``retry_after`` is the server's hint in seconds, when it gave one."""

    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RemoteTaskFailed(ApiError):
    """The remote task finished ``failed`` (often a content-policy rejection). Terminal."""

    kind = "remote_failed"

    def __init__(self, error_msg: str, *, task_id: Optional[str] = None):
        super().__init__(error_msg or "the task failed without a reason")
        self.error_msg = error_msg
        self.task_id = task_id


class DownloadError(ApiError):
    """A video could not be fetched or verified; only the download is retried, never the generation."""

    kind = "download"


class UrlExpired(DownloadError):
    """The signed video URL answered 403/404/410: poll the task again for a fresh one."""

    kind = "url_expired"


class UnsafeDownload(DownloadError):
    """A URL with a scheme other than http(s), or a destination outside the output root."""

    kind = "unsafe_download"
