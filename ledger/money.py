"""Money as ledger shows and counts it: amounts in minor units (cents, fen) by currency.

Every provider prices in its own currency (sora.hk and /v1/videos in US dollars, the Chinese APIs
in yuan); nothing is ever converted between currencies. A sum over several providers is a
``Money`` with one amount per currency, shown ``$2.70 + ¥12.00``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

# How an amount in a currency is written: the sign before it; any other currency after it, by code.
SIGNS = {"USD": "$", "CNY": "¥"}
_SIGN_OF = {"$": "USD", "us$": "USD", "¥": "CNY", "￥": "CNY"}
CODES = {"usd": "USD", "cny": "CNY", "rmb": "CNY", "元": "CNY", "yuan": "CNY"}


def money(amount: int, currency: str = "USD") -> str:
    """An amount in minor units (cents, fen) as people read it: ``$1.14``, ``¥3.00``, ``1.14 EUR``."""
    sign = "-" if amount < 0 else ""
    value = f"{abs(amount) / 100:,.2f}"
    symbol = SIGNS.get(currency)
    return f"{sign}{symbol}{value}" if symbol else f"{sign}{value} {currency}"


def rate(amount: float, currency: str = "USD") -> str:
    """A price per unit in minor units, which may hold a fraction of one (a price per second):
    ``$0.10``, ``¥0.625`` — two decimals, more (up to four) only when the rate has them."""
    whole, _, fraction = f"{amount / 100:.4f}".partition(".")
    value = f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"
    symbol = SIGNS.get(currency)
    return f"{symbol}{value}" if symbol else f"{value} {currency}"


class Money:
    """Amounts in minor units by currency: what a mix of providers costs (``$2.70 + ¥12.00``).
    Immutable; adds up with ``+`` (and ``sum``)."""

    __slots__ = ("_by",)

    def __init__(self, by: Optional[Mapping[str, int]] = None) -> None:
        self._by: Dict[str, int] = {c: int(v) for c, v in sorted((by or {}).items()) if v}

    @classmethod
    def of(cls, amount: int, currency: str) -> "Money":
        return cls({currency: amount})

    def __add__(self, other: Any) -> "Money":
        if isinstance(other, int) and other == 0:
            return self
        if not isinstance(other, Money):
            return NotImplemented
        total = dict(self._by)
        for currency, amount in other._by.items():
            total[currency] = total.get(currency, 0) + amount
        return Money(total)

    __radd__ = __add__

    def __sub__(self, other: "Money") -> "Money":
        return self + Money({c: -v for c, v in other._by.items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and self._by == other._by

    def __hash__(self) -> int:
        return hash(tuple(self._by.items()))

    def __bool__(self) -> bool:
        return bool(self._by)

    def __repr__(self) -> str:
        return f"Money({self._by!r})"

    def get(self, currency: str) -> int:
        return self._by.get(currency, 0)

    @property
    def currencies(self) -> List[str]:
        return list(self._by)

    def items(self) -> List[Tuple[str, int]]:
        return list(self._by.items())

    def text(self, zero_currency: str = "USD") -> str:
        """``$2.70 + ¥12.00``; nothing at all is ``$0.00`` (in ``zero_currency``)."""
        return " + ".join(money(v, c) for c, v in self._by.items()) or money(0, zero_currency)

    def __str__(self) -> str:
        return self.text()

    def single(self) -> Optional[int]:
        """The amount when at most one currency is in it (0 for nothing), else None."""
        return 0 if not self._by else next(iter(self._by.values())) if len(self._by) == 1 else None

    def to_json(self) -> Dict[str, int]:
        return dict(self._by)


_AMOUNT = re.compile(r"(?P<sign>\$|us\$|¥|￥)?\s*(?P<units>\d+)(?:\.(?P<fraction>\d{1,2}))?\s*"
                     r"(?:(?P<minor>c)|(?P<code>[a-z]{3}|元|yuan))?", re.IGNORECASE)


def parse_money(text: str) -> Tuple[int, Optional[str]]:
    """An amount as users write it, in minor units, and its currency when it names one: ``5`` is
    5.00 of whatever currency is in play, ``$5`` / ``5USD`` $5.00, ``¥50`` / ``50元`` / ``50CNY``
    ¥50.00, ``5.5`` 5.50, ``500c`` 500 cents (fen). ``ValueError`` says what is wrong."""
    match = _AMOUNT.fullmatch(text.strip().replace(",", "").replace("_", ""))
    if match is None or (match["minor"] and match["fraction"]):
        raise ValueError(f"{text!r} is not an amount: write 5, 5.50, $5, ¥50, 50CNY, or cents with a c (500c)")
    currency = _SIGN_OF.get((match["sign"] or "").lower())
    if match["code"]:
        named = CODES.get(match["code"].lower(), match["code"].upper())
        if currency is not None and named != currency:
            raise ValueError(f"{text!r} names two currencies: write 5, 5.50, $5, ¥50, 50CNY, or cents with a c (500c)")
        currency = named
    if match["minor"]:
        return int(match["units"]), currency
    return int(match["units"]) * 100 + int((match["fraction"] or "0").ljust(2, "0")), currency


