"""``ledger work``: claim → submit → poll → download, crash-safe and paid once.

One scheduler thread owns the in-flight jobs (a heap of "what to do next, when"); a small pool of
daemon threads performs the steps (HTTP calls, downloads, ledger transitions). Everything that
must survive a crash is written to the ledger before the step that depends on it:

* ``submitting`` is committed before the paid ``POST /create`` is sent, and the remote task id the
  moment it is known. A job left in ``submitting`` is reconciled through the account's task list
  before anything is sent again.
* A job with a remote task id is only ever polled and downloaded.
* A video reaches its final name only complete (``download.py``), then its sidecar, then ``done``.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from sqlalchemy import exc as sa_exc

from .client import RemoteTask, SoraClient
from .download import sha256_of, sidecar_path, video_filename, write_json_atomic
from .errors import (
    ApiError,
    AuthError,
    BadParameters,
    ExitStatus,
    InsufficientBalance,
    Interrupted,
    RateLimited,
    RemoteTaskFailed,
    TransientError,
    UnsafeDownload,
    UrlExpired,
)
from .leases import owner_id
from .models import iso_utc, utcnow
from .outputs import existing_videos
from .policy import PollPolicy, RateGate, RetryPolicy
from .states import State
from .store import JobRow, JobScope, LeaseLost, Store
from .storyboard import ledger_path

log = logging.getLogger(__name__)

SUBMIT, RECONCILE, POLL, DOWNLOAD = "submit", "reconcile", "poll", "download"
_FIRST_ACTION = {State.PENDING: SUBMIT, State.SUBMITTING: RECONCILE, State.SUBMITTED: POLL,
                 State.DOWNLOADING: DOWNLOAD}
CLAIM_GATHER = 0.05  # seconds
_URL_REFRESHES = 3
_UNEXPECTED_RETRY = 5.0  # seconds before a step that raised something unforeseen runs again  # fresh URLs fetched for one download before it counts as a failed attempt


@dataclass
class WorkOptions:
    """How one ``ledger work`` run behaves; built from the settings and flags by the CLI."""

    concurrency: int = 8
    limit: Optional[int] = None
    scope: JobScope = field(default_factory=JobScope)
    max_spend: Optional[int] = None
    poll: PollPolicy = field(default_factory=PollPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    polls_per_second: float = 10.0
    lease_seconds: float = 120.0
    reconcile_grace: float = 30.0
    poll_timeout: float = 45 * 60.0
    shutdown_grace: float = 5.0
    price: Callable[[bool], int] = lambda is_pro: 0

    @property
    def io_threads(self) -> int:
        # Threads only wait on sockets and disks; a few dozen serve hundreds of generations.
        return max(2, min(self.concurrency, 32))


@dataclass
class Active:
    """A job this run holds, and what to do with it next."""

    job: JobRow
    action: str
    due: float = 0.0
    running: bool = False
    polls: int = 0
    last_delay: Optional[float] = None
    progress: int = 0
    url_refreshes: int = 0
    reserved: int = 0  # cents held against --max-spend while its create is in flight


@dataclass(frozen=True)
class Next:
    """What a step asks of the scheduler: run ``action`` again after ``delay``, or let go."""

    delay: Optional[float] = None  # None: the job is no longer ours (finished or released)
    outcome: Optional[str] = None  # "done", "failed", "skipped", "released", "parked", "lost"


@dataclass
class WorkSummary:
    """What one run did. ``exit_status`` is the documented exit code."""

    done: int = 0
    skipped_existing: int = 0
    failed: int = 0
    creates: int = 0
    polls: int = 0
    spent_cents: int = 0
    still_generating: int = 0
    pending_left: int = 0
    stopped: Optional[str] = None  # "interrupted", "auth", "balance", "budget"
    stop_detail: str = ""
    failures: List[Tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_status(self) -> ExitStatus:
        if self.stopped == "interrupted":
            return ExitStatus.INTERRUPTED
        if self.stopped == "auth":
            return ExitStatus.CONFIG
        if self.stopped in ("balance", "budget"):
            return ExitStatus.BALANCE
        return ExitStatus.JOBS_FAILED if self.failed else ExitStatus.OK


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


class Worker:
    """One ``ledger work`` run over one ledger. Create, then ``run()`` once."""

    def __init__(self, store: Store, client: SoraClient, options: WorkOptions,
                 on_event: Optional[Callable[[JobRow, str], None]] = None,
                 on_tick: Optional[Callable[["Worker"], None]] = None) -> None:
        self.store = store
        self.client = client
        self.options = options
        self.owner = owner_id()
        self.summary = WorkSummary()
        self.on_event = on_event or (lambda job, text: None)
        self.on_tick = on_tick or (lambda worker: None)
        self.active: Dict[int, Active] = {}
        self._claimed: Set[int] = set()
        self.expected_total = 0
        self._heap: List[Tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._results: "queue.Queue[Tuple[Active, Next]]" = queue.Queue()
        self._lock = threading.Lock()
        self._gate = RateGate(options.polls_per_second)
        self._stopping = threading.Event()  # Ctrl+C: claim and submit nothing more
        self._abort = threading.Event()  # second Ctrl+C, or the grace is over: cancel downloads
        self._no_submit: Optional[str] = None  # "balance" / "budget": only finish what is paid for
        self._fatal: Optional[str] = None
        self._parked: Set[int] = set()  # poll timeouts: left for a later run
        self._downloads: Dict[int, Path] = {}
        self._reserved = 0
        self._next_claim = 0.0
        self._last_claim = 0.0
        self._started = time.monotonic()

    # --- control from the CLI (signal handlers) ---------------------------------------------------

    def request_stop(self) -> None:
        """First Ctrl+C: stop claiming and submitting; let in-flight downloads finish briefly."""
        if self._stopping.is_set():
            self._abort.set()
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the scheduler ----------------------------------------------------------------------------

    def run(self) -> WorkSummary:
        """Work until nothing claimable is left and nothing is in flight (or until stopped)."""
        self.store.release_dead_owners()
        ready, _ = self.store.pending_outlook(self.options.scope)
        self.expected_total = ready if self.options.limit is None else min(ready, self.options.limit)
        pool = _DaemonPool(self.options.io_threads)
        next_renew = time.monotonic() + self.options.lease_seconds / 3
        try:
            while not (self._stopping.is_set() or self._fatal):
                self._collect(timeout=0)
                now = time.monotonic()
                if now >= next_renew:
                    self._renew()
                    next_renew = now + self.options.lease_seconds / 3
                claimed = self._claim(now)
                self._dispatch(pool, now)
                self.on_tick(self)
                if not self.active and not claimed and self._finished():
                    break
                self._collect(timeout=self._wait_time())
        finally:
            self._shutdown()
            pool.close()
            self.summary.seconds = time.monotonic() - self._started
        return self.summary

    def _wait_time(self) -> float:
        waiting = [a.due for a in self.active.values() if not a.running]
        soonest = min(waiting) - time.monotonic() if waiting else 0.5
        return max(0.0, min(soonest, 0.25))

    def _scope(self) -> JobScope:
        """What this run may claim now: after a 1012 or the budget cap only paid-for jobs; once
        ``--limit`` jobs were taken only those (their retries)."""
        scope = self.options.scope
        ids = scope.job_ids
        if self.options.limit is not None and len(self._claimed) >= self.options.limit:
            ids = sorted(self._claimed if ids is None else set(ids) & self._claimed)
        return JobScope(scope.storyboard_ids, ids, paid_only=bool(self._no_submit))

    def _finished(self) -> bool:
        """Nothing to claim now; wait only for retries this run could still take."""
        ready, later = self.store.pending_outlook(self._scope(), exclude=self._parked)
        if ready:
            return False
        if later is None:
            return True
        wait = (later - utcnow()).total_seconds()
        self._next_claim = time.monotonic() + max(0.2, min(wait, 5.0))
        return False

    def _claim(self, now: float) -> bool:
        free = self.options.concurrency - len(self.active)
        if self.options.limit is not None and len(self._claimed) < self.options.limit:
            free = min(free, self.options.limit - len(self._claimed))
        # Each claim is a write transaction: when jobs finish one after another, gather the free
        # slots for a moment and claim them together rather than one claim per finished job.
        if free <= 0 or now < self._next_claim or (self.active and now < self._last_claim + CLAIM_GATHER):
            return False
        self._last_claim = now
        scope = self._scope()
        rows = self.store.claim(self.owner, free, self.options.lease_seconds, scope, exclude=self._parked)
        if not rows:
            self._next_claim = now + 0.5
            return False
        for row in rows:
            self._claimed.add(row.id)
            active = Active(job=row, action=_FIRST_ACTION[row.state], due=now)
            self.active[row.id] = active
            self._schedule(active, 0.0)
        return True

    def _schedule(self, active: Active, delay: float) -> None:
        active.due = time.monotonic() + delay
        heapq.heappush(self._heap, (active.due, next(self._seq), active.job.id))

    def _dispatch(self, pool: _DaemonPool, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, _, job_id = heapq.heappop(self._heap)
            active = self.active.get(job_id)
            if active is None or active.running or active.due != due:
                continue  # finished meanwhile, or rescheduled
            active.running = True
            pool.submit(lambda a=active: self._results.put((a, self._step(a))))

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

    def _settle(self, active: Active, nxt: Next) -> None:
        active.running = False
        if nxt.delay is not None and not (self._stopping.is_set() or self._fatal):
            self._schedule(active, nxt.delay)
            return
        if nxt.delay is not None:
            self._let_go(active)
            return
        self.active.pop(active.job.id, None)
        if nxt.outcome == "parked":
            self._parked.add(active.job.id)

    def _let_go(self, active: Active) -> None:
        """Release a job we are still holding (stop requested): its state and task id stay."""
        self.active.pop(active.job.id, None)
        self.store.release(self.owner, [active.job.id])

    def _renew(self) -> None:
        mine = list(self.active)
        held = self.store.renew(self.owner, mine, self.options.lease_seconds)
        for job_id in set(mine) - held:
            log.warning("job %d: lease lost to another worker; letting it go", job_id)
            active = self.active.get(job_id)
            if active is not None and not active.running:
                self.active.pop(job_id)

    def _shutdown(self) -> None:
        """Stop cleanly: idle jobs are released at once, running steps get a bounded grace."""
        for active in [a for a in self.active.values() if not a.running]:
            self.active.pop(active.job.id)
        deadline = time.monotonic() + self.options.shutdown_grace
        while any(a.running for a in self.active.values()):
            if time.monotonic() >= deadline or self._abort.is_set():
                self._abort.set()  # downloads stop between chunks and delete their .part files
                if time.monotonic() >= deadline + 2.0:
                    break
            self._collect(timeout=0.1)
            self.on_tick(self)
            for active in [a for a in self.active.values() if not a.running]:
                self.active.pop(active.job.id)
        self.store.release(self.owner)
        with self._lock:
            stuck = list(self._downloads.values())
        for dest in stuck:  # a download that ignored the abort: its partial file goes, never its final one
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        if self._stopping.is_set() and not self._fatal:
            self.summary.stopped = "interrupted"
        elif self._fatal:
            self.summary.stopped = "auth"
        elif self._no_submit:
            self.summary.stopped = self._no_submit
        self.summary.still_generating = self.store.count_in_flight(self.options.scope)
        self.summary.pending_left = sum(self.store.pending_by_model(self.options.scope).values())

    # --- steps (run on the pool's threads) ---------------------------------------------------------

    def _step(self, active: Active) -> Next:
        try:
            if self._abort.is_set():
                return Next(0.0)
            return getattr(self, f"_{active.action}")(active)
        except LeaseLost as exc:
            log.warning("%s: %s", active.job.label, exc)
            return Next(outcome="lost")
        except AuthError as exc:
            self._fatal = "auth"
            self.summary.stop_detail = str(exc)
            return Next(0.0)
        except Exception:  # a bug or a broken database: keep the job as it is, say so, go on
            log.exception("%s: unexpected error during %s; the job is left as it was", active.job.label, active.action)
            # Try again later, not at once: a persistent fault must not become a busy loop.
            return Next(_UNEXPECTED_RETRY) if not self._stopping.is_set() else Next(outcome="released")

    def _event(self, job: JobRow, text: str) -> None:
        log.info("%s: %s", job.label, text)
        self.on_event(job, text)

    def _move(self, active: Active, new: State, detail: str, *, release: bool = False, show: bool = True,
              reread: bool = False, **values: Any) -> JobRow:
        """One ledger transition of a job this run holds (``release``: and give up its lease;
        ``reread``: return the row as stored, e.g. parameters a scan may have changed since the claim)."""
        if release:
            values.update(lease_owner=None, lease_expires_at=None)
        active.job = self.store.transition(active.job.id, self.owner, active.job.state, new, detail,
                                           current=None if reread else active.job, **values)
        if detail and show:
            self._event(active.job, detail)
        return active.job

    def _retry_later(self, active: Active, state: State, exc: ApiError) -> Next:
        """Transient trouble: count the attempt, and either schedule the next one in ``state``
        (attempts and next-attempt time are ledger columns; the lease is released) or give up
        with the last reason."""
        attempts = active.job.attempts + 1
        if self.options.retry.exhausted(attempts):
            return self._fail(active, f"failed after {attempts} attempts: {exc}", exc.kind, str(exc), attempts=attempts)
        delay = self.options.retry.delay(attempts)
        self._move(active, state, f"attempt {attempts} failed ({exc}); next try in {delay:.0f} s", release=True,
                   next_attempt_at=utcnow() + timedelta(seconds=delay), error_kind=exc.kind, error_message=str(exc),
                   attempts=attempts)
        return Next(outcome="released")

    def _fail(self, active: Active, detail: str, kind: str, message: str, **values: Any) -> Next:
        """End a job ``failed`` with its reason (kept verbatim) and let it go."""
        job = self._move(active, State.FAILED, detail, release=True, error_kind=kind, error_message=message,
                         finished_at=utcnow(), **values)
        with self._lock:
            self.summary.failed += 1
            self.summary.failures.append((job.label, kind, message))
        return Next(outcome="failed")

    def _submit(self, active: Active) -> Next:
        job = active.job
        target = self.store.resolve(job.target_dir)
        found = existing_videos(target, job.segment_index, job.version)
        if found:
            self._move(active, State.DONE, f"video already on disk: {found[-1].name} (no API call)", release=True,
                       video_path=ledger_path(found[-1], self.store.cwd), finished_at=utcnow())
            with self._lock:
                self.summary.skipped_existing += 1
            return Next(outcome="skipped")
        if self._stopping.is_set() or self._no_submit or self._fatal or not self._reserve(active):
            self.store.release(self.owner, [job.id])
            return Next(outcome="released")
        try:
            job = self._move(active, State.SUBMITTING, "write-ahead: sending POST /create", show=False, reread=True,
                             submitting_at=utcnow())
            self.client.backoff.wait(self._abort)
            task = self.client.create(job.params)
        except RateLimited as exc:
            pause = exc.retry_after if exc.retry_after is not None else 5.0
            self._move(active, State.PENDING, f"rate limited before creating; retry in {pause:g} s", release=True,
                       next_attempt_at=utcnow() + timedelta(seconds=pause))
            return Next(outcome="released")
        except (AuthError, InsufficientBalance) as exc:
            if active.job.state is State.SUBMITTING:
                self._move(active, State.PENDING, f"not created: {exc}", release=True)
            if isinstance(exc, AuthError):
                raise
            self._no_submit = "balance"
            self.summary.stop_detail = self._balance_situation(active.job)
            return Next(outcome="released")
        except BadParameters as exc:
            return self._fail(active, f"rejected by the API: {exc}", exc.kind, str(exc))
        except TransientError as exc:
            if exc.maybe_created:
                self._event(active.job, f"no answer to POST /create ({exc}); will look the task up before anything is sent again")
                active.action = RECONCILE
                return Next(self.options.reconcile_grace)
            return self._retry_later(active, State.PENDING, exc)
        except ApiError as exc:  # a well-formed error we have no rule for: nothing was created
            return self._retry_later(active, State.PENDING, exc)
        finally:
            self._unreserve(active)
        try:
            return self._linked(active, task, "created")
        except sa_exc.IntegrityError:
            # A sibling job with the same prompt, reconciling its own unanswered create, adopted
            # this task a moment ago. Either task serves either job: look for the other one.
            self._event(active.job, f"task {task.task_id} was adopted by another job; looking for a twin")
            active.action = RECONCILE
            return Next(0.0)

    def _linked(self, active: Active, task: RemoteTask, how: str) -> Next:
        job = active.job
        cost = task.cost if task.cost is not None else self.options.price(job.is_pro)
        now = utcnow()
        # A found task started before we looked (by the service's clock, which has whole seconds);
        # a fresh one starts now by ours.
        created = task.created_at.astimezone(timezone.utc).replace(tzinfo=None) if task.created_at else now
        started = min(created, now) if how != "created" else now
        self._move(active, State.SUBMITTED, f"{how} task {task.task_id} (cost {cost} cents)",
                   remote_task_id=task.task_id, cost_cents=cost, spent_cents=job.spent_cents + cost,
                   submitted_at=started, progress=task.progress, attempts=0, error_kind=None, error_message=None,
                   next_attempt_at=None)
        with self._lock:
            self.summary.creates += how == "created"
            self.summary.spent_cents += cost
        active.action = POLL
        active.polls = 0
        if how != "created":
            active.last_delay = None
            return Next(0.0)
        active.last_delay = self.options.poll.next_delay((now - started).total_seconds(), task.progress)
        return Next(active.last_delay)

    def _balance_situation(self, job: JobRow) -> str:
        """Why submitting stopped on a 1012, in numbers the user can act on."""
        price = self.options.price(job.is_pro)
        try:
            balance = f"the balance is {self.client.balance()} cents"
        except ApiError:
            balance = "the balance could not be read"
        return (f"the API refused a new generation for lack of balance (code 1012): {balance}, one generation costs "
                f"about {price} cents; generations already paid for were finished. Top up, then run `ledger work` again")

    def _reserve(self, active: Active) -> bool:
        cap = self.options.max_spend
        if cap is None:
            return True
        price = self.options.price(active.job.is_pro)
        with self._lock:
            if self.summary.spent_cents + self._reserved + price > cap:
                self._no_submit = "budget"
                self.summary.stop_detail = (f"--max-spend {cap} cents reached: spent {self.summary.spent_cents}, "
                                            f"next generation costs {price}")
                return False
            self._reserved += price
            active.reserved = price
        return True

    def _unreserve(self, active: Active) -> None:
        with self._lock:
            self._reserved -= active.reserved
            active.reserved = 0

    def _reconcile(self, active: Active) -> Next:
        """A create whose answer never came: find out from the task list whether it exists."""
        job = active.job
        assert job.submitting_at is not None
        wait = (job.submitting_at + timedelta(seconds=self.options.reconcile_grace) - utcnow()).total_seconds()
        if wait > 0:
            return Next(wait)
        self.client.backoff.wait(self._abort)
        try:
            tasks = self.client.find_tasks(job.params["prompt"], job.submitting_at.replace(tzinfo=timezone.utc))
        except TransientError as exc:  # never resend blindly: ask again later
            log.info("%s: task lookup failed (%s); asking again", job.label, exc)
            return Next(10.0)
        candidates = [t for t in tasks if _same_request(t, job.params)]
        linked = self.store.linked_task_ids(t.task_id for t in candidates)
        free = [t for t in candidates if t.task_id not in linked]
        if free:
            try:
                return self._linked(active, free[0], "found the lost create's")
            except sa_exc.IntegrityError:  # another job took that task a moment ago: look again
                return Next(1.0)
        self._move(active, State.PENDING, "no task was created by the unanswered POST /create; submitting again")
        active.action = SUBMIT
        return Next(0.0)

    def _poll(self, active: Active) -> Next:
        job = active.job
        if not self._gate.acquire(self._abort):
            return Next(0.0)
        self.client.backoff.wait(self._abort)
        try:
            task = self.client.get(job.remote_task_id or "")
        except RateLimited as exc:
            return Next(exc.retry_after if exc.retry_after is not None else 5.0)
        except TransientError as exc:
            log.info("%s: poll failed (%s)", job.label, exc)
            return Next(min(60.0, max(1.0, 2.0 * (active.last_delay or 1.0))))
        finally:
            active.polls += 1
            with self._lock:
                self.summary.polls += 1
        elapsed = (utcnow() - (job.submitted_at or job.updated_at)).total_seconds()
        if task.is_completed and task.video_url:
            if job.state is State.SUBMITTED:
                self._move(active, State.DOWNLOADING, f"generated in {elapsed:.0f} s ({active.polls} polls)",
                           video_url=task.video_url, progress=100)
            else:
                self._move(active, State.DOWNLOADING, "", video_url=task.video_url)
            active.action = DOWNLOAD
            return Next(0.0)
        try:
            task.raise_if_failed()
        except RemoteTaskFailed as exc:
            return self._fail(active, f"the service reports failure: {exc}", exc.kind, str(exc))
        if task.progress != job.progress:
            self._move(active, job.state, "", progress=task.progress)
        active.progress = task.progress
        if elapsed > self.options.poll_timeout:
            self._event(job, f"still generating after {elapsed / 60:.0f} min; left for a later `ledger work` "
                             "(its task id is kept, nothing will be paid again)")
            self.store.release(self.owner, [job.id])
            return Next(outcome="parked")
        active.last_delay = self.options.poll.next_delay(elapsed, task.progress, active.last_delay)
        return Next(active.last_delay)

    def _download(self, active: Active) -> Next:
        job = active.job
        if not job.video_url:
            active.action = POLL
            return Next(0.0)
        target = self.store.resolve(job.target_dir)
        dest = target / video_filename(job.segment_index, job.version, job.remote_task_id or "")
        started = utcnow()
        try:
            if dest.is_file() and dest.stat().st_size > 0:
                # A previous run finished the file but stopped before recording it.
                size, digest = dest.stat().st_size, sha256_of(dest)
            else:
                with self._lock:
                    self._downloads[job.id] = dest
                try:
                    result = self.client.download(job.video_url, dest, root=target, cancel=self._abort)
                finally:
                    with self._lock:
                        self._downloads.pop(job.id, None)
                size, digest = result.size, result.sha256
        except Interrupted:
            return Next(outcome="released")
        except UnsafeDownload as exc:
            return self._fail(active, f"refused: {exc}", exc.kind, str(exc))
        except UrlExpired as exc:
            active.url_refreshes += 1
            if active.url_refreshes > _URL_REFRESHES:
                return self._retry_later(active, State.DOWNLOADING, exc)
            self._move(active, State.DOWNLOADING, f"video URL expired ({exc}); asking the task for a fresh one",
                       video_url=None)
            active.action = POLL
            return Next(0.0)
        except ApiError as exc:  # DownloadError and transport trouble: the download only is retried
            return self._retry_later(active, State.DOWNLOADING, exc)
        sidecar = sidecar_path(dest)
        for stale in target.glob(f".{sidecar.name}.*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        write_json_atomic(sidecar, {
            "storyboard": job.storyboard_path, "segment_index": job.segment_index, "version": job.version,
            "prompt": job.params.get("prompt"), "parameters": dict(job.params), "task_id": job.remote_task_id,
            "cost_cents": job.cost_cents, "submitted_at": iso_utc(job.submitted_at), "downloaded_at": iso_utc(utcnow()),
            "download_started_at": iso_utc(started), "size": size, "sha256": digest, "file": dest.name,
        })
        self._move(active, State.DONE, f"saved {ledger_path(dest, self.store.cwd)} ({size:,} bytes)", release=True,
                   video_path=ledger_path(dest, self.store.cwd), finished_at=utcnow(), attempts=0,
                   error_kind=None, error_message=None, next_attempt_at=None)
        with self._lock:
            self.summary.done += 1
        return Next(outcome="done")


@dataclass(frozen=True)
class WorkPlan:
    """What a run would pay for, priced, beside the account balance. Costs nothing to make."""

    normal: int
    pro: int
    in_flight: int
    normal_price: int
    pro_price: int
    price_source: str
    balance: Optional[int]
    balance_note: str = ""

    @property
    def jobs(self) -> int:
        return self.normal + self.pro

    @property
    def cost(self) -> int:
        return self.normal * self.normal_price + self.pro * self.pro_price


def plan_work(store: Store, client: SoraClient, scope: JobScope, *, fallback: Tuple[int, int],
              limit: Optional[int] = None, extra: Tuple[int, int] = (0, 0)) -> WorkPlan:
    """Count what ``ledger work`` would submit (plus ``extra`` (normal, Pro) jobs a dry-run scan
    would add) and price it with ``GET /pricing``, or the fallback table when that cannot be
    reached; ``GET /balance`` says whether the account covers it. Only GETs: nothing is paid."""
    counts = store.pending_by_model(scope)
    normal, pro = counts[False] + extra[0], counts[True] + extra[1]
    if limit is not None and normal + pro > limit:
        pro = min(pro, limit)
        normal = limit - pro
    normal_price, pro_price, source = fetch_prices(client, fallback)
    try:
        balance, note = client.balance(), ""
    except ApiError as exc:
        balance, note = None, f"GET /balance failed: {exc}"
    return WorkPlan(normal, pro, store.count_in_flight(scope), normal_price, pro_price, source, balance, note)


def fetch_prices(client: SoraClient, fallback: Tuple[int, int]) -> Tuple[int, int, str]:
    """(normal, Pro) cents per video from ``GET /pricing``, else ``fallback``; and which it was."""
    try:
        pricing = client.pricing()
    except ApiError as exc:
        return fallback[0], fallback[1], f"the fallback price table (GET /pricing failed: {exc})"
    return pricing.normal_price, pricing.pro_price, "GET /pricing"


def _same_request(task: RemoteTask, params: Mapping[str, Any]) -> bool:
    """Does a listed task look like the one we sent? Fields the list omits do not count against it."""
    raw = task.raw
    for key in ("duration", "resolution", "is_pro"):
        if key in raw and key in params and raw[key] not in (None, "") and raw[key] != params[key]:
            return False
    return True

