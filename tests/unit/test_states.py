"""Every move of the state machine, legal and illegal, through the store's one guarded write."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from ledger.db import open_ledger, write_tx
from ledger.models import jobs, path_key, storyboards, utcnow
from ledger.states import ALL_STATES, TRANSITIONS, IllegalTransition, State
from ledger.store import JobChange, LeaseLost, Store

OWNER = "host:1:1"
_SEGMENTS = itertools.count(1)
PAIRS = [(old, new) for old, new in itertools.product(ALL_STATES, ALL_STATES) if old is not new]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    now = utcnow()
    with write_tx(engine) as conn:
        conn.execute(insert(storyboards).values(id=1, path="input/storyboard_a.json",
                                                path_key=path_key("input/storyboard_a.json"),
                                                segment_count=1, present=True, first_seen_at=now, scanned_at=now))
    return Store(engine, cwd=tmp_path)


def job_in(store: Store, state: State, owner: str = OWNER) -> int:
    now = utcnow()
    with write_tx(store.engine) as conn:
        return conn.execute(insert(jobs).values(
            storyboard_id=1, segment_index=next(_SEGMENTS),
            version=1, state=state, params={"prompt": "x"}, params_sha="x", is_pro=False, target_dir="output/a",
            spent_cents=0, progress=0, attempts=0, created_at=now, updated_at=now, lease_owner=owner,
        )).inserted_primary_key[0]


def state_of(store: Store, job_id: int) -> State:
    row = store.job(job_id)
    assert row is not None
    return row.state


@pytest.mark.parametrize("old,new", PAIRS, ids=[f"{o.value}->{n.value}" for o, n in PAIRS])
def test_every_move_is_allowed_exactly_when_the_table_says_so(store: Store, old: State, new: State):
    job_id = job_in(store, old)
    if new in TRANSITIONS[old]:
        assert store.transition(job_id, OWNER, old, new, "test").state is new
        assert state_of(store, job_id) is new
        assert [e.to_state for e in store.history(job_id)] == [new]
    else:
        with pytest.raises(IllegalTransition):
            store.transition(job_id, OWNER, old, new, "test")
        assert state_of(store, job_id) is old and store.history(job_id) == []


@pytest.mark.parametrize("old,new", [(o, n) for o in ALL_STATES for n in TRANSITIONS[o]],
                         ids=lambda s: s.value)
def test_a_move_from_a_state_the_job_is_not_in_changes_nothing(store: Store, old: State, new: State):
    """0 rows matched means someone else moved the job: never success, never a partial write."""
    actual = next(s for s in ALL_STATES if s is not old)
    job_id = job_in(store, actual)
    with pytest.raises(LeaseLost):
        store.transition(job_id, OWNER, old, new, "test")
    # the scan and requeue path: the same guard, reported back instead of raised
    moved = store._apply_changes_now([JobChange(job_id, old, new, {}, "test")])
    assert [c.job_id for c in moved] == [job_id]
    assert state_of(store, job_id) is actual and store.history(job_id) == []


def test_a_worker_without_the_lease_cannot_move_the_job(store: Store):
    job_id = job_in(store, State.SUBMITTED, owner="other:2:2")
    with pytest.raises(LeaseLost):
        store.transition(job_id, OWNER, State.SUBMITTED, State.DOWNLOADING, "test")
    assert state_of(store, job_id) is State.SUBMITTED


def test_no_edge_would_discard_a_paid_task_id():
    """From a state that holds a paid task, the only ways out keep it (or end the job)."""
    assert State.PENDING not in TRANSITIONS[State.SUBMITTED]
    assert State.PENDING not in TRANSITIONS[State.DOWNLOADING]
    assert TRANSITIONS[State.DOWNLOADING] == {State.DONE, State.FAILED}


def test_requeue_never_touches_a_job_that_left_failed_meanwhile(store: Store):
    job_id = job_in(store, State.FAILED, owner=None)  # type: ignore[arg-type]
    with write_tx(store.engine) as conn:  # another worker took it back up a moment ago
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(state=State.SUBMITTED, remote_task_id="paid"))
    done = store.requeue([job_id])
    assert (done.downloads, done.generations, done.refused) == (0, 0, [])
    row = store.job(job_id)
    assert row is not None and row.state is State.SUBMITTED and row.remote_task_id == "paid"


def test_a_create_is_cleared_to_go_only_under_a_lease_held_and_not_expired(store: Store):
    """The last word before a paid create: the job still submitting, under this worker's lease, not
    lapsed; the lease is extended in the same write. A lapsed lease nobody took yet counts as lost
    too: another worker may take the job any moment and find no task."""
    from datetime import timedelta

    held = job_in(store, State.SUBMITTING)
    lapsed = job_in(store, State.SUBMITTING)
    other = job_in(store, State.SUBMITTING, owner="other:2:2")
    before = utcnow()
    with write_tx(store.engine) as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_([held, other]))
                     .values(lease_expires_at=before + timedelta(seconds=5)))
        conn.execute(update(jobs).where(jobs.c.id == lapsed).values(lease_expires_at=before - timedelta(seconds=1)))
    row = store.clear_to_send(store.job(held), OWNER, 60)
    stored = store.job(held)
    assert stored.lease_expires_at >= before + timedelta(seconds=60) and stored.submitting_at >= before
    assert (row.lease_expires_at, row.submitting_at) == (stored.lease_expires_at, stored.submitting_at)
    for job_id in (lapsed, other):
        with pytest.raises(LeaseLost):
            store.clear_to_send(store.job(job_id), OWNER, 60)
    assert store.job(lapsed).lease_expires_at < before  # nothing extended
