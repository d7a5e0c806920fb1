"""Keep API keys out of every message, log line, exception text and ledger row.

A key can come back in more shapes than the one we sent: a server may echo it without its
``sora-`` prefix, a URL may carry it percent-encoded (``quote`` / ``quote_plus``, upper- or
lower-case hex), a header dump shows it after ``Bearer``. Every one of them is masked.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Iterable, List, Optional, Pattern
from urllib.parse import quote, quote_plus

KEY_PREFIX = "sora-"
_SORA_KEY = re.compile(r"sora-[A-Za-z0-9_\-]{6,}")
# The token characters of RFC 6750 (and the ellipsis of a key masked already), so a quote or
# bracket after the token survives.
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9\-._~+/%…]+=*", re.IGNORECASE)
_PERCENT = re.compile(r"%[0-9A-F]{2}")
# A form shorter than this could be an ordinary word; masking it would garble messages without
# protecting anything (real keys are sora- and 32 characters).
_MIN_FORM = 8


def mask_key(key: str) -> str:
    """A short, recognisable stand-in for a key: its prefix and last four characters."""
    prefix = KEY_PREFIX if key.startswith(KEY_PREFIX) else ""
    return f"{prefix}…{key[-4:]}" if len(key) > 8 else "…"


def key_forms(secret: str) -> List[str]:
    """Every spelling of ``secret`` that must never be shown: as is, without its ``sora-``
    prefix, and each of those percent-encoded; longest first."""
    bare = [secret]
    if secret.startswith(KEY_PREFIX) and len(secret) - len(KEY_PREFIX) >= _MIN_FORM:
        bare.append(secret[len(KEY_PREFIX):])
    forms = {form for text in bare for form in (text, quote(text, safe=""), quote(text), quote_plus(text))}
    return sorted((f for f in forms if len(f) >= _MIN_FORM), key=len, reverse=True)


@lru_cache(maxsize=64)
def _pattern(secret: str) -> Pattern[str]:
    # Percent-escapes may come back in lower-case hex (%2b for %2B).
    alternatives = [_PERCENT.sub(lambda m: f"%(?i:{m.group(0)[1:]})", re.escape(form))
                    for form in key_forms(secret)]
    return re.compile("|".join(alternatives))


def redact(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """Replace every configured secret (in any of its ``key_forms``), every ``sora-…`` key and
    every bearer token in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_FORM:
            text = _pattern(secret).sub(mask_key(secret), text)
        elif secret:
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
