"""What a generation costs, per provider, and money as users read it.

A job's price is its provider's price list at the job's price key (``jobs.price_key``: ``pro`` /
``normal`` for sora.hk, ``model@size:seconds`` for /v1/videos). The sora.hk API's own price list
(``GET /pricing``) is fetched by the commands that talk to the API (work, dry runs) and kept in the
ledger, so ``scan`` and ``status`` — which never call the API — quote the same figure and say where
it came from; the settings' fallback table is used only before the API has ever answered for this
base URL. The /v1/videos format has no price endpoint: its list is data with settings overrides.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional, Protocol

from .errors import ApiError
from .money import CODES, Money, money
from .models import utcnow
from .settings import Settings

if TYPE_CHECKING:  # imported for annotations only: the store imports nothing from here
    from .store import Store

log = logging.getLogger(__name__)

PRICING_KEY = "pricing"


class Tariff(Protocol):
    """One provider's price list, in its currency's minor unit (cents, fen)."""

    currency: str

    def price(self, key: str) -> int:
        """The price of one job with this price key, in minor units of ``currency``."""

    def describe(self) -> str:
        """The list and where it came from, in one phrase."""


@dataclass(frozen=True)
class PriceBook:
    """sora.hk: cents per generation for the normal and the Pro model, and where the figures came from."""

    normal: int
    pro: int
    source: str
    currency: str = "USD"

    def price(self, key: str) -> int:
        """The price of one generation by its key, ``pro`` or ``normal``."""
        return self.pro if key == "pro" else self.normal

    def describe(self) -> str:
        """``normal $0.30, Pro $1.50 per video (from …)``."""
        return (f"normal {money(self.normal, self.currency)}, Pro {money(self.pro, self.currency)} per video "
                f"({self.source})")


@dataclass(frozen=True)
class Prices:
    """Every provider's price list: what any job costs."""

    tariffs: Mapping[str, Tariff]

    def price(self, provider: str, key: str) -> int:
        """One job of ``provider`` with price key ``key``, in minor units of the provider's currency."""
        return self.tariffs[provider].price(key)

    def currency(self, provider: str) -> str:
        """The currency ``provider``'s amounts are in."""
        return self.tariffs[provider].currency

    def cost(self, provider: str, key: str, jobs: int = 1) -> Money:
        """``jobs`` jobs of ``provider`` at price key ``key``."""
        return Money.of(jobs * self.price(provider, key), self.currency(provider))

    def describe(self, providers: Optional[Iterable[str]] = None) -> str:
        """The lists of ``providers`` (default: every one), one phrase each."""
        wanted = None if providers is None else set(providers)
        return "; ".join(tariff.describe() for name, tariff in self.tariffs.items() if wanted is None or name in wanted)


def fallback_prices(settings: Settings) -> PriceBook:
    """The settings' price table (``PRICE_NORMAL_CENTS`` / ``PRICE_PRO_CENTS``)."""
    return PriceBook(settings.price_normal_cents, settings.price_pro_cents,
                     "the fallback table PRICE_NORMAL_CENTS / PRICE_PRO_CENTS: no price list from this API yet")


def _from_stored(value: Dict[str, Any], settings: Settings) -> Optional[PriceBook]:
    if value.get("base_url") != settings.base_url:
        return None  # another service's prices say nothing about this one
    try:
        normal, pro = int(value["normal"]), int(value["pro"])
        fetched = datetime.fromisoformat(str(value["fetched_at"]))
    except (KeyError, TypeError, ValueError):
        return None
    return PriceBook(normal, pro, f"GET /pricing, {fetched:%Y-%m-%d %H:%M} UTC", _currency(value.get("currency")))


def _currency(told: Any) -> str:
    """The currency a price list names (``USD``; ``RMB`` and ``元`` are ``CNY``), USD when it names none."""
    text = str(told or "").strip()
    return CODES.get(text.lower(), text.upper()) if text else "USD"


def known_sora_prices(store: "Store", settings: Settings) -> PriceBook:
    """The last price list the sora.hk API gave for this base URL, else the fallback table. No API call."""
    stored = store.get_meta(PRICING_KEY)
    book = _from_stored(stored, settings) if stored else None
    return book or fallback_prices(settings)


def _with(sora: PriceBook, settings: Settings) -> Prices:
    from .providers import REGISTRY, sora_hk

    return Prices({name: sora if name == sora_hk.NAME else registration.tariff(settings)
                   for name, registration in REGISTRY.items()})


def known_prices(store: "Store", settings: Settings) -> Prices:
    """Every provider's price list as the ledger knows it. No API call."""
    return _with(known_sora_prices(store, settings), settings)


def refresh_prices(store: "Store", client: "Optional[Any]", settings: Settings) -> Prices:
    """Every provider's price list, asking the sora.hk API (``client``: its provider, whose
    ``pricing()`` is ``GET /pricing``; None when no job goes there) and keeping its answer in the
    ledger; when it cannot be read, the last kept answer (or the fallback table) with the reason in
    its source."""
    if client is None:
        return known_prices(store, settings)
    try:
        pricing = client.pricing()
    except ApiError as exc:
        book = known_sora_prices(store, settings)
        # The error already names the call: "GET /pricing: HTTP 429 …".
        log.info("price list not read (%s); using %s", exc, book.source)
        return _with(PriceBook(book.normal, book.pro, f"{book.source}; the price list could not be read just now",
                               book.currency), settings)
    now = utcnow()
    store.put_meta(PRICING_KEY, {"normal": pricing.normal_price, "pro": pricing.pro_price,
                                 "currency": pricing.currency, "base_url": settings.base_url,
                                 "fetched_at": now.isoformat(timespec="seconds")})
    return _with(PriceBook(pricing.normal_price, pricing.pro_price, f"GET /pricing, {now:%Y-%m-%d %H:%M} UTC",
                           _currency(pricing.currency)), settings)
