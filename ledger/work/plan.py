"""What a run would pay for, priced, beside the account balance. Costs nothing to make."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..client import SoraClient
from ..errors import ApiError
from ..pricing import PriceBook
from ..store import JobScope, Store


@dataclass(frozen=True)
class WorkPlan:
    """The jobs a run would submit, their price, and whether the balance covers them."""

    normal: int
    pro: int
    in_flight: int
    prices: PriceBook
    balance: Optional[int]
    balance_note: str = ""

    @property
    def jobs(self) -> int:
        return self.normal + self.pro

    @property
    def cost(self) -> int:
        return self.normal * self.prices.normal + self.pro * self.prices.pro


def plan_work(store: Store, client: SoraClient, scope: JobScope, prices: PriceBook, *,
              limit: Optional[int] = None, extra: Tuple[int, int] = (0, 0)) -> WorkPlan:
    """Count what ``ledger work`` would submit (plus ``extra`` (normal, Pro) jobs a dry-run scan
    would add), priced with ``prices``; ``GET /balance`` says whether the account covers it."""
    counts = store.pending_by_model(scope)
    normal, pro = counts[False] + extra[0], counts[True] + extra[1]
    if limit is not None and normal + pro > limit:
        pro = min(pro, limit)
        normal = limit - pro
    try:
        balance, note = client.balance(), ""
    except ApiError as exc:
        balance, note = None, f"GET /balance failed: {exc}"
    return WorkPlan(normal, pro, store.count_in_flight(scope), prices, balance, note)
