"""``ledger work``: the scheduler. It sees jobs as ids and step results.

One thread owns the jobs this run holds (a heap of "what to do next, when"); a small pool of daemon
threads performs the steps (``steps.py``). The scheduler claims jobs in batches, renews their leases,
frees the jobs of dead workers on this machine while it runs, stops cleanly on Ctrl+C, and stops
with one clear reason when the ledger or the API stay out of reach — nothing lost either way.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from datetime import timedelta
from typing import Callable, Dict, List, Optional, Set, Tuple, TypeVar

from sqlalchemy import exc as sa_exc

from ..journal import Journal, journal_folder, orphaned
from ..money import Money
from ..leases import hostname, owner_id, parse_owner
from ..redact import mask_key
from ..policy import RateGate
from ..pricing import Prices
from ..providers import ProviderPool
from ..states import State
from ..store import Claim, JobRow, JobScope, Store
from .board import StatusBoard
from .budget import Budgets
from .decide import is_ledger_trouble
from .steps import RunState, StepContext, keep_in_journal, run_step
from .types import FIRST_ACTION, Action, Active, EventKind, Next, Outcome, Stop, WorkOptions, WorkSummary

log = logging.getLogger(__name__)

CLAIM_GATHER = 0.005  # seconds
DOWNLOAD_YIELD = 0.25  # seconds a due download may wait for creates being sent
OUTAGE_TOLD_AFTER = 3.0  # seconds without any answer from the API before the run says so (once per outage)
SWAP_EVERY = 0.5  # seconds between looks for lapsed paid jobs while every slot is held, some waiting for a key
T = TypeVar("T")


class _DaemonPool:
    """Fixed daemon threads: a step stuck in a socket read never keeps the process from exiting."""

    def __init__(self, size: int) -> None:
        self._tasks: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"ledger-io-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            task()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)


class Scheduler:
    """One ``ledger work`` run over one ledger. Create, then ``run()`` once."""

    def __init__(self, store: Store, providers: ProviderPool, options: WorkOptions, prices: Prices,
                 on_event: Optional[Callable[[JobRow, EventKind, str], None]] = None,
                 on_tick: Optional[Callable[["Scheduler"], None]] = None,
                 journal_dir: Optional[str] = None) -> None:
        self.store = store
        self.providers = providers
        self._outage_told = False
        self.options = options
        self.owner = owner_id()
        self.run_state = RunState()
        self.on_tick = on_tick or (lambda scheduler: None)
        self.active: Dict[int, Active] = {}
        self.expected_total = 0
        self._claimed: Set[int] = set()
        self._parked: Set[int] = set()
        self._heap: List[Tuple[float, int, int]] = []
        self._seq = itertools.count()
        # Step results; ``(None, None)`` only wakes the loop to look at ``_seen_finished``.
        self._results: "queue.Queue[Tuple[Optional[Active], Optional[Next]]]" = queue.Queue()
        self._seen_finished: Dict[str, float] = {}  # task id -> when the list read that showed it done began
        self._seen_lock = threading.Lock()
        self._next_claim = 0.0
        self._last_claim = 0.0
        self._next_swap = 0.0
        self._next_rescue = 0.0
        self._started = time.monotonic()
        folder = journal_folder(str(store.engine.url.render_as_string(hide_password=False)), store.cwd) \
            if journal_dir is None else journal_dir
        gate = RateGate(options.polls_per_second)
        self.ctx = StepContext(
            store=store, providers=providers, options=options, owner=self.owner, budget=Budgets(options.max_spend),
            prices=prices, journal=Journal(folder, self.owner),  # type: ignore[arg-type]
            run=self.run_state, gate=gate, board=StatusBoard(gate, self.run_state.abort, batch_min=options.batch_min,
                                                             on_finished=self._finished_elsewhere),
            emit=on_event or (lambda job, kind, text: None), clock=time.monotonic)

    # --- what the CLI and the live view use ---------------------------------------------------------

    @property
    def summary(self) -> WorkSummary:
        return self.run_state.summary

    @property
    def stopping(self) -> bool:
        return self.run_state.stopping.is_set()

    def request_stop(self) -> None:
        """First Ctrl+C: stop claiming and submitting; let in-flight downloads finish briefly.
        A second one aborts them."""
        if self.run_state.stopping.is_set():
            self.run_state.abort.set()
        with self.run_state.lock:
            if self.summary.stopped in (None, Stop.BALANCE, Stop.BUDGET):
                self.summary.stopped, self.summary.stop_detail = Stop.INTERRUPTED, "interrupted"
        self.run_state.stopping.set()

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> WorkSummary:
        """Work until nothing claimable is left and nothing is in flight (or until stopped)."""
        self._join()
        self._ledger(self.store.release_dead_owners, 0)
        self._replay_journals()
        ready, _ = self._ledger(lambda: self.store.pending_outlook(self.options.scope), (0, None))
        self.expected_total = ready if self.options.limit is None else min(ready, self.options.limit)
        pool = _DaemonPool(self.options.io_threads)
        next_renew = time.monotonic() + self.options.lease_seconds / 3
        self._next_rescue = time.monotonic() + self.options.rescue_every
        try:
            while not self.stopping:
                self._collect(timeout=0)
                now = time.monotonic()
                if now >= next_renew:
                    self._renew()
                    next_renew = now + self.options.lease_seconds / 3
                if now >= self._next_rescue:
                    self._ledger(self.store.release_dead_owners, 0)
                    self._next_rescue = now + self.options.rescue_every
                claimed = self._claim(now)
                self._dispatch(pool, now)
                self._watch_outages()
                self.on_tick(self)
                if not self.active and not claimed and self._finished():
                    break
                self._collect(timeout=self._wait_time())
        finally:
            self._shutdown()
            pool.close()
            self.summary.seconds = time.monotonic() - self._started
        return self.summary

    def _ledger(self, call: Callable[[], T], default: T, *, writes: bool = False) -> T:
        """A scheduler-side ledger call that survives the database being briefly unavailable.
        Only a call that took the write lock (``writes``) shows the ledger is usable again: reads
        go on while another process holds SQLite's write lock."""
        try:
            result = call()
        except sa_exc.SQLAlchemyError as exc:
            if not is_ledger_trouble(exc):
                raise
            self.run_state.ledger_trouble(exc, time.monotonic())
            return default
        if writes:
            self.run_state.ledger_ok()
        return result

    def _watch_outages(self) -> None:
        """Stop (nothing lost) when the ledger or the API have been out of reach for too long."""
        down = self.run_state.ledger_down_since
        if down is not None and time.monotonic() - down > self.options.database_patience:
            self.run_state.halt(Stop.DATABASE, f"the ledger {self.store.describe()} has been unavailable for "
                                               f"{time.monotonic() - down:.0f} s ({self.run_state.ledger_error})")
        else:
            out_for, why = self.providers.outage()
            if out_for > self.options.api_patience:
                kept = self._ledger(lambda: self.store.count_in_flight(self.options.scope), 0)
                self.run_state.halt(Stop.UNREACHABLE, f"{why}, for {out_for:.0f} s; nothing was lost"
                                    + (f": {kept} paid job(s) keep their task ids" if kept else "")
                                    + " — run `ledger work` again once it answers")
            elif out_for >= OUTAGE_TOLD_AFTER and not self._outage_told:
                self._outage_told = True
                log.warning("%s — retrying; gives up after %.0f s (API_PATIENCE_SECONDS)", why,
                            self.options.api_patience)
            elif out_for == 0.0:
                self._outage_told = False

    def _wait_time(self) -> float:
        """How long the loop may sleep: until the next step falls due, or a free slot may be
        claimed (the claim gather ends), at most 0.25 s; a finished step wakes it at once. A
        download waiting for creates is due when they are sent (a finished step) or it waited enough."""
        now = time.monotonic()
        creating = self._creating(now)
        due = [a.due + (DOWNLOAD_YIELD if creating and a.action is Action.DOWNLOAD else 0.0)
               for a in self.active.values() if not a.running]
        if self._free_slots() > 0:
            due.append(max(self._next_claim, self._last_claim + CLAIM_GATHER))
        soonest = min(due) - now if due else 0.5
        return max(0.0, min(soonest, 0.25))

    def _creating(self, now: float) -> bool:
        """Whether a create is being sent or due now."""
        return any(a.action is Action.SUBMIT and (a.running or a.due <= now) for a in self.active.values())

    def _scope(self) -> JobScope:
        """What this run may claim now: after a 1012 or the budget cap only paid-for jobs; once
        ``--limit`` jobs were taken only those (their retries)."""
        scope = self.options.scope
        ids = scope.job_ids
        if self.options.limit is not None and len(self._claimed) >= self.options.limit:
            ids = sorted(self._claimed if ids is None else set(ids) & self._claimed)
        return dataclasses.replace(scope, job_ids=ids, paid_only=self.run_state.no_submit,
                                   own_keys=self._own_keys())

    def _own_keys(self) -> Optional[List[str]]:
        own = getattr(self.providers, "own_keys", None)
        return own() if own is not None else None

    def _finished(self) -> bool:
        """Nothing to claim now: wait only for retries this run could still take, and for the jobs of
        dead workers on this machine, which are freed and taken rather than left behind."""
        if self.run_state.ledger_down_since is not None:
            return False
        ready, later = self._ledger(lambda: self.store.pending_outlook(self._scope(), exclude=self._parked), (1, None))
        if ready:
            return False
        if self._ledger(self.store.release_dead_owners, 0):
            return False
        # Jobs other workers hold: wait while they do, and take over those of a worker that died
        # (on another machine) once its leases lapse — a live worker never leaves them behind.
        held, lapse = self._ledger(lambda: self.store.held_elsewhere(self.owner, self._scope()), (0, None))
        if held and lapse is not None:
            later = lapse if later is None else min(later, lapse)
        if later is None:
            return True
        self._next_claim = time.monotonic() + max(0.2, min(later, 5.0))
        return False

    def _free_slots(self) -> int:
        """How many jobs a claim now may take: free generation slots, within what ``--limit`` leaves.

        A job whose generation is finished (``downloading``) no longer holds one of the API's
        concurrent generations, so it does not count against ``--concurrency``: the next create
        goes out while its video downloads. Downloads themselves are bounded by the same number."""
        downloading = sum(1 for a in self.active.values() if a.job.state is State.DOWNLOADING)
        generating = len(self.active) - downloading
        free = min(self.options.concurrency - generating, 2 * self.options.concurrency - len(self.active))
        if self.options.limit is not None and len(self._claimed) < self.options.limit:
            free = min(free, self.options.limit - len(self._claimed))
        return free

    def _claim(self, now: float) -> bool:
        free = self._free_slots()
        if free <= 0:
            return self._swap_key_waiters(now)
        # Each claim is a write transaction: when jobs finish one after another, gather the free
        # slots for a moment and claim them together rather than one claim per finished job.
        if now < self._next_claim or (self.active and now < self._last_claim + CLAIM_GATHER):
            return False
        self._last_claim = now
        rows = self._claim_rows(free, self._scope())
        if not rows:
            self._next_claim = now + 0.5
            return False
        self._take(rows, now)
        return True

    def _swap_key_waiters(self, now: float) -> bool:
        """Every slot is held, some by jobs waiting for a key. Those hold no generation, and what
        they wait for may be held by jobs already paid for whose worker froze or died: take those
        over (once their leases lapse), each in place of a waiting job, which goes back to the
        queue — else every live worker waits for a key that only the taken-over jobs' end frees."""
        waiting = [a for a in self.active.values() if a.waiting_for_key and not a.running]
        if self.options.limit is not None and len(self._claimed) < self.options.limit:
            waiting = waiting[:self.options.limit - len(self._claimed)]
        if not waiting or now < self._next_swap:
            return False
        rows = self._claim_rows(len(waiting), dataclasses.replace(self._scope(), paid_only=True))
        if not rows:
            self._next_swap = now + SWAP_EVERY
            return False
        for waiter in waiting[:len(rows)]:
            self._let_go(waiter)
        self._take(rows, now)
        return True

    def _claim_rows(self, limit: int, scope: JobScope) -> List[JobRow]:
        # A job this run still holds (its step may have just released it: its outcome is not
        # collected yet) is not claimed again over it.
        claim = self._ledger(lambda: self.store.claim(self.owner, limit, self.options.lease_seconds, scope,
                                                      exclude=self._parked | set(self.active)),
                             Claim([], {}), writes=True)
        for previous, count in claim.taken_over.items():
            parsed = parse_owner(previous)
            who = f"{parsed[0]}/{parsed[1]}" if parsed else previous
            log.warning("took over %d job%s of worker %s (its lease ended: the worker stopped answering or is gone)",
                        count, "" if count == 1 else "s", who)
        return claim.rows

    def _take(self, rows: List[JobRow], now: float) -> None:
        for row in rows:
            self._claimed.add(row.id)
            active = Active(job=row, action=FIRST_ACTION[row.state], due=now)
            self.active[row.id] = active
            self._schedule(active, 0.0)

    def _schedule(self, active: Active, delay: float) -> None:
        active.due = time.monotonic() + delay
        heapq.heappush(self._heap, (active.due, next(self._seq), active.job.id))

    def _dispatch(self, pool: _DaemonPool, now: float) -> None:
        """Start the steps that are due. Creates go first: a download holds no generation slot and
        its video waits for it for days, while a create not yet sent keeps a slot idle — so while
        creates are being sent, a download waits for them (at most ``DOWNLOAD_YIELD`` seconds)."""
        creating = self._creating(now)
        later: List[Tuple[float, int, int]] = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            due, _, job_id = entry
            active = self.active.get(job_id)
            if active is None or active.running or active.due != due:
                continue  # finished meanwhile, or rescheduled
            if creating and active.action is Action.DOWNLOAD and now - due < DOWNLOAD_YIELD:
                later.append(entry)
                continue
            # The note described the wait that is now over; a failed step writes a new one.
            active.running, active.retry_note = True, ""
            pool.submit(lambda a=active: self._results.put((a, run_step(self.ctx, a))))
        for entry in later:
            heapq.heappush(self._heap, entry)

    def _collect(self, timeout: float) -> None:
        try:
            active, nxt = self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
        except queue.Empty:
            return
        while True:
            self._settle(active, nxt)
            try:
                active, nxt = self._results.get_nowait()
            except queue.Empty:
                return

    def _finished_elsewhere(self, task_ids: Set[str], read_at: float) -> None:
        """A list read (made for another job's poll) shows these tasks finished: called from a step."""
        with self._seen_lock:
            for task_id in task_ids:
                self._seen_finished[task_id] = read_at
        self._results.put((None, None))

    def _poll_finished_now(self) -> None:
        """Move the polls of tasks a list read showed finished to now, to take that read's answer."""
        with self._seen_lock:
            seen, self._seen_finished = self._seen_finished, {}
        for active in self.active.values():
            read_at = seen.get(active.job.remote_task_id or "")
            if read_at is not None and active.action is Action.POLL and not active.running:
                active.seen_finished_at = read_at
                self._schedule(active, 0.0)

    def _settle(self, active: Optional[Active], nxt: Optional[Next]) -> None:
        if active is None or nxt is None:
            self._poll_finished_now()
            return
        active.running = False
        if active.job.state not in (State.SUBMITTING, State.SUBMITTED, State.PENDING):
            self._wake_key_waiters()  # its generation ended: its key has room again
        if nxt.delay is not None and not self.stopping:
            self._schedule(active, nxt.delay)
            return
        if nxt.delay is not None:
            self._let_go(active)
            return
        if self.active.get(active.job.id) is active:
            self.active.pop(active.job.id)
        if nxt.outcome is Outcome.PARKED:
            self._parked.add(active.job.id)

    def _wake_key_waiters(self) -> None:
        for waiting in self.active.values():
            if waiting.waiting_for_key and not waiting.running:
                self._schedule(waiting, 0.0)

    def _let_go(self, active: Active) -> None:
        """Release a job we still hold (the run is stopping): its state and task id stay; a created
        task the ledger has not taken yet stays in the journal."""
        self.active.pop(active.job.id, None)
        if active.created is not None:
            keep_in_journal(self.ctx, active)
        self._ledger(lambda: self.store.release(self.owner, [active.job.id]), 0)

    def _join(self) -> None:
        """Say who works (``ledger workers``) and which keys this machine brings (team mode)."""
        self._ledger(lambda: self.store.worker_started(self.owner, hostname(), os.getpid(), self.options.concurrency,
                                                       self.options.lease_seconds), None, writes=True)
        self._measure_clock()
        keys = getattr(self.providers, "keys", None)
        if keys is not None and self._own_keys() is not None:
            self._ledger(lambda: self.store.register_keys(
                (k.fingerprint, k.provider, mask_key(k.secret)[:64], k.limit, k.max_spend) for k in keys.all()), None)
            for fp, reason in keys.out_reasons().items():  # refused at this run's pre-flight: out for everyone
                self._ledger(lambda fp=fp, reason=reason: self.store.retire_key(fp, reason[:500]), None)

    def _measure_clock(self) -> None:
        """How far this machine's clock is off the database's, for the times other workers wrote."""
        ahead = self._ledger(self.store.clock_offset, None)
        if ahead is not None:
            self.ctx.ledger_clock.ahead = timedelta(seconds=ahead)

    def _heartbeat(self) -> None:
        """Every lease renewal: the worker is alive; keys another machine took out of rotation are
        out here too."""
        self._ledger(lambda: self.store.heartbeat(self.owner, len(self.active)), None)
        self._measure_clock()
        keys = getattr(self.providers, "keys", None)
        own = self._own_keys()
        if keys is not None and own:
            keys.retired(self._ledger(lambda: self.store.retired_keys(own), {}))

    def _renew(self) -> None:
        self._heartbeat()
        mine = list(self.active)
        held = self._ledger(lambda: self.store.renew(self.owner, mine, self.options.lease_seconds), set(mine))
        for job_id in set(mine) - held:
            log.warning("job %d: lease lost to another worker; letting it go", job_id)
            active = self.active.get(job_id)
            if active is not None and not active.running:
                self.active.pop(job_id)

    def _shutdown(self) -> None:
        """Stop cleanly: idle jobs are released at once, running steps get a bounded grace."""
        for active in [a for a in self.active.values() if not a.running]:
            self._let_go(active)
        deadline = time.monotonic() + self.options.shutdown_grace
        while any(a.running for a in self.active.values()):
            if time.monotonic() >= deadline or self.run_state.abort.is_set():
                self.run_state.abort.set()  # downloads stop between chunks and delete their .part files
                if time.monotonic() >= deadline + 2.0:
                    break
            self._collect(timeout=0.1)
            self.on_tick(self)
            for active in [a for a in self.active.values() if not a.running]:
                self._let_go(active)
        for active in list(self.active.values()):  # steps that ignored the abort: keep what they created
            if active.created is not None:
                keep_in_journal(self.ctx, active)
        self._ledger(lambda: self.store.release(self.owner), 0)
        with self.run_state.lock:
            stuck = list(self.ctx.downloads.values())
        for dest in stuck:  # a download that ignored the abort: its partial file goes, never its final one
            try:
                dest.with_name(dest.name + ".part").unlink(missing_ok=True)
            except OSError:
                pass
        if not self.ctx.unrecorded:  # every task this run journaled reached the ledger after all
            self.ctx.journal.remove()
        self._ledger(lambda: self.store.worker_stopped(self.owner), None)
        summary = self.summary
        own = self._own_keys()
        mine = dataclasses.replace(self.options.scope, own_keys=own)
        summary.still_generating = self._ledger(lambda: self.store.count_in_flight(mine), 0)
        if own is not None:
            summary.waiting_for_keys = self._ledger(lambda: self.store.waiting_for_keys(self.options.scope, own), [])
        summary.pending_left = self._ledger(lambda: sum(self.store.pending_by_price(self.options.scope).values()), 0)
        totals = self._ledger(lambda: self.store.spent_by_storyboard(list(summary.boards)), {})
        for path, board in summary.boards.items():
            board.total = sum((Money.of(cents, self.ctx.prices.currency(provider))
                               for provider, cents in totals.get(path, ())), Money())

    def _replay_journals(self) -> None:
        """Adopt the tasks that workers which are gone kept in their journals because the ledger was
        unavailable: each becomes its job's task, as if the create's answer had just been recorded."""
        for path, entries in orphaned(self.ctx.journal.folder, self.owner):
            settled = True
            for entry in entries:
                cost = entry.cost_cents
                try:
                    outcome = self.store.adopt_journaled(
                        entry.job_id, entry.task_id,
                        lambda provider, key: cost if cost is not None else self.ctx.prices.price(provider, key))
                except sa_exc.SQLAlchemyError as exc:
                    log.warning("cannot replay the task journal %s yet (%s)", path, exc)
                    settled = False
                    break
                if outcome:
                    log.warning("job %d: %s", entry.job_id, outcome)
            if settled:
                try:
                    path.unlink()
                except OSError:
                    pass
