"""The end of Sora: OpenAI's ``/v1/videos`` (Sora 2) shut down on 2026-09-24, and the resellers of
it (api.sora.hk among them) now answer "model not found" or similar.

Both Sora providers stay (relays still speak ``/v1/videos``, and users' settings keep their names),
but a create or a pre-flight that meets such an answer stops the run with one line that says so and
names the providers to use instead. Nothing was made or charged: such an answer refuses the request.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

CLOSED_ON = "2026-09-24"
OFFICIAL_HOST = "api.openai.com"
# How the closed upstream, or a relay in front of it, refuses: OpenAI's own
# {"error": {"code": "model_not_found", "message": "The model `sora-2` does not exist or you do not
# have access to it."}}, new-api's code model_not_found (HTTP 503, "无可用渠道"), resellers' "model not
# found" / "模型不存在" in their own envelopes, and shutdown notices.
_GONE = re.compile(
    r"model_not_found"
    r"|\bmodel\b[^.;]{0,80}?\b(not found|does not exist|doesn't exist|not exist|no longer (available|exists|supported))"
    r"|\b(sora|videos? api|model)\b[^.;]{0,80}?\b(shut ?down|discontinued|retired|sunset|decommissioned|removed)"
    r"|模型不存在|模型.{0,20}(已下线|已停用|不可用)|无可用渠道",
    re.IGNORECASE)


def says_closed(status: int, body: str, *, official: bool = False) -> bool:
    """Whether an error answer (``status``, raw ``body``) to a create or to the pre-flight says the
    Sora model or service is gone: a 410 Gone, a body naming a missing model or a shutdown, or —
    from OpenAI's own host (``official``), which has no other reason to — a 404."""
    if status == 410 or (official and status == 404):
        return True
    return bool(_GONE.search(body or ""))


def closed_message(base_url: str, status: int, said: str, provider: str) -> str:
    """One line: the Sora upstream closed on 2026-09-24, what ``base_url`` answered, and the
    ``PROVIDER=`` values to use instead (every registered provider that does not resell Sora)."""
    from .providers import REGISTRY, SORA  # the registry imports the clients that call this

    others = ", ".join(name for name in REGISTRY if name not in SORA)
    return (f"the Sora upstream closed on {CLOSED_ON}: {base_url} answered HTTP {status} ({said}) for {provider}; "
            f"nothing was created or charged. Use another provider: PROVIDER= one of {others} "
            "(`ledger init --provider NAME` writes its settings to .env)")


def official_host(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's own API (closed), not a relay of its format."""
    return (urlsplit(base_url).hostname or "").lower() == OFFICIAL_HOST

