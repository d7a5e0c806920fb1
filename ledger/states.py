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

TRANSITIONS: Dict[State, FrozenSet[State]] = {
    State.PENDING: frozenset({State.SUBMITTING, State.DONE, State.FAILED, State.REMOVED}),
    # back to pending only when the create provably did not happen (429, 1012, an error envelope,
    # or a reconciliation that found no remote task)
    State.SUBMITTING: frozenset({State.SUBMITTED, State.PENDING, State.FAILED}),
    State.SUBMITTED: frozenset({State.DOWNLOADING, State.FAILED, State.PENDING}),
    State.DOWNLOADING: frozenset({State.DONE, State.SUBMITTED, State.FAILED}),
    State.DONE: frozenset({State.PENDING}),
    State.FAILED: frozenset({State.PENDING, State.SUBMITTED, State.REMOVED}),
    State.REMOVED: frozenset({State.PENDING}),
}


class IllegalTransition(ValueError):
    """A programming error: the code asked for a move the state machine does not have."""


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.value} -> {new.value} is not a ledger transition")
