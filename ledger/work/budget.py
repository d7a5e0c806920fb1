"""``--max-spend``: a reservation becomes spend (or is given back) under one lock.

The cap holds at any concurrency and any create latency because every paid create holds its price
*before* the POST, and money only leaves the reservation column into the spend column. Two things
can make a price list wrong — a reseller that charges more than it lists, or a list in another
unit — so the budget trusts the API's own answers over its list:

* a create settles at the larger of what was held and what the API said it cost (an answer that
  says less, or nothing, never frees money that may have been charged);
* the highest cost an API reported for a kind of job becomes the price held for the next one of
  that kind (``estimate``);
* with a cap, when the API reports costs, the first create of each kind goes alone: the others of
  its kind wait for its answer, so a price list that understates costs at most one create's
  difference, never a whole batch's.
"""
from __future__ import annotations

import enum
import threading
from typing import Dict, Hashable, Optional


class Hold(enum.Enum):
    """What ``Budget.reserve`` says to a create."""

    GO = "go"  # the price is held: send it
    WAIT = "wait"  # the first create of this kind is out and its cost not known yet: ask again shortly
    FULL = "full"  # it could take spend past the cap: send nothing more


class Budget:
    """What this run has spent and holds in reservation, against an optional cap (cents)."""

    def __init__(self, cap: Optional[int]) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._spent = 0
        self._reserved = 0
        self._held = 0  # creates holding a reservation
        self._learned: Dict[Hashable, int] = {}  # kind -> the highest cost the API reported for it
        self._probing: Dict[Hashable, object] = {}  # kind -> the create whose cost is awaited

    def estimate(self, kind: Hashable, listed: int) -> int:
        """The price to hold for one create of ``kind``: its listed price, or more when the API
        charged more than that for one of its kind in this run."""
        with self._lock:
            return max(listed, self._learned.get(kind, 0))

    def reserve(self, price: int, kind: Hashable = None, who: object = None, *, probe: bool = False) -> Hold:
        """Hold ``price`` for ``who``'s create of ``kind``. ``probe``: the API says what a create
        cost, so with a cap the first one of an unconfirmed kind goes alone."""
        with self._lock:
            if self.cap is None:
                self._take(price)
                return Hold.GO
            if probe and kind not in self._learned:
                if self._probing.get(kind, who) is not who:
                    return Hold.WAIT
                self._probing[kind] = who
            if self._spent + self._reserved + price > self.cap:
                if probe:
                    self._end_probe(kind, who, confirmed=False)
                return Hold.FULL
            self._take(price)
            return Hold.GO

    def spend(self, reserved: int, cost: Optional[int], kind: Hashable = None, who: object = None) -> int:
        """A create settled: its reservation (0 when none was held) becomes spend — the cost the
        API reported, but never less than what was held. Returns what was booked."""
        with self._lock:
            booked = max(reserved, cost or 0)
            self._reserved -= reserved
            self._held -= 1 if reserved else 0
            self._spent += booked
            if cost is not None:
                self._learned[kind] = max(self._learned.get(kind, 0), cost)
            self._end_probe(kind, who, confirmed=True)
            return booked

    def release(self, reserved: int, kind: Hashable = None, who: object = None) -> None:
        """A create that provably did not happen gives its reservation back."""
        with self._lock:
            self._reserved -= reserved
            self._held -= 1 if reserved else 0
            self._end_probe(kind, who, confirmed=False)

    def adjust(self, delta: int) -> None:
        """A settled create's cost turned out ``delta`` more (or less) than booked: the API told its
        real cost once the task was done (tokens used), or gave it back (a failed task not billed)."""
        with self._lock:
            self._spent += delta

    def give_up_probe(self, kind: Hashable, who: object) -> None:
        """``who``'s cost will not be known in this run (its create stays unresolved): the kind's
        listed price stands, and the others of its kind may go."""
        with self._lock:
            self._end_probe(kind, who, confirmed=True)

    def _take(self, price: int) -> None:
        self._reserved += price
        self._held += 1 if price else 0

    def _end_probe(self, kind: Hashable, who: object, *, confirmed: bool) -> None:
        if who is not None and self._probing.get(kind) is who:
            del self._probing[kind]
            if confirmed:
                self._learned.setdefault(kind, 0)

    @property
    def spent(self) -> int:
        with self._lock:
            return self._spent

    @property
    def reserved(self) -> int:
        with self._lock:
            return self._reserved

    @property
    def held(self) -> int:
        """How many creates hold a reservation (sent, their cost not yet known)."""
        with self._lock:
            return self._held


class Budgets:
    """One ``Budget`` per currency: ``--max-spend`` caps each currency in play on its own (nothing
    is converted), and a currency it gives no cap is not capped."""

    def __init__(self, caps: Optional[Dict[str, int]] = None) -> None:
        self.caps: Dict[str, int] = dict(caps or {})
        self._lock = threading.Lock()
        self._by: Dict[str, Budget] = {}

    def __getitem__(self, currency: str) -> Budget:
        with self._lock:
            budget = self._by.get(currency)
            if budget is None:
                budget = self._by[currency] = Budget(self.caps.get(currency))
            return budget
