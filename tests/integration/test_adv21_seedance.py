"""Adversarial: Seedance (Ark) keeps task records 7 days, and a task may run up to
`execution_expires_after` (default 48 h, at most 72 h) before its video exists at all."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ledger.providers import RULES, Request
from ledger.providers.seedance import Seedance
from tests.integration.conftest import API_KEY


@pytest.fixture
def protocol() -> str:
    return "seedance"


def test_a_lost_create_looked_up_25_hours_later_is_found_while_ark_still_lists_it(make_sim):
    """A run is killed while its create's answer is on the way; `ledger work` runs again the next
    day, 25 h later. Ark lists its tasks for 7 days (its list page's own note), and a task created
    25 h ago may have finished an hour ago (it may run 48 h by default): its video is there, and the
    list shows the task with the seed ledger sent. The look-up refuses to read the list at all past
    24 h since the create ("the API keeps tasks no longer"), so the job stays unresolved and the
    paid video is never collected — the retention guard uses the video URL's 24 h (counted from the
    task's end) as if it were the task record's life (7 days, counted from its creation)."""
    sim = make_sim(gen_seconds=0.0, clock_offset=-25 * 3600.0)  # the task was made 25 h before now
    client = Seedance(sim.base_url, API_KEY)
    try:
        mapped = RULES["seedance"].map(Request(prompt="made yesterday, answer lost", model=None, is_pro=False,
                                               duration=None, resolution="horizontal", quality="normal",
                                               remove_watermark=True, image_url=None))
        params = mapped.params
        ref = "ledger-1-1700000000000"
        sent = datetime.now(timezone.utc) - timedelta(hours=25)
        made = client.create(params, ref)  # its answer is "lost": only the sim remembers it
        search = client.find_tasks(params, ref, sent - timedelta(seconds=1), sent + timedelta(seconds=5),
                                   skew_seconds=120.0)
    finally:
        client.close()
    assert search.covered and [t.task_id for t in search.tasks] == [made.task_id], search
