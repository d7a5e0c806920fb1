"""Polling and retrying, as data: pure functions of what is known, unit-testable without a clock."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .settings import Settings


Reading = Tuple[float, int]  # (seconds the generation had run, the progress it reported)


@dataclass(frozen=True)
class PollPolicy:
    """When to ask about a generation next, from how long it has run and the progress it reports.

    The service takes 3–30 minutes, may keep a task queued at 0 % for a while, and reports an
    integer progress. Early on nothing is known, so polls are spaced geometrically
    (``first_delay`` × ``growth``ⁿ) — unless generations of the same kind have finished in this run:
    then a task showing no progress (an API that reports none, or a queue) is asked about just
    after the usual time, and a tenth of its time later each time after that. Once
    progress is above zero the finish time is estimated: from the rate between two readings when
    there are two far enough apart (a queue before the progress started does not distort it), else
    from the one reading as if progress had run from the start. The next poll covers a fraction of
    the estimated remainder that grows with the progress: far from the end a wrong estimate costs
    little, and near the end the poll lands just after the latest finish the readings allow.
    About eight polls find a 4.5-minute generation within a few seconds of its end.
    """

    min_interval: float = 0.25
    max_interval: float = 120.0
    first_delay: float = 0.5
    growth: float = 5.0
    # Beyond this progress the estimate is trusted: poll just after the estimated finish.
    confident_progress: int = 80
    # Never poll more often than this fraction of the time already elapsed: a task stuck at 99 %
    # is asked about less and less often.
    floor_fraction: float = 0.01
    # The poll meant to see the finish lands this fraction of the total after the latest moment the
    # estimate allows (see ``finish_margin``).
    finish_slack: float = 0.002
    # Two readings at least this many points apart give a rate; closer ones leave it to rounding.
    rate_span: int = 10
    # A task without progress past the usual time of its kind is asked about this fraction of its
    # time so far later (a finish noticed within a tenth of its time, at growing intervals).
    overdue_fraction: float = 0.1
    # Polls of a task whose API tells no progress, before any of its kind has finished in this run,
    # come at this growth (the finish found within a third of the time; ``growth`` is for the few
    # polls before progress shows).
    blind_growth: float = 1.5
    jitter: float = 0.05

    @classmethod
    def from_settings(cls, settings: Settings) -> "PollPolicy":
        return cls(min_interval=settings.poll_min_interval, max_interval=settings.poll_max_interval)

    def _anchor(self, elapsed: float, progress: int, earlier: Sequence[Reading]) -> Optional[Reading]:
        """The earliest reading with progress that lies ``rate_span`` points or more before this one."""
        return next((r for r in earlier if 0 < r[1] <= progress - self.rate_span and r[0] < elapsed), None)

    def _started_late(self, total: float, elapsed: float, progress: int, earlier: Sequence[Reading]) -> bool:
        """Whether a single reading's estimate is contradicted by an earlier 0 %: progress that had
        run from the start at its pace would have shown by then (a queue came first)."""
        if self._anchor(elapsed, progress, earlier) is not None:
            return False
        zeros = [t for t, p in earlier if p == 0]
        return bool(zeros) and 100.0 * zeros[-1] / total >= 1.5

    def estimated_total(self, elapsed: float, progress: int, earlier: Sequence[Reading] = ()) -> Optional[float]:
        """The generation's total duration implied by ``progress`` (%) after ``elapsed`` seconds
        (and by ``earlier`` readings, oldest first).

        Progress is an integer that was rounded down, so the midpoint of its step is used."""
        if progress <= 0 or progress >= 100:
            return None
        anchor = self._anchor(elapsed, progress, earlier)
        if anchor is None:
            return elapsed * 100.0 / (progress + 0.5)
        rate = (progress - anchor[1]) / (elapsed - anchor[0])
        return elapsed + (100.0 - progress - 0.5) / rate

    def finish_margin(self, elapsed: float, progress: int, earlier: Sequence[Reading] = ()) -> float:
        """How long after the estimated finish the poll meant to see it is timed (0: no estimate):
        as much as the estimate may be early — half a step of the rounded-down progress, and for a
        rate the rounding of its two readings — and ``finish_slack`` of the total besides."""
        total = self.estimated_total(elapsed, progress, earlier)
        if total is None:
            return 0.0
        anchor = self._anchor(elapsed, progress, earlier)
        if anchor is None:
            early = total * 0.5 / (progress + 0.5)
        else:
            rate = (progress - anchor[1]) / (elapsed - anchor[0])
            early = (0.5 + (100.0 - progress) / (progress - anchor[1])) / rate
        return early + self.finish_slack * total

    def next_delay(self, elapsed: float, progress: int, last_delay: Optional[float] = None,
                   rng: Optional[random.Random] = None, earlier: Sequence[Reading] = (),
                   typical: Optional[float] = None, blind: bool = False) -> float:
        """Seconds until the next poll of a task that has run ``elapsed`` seconds; ``earlier``: the
        readings before this one, oldest first; ``typical``: how long generations of its kind took
        in this run (for a task that shows no progress: the API tells none, or it is queued);
        ``blind``: the API never tells progress (first poll straight at the usual time)."""
        floor = max(self.min_interval, self.floor_fraction * elapsed)
        total = self.estimated_total(elapsed, progress, earlier)
        if total is None:
            growth = self.blind_growth if blind else self.growth
            delay = max(self.first_delay, self.min_interval) if last_delay is None else last_delay * growth
            spread = self.jitter
            if typical is not None:
                usual = typical * (1.0 + self.finish_slack)
                if elapsed < usual and (blind or delay >= usual - elapsed):
                    delay, spread = usual - elapsed, 0.0  # land just after the usual finish
                elif elapsed >= usual:
                    delay = self.overdue_fraction * elapsed  # late: ask every tenth of the time so far
        elif progress >= self.confident_progress:
            delay = total - elapsed + self.finish_margin(elapsed, progress, earlier)
            spread = 0.0  # jitter could land the poll just before the finish and cost one more
        else:
            delay = (total - elapsed) * (0.5 + 0.5 * progress / 100.0)
            spread = self.jitter
        if total is not None and self._started_late(total, elapsed, progress, earlier):
            # Measure its pace before trusting it: the next reading comes when ``rate_span`` more
            # points are due at the slowest pace it can have (as if it had run from the start).
            delay = min(delay, self.rate_span * elapsed / progress)
        delay = min(max(delay, floor), self.max_interval)
        if spread:
            delay *= 1.0 + (rng or random).uniform(-spread, spread)
        return delay


@dataclass(frozen=True)
class RetryPolicy:
    """How a job is retried after transient trouble: attempts and an exponential, jittered delay.

    Attempts and the next-attempt time live in the ledger, so a retry survives a restart."""

    max_attempts: int = 5
    base_delay: float = 30.0
    max_delay: float = 30 * 60.0
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        return cls(max_attempts=settings.max_attempts, base_delay=settings.retry_base_delay,
                   max_delay=settings.retry_max_delay)

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failed tries are all this job gets."""
        return attempts >= self.max_attempts

    def delay(self, attempts: int, rng: Optional[random.Random] = None) -> float:
        """Seconds to wait before try number ``attempts + 1`` (``attempts`` >= 1 have failed)."""
        delay = min(self.max_delay, self.base_delay * (2 ** max(0, attempts - 1)))
        return delay * (1.0 + (rng or random).uniform(-self.jitter, self.jitter))


class RateGate:
    """A token bucket shared by every thread: at most ``per_second`` polls, with short bursts."""

    def __init__(self, per_second: float, burst: Optional[float] = None) -> None:
        self.per_second = per_second
        self.capacity = burst if burst is not None else max(1.0, per_second)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, cancel: Optional[threading.Event] = None) -> bool:
        """Wait for a token; False when ``cancel`` was set first."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.per_second)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.per_second
            if cancel is not None:
                if cancel.wait(wait):
                    return False
            else:
                time.sleep(wait)
