"""The life of one job, top to bottom: submit → record → (reconcile) → poll → download.

Each step is a plain function of a ``StepContext`` and the job's ``Active`` entry; it returns
``Next`` (run the job's action again after a delay, or let go) or raises. What an exception means
is decided in one place (``decide.py``) and carried out here, in ``settle``.

Everything that must survive a crash is in the ledger before the step that depends on it:

* ``submitting`` is committed before the paid ``POST /create`` is sent. From the moment the POST
  goes out the job's next step is ``record`` (the answer came) or ``reconcile`` (it did not): no
  error after the POST — database, disk, a bug — leads back to ``submit``.
* A task id is recorded the moment it is known, retried until it is stored (and journaled on
  disk meanwhile when the database stays unavailable).
* A job with a remote task id is only ever polled and downloaded.
* A video reaches its final name only complete (``download.py``), then its sidecar, then ``done``.
* A job is sent to its provider's configured API, and the write-ahead records which one: from then
  on everything about it — reconcile, poll, download — goes to that API (``api_of``).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from ..download import output_error, sha256_of, sidecar_path, video_filename, write_json_atomic
from ..errors import (ApiError, ContentExpired, InsufficientBalance, InvalidTaskId, RateLimited, ServiceClosed,
                      TaskNotFound)
from ..journal import Entry, Journal
from ..models import iso_utc, utcnow
from ..outputs import existing_videos
from ..policy import RateGate
from ..pricing import Money, Prices, money
from ..providers import Provider, ProviderPool
from ..states import State
from ..store import DB_NOW, NO_VIDEO_KINDS, FromNow, JobRow, LeaseLost, NoFreeKey, Store
from ..storyboard import ledger_path
from .board import StatusBoard, slack
from .budget import Budgets, Hold
from .decide import Verdict, decide, is_ledger_trouble
from .types import Action, Active, EventKind, Next, Outcome, Stop, WorkOptions, WorkSummary

log = logging.getLogger(__name__)

URL_REFRESHES = 3  # fresh video URLs fetched for one download before it counts as a failed attempt
LEDGER_RETRY = 5.0  # seconds before a step the database refused runs again
# Seconds between looks for a key with room (team mode: every key at its limit). A generation of
# this run that ends wakes the waiting jobs at once; this is for the slots other machines free.
KEY_WAIT = 0.5
PRICE_WAIT = 0.1  # seconds between looks at whether the first create's cost is known (--max-spend)


class LookupIncomplete(ApiError):
    """The task list could not be read back far enough to tell whether a lost create made a task."""

    kind = "unresolved"


class Durations:
    """How long generations of each kind took in this run (``timing_kind``), learnt as they finish:
    each finish lies between the last poll that saw the task unfinished and the one that saw it done.
    Polls of a task whose API tells no progress are timed by it (``PollPolicy``)."""

    KEPT = 20  # the latest finishes of a kind that count

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Dict[Any, List[Tuple[float, float]]] = {}

    def record(self, kind: Any, last_unfinished: float, finished: float) -> None:
        with self._lock:
            seen = self._seen.setdefault(kind, [])
            seen.append((last_unfinished, max(last_unfinished, finished)))
            del seen[:-self.KEPT]

    def typical(self, kind: Any) -> Optional[float]:
        """The time most finishes agree on: the middle of the earliest stretch that lies within the
        most (last unfinished, done) spans — with tasks of one length, the span they all share; a
        wide span (a first poll that found the task done) does not drag it down as a midpoint
        would. None before one finished."""
        with self._lock:
            seen = list(self._seen.get(kind) or ())
        if not seen:
            return None
        # Closed spans: at one moment, starts are counted before ends.
        points = sorted([(lo, 0) for lo, _ in seen] + [(hi, 1) for _, hi in seen])
        depth = best = 0
        region = (seen[0][0], seen[0][1])
        for i, (at, is_end) in enumerate(points):
            if is_end:
                depth -= 1
                continue
            depth += 1
            if depth > best:
                best, region = depth, (at, points[i + 1][0])
        return (region[0] + region[1]) / 2


class RunState:
    """What the scheduler and the steps share: stop flags, counters and the summary."""

    def __init__(self) -> None:
        self.summary = WorkSummary()
        self.durations = Durations()
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # Ctrl+C, or a stop: claim and submit nothing more
        self.abort = threading.Event()  # second Ctrl+C, or the grace is over: cancel downloads
        self.no_submit = False  # balance or budget exhausted: only finish what is paid for
        self.ledger_down_since: Optional[float] = None
        self.ledger_error = ""

    def halt(self, stop: Stop, detail: str) -> None:
        """Record why the run stops (the first reason wins). A refused key, a lost ledger or API stop
        everything; balance and budget stop only new submissions."""
        with self.lock:
            if self.summary.stopped is None:
                self.summary.stopped, self.summary.stop_detail = stop, detail
            if stop in (Stop.BALANCE, Stop.BUDGET):
                self.no_submit = True
                return
        self.stopping.set()

    def may_submit(self) -> bool:
        return not (self.stopping.is_set() or self.no_submit)

    def count(self, job: Optional[JobRow] = None, took: Optional[float] = None, **amounts: int) -> None:
        """Add to the summary's counters (and to ``job``'s storyboard); ``took``: a generation time."""
        with self.lock:
            self.summary.add(job, took, **amounts)

    def ledger_trouble(self, exc: BaseException, now: float) -> None:
        with self.lock:
            if self.ledger_down_since is None:
                self.ledger_down_since = now
                log.warning("the ledger is unavailable (%s); retrying", _first_line(exc))
            self.ledger_error = _first_line(exc)

    def ledger_ok(self) -> None:
        if self.ledger_down_since is not None:
            with self.lock:
                self.ledger_down_since = None


class LedgerClock:
    """This machine's clock set to the ledger database's, which the times other workers wrote
    (a generation's start, a write-ahead's) are on. The offset is measured as the run starts and at
    every heartbeat (``Store.clock_offset``)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)  # how far this machine's clock is ahead of the database's

    def now(self) -> datetime:
        return utcnow() - self.ahead

    def of(self, local: datetime) -> datetime:
        """A moment read on this machine's clock, on the database's."""
        return local - self.ahead


@dataclass
class StepContext:
    """What the steps work with: the ledger, the API, the run's options and shared state."""

    store: Store
    providers: ProviderPool
    options: WorkOptions
    owner: str
    budget: Budgets  # --max-spend, one per currency
    prices: Prices
    journal: Journal
    run: RunState
    gate: RateGate
    board: StatusBoard
    emit: Callable[[JobRow, EventKind, str], None]
    clock: Callable[[], float]
    ledger_clock: LedgerClock = field(default_factory=LedgerClock)
    downloads: Dict[int, Path] = field(default_factory=dict)  # job id -> video being written
    unrecorded: Set[int] = field(default_factory=set)  # jobs whose journaled task the ledger has not taken


def api_of(ctx: StepContext, job: JobRow) -> Provider:
    """The API of a job: the one it was sent to (recorded with its write-ahead), else — a pending
    job, or one recorded before the ledger kept the base URL — its provider's configured one."""
    if job.state is State.PENDING:
        return ctx.providers.get(job.provider)
    return ctx.providers.get(job.provider, job.api_base, job.key_fp)


def attempt_ref(job: JobRow) -> str:
    """The reference of a job's current attempt, stable from its write-ahead on: its id and the
    moment the write-ahead was committed (a later attempt of the job has another). An API that takes
    a client reference gets it with the create and is asked for it after a lost answer."""
    assert job.submitting_at is not None, "an attempt has a reference once its write-ahead is committed"
    millis = int(job.submitting_at.replace(tzinfo=timezone.utc).timestamp() * 1000)
    return f"ledger-{job.id}-{millis}"


def price_of(ctx: StepContext, job: JobRow) -> int:
    """One generation of ``job`` in its provider's price list (minor units of its currency)."""
    return ctx.prices.price(job.provider, job.price_key)


def currency_of(ctx: StepContext, job: JobRow) -> str:
    """The currency ``job``'s amounts are in: its provider's."""
    return ctx.prices.currency(job.provider)


# --- the steps ------------------------------------------------------------------------------------


def submit(ctx: StepContext, a: Active) -> Next:
    """Skip what is already on disk; otherwise reserve the price, commit ``submitting`` and send the
    paid create. Once it is sent, the next step is ``record`` or ``reconcile``, never this one."""
    job = a.job
    found = existing_videos(ctx.store.resolve(job.target_dir), job.segment_index, job.version)
    if found:
        _move(ctx, a, State.DONE, EventKind.SKIPPED, f"video already on disk: {found[-1].name} (no API call)",
              release=True, video_path=ledger_path(found[-1], ctx.store.cwd), finished_at=utcnow())
        ctx.run.count(a.job, skipped_existing=1)
        return Next(outcome=Outcome.SKIPPED)
    api = api_of(ctx, job)
    hold = _reserve(ctx, a, api) if ctx.run.may_submit() else Hold.FULL
    if hold is Hold.WAIT:
        a.retry_note = "waiting for the first create's price (--max-spend)"
        return Next(PRICE_WAIT)
    if hold is Hold.FULL:
        ctx.store.release(ctx.owner, [job.id])
        return Next(outcome=Outcome.RELEASED)
    try:
        try:
            _move(ctx, a, State.SUBMITTING, EventKind.NOTE, f"write-ahead: sending the create to {api.name} "
                  f"at {api.base_url}", show=False, reread=True, submitting_at=DB_NOW, api_base=api.base_url,
                  key=ctx.providers.key_choice(job.provider, a.reserved or price_of(ctx, job), _holds(ctx, job, api)))
        except NoFreeKey:
            _unreserve(ctx, a)
            a.retry_note = "waiting for a key with room (its limit of generations at once)"
            a.waiting_for_key = True
            return Next(KEY_WAIT)
        a.waiting_for_key = False
        if a.job.provider != job.provider:  # a scan moved the job to another provider after the claim
            api = api_of(ctx, dataclasses.replace(a.job, state=State.PENDING))
            _move(ctx, a, State.SUBMITTING, EventKind.NOTE, "", api_base=api.base_url,
                  key_fp=getattr(api, "key_fp", None))
        api = api_of(ctx, a.job)  # with the key the write-ahead recorded
    except BaseException:
        _unreserve(ctx, a)
        raise
    # The create goes out only under a lease held and extended in one guarded write after every
    # pause: a worker frozen or cut off from the ledger past its lease while it waited out a 429 may
    # have lost the job to another, which found no task and sent the create itself.
    while True:
        api.backoff.wait(ctx.run.abort)
        if ctx.run.stopping.is_set():  # stopped while waiting out a 429: nothing was sent
            _move(ctx, a, State.PENDING, EventKind.NOTE, "not sent: the run is stopping", show=False, release=True)
            _unreserve(ctx, a)
            return Next(outcome=Outcome.RELEASED)
        try:
            a.job = ctx.store.clear_to_send(a.job, ctx.owner, ctx.options.lease_seconds)
        except BaseException:
            _unreserve(ctx, a)
            raise
        if not api.backoff.paused_until:  # else a 429 came meanwhile: wait it out, then ask again
            break
    a.action = Action.RECONCILE  # from here on, this write-ahead is never submitted again
    a.sent_at = utcnow()
    try:
        a.created = api.create(a.job.params, attempt_ref(a.job))
    finally:
        a.answered_at = utcnow()
    a.found = False
    a.action = Action.RECORD
    return record(ctx, a)  # at once: a Ctrl+C arriving now must not leave the id unrecorded


def record(ctx: StepContext, a: Active) -> Next:
    """Store the task id of a created (or found) task: the job is ``submitted`` from now on."""
    job, task = a.job, a.created
    assert task is not None
    # What the API said it cost; else what was held for it (the listed price, or more when the API
    # charged more for one of its kind in this run).
    cost = task.cost if task.cost is not None else a.reserved or _estimate(ctx, job)
    # On the database's clock: whichever worker polls the job next measures its time from this.
    now = ctx.ledger_clock.now()
    if a.found:
        # A found task started before we looked (by the service's clock, which has whole seconds).
        # Its time by the API's clock, put on this one's (the offset its Date header shows).
        offset = timedelta(seconds=api_of(ctx, job).clock_offset())
        created = task.created_at.astimezone(timezone.utc).replace(tzinfo=None) - offset if task.created_at else now
        started, what, kind = min(created, now), "found the lost create's task", EventKind.FOUND
    else:
        # The generation began when the POST reached the API: time its polls from the sending, not
        # from whenever the answer got written down.
        started, what, kind = ctx.ledger_clock.of(a.sent_at) if a.sent_at else now, "created task", EventKind.CREATED
    paid_by = "" if a.sent_at is not None else "; paid by an earlier run"
    currency = currency_of(ctx, job)
    _move(ctx, a, State.SUBMITTED, kind, f"{what} {task.task_id} ({money(cost, currency)}{paid_by})",
          remote_task_id=task.task_id, cost_cents=cost, spent_cents=job.spent_cents + cost, submitted_at=started,
          progress=task.progress, attempts=0, error_kind=None, error_message=None, next_attempt_at=None)
    if a.sent_at is not None:
        ctx.budget[currency].spend(a.reserved, task.cost, a.kind, a)
        ctx.run.count(a.job, creates=1, spent=Money.of(cost, currency))
    else:
        ctx.run.count(a.job, collected=1)
    a.reserved, a.created, a.tries = 0, None, 0
    a.action, a.polls = Action.POLL, 0
    if a.journaled:
        with ctx.run.lock:
            ctx.unrecorded.discard(job.id)
    if a.found:
        a.last_delay = None
        return Next(0.0)
    a.readings = [(0.0, task.progress)]
    a.last_delay = max(ctx.options.poll.next_delay(0.0, task.progress), task.poll_after or 0.0)
    return Next(a.last_delay)


def reconcile(ctx: StepContext, a: Active) -> Next:
    """A create whose answer never came: read the task list back past the create's time window.
    A task found is recorded; "not created" is concluded only when the whole window was read, and
    no sooner than the grace after the create could last have been answered."""
    job = a.job
    assert job.submitting_at is not None
    since = job.submitting_at
    grace = timedelta(seconds=ctx.options.reconcile_grace)
    if a.answered_at is not None:  # this process sent it: the grace runs from the answer, all by one clock
        wait = (a.answered_at + grace - utcnow()).total_seconds()
    else:  # taken over: the write-ahead's time is the database's, and so must the clock be that it is measured by
        wait = (since + grace - ctx.store.db_now()).total_seconds()
    if wait > 0:
        return Next(wait)
    api = api_of(ctx, job)
    api.backoff.wait(ctx.run.abort)
    until = a.answered_at or since + timedelta(seconds=ctx.options.create_timeout)
    # The window is in this machine's time, the API's task times in its own: a clock its Date
    # header shows off widens the allowance by that much.
    skew = ctx.options.reconcile_skew + abs(api.clock_offset())
    search = api.find_tasks(job.params, attempt_ref(job), since.replace(tzinfo=timezone.utc),
                            until.replace(tzinfo=timezone.utc), skew_seconds=skew)
    candidates = [t for t in search.tasks if api.same_request(t, job.params)]
    linked = ctx.store.linked_task_ids(t.task_id for t in candidates)
    free = [t for t in candidates if t.task_id not in linked]
    if free:
        a.created, a.found, a.action = free[0], True, Action.RECORD
        return record(ctx, a)
    if not search.covered:
        incomplete = LookupIncomplete(f"cannot tell whether the unanswered create made a task: {search.reason}")
        incomplete.final = search.final
        raise incomplete
    # A job taken over from a worker frozen or cut off after its POST: that create may still be on
    # its way (until its client's timeout) and the API make its task any moment. Until then and the
    # grace, the job keeps its key's slot and nothing is sent again.
    now = utcnow() if a.answered_at is not None else ctx.store.db_now()  # the clock ``until`` was taken by
    later = (until + timedelta(seconds=ctx.options.reconcile_grace) - now).total_seconds()
    if later > 0:
        a.retry_note = f"no task yet; its create may still be on its way: looking again in {later:.0f} s"
        return Next(later)
    _move(ctx, a, State.PENDING, EventKind.NOTE,
          f"no task was created by the unanswered POST /create (read {search.pages} page(s) of the task list "
          "back past its time); submitting again")
    _unreserve(ctx, a)
    a.sent_at = a.answered_at = None
    a.action = Action.SUBMIT
    return Next(0.0)


def poll(ctx: StepContext, a: Active) -> Next:
    """Ask how the generation is doing — from the list read that answers for many jobs at once
    when several are in flight (``board.py``), else alone; on completion move on to the download."""
    job = a.job
    api = api_of(ctx, job)
    task_id = job.remote_task_id or ""
    # The poll meant to land just after the estimated finish takes no answer read before the finish:
    # only a read begun within the slack it was given past the latest finish the estimate allows.
    policy = ctx.options.poll
    early = slack(a.last_delay) if a.progress < policy.confident_progress else \
        policy.finish_slack * _elapsed(ctx, job)
    not_before = a.due - early if a.seen_finished_at is None else min(a.due - early, a.seen_finished_at)
    a.seen_finished_at = None
    listed = ctx.board.lookup(api, task_id, job.submitted_at, not_before)
    if listed is None:
        if not ctx.gate.acquire(ctx.run.abort):
            return Next(0.0)
        api.backoff.wait(ctx.run.abort)
    a.polls += 1
    ctx.run.count(polls=1)
    # A list answer is ``age`` seconds old: the progress it shows was reached that much earlier,
    # and the next poll is timed from then.
    age = max(0.0, ctx.clock() - listed[1]) if listed is not None else 0.0
    elapsed = _elapsed(ctx, job) - age
    try:
        task = listed[0] if listed is not None else api.get(task_id)
    except TaskNotFound as exc:
        if elapsed < ctx.options.reconcile_grace:
            return Next(min(5.0, ctx.options.reconcile_grace))  # a service may not know a task it made a moment ago
        ctx.board.forget(api, task_id)
        if api.retention is not None and elapsed > api.retention:
            raise _video_gone(api, exc, elapsed, 404) from exc
        raise
    if task.is_terminal:
        ctx.board.forget(api, task_id)
    if task.is_completed and not task.video_url and api.retention is not None and elapsed > api.retention:
        # Still listed, but its video was cleared (Ark keeps task records 7 days, videos 24 h).
        raise _video_gone(api, f"task {task_id} is done but shows no video any more", elapsed, None)
    if task.is_completed and task.video_url:
        if job.state is State.SUBMITTED:
            ctx.run.durations.record(timing_kind(job), a.readings[-1][0] if a.readings else 0.0, elapsed)
        detail = f"generated in {elapsed:.0f} s ({a.polls} polls)" if job.state is State.SUBMITTED else ""
        values, delta = _cost_change(job, task.cost)
        _move(ctx, a, State.DOWNLOADING, EventKind.NOTE, detail, video_url=task.video_url, progress=100, **values)
        _count_cost_change(ctx, a, delta)
        a.action = Action.DOWNLOAD
        return Next(0.0)
    if task.is_failed and api.bills_on_success and job.cost_cents:
        # The API bills only what it delivers: the failed task's booked cost is given back.
        values, delta = _cost_change(job, 0)
        _move(ctx, a, job.state, EventKind.NOTE, f"not billed: the task failed "
              f"({money(job.cost_cents, currency_of(ctx, job))} given back)", show=False, **values)
        _count_cost_change(ctx, a, delta)
    task.raise_if_failed()
    if task.progress != job.progress:
        _move(ctx, a, job.state, EventKind.NOTE, "", progress=task.progress)
    a.progress = task.progress
    if elapsed > ctx.options.poll_timeout:
        return _park_generating(ctx, a, elapsed)
    # The service's own "ask again after" is a lower bound, never a reason to ask sooner.
    typical = ctx.run.durations.typical(timing_kind(job))
    blind = not getattr(api, "tells_progress", True)
    a.last_delay = max(policy.next_delay(elapsed, task.progress, a.last_delay, earlier=a.readings, typical=typical,
                                         blind=blind),
                       task.poll_after or 0.0)
    a.readings.append((elapsed, task.progress))
    return Next(max(0.0, a.last_delay - age))


def _cost_change(job: JobRow, cost: Optional[int]) -> Tuple[Dict[str, Any], int]:
    """The columns that put a finished task's real cost in place of what was booked at its create
    (an API that knows the cost only once it is done: tokens used; a failed task it does not bill),
    and the difference; nothing when the API says nothing new."""
    if cost is None or job.cost_cents is None or cost == job.cost_cents:
        return {}, 0
    delta = cost - job.cost_cents
    return {"cost_cents": cost, "spent_cents": job.spent_cents + delta}, delta


def _count_cost_change(ctx: StepContext, a: Active, delta: int) -> None:
    """A recorded cost change of this run's create moves its spend and its --max-spend budget too."""
    if delta and a.sent_at is not None:
        currency = currency_of(ctx, a.job)
        ctx.budget[currency].adjust(delta)
        ctx.run.count(a.job, spent=Money.of(delta, currency))


def timing_kind(job: JobRow) -> Tuple[str, str, str, Any]:
    """Jobs that take about as long to generate: the same model and length at the same API."""
    return job.provider, job.api_base or "", job.price_key, job.params.get("duration")


def download(ctx: StepContext, a: Active) -> Next:
    """Fetch the video (resumable, verified, atomic), write its sidecar, and mark the job done."""
    job = a.job
    if not job.video_url:
        a.action = Action.POLL
        return Next(0.0)
    target = ctx.store.resolve(job.target_dir)
    dest = target / video_filename(job.segment_index, job.version, job.remote_task_id or "")
    started = utcnow()
    try:
        finished_before = dest.is_file() and dest.stat().st_size > 0
        if finished_before:  # a previous run finished the file but stopped before recording it
            size, digest = dest.stat().st_size, sha256_of(dest)
    except OSError as exc:
        raise output_error(exc, dest) from exc
    if not finished_before:
        with ctx.run.lock:
            ctx.downloads[job.id] = dest
        try:
            result = api_of(ctx, job).download(job.video_url, dest, root=target, cancel=ctx.run.abort)
        finally:
            with ctx.run.lock:
                ctx.downloads.pop(job.id, None)
        size, digest = result.size, result.sha256
    sidecar = sidecar_path(dest)
    for stale in target.glob(f".{sidecar.name}.*.tmp"):  # a write cut short by a crash
        try:
            stale.unlink()
        except OSError:
            pass  # only litter; the sidecar below is written under a new temporary name
    write_json_atomic(sidecar, {
        "storyboard": job.storyboard_path, "segment_index": job.segment_index, "version": job.version,
        "prompt": job.params.get("prompt"), "parameters": dict(job.params), "task_id": job.remote_task_id,
        "cost_cents": job.cost_cents, "submitted_at": iso_utc(job.submitted_at), "downloaded_at": iso_utc(utcnow()),
        "download_started_at": iso_utc(started), "size": size, "sha256": digest, "file": dest.name,
    })
    shown = ledger_path(dest, ctx.store.cwd)
    _move(ctx, a, State.DONE, EventKind.SAVED, f"saved {shown} ({size:,} bytes)", release=True, video_path=shown,
          finished_at=utcnow(), attempts=0, error_kind=None, error_message=None, next_attempt_at=None)
    took = (utcnow() - a.sent_at).total_seconds() if a.sent_at is not None else None  # only creates of this run
    ctx.run.count(a.job, took, done=1)
    return Next(outcome=Outcome.DONE)


STEPS: Mapping[Action, Callable[[StepContext, Active], Next]] = {
    Action.SUBMIT: submit, Action.RECORD: record, Action.RECONCILE: reconcile, Action.POLL: poll,
    Action.DOWNLOAD: download,
}


def run_step(ctx: StepContext, a: Active) -> Next:
    """Run the job's next step; an exception is settled by its verdict. Never raises."""
    step = a.action
    try:
        if ctx.run.abort.is_set():
            return Next(0.0)
        return STEPS[step](ctx, a)
    except Exception as exc:  # every exception gets a verdict: that is the point of decide.py
        if a.action is Action.RECORD:  # the create answered inside ``submit``: recording it is what failed
            step = Action.RECORD
        try:
            return settle(ctx, a, step, exc)
        except Exception as again:  # writing the verdict down failed too
            if isinstance(again, LeaseLost):
                return Next(outcome=Outcome.LOST)
            if is_ledger_trouble(again):
                _ledger_down(ctx, a, again)
            else:
                log.warning("%s: could not record the outcome of %s (%s)", a.job.label, step.value, _first_line(again))
                log.debug("traceback", exc_info=again)
            return Next(LEDGER_RETRY)


# --- what an error means, carried out ---------------------------------------------------------------


def settle(ctx: StepContext, a: Active, step: Action, exc: Exception) -> Next:
    """Carry out ``decide``'s verdict on ``exc`` raised by ``step``."""
    verdict = decide(step, exc, sent=a.sent_at is not None)
    job = a.job
    if verdict is Verdict.LET_GO:
        log.info("%s: %s; letting it go", job.label, exc)
        return Next(outcome=Outcome.LOST)
    if verdict is Verdict.LEDGER_DOWN:
        _ledger_down(ctx, a, exc)
        return Next(LEDGER_RETRY)
    if verdict is Verdict.RELEASE:
        ctx.store.release(ctx.owner, [job.id])
        return Next(outcome=Outcome.RELEASED)
    if verdict in (Verdict.STOP_AUTH, Verdict.STOP_BALANCE) and job.state is State.SUBMITTING and \
            step is not Action.SUBMIT:
        # Refused while looking up a create that may have been made: nothing says it was not. The
        # job keeps its write-ahead (never "not created", never sent again) and waits for its key.
        _retire_key(ctx, job, verdict, exc)
        ctx.store.release(ctx.owner, [job.id])
        if not ctx.providers.keys.several(job.provider):
            stop = Stop.AUTH if verdict is Verdict.STOP_AUTH else Stop.BALANCE
            ctx.run.halt(stop, str(exc) if stop is Stop.AUTH else _balance_situation(ctx, job, exc))
        return Next(outcome=Outcome.RELEASED)
    if verdict in (Verdict.STOP_AUTH, Verdict.STOP_BALANCE) and _retire_key(ctx, job, verdict, exc):
        # One of several keys was refused: it is out of rotation, the job goes on with another.
        if job.state is State.SUBMITTING:
            _move(ctx, a, State.PENDING, EventKind.NOTE, f"not created: {exc}", show=False, release=True)
        else:
            ctx.store.release(ctx.owner, [job.id])
        _unreserve(ctx, a)
        a.sent_at = a.answered_at = None
        a.action = Action.SUBMIT
        return Next(outcome=Outcome.RELEASED)
    if verdict in (Verdict.STOP_AUTH, Verdict.STOP_BALANCE):
        # The refused create was not made: the job waits, untouched, for a run with a key or money.
        if job.state is State.SUBMITTING:
            _move(ctx, a, State.PENDING, EventKind.NOTE, f"not created: {exc}", show=False, release=True)
        else:
            ctx.store.release(ctx.owner, [job.id])
        _unreserve(ctx, a)
        a.action = Action.SUBMIT
        stop = Stop.AUTH if verdict is Verdict.STOP_AUTH else Stop.BALANCE
        ctx.run.halt(stop, str(exc) if stop is Stop.AUTH else _balance_situation(ctx, job, exc))
        return Next(outcome=Outcome.RELEASED)
    if verdict is Verdict.RATE_LIMITED:
        assert isinstance(exc, RateLimited)
        pause = exc.retry_after if exc.retry_after is not None else 5.0
        _back_to_pending(ctx, a, EventKind.RETRY, f"rate limited before creating; retry in {pause:g} s",
                         next_attempt_at=FromNow(pause))
        return Next(outcome=Outcome.RELEASED)
    if verdict is Verdict.OUT_OF_REACH:
        # Not the job's fault: nothing is counted or written for later runs; the scheduler stops the
        # run if the API new jobs go to stays out of reach. An API only earlier jobs were sent to
        # (before the settings changed) that stays out of reach has its jobs left for a later run.
        if job.state is State.SUBMITTING:
            _move(ctx, a, State.PENDING, EventKind.NOTE, "", show=False)
            _unreserve(ctx, a)
            a.sent_at = a.answered_at = None
            a.action = Action.SUBMIT
        api = api_of(ctx, job)
        if not ctx.providers.is_configured(api) and api.unreachable_for() > ctx.options.api_patience:
            _event(ctx, job, EventKind.PARKED, f"{api.base_url} has been out of reach for {api.unreachable_for():.0f} s; "
                                               "left as it is for a later `ledger work`")
            ctx.store.release(ctx.owner, [job.id])
            return Next(outcome=Outcome.PARKED)
        a.tries += 1
        return Next(min(30.0, 2.0 * a.tries))
    if verdict is Verdict.NOT_CREATED:
        if job.state is State.SUBMITTING:
            _unreserve(ctx, a)
            a.sent_at = a.answered_at = None
            a.action = Action.SUBMIT
        return _retry_later(ctx, a, exc)
    if verdict is Verdict.RECONCILE:
        if step is Action.RECORD:
            _event(ctx, job, EventKind.NOTE, f"task {a.created.task_id if a.created else '?'} was adopted by another "
                                             "job a moment ago; looking for this job's own")
            delay = 0.0
        else:
            _event(ctx, job, EventKind.NOTE, f"no answer to POST /create ({exc}); will look the task up before "
                                             "anything is sent again")
            delay = ctx.options.reconcile_grace
        a.created, a.action = None, Action.RECONCILE
        return Next(delay)
    if verdict is Verdict.FAIL:
        extra: Dict[str, Any] = {}
        if isinstance(exc, InvalidTaskId):  # made and billed: its cost is booked all the same
            cost = exc.cost if exc.cost is not None else a.reserved or _estimate(ctx, job)
            extra["spent_cents"] = job.spent_cents + cost
            ctx.budget[currency_of(ctx, job)].spend(a.reserved, exc.cost, a.kind, a)
            ctx.run.count(job, creates=1, spent=Money.of(cost, currency_of(ctx, job)))
            a.reserved = 0
        else:
            _unreserve(ctx, a)
        return _fail(ctx, a, exc, **extra)
    if verdict is Verdict.FRESH_URL:
        elapsed = _elapsed(ctx, job)
        api = api_of(ctx, job)
        if api.retention is not None and elapsed > api.retention:
            # Refused past the API's retention: the video is gone, and a fresh URL (the task may
            # still be listed) is refused the same way; only generating it again gives a video.
            _unreserve(ctx, a)
            return _fail(ctx, a, _video_gone(api, _message(exc), elapsed, getattr(exc, "http_status", None)))
        a.url_refreshes += 1
        if a.url_refreshes > URL_REFRESHES:
            if isinstance(exc, ContentExpired):  # gone for good: paying again is the only way to a video
                _unreserve(ctx, a)
                gone = ContentExpired(f"{_message(exc)}, after {URL_REFRESHES} fresh URLs: the video expired on "
                                      "the service before it was saved; `ledger requeue --failed` generates it "
                                      "again (and pays for it)", http_status=410)
                return _fail(ctx, a, gone)
            return _retry_later(ctx, a, exc)
        _move(ctx, a, State.DOWNLOADING, EventKind.NOTE, f"video URL expired ({exc}); asking the task for a fresh one",
              video_url=None)
        a.action = Action.POLL
        return Next(0.0)
    if verdict is Verdict.WAIT:
        return _wait(ctx, a, step, exc)
    if verdict is Verdict.UNRESOLVED:
        return _unresolved(ctx, a, exc)
    assert verdict is Verdict.RETRY, verdict
    if not isinstance(exc, ApiError):
        log.warning("%s: unexpected error during %s: %s", job.label, step.value, _first_line(exc))
        log.debug("traceback", exc_info=exc)
    if job.state is State.SUBMITTING and a.sent_at is None:  # nothing was sent yet
        a.action = Action.SUBMIT
    return _retry_later(ctx, a, exc)


def _wait(ctx: StepContext, a: Active, step: Action, exc: Exception) -> Next:
    """The same step again after a pause; nothing counted against the job."""
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    if step is Action.POLL:
        elapsed = _elapsed(ctx, a.job)
        if elapsed > ctx.options.poll_timeout:
            return _park_generating(ctx, a, elapsed)
        log.info("%s: poll failed (%s)", a.job.label, exc)
        a.last_delay = retry_after or min(60.0, max(1.0, 2.0 * (a.last_delay or 1.0)))
        a.retry_note = f"poll failed; asking again in {a.last_delay:.0f} s"
        return Next(a.last_delay)
    if step is Action.RECORD:
        a.tries += 1
        if a.tries >= 3:
            keep_in_journal(ctx, a)
        log.warning("%s: cannot record task %s yet (%s); trying again", a.job.label,
                    a.created.task_id if a.created else "?", _first_line(exc))
        log.debug("traceback", exc_info=exc)
        return Next(min(30.0, 2.0 ** a.tries))
    return Next(retry_after if retry_after is not None else 1.0)


def _unresolved(ctx: StepContext, a: Active, exc: Exception) -> Next:
    """A look-up that could not finish: asked again with growing pauses; after MAX_ATTEMPTS the job
    is left in ``submitting`` with the reason, for a later run — never sent again blindly."""
    a.tries += 1
    message = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {_first_line(exc)}"
    if a.tries < ctx.options.retry.max_attempts and not getattr(exc, "final", False):
        delay = ctx.options.retry.delay(a.tries)
        a.retry_note = f"look-up failed; again in {delay:.0f} s"
        log.info("%s: task look-up failed (%s); asking again in %.0f s", a.job.label, message, delay)
        return Next(delay)
    _move(ctx, a, State.SUBMITTING, EventKind.PARKED,
          f"unresolved: {message}. Nothing will be sent again until a look-up settles it; "
          "run `ledger work` later", release=True, error_kind=LookupIncomplete.kind, error_message=message)
    ctx.budget[currency_of(ctx, a.job)].give_up_probe(a.kind, a)  # its price stays held: it may have been charged
    ctx.run.count(a.job, unresolved=1)
    return Next(outcome=Outcome.PARKED)


def _retry_later(ctx: StepContext, a: Active, exc: Exception) -> Next:
    """Count an attempt and either schedule the next one (attempts and next-attempt time are ledger
    columns; the lease is released) or end the job with the last reason."""
    job = a.job
    attempts = job.attempts + 1
    if ctx.options.retry.exhausted(attempts):
        return _fail(ctx, a, exc, attempts=attempts, detail=f"failed after {attempts} attempts: {_message(exc)}")
    delay = ctx.options.retry.delay(attempts)
    state = State.PENDING if job.state is State.SUBMITTING else job.state
    a.retry_note = f"retrying in {delay:.0f} s"
    _move(ctx, a, state, EventKind.RETRY, f"attempt {attempts} failed ({_message(exc)}); next try in {delay:.0f} s",
          release=True, next_attempt_at=FromNow(delay), error_kind=_kind(exc),
          error_message=_message(exc), attempts=attempts)
    return Next(outcome=Outcome.RELEASED)


def _fail(ctx: StepContext, a: Active, exc: Exception, *, detail: str = "", **values: Any) -> Next:
    """End a job ``failed`` with its reason (the API's message verbatim) and let it go."""
    kind, message = _kind(exc), _message(exc)
    values.setdefault("attempts", a.job.attempts + 1)  # the try that ended it counts
    paid = a.job.remote_task_id is not None and kind not in NO_VIDEO_KINDS and "requeue" not in message
    hint = " (the generation is paid for: `ledger requeue --failed` downloads it again without paying)" if paid else ""
    job = _move(ctx, a, State.FAILED, EventKind.FAILED, (detail or message) + hint, release=True, error_kind=kind,
                error_message=message, finished_at=utcnow(), **values)
    ctx.run.count(job, failed=1)
    with ctx.run.lock:
        ctx.run.summary.failures.append((job.label, kind, message + hint))
    return Next(outcome=Outcome.FAILED)


def _park_generating(ctx: StepContext, a: Active, elapsed: float) -> Next:
    _event(ctx, a.job, EventKind.PARKED, f"still generating after {elapsed / 60:.0f} min; left for a later "
                                         "`ledger work` (its task id is kept, nothing will be paid again)")
    ctx.store.release(ctx.owner, [a.job.id])
    return Next(outcome=Outcome.PARKED)


def _back_to_pending(ctx: StepContext, a: Active, kind: EventKind, detail: str, **values: Any) -> None:
    _move(ctx, a, State.PENDING, kind, detail, release=True, **values)
    _unreserve(ctx, a)
    a.sent_at = a.answered_at = None
    a.action = Action.SUBMIT


def _ledger_down(ctx: StepContext, a: Active, exc: BaseException) -> None:
    ctx.run.ledger_trouble(exc, ctx.clock())
    keep_in_journal(ctx, a)


def keep_in_journal(ctx: StepContext, a: Active) -> None:
    """Keep a created task's id on disk while the ledger cannot take it (once per task)."""
    task = a.created
    if task is None or a.journaled:
        return
    try:
        ctx.journal.append(Entry(a.job.id, task.task_id, task.cost, utcnow().isoformat()))
        a.journaled = True
        with ctx.run.lock:
            ctx.unrecorded.add(a.job.id)
        log.warning("%s: task %s kept in %s until the ledger takes it", a.job.label, task.task_id, ctx.journal.path)
    except OSError as exc:
        log.warning("%s: cannot write the task journal %s (%s); task %s is kept in memory", a.job.label,
                    ctx.journal.path, exc, task.task_id)


def _move(ctx: StepContext, a: Active, new: State, kind: EventKind, detail: str, *, release: bool = False,
          show: bool = True, reread: bool = False, **values: Any) -> JobRow:
    """One guarded ledger transition of a job this run holds (``release``: and give up its lease;
    ``reread``: return the row as stored, e.g. parameters a scan changed since the claim)."""
    if release:
        values.update(lease_owner=None, lease_expires_at=None)
    a.job = ctx.store.transition(a.job.id, ctx.owner, a.job.state, new, detail,
                                 current=None if reread else a.job, **values)
    ctx.run.ledger_ok()
    if detail and show:
        _event(ctx, a.job, kind, detail)
    return a.job


def _event(ctx: StepContext, job: JobRow, kind: EventKind, text: str) -> None:
    ctx.emit(job, kind, text)  # the view shows it (plain lines show every kind): no log line besides


def cost_kind(job: JobRow, api: Provider) -> Tuple[str, str, str]:
    """Jobs the API prices alike: the same price key at the same API."""
    return api.name, api.base_url, job.price_key


def _estimate(ctx: StepContext, job: JobRow) -> int:
    """The price to count for ``job``: its listed price, or the most its API charged for its kind."""
    return ctx.budget[currency_of(ctx, job)].estimate(cost_kind(job, api_of(ctx, job)), price_of(ctx, job))


def _reserve(ctx: StepContext, a: Active, api: Provider) -> Hold:
    """Hold the job's price against ``--max-spend`` before anything is sent (``Hold``)."""
    kind, currency = cost_kind(a.job, api), currency_of(ctx, a.job)
    budget = ctx.budget[currency]
    price = budget.estimate(kind, price_of(ctx, a.job))
    hold = budget.reserve(price, kind, a, probe=api.reports_cost)
    if hold is Hold.GO:
        a.reserved, a.kind = price, kind
    elif hold is Hold.FULL:
        cap, spent, reserved, held = budget.cap or 0, budget.spent, budget.reserved, budget.held
        creates = "1 create" if held == 1 else f"{held} creates"
        waiting = f" and {money(reserved, currency)} held for {creates} awaiting an answer" if held else ""
        ctx.run.halt(Stop.BUDGET, f"--max-spend {money(cap, currency)} reached: spent {money(spent, currency)}"
                                  f"{waiting}, the next generation costs {money(price, currency)}")
    return hold


def _holds(ctx: StepContext, job: JobRow, api: Provider) -> Callable[[str], int]:
    """What a create of ``job``'s provider at ``api`` holds while it awaits its answer, by price key:
    what ``--max-spend`` holds for it (the listed price, or the most the API charged for its kind)."""
    budget, kind = ctx.budget[currency_of(ctx, job)], cost_kind(job, api)[:-1]
    return lambda price_key: budget.estimate((*kind, price_key), ctx.prices.price(job.provider, price_key))


def _unreserve(ctx: StepContext, a: Active) -> None:
    ctx.budget[currency_of(ctx, a.job)].release(a.reserved, a.kind, a)
    a.reserved = 0


def _retire_key(ctx: StepContext, job: JobRow, verdict: Verdict, exc: Exception) -> bool:
    """Team mode: take the refused key out of rotation (here and, through the ledger, everywhere);
    True when the provider has another key to go on with."""
    if not ctx.providers.keys.several(job.provider) or isinstance(exc, ServiceClosed):
        return False  # a closed service refuses every key alike: none is to blame
    api = api_of(ctx, job)
    fp = getattr(api, "key_fp", None)
    reason = ("refused (401): " if verdict is Verdict.STOP_AUTH else "no balance: ") + _first_line(exc)
    if fp is not None:
        ctx.store.retire_key(fp, reason[:500])
    return ctx.providers.keys.retire(job.provider, fp, reason)


def _balance_situation(ctx: StepContext, job: JobRow, exc: Exception) -> str:
    """Why submitting stopped on a 1012 (or an ``insufficient_quota``), in numbers the user can act on."""
    api = api_of(ctx, job)
    try:
        cents = api.balance()
        currency = currency_of(ctx, job)
        caveat = getattr(api, "balance_caveat", "")  # what the figure is not (Kling's: units, hours late)
        balance = (f"the balance is {money(cents, currency)}{f' ({caveat})' if caveat else ''}" if cents is not None
                   else "this API does not tell the balance")
    except ApiError:
        balance = "the balance could not be read"
    why = api.balance_refusal if isinstance(exc, InsufficientBalance) else "balance"
    return (f"the API refused a new generation for lack of balance ({why}): {balance}, one generation costs "
            f"{money(price_of(ctx, job), currency_of(ctx, job))}; generations already paid for were finished. "
            "Top up, then run `ledger work` again")


def _video_gone(api: Any, reason: Any, elapsed: float, http_status: Optional[int]) -> ContentExpired:
    """The job's video is past the time ``api`` keeps it: the job ends ``content_expired``, which
    ``ledger requeue --failed`` generates again instead of downloading again."""
    return ContentExpired(f"{reason}: the {api.name} API keeps a task and its video {api.retention / 3600:g} h, "
                          f"and this one is {elapsed / 3600:.1f} h old; `ledger requeue --failed` generates it again "
                          "(and pays for it)", http_status=http_status)


def _elapsed(ctx: StepContext, job: JobRow) -> float:
    """Seconds since the job's generation began, by the database's clock its start was written on."""
    return (ctx.ledger_clock.now() - (job.submitted_at or job.updated_at)).total_seconds()


def _kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, ApiError) else "unexpected"


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
