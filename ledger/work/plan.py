"""What a run would pay for, priced per provider, beside each account's balance. Costs nothing to make."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from ..errors import ApiError
from ..pricing import Money, Prices
from ..providers import ProviderPool
from ..store import JobScope, Store


@dataclass(frozen=True)
class ProviderPlan:
    """The jobs a run would send to one provider, their cost, and that account's balance."""

    provider: str
    currency: str
    normal: int
    pro: int
    cost: int  # minor units of ``currency``
    balance: Optional[int]
    balance_note: str = ""
    balance_caveat: str = ""  # what the figure is not (the provider's ``balance_caveat``), shown beside it

    @property
    def jobs(self) -> int:
        return self.normal + self.pro


@dataclass(frozen=True)
class WorkPlan:
    """The jobs a run would submit, their price, and whether the balances cover them."""

    providers: List[ProviderPlan]
    in_flight: int
    prices: Prices

    @property
    def normal(self) -> int:
        return sum(p.normal for p in self.providers)

    @property
    def pro(self) -> int:
        return sum(p.pro for p in self.providers)

    @property
    def jobs(self) -> int:
        return self.normal + self.pro

    @property
    def cost(self) -> Money:
        return sum((Money.of(p.cost, p.currency) for p in self.providers), Money())


def plan_work(store: Store, providers: ProviderPool, scope: JobScope, prices: Prices, *,
              limit: Optional[int] = None, extra: Optional[Mapping[Tuple[str, str, bool], int]] = None) -> WorkPlan:
    """Count what ``ledger work`` would submit (plus ``extra`` jobs, by (provider, price key,
    is_pro), a dry-run scan would add), priced with ``prices``; each provider's balance (when its
    API tells one) says whether that account covers its part. With ``limit``, the dearest jobs
    are counted first: the estimate is an upper bound."""
    counts: Dict[Tuple[str, str, bool], int] = dict(store.pending_by_price(scope))
    for key, n in (extra or {}).items():
        counts[key] = counts.get(key, 0) + n
    left = limit
    plans: Dict[str, List[int]] = {}  # provider -> [normal, pro, cost]
    # Dearest first (by amount, whatever the currency: only --limit's choice depends on the order).
    for (provider, key, is_pro), n in sorted(counts.items(), key=lambda item: -prices.price(*item[0][:2])):
        taken = n if left is None else min(n, left)
        if left is not None:
            left -= taken
        if not taken:
            continue
        plan = plans.setdefault(provider, [0, 0, 0])
        plan[1 if is_pro else 0] += taken
        plan[2] += taken * prices.price(provider, key)
    result = []
    for provider, (normal, pro, cost) in sorted(plans.items()):
        api = providers.get(provider)
        try:
            balance = api.balance()
            note = "" if balance is not None else f"the {provider} API has no balance endpoint"
        except ApiError as exc:
            balance, note = None, f"the balance could not be read: {exc}"
        result.append(ProviderPlan(provider, prices.currency(provider), normal, pro, cost, balance, note,
                                   getattr(api, "balance_caveat", "")))
    return WorkPlan(result, store.count_in_flight(scope), prices)
