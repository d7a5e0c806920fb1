"""The video APIs ledger speaks, one module per protocol, behind one interface (``base.py``).

* ``sora_hk`` — api.sora.hk v1, the default (and the provider of every job made before there were
  others: stored parameters without a ``provider`` key are its);
* ``openai`` — the OpenAI-compatible ``/v1/videos`` format of OpenAI and its relays.

A new protocol is one module with its ``Rules``, its ``Provider`` and its ``REGISTRATION``, one
simulator module under ``ledger/sim/``, and one line in ``REGISTRY`` below.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..keys import KeyChoice, KeyRing, fingerprint, key_entries, parse_key_list
from ..settings import Option, Settings
from . import hailuo, kling, openai_videos, seedance, sora_hk, wan
from .base import Mapped, Mismatch, Provider, Registration, Request, Rules, TaskPage

__all__ = ["DEFAULT", "Mapped", "Mismatch", "OPTIONS", "Provider", "ProviderPool", "REGISTRY", "RULES", "Request",
           "Rules", "SORA", "TaskPage", "configured_base", "default_problem", "provider_of"]

# The providers, the default first: one line each.
REGISTRY: Mapping[str, Registration] = {r.name: r for r in (
    sora_hk.REGISTRATION,
    openai_videos.REGISTRATION,
    seedance.REGISTRATION,
    kling.REGISTRATION,
    wan.REGISTRATION,
    hailuo.REGISTRATION,
)}
DEFAULT = sora_hk.NAME
# The providers that resell OpenAI's Sora 2, closed on 2026-09-24 (``ledger.sunset``): not offered instead.
SORA = frozenset({sora_hk.NAME, openai_videos.NAME})
RULES: Mapping[str, Rules] = {name: r.rules for name, r in REGISTRY.items()}
# Team mode: every provider's key setting has a plural, KEY@LIMIT lists (SORA_API_KEYS=k1@2,k2@3),
# and config.yaml may list keys: [{provider, key, concurrency, max_spend}] (``ledger.keys``).
OPTIONS: Tuple[Option, ...] = tuple(option for r in REGISTRY.values() for option in r.options) + tuple(
    Option(env=f"{r.key_env}S", key=f"{r.name}_keys", parse=parse_key_list, default=(), secret=True)
    for r in REGISTRY.values()) + (Option(env="KEYS", key="keys", parse=key_entries, default=None, secret=True),)


def provider_of(params: Mapping[str, Any]) -> str:
    """The provider stored parameters are for (none named: the default, as before providers)."""
    return str(params.get("provider") or DEFAULT)


def configured_base(settings: Settings, provider: str) -> str:
    """The base URL the settings give ``provider`` (``SORA_BASE_URL``, ``OPENAI_BASE_URL``, …)."""
    return REGISTRY[provider].base_url(settings).rstrip("/")


def default_problem(settings: Settings) -> Optional[str]:
    """What is wrong with the settings' default parameters for the settings' provider, or None."""
    if settings.default_duration is None:
        return None
    request = Request(prompt="-", model=None, is_pro=settings.default_is_pro, duration=settings.default_duration,
                      resolution=settings.default_resolution, quality=settings.default_quality,
                      remove_watermark=settings.default_remove_watermark, image_url=None)
    mapped = RULES[settings.provider].map(request)
    wrong = [m for m in mapped if m.key == "duration_seconds"] if isinstance(mapped, list) else []
    return f"DEFAULT_DURATION={settings.default_duration}: {wrong[0].message}" if wrong else None


class ProviderPool:
    """One client per (provider, API base URL), opened when first needed and shared by every thread.

    A job goes to the API it was sent to — its provider and base URL are in the ledger — whatever
    the settings say now; a pending job goes to its provider's configured API."""

    def __init__(self, settings: Settings, *, pool_size: Optional[int] = None) -> None:
        self.settings = settings
        self.pool_size = pool_size
        self.keys = KeyRing.from_settings(settings)
        self._lock = threading.Lock()
        self._open: Dict[Tuple[str, str, Optional[str]], Provider] = {}

    def get(self, provider: str, base_url: Optional[str] = None, key_fp: Optional[str] = None) -> Provider:
        """The client of ``provider`` at ``base_url`` (default: its configured one) with the key of
        fingerprint ``key_fp`` (default: the provider's first key; team mode has several)."""
        base = (base_url or configured_base(self.settings, provider)).rstrip("/")
        secret = self.keys.secret(provider, key_fp) or self.keys.secret(provider, None)
        cache = (provider, base, fingerprint(secret) if secret else None)
        with self._lock:
            client = self._open.get(cache)
            if client is None:
                settings = self.settings
                if secret is not None:  # the key itself: one of several, or only in a KEYS list
                    settings = settings.with_secret(REGISTRY[provider].key_env, secret)
                client = REGISTRY[provider].open(settings, base_url=base, pool_size=self.pool_size)
                client.key_fp = cache[2]  # type: ignore[attr-defined]
                self._open[cache] = client
            return client

    def key_choice(self, provider: str, price: int, holds: Optional[Callable[[str], int]] = None
                   ) -> Optional[KeyChoice]:
        """The keys a create of ``provider`` may go out with (team mode), in the order given; None
        when it has no key setting (Kling's access key and secret key sign their own tokens).
        ``holds``: what a create of a price key awaiting its answer holds against a key's cap."""
        if not self.keys.configured(provider):
            return None
        return KeyChoice([(k.fingerprint, k.limit, k.max_spend) for k in self.keys.of(provider)], price, holds)

    def own_keys(self) -> Optional[List[str]]:
        """The keys in rotation here, whose jobs this machine may poll (None: no key is given — Kling's
        access key and secret key). A job created with another key is never polled with one of
        these: a reseller's key sees only its own tasks, and a 404 there would fail a paid job."""
        return self.keys.own() if self.keys.all() else None

    def opened(self) -> List[Provider]:
        """Every client opened so far."""
        with self._lock:
            return list(self._open.values())

    def is_configured(self, client: Provider) -> bool:
        """Whether ``client`` is the API the settings send new jobs of its provider to (not one
        that only earlier jobs were sent to)."""
        return client.base_url == configured_base(self.settings, client.name)

    def outage(self) -> Tuple[float, str]:
        """The longest time a configured API (where new jobs go) has been out of reach, and what was
        last said about it. An API only earlier jobs were sent to does not count: its jobs are left
        for a later run while the rest go on."""
        worst = max((c for c in self.opened() if self.is_configured(c)), key=lambda c: c.unreachable_for(),
                    default=None)
        return (0.0, "") if worst is None else (worst.unreachable_for(), worst.last_unreachable)

    def close(self) -> None:
        """Close every client."""
        for client in self.opened():
            client.close()

    def __enter__(self) -> "ProviderPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
