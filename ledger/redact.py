"""Keep API keys out of every message, log line, exception text and ledger row."""
from __future__ import annotations

import logging
import re
from typing import Iterable, Optional

_SORA_KEY = re.compile(r"sora-[A-Za-z0-9_\-]{6,}")
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def mask_key(key: str) -> str:
    """A short, recognisable stand-in for a key: its prefix and last four characters."""
    prefix = "sora-" if key.startswith("sora-") else ""
    return f"{prefix}…{key[-4:]}" if len(key) > 8 else "…"


def redact(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """Replace every configured secret, every ``sora-…`` key and every bearer token in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, mask_key(secret))
    text = _SORA_KEY.sub(lambda m: mask_key(m.group(0)), text)
    return _BEARER.sub(r"\1…", text)


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record once and scrubs secrets from the result."""

    def __init__(self, secrets: Iterable[Optional[str]] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            exc.args = tuple(redact(str(a), self.secrets) for a in exc.args)
        return True
