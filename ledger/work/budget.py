"""``--max-spend``: a reservation becomes spend (or is given back) under one lock."""
from __future__ import annotations

import threading
from typing import Optional


class Budget:
    """What this run has spent and holds in reservation, against an optional cap (cents).

    A create reserves its price before the write-ahead; when it settles, ``spend`` turns the
    reservation into the actual cost in one step, so no other thread ever sees the money in neither
    column (the window through which ``--max-spend`` used to be exceeded)."""

    def __init__(self, cap: Optional[int]) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._spent = 0
        self._reserved = 0

    def reserve(self, price: int) -> bool:
        """Hold ``price`` for one create; False when that could take spend past the cap."""
        with self._lock:
            if self.cap is not None and self._spent + self._reserved + price > self.cap:
                return False
            self._reserved += price
            return True

    def spend(self, reserved: int, cost: int) -> None:
        """A create settled: its reservation (0 when none was held) becomes ``cost``."""
        with self._lock:
            self._reserved -= reserved
            self._spent += cost

    def release(self, reserved: int) -> None:
        """A create that provably did not happen gives its reservation back."""
        with self._lock:
            self._reserved -= reserved

    @property
    def spent(self) -> int:
        with self._lock:
            return self._spent

    @property
    def reserved(self) -> int:
        with self._lock:
            return self._reserved
