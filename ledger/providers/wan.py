"""The wan provider (being written: a stub so the registry imports)."""
from __future__ import annotations

from typing import Any, List, Mapping, Union

from .base import Mapped, Mismatch, Registration, Request

NAME = "wan"


class _Rules:
    name = NAME

    def map(self, request: Request) -> Union[Mapped, List[Mismatch]]:
        return [Mismatch("provider", "the wan provider is not ready yet")]

    def price_key(self, params: Mapping[str, Any]) -> str:
        return ""


class _Tariff:
    currency = "CNY"

    def price(self, key: str) -> int:
        return 0

    def describe(self) -> str:
        return f"{NAME}: not ready"


def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("the wan provider is not ready yet")


REGISTRATION = Registration(name=NAME, rules=_Rules(), open=_unavailable, base_url=lambda settings: "http://wan.invalid",
                            tariff=lambda settings: _Tariff(), currency="CNY", key_env="WAN_API_KEY", url_env="WAN_BASE_URL",
                            sim="wan")
