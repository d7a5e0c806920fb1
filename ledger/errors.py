"""The one exception root of the project and the one map from errors to exit codes.

Every error a user can cause or meet is a ``LedgerError``; library errors are wrapped at the
boundary (``raise ... from exc``). The CLI turns them into a one-line message and
``exit_code`` — nowhere else decides exit codes.
"""
from __future__ import annotations

import enum
import re
from typing import Optional


class ExitStatus(enum.IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    JOBS_FAILED = 1
    USAGE = 2
    CONFIG = 3
    BALANCE = 4
    DATABASE = 5
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


class DatabaseUnavailable(LedgerError):
    """The ledger database stayed locked, read-only, corrupt or unreachable while a command ran."""

    exit_status = ExitStatus.DATABASE


class Interrupted(LedgerError):
    """The user pressed Ctrl+C (or the process got SIGTERM)."""

    exit_status = ExitStatus.INTERRUPTED


class BudgetExhausted(LedgerError):
    """The run stopped submitting because the balance or the spend cap would be exceeded."""

    exit_status = ExitStatus.BALANCE


# --- remote API -------------------------------------------------------------------------------


class ApiError(LedgerError):
    """Any failure talking to the video API. ``kind`` is stored in the ledger.

    ``terminal`` errors end the job at once: trying the same step again cannot help."""

    kind = "api"
    terminal = False

    def __init__(self, message: str, *, code: Optional[int] = None, http_status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class AuthError(ApiError):
    """401: the key is invalid or disabled."""

    kind = "auth"
    exit_status = ExitStatus.CONFIG


class ServiceClosed(AuthError):
    """The API answered that its Sora model or service is gone (``ledger.sunset``): the request was
    refused, nothing was made or charged. Like a refused key, it stops the run and the job waits,
    pending; unlike one, no key is to blame (none is retired in team mode)."""

    kind = "service_closed"


class BadParameters(ApiError):
    """1001: the service rejected the request parameters (terminal for that job)."""

    kind = "bad_parameters"
    terminal = True


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

    def __init__(self, message: str, *, maybe_created: bool = False, unreachable: bool = False, **kw):
        super().__init__(message, **kw)
        self.maybe_created = maybe_created
        # No connection to the API (or its proxy) could be made at all: the API is out of reach, not
        # misbehaving, so the job is not to blame and no attempt is counted.
        self.unreachable = unreachable


class RateLimited(TransientError):
    """429: slow down. ``retry_after`` is the server's hint in seconds, when it gave one."""

    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RemoteTaskFailed(ApiError):
    """The remote task finished ``failed`` (often a content-policy rejection). Terminal."""

    kind = "remote_failed"
    terminal = True

    def __init__(self, error_msg: str, *, task_id: Optional[str] = None):
        super().__init__(error_msg or "the task failed without a reason")
        self.error_msg = error_msg
        self.task_id = task_id


class ContentRefused(RemoteTaskFailed):
    """The API refused the content (its content policy, moderation, a sensitive input or output).
    Kept apart from other failures: the same prompt would be refused (and, by most APIs, paid) again,
    so ``ledger requeue --failed`` leaves it failed unless ``--include-refused`` is given."""

    kind = "refused"


# Words a content-policy verdict is said in (English and Chinese APIs): a task that failed with
# one of them was refused, not broken. Kept narrow: a wrong match only keeps a job out of a requeue.
_REFUSAL_WORDS = re.compile(r"polic|moderat|sensitive|inappropriate|prohibited|violat|nsfw|unsafe content|"
                            r"审核|敏感|违规|违反|违禁|不合规|政策", re.IGNORECASE)


def is_refusal(kind: Optional[str], message: Optional[str]) -> bool:
    """Whether a failure recorded as (``kind``, ``message``) is a content refusal. A ledger written
    before the ``refused`` kind recorded refusals as ``remote_failed``: their words tell them."""
    return kind == ContentRefused.kind or (kind == RemoteTaskFailed.kind and bool(_REFUSAL_WORDS.search(message or "")))


def remote_failure(error_msg: str, *, task_id: Optional[str] = None) -> RemoteTaskFailed:
    """The error of a task the API says failed: a refusal when its words say so."""
    cls = ContentRefused if _REFUSAL_WORDS.search(error_msg or "") else RemoteTaskFailed
    return cls(error_msg, task_id=task_id)


class DownloadError(ApiError):
    """A video could not be fetched or verified; only the download is retried, never the generation."""

    kind = "download"


class UrlExpired(DownloadError):
    """The signed video URL answered 403/404/410: poll the task again for a fresh one."""

    kind = "url_expired"


class ContentExpired(UrlExpired):
    """HTTP 410 Gone for the video: the service no longer holds it (an OpenAI-style ``/content``
    past its ``expires_at``). A fresh URL is still asked for, in case a storage host says 410 for
    an expired signature; when fresh URLs keep answering 410, the job fails with this kind, and
    ``ledger requeue --failed`` generates it again (paid): there is nothing left to download."""

    kind = "content_expired"


class UnsafeDownload(DownloadError):
    """A URL with a scheme other than http(s), or a destination outside the output root."""

    kind = "unsafe_download"
    terminal = True


class DownloadTooLarge(UnsafeDownload):
    """The video is bigger than ``MAX_DOWNLOAD_BYTES`` (announced, sent, or once decompressed)."""

    kind = "too_large"


class DownloadTooSlow(DownloadError):
    """The transfer stayed below the minimum speed, or passed its total deadline: retried later."""

    kind = "too_slow"


class OutputError(DownloadError):
    """The video or its sidecar cannot be written: disk full, read-only or blocked output folder.

    The generation is paid for; ``ledger requeue`` downloads it again once the disk is fixed."""

    terminal = True

    def __init__(self, message: str, *, kind: str = "output_unwritable") -> None:
        super().__init__(message)
        self.kind = kind


class TaskNotFound(ApiError):
    """The API answers 404 for a task this ledger created: it is gone on the service's side."""

    kind = "task_not_found"
    terminal = True


class InvalidTaskId(ApiError):
    """The API returned a task id this ledger cannot store or use safely (control characters, …).

    Raised by a create whose task was made and billed: ``cost`` is what the answer said it cost."""

    kind = "invalid_task_id"
    terminal = True

    def __init__(self, message: str, *, cost: Optional[int] = None) -> None:
        super().__init__(message)
        self.cost = cost
