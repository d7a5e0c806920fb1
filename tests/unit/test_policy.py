"""Polling and retry policies as pure functions: simulated clocks, no sleeping."""
from __future__ import annotations

import random
import threading

import pytest

from ledger.policy import PollPolicy, RateGate, RetryPolicy


def progress(elapsed: float, generation: float) -> int:
    """Like the service (and the simulator): queued at 0 % for the first tenth, then linear."""
    return 0 if elapsed < 0.1 * generation else max(1, min(99, int(100 * elapsed / generation)))


def simulate(policy: PollPolicy, generation: float, seed: int, curve=progress):
    """Poll a task the way the worker does (each poll with the readings before it). Returns
    (polls, seconds between the finish and the poll that noticed it)."""
    rng = random.Random(seed)
    elapsed, last, polls, readings = 0.0, None, 0, [(0.0, 0)]
    while True:
        reported = curve(elapsed, generation)
        last = policy.next_delay(elapsed, reported, last, rng, earlier=readings)
        if elapsed:
            readings.append((elapsed, reported))
        elapsed += last
        polls += 1
        if elapsed >= generation:
            return polls, elapsed - generation


def queued_then_linear(elapsed: float, generation: float) -> int:
    """A service that queues the task for 30 % of its time, then reports 0..100 % over the rest."""
    start = 0.3 * generation
    return 0 if elapsed < start else min(99, int(100 * (elapsed - start) / (generation - start)))


@pytest.mark.parametrize("generation", [5.0, 180.0, 270.0, 600.0])
def test_progress_that_starts_after_a_queue_is_timed_by_its_own_pace(generation):
    """Before: the one reading's estimate assumed progress ran from the start, and the finish was
    noticed up to a fifth of the generation late (12 % at 270 s, 21 % at 5 s)."""
    for seed in range(30):
        polls, lag = simulate(PollPolicy(), generation, seed, queued_then_linear)
        assert lag <= 0.03 * generation, (seed, lag)
        assert polls <= 9


def test_a_rate_between_two_readings_times_the_finish_poll_after_the_latest_finish_they_allow():
    policy = PollPolicy()
    earlier = [(0.0, 0), (60.0, 0), (120.0, 20)]  # queued a minute, then 20 % a minute
    total = policy.estimated_total(240.0, 60, earlier)
    assert total == pytest.approx(240 + 39.5 / (40 / 120))  # from the pace between the readings
    delay = policy.next_delay(330.0, 90, 10.0, earlier=[*earlier, (240.0, 60)])
    assert 360.0 < 330.0 + delay < 366.0  # 10 points at 1/3 % a second: 30 s, plus rounding


@pytest.mark.parametrize("generation, most", [(180.0, 8), (270.0, 8), (600.0, 10), (1800.0, 22)])
def test_a_real_length_generation_takes_few_polls_and_is_noticed_quickly(generation, most):
    # beyond a few minutes, POLL_MAX_INTERVAL (120 s) adds a poll per two minutes
    for seed in range(50):
        polls, lag = simulate(PollPolicy(), generation, seed)
        assert polls <= most
        assert lag <= 0.05 * generation


def test_a_short_generation_is_noticed_within_a_fraction_of_a_second():
    for seed in range(50):
        polls, lag = simulate(PollPolicy(), 5.0, seed)
        assert lag < 0.25 and polls <= 8


def test_a_task_stuck_at_99_percent_is_asked_less_and_less_often():
    policy = PollPolicy()
    delays = [policy.next_delay(elapsed, 99, None, random.Random(1)) for elapsed in (100.0, 1000.0, 3000.0)]
    assert delays[0] >= policy.min_interval and delays[0] < delays[1] < delays[2]
    assert delays[2] >= 0.01 * 3000 * 0.95


def test_delays_stay_within_bounds():
    policy = PollPolicy(min_interval=2.0, max_interval=60.0)
    rng = random.Random(3)
    for elapsed in (0.0, 1.0, 50.0, 500.0, 5000.0):
        for progress in (0, 1, 50, 99):
            delay = policy.next_delay(elapsed, progress, 100.0, rng)
            assert 2.0 * 0.95 <= delay <= 60.0 * 1.05


def test_retry_delays_grow_exponentially_up_to_the_cap():
    policy = RetryPolicy(max_attempts=5, base_delay=10.0, max_delay=60.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert not policy.exhausted(4) and policy.exhausted(5)
    jittered = RetryPolicy(base_delay=10.0, jitter=0.2)
    assert all(8.0 <= jittered.delay(1, random.Random(s)) <= 12.0 for s in range(20))


def test_rate_gate_allows_a_burst_then_waits_and_can_be_cancelled():
    gate = RateGate(per_second=0.001, burst=2)
    assert gate.acquire() and gate.acquire()
    cancel = threading.Event()
    cancel.set()
    assert gate.acquire(cancel) is False  # the next token is 1000 s away; cancelling returns at once


def no_progress(elapsed: float, generation: float) -> int:
    """An API that tells only the status: 0 % until the task is done."""
    return 0


@pytest.mark.parametrize("generation", [5.0, 270.0])
def test_without_progress_the_usual_time_of_the_kind_times_the_polls(generation):
    """A task that shows no progress is asked about just after the usual finish of its kind, then
    every tenth of its time: noticed within 10 %, where growing the intervals fivefold missed a 5 s
    generation by 10 s (3 polls at 0.5, 3 and 15.5 s)."""
    policy = PollPolicy()
    rng = random.Random(1)
    for typical, lag_bound in ((generation * 1.02, 0.03), (generation * 0.8, 0.11)):
        elapsed, last, polls = 0.0, None, 0
        while elapsed < generation:
            last = policy.next_delay(elapsed, no_progress(elapsed, generation), last, rng, typical=typical)
            elapsed += last
            polls += 1
        assert elapsed - generation <= lag_bound * generation, (typical, elapsed)
        assert polls <= 9


@pytest.mark.parametrize("generation", [5.0, 270.0])
def test_an_api_that_never_tells_progress_is_polled_on_a_finer_ladder_until_a_time_is_known(generation):
    """Before any task of its kind finished, a task of an API without progress is polled at 1.5x
    growing intervals (found within a third of its time), not 5x (a 5 s task found at 15.5 s); once
    the usual time is known, its first poll goes straight there."""
    policy = PollPolicy()
    rng = random.Random(2)
    lags = {}
    for blind in (True, False):
        elapsed, last, polls = 0.0, None, 0
        while elapsed < generation:
            last = policy.next_delay(elapsed, 0, last, rng, blind=blind)
            elapsed += last
            polls += 1
        lags[blind] = elapsed - generation
        if blind:
            assert 0.0 < lags[blind] <= 0.55 * generation and polls <= 18, (elapsed, polls)
    assert lags[True] < lags[False]  # the coarse ladder misses it by more (at 5 s: by 10 s)
    first = policy.next_delay(0.0, 0, None, rng, typical=generation, blind=True)
    assert first == pytest.approx(min(generation * 1.002, policy.max_interval))


def test_the_usual_time_is_the_span_the_finishes_share_not_a_midpoint_dragged_down():
    """Spans (last poll unfinished, poll that saw it done) of tasks that all took 5 s: wide spans
    from a first poll that found the task done must not halve the estimate."""
    from ledger.work.steps import Durations
    durations = Durations()
    assert durations.typical("k") is None
    durations.record("k", 4.06, 6.6)
    assert durations.typical("k") == pytest.approx(5.33)
    for _ in range(5):
        durations.record("k", 0.0, 5.34)  # polled first at the usual time: done
    assert 4.06 <= durations.typical("k") <= 5.34
    durations.record("k", 4.9, 5.1)
    assert durations.typical("k") == pytest.approx(5.0)
    # tasks of another length: the stretch most spans share wins
    other = Durations()
    for lo, hi in ((9.0, 11.0), (9.5, 10.5), (2.0, 3.0), (9.8, 10.9)):
        other.record("k", lo, hi)
    assert 9.8 <= other.typical("k") <= 10.5
