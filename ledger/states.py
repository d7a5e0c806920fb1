"""The job states and the transitions the ledger allows between them."""
from __future__ import annotations

import enum
from typing import Dict, FrozenSet


class State(str, enum.Enum):
    """Where a job stands. The value is what the ledger stores and what ``status --json`` prints."""

    PENDING = "pending"  # waiting to be submitted (or re-submitted after a transient failure)
    SUBMITTING = "submitting"  # write-ahead: committed before the paid POST /create is sent
    SUBMITTED = "submitted"  # the remote task id is known; only ever polled from here on
    DOWNLOADING = "downloading"  # the remote task completed; the video is being fetched
    DONE = "done"  # the video and its sidecar are on disk under their final names
    FAILED = "failed"  # gave up, with the reason kept in the row
    REMOVED = "removed"  # its storyboard, segment or version is gone; the row is kept

    def __str__(self) -> str:
        return self.value


ALL_STATES = tuple(State)
IN_FLIGHT: FrozenSet[State] = frozenset({State.SUBMITTING, State.SUBMITTED, State.DOWNLOADING})
# A worker takes jobs in these states; everything else needs a user's action first.
CLAIMABLE: FrozenSet[State] = frozenset({State.PENDING}) | IN_FLIGHT

# Every move the ledger allows, and why it exists. Nothing else may change a job's state: the store
# checks each write against this table and against the state it expects to find.
TRANSITIONS: Dict[State, FrozenSet[State]] = {
    # submit (write-ahead) · video already on disk · a step failing MAX_ATTEMPTS times · storyboard edit
    State.PENDING: frozenset({State.SUBMITTING, State.DONE, State.FAILED, State.REMOVED}),
    # task id recorded · provably not created (429, 1012, 401, an error envelope, or a reconciliation that
    # covered the whole time window and found nothing) · rejected parameters or an unusable task id
    State.SUBMITTING: frozenset({State.SUBMITTED, State.PENDING, State.FAILED}),
    # a paid task is only ever polled and downloaded: it never goes back to pending
    State.SUBMITTED: frozenset({State.DOWNLOADING, State.FAILED}),
    State.DOWNLOADING: frozenset({State.DONE, State.FAILED}),
    # the user deleted the video, or asked for a regeneration (--requeue-changed)
    State.DONE: frozenset({State.PENDING}),
    # requeue (generate again / download again without paying) · an edit · the storyboard lost it
    State.FAILED: frozenset({State.PENDING, State.SUBMITTED, State.REMOVED}),
    State.REMOVED: frozenset({State.PENDING}),
}


class IllegalTransition(ValueError):
    """A programming error: the code asked for a move the state machine does not have."""


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.value} -> {new.value} is not a ledger transition")
