"""Adversarial: the reconcile's clock-skew allowance (widened by the API's Date offset) against the
retention guards of the APIs that keep tasks a limited time."""
from __future__ import annotations

import pytest

from tests.helpers import api_env, job_price, query, segments, spawn
from tests.integration.test_paid_once import finish


@pytest.mark.parametrize("protocol", ["wan", "seedance"], indirect=True)
def test_a_lost_create_on_an_api_a_day_off_this_machine_s_clock_is_found_not_left_unresolved(ws, make_sim, work_env,
                                                                                            protocol):
    """The API's clock (and its Date header) is 26 h behind this machine's (a machine clock set a day
    ahead, or a proxy stamping its own wrong Date). The create's answer is lost and looked up a
    second later: the task is there, made a moment ago by the API's clock. The retention guard
    compares `since - skew` with `now - 24 h`, both in this machine's time, but `skew` now holds the
    26 h offset: the guard takes a one-second-old create for one sent more than 24 h ago and leaves
    it unresolved at once ("DashScope keeps tasks no longer") — the paid video is never collected.
    The offset cancels out of the retention comparison (both sides are this machine's clock); only
    the window of creation times should widen by it."""
    sim = make_sim(gen_seconds=0.3, clock_offset=-26 * 3600.0)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "1"}
    prompt = "the create whose answer is lost, on an API a day behind"
    ws.storyboard("storyboard_a.json", segments(prompt))
    sim.inject("create", "lost_create")
    code, out, errors = finish(spawn(ws.root, env, "run", "--no-progress"))
    rows = query(ws.root, "SELECT state, error_message FROM jobs")
    assert sim.stats()["creates_per_prompt"][prompt] == 1
    assert rows[0][0] == "done", (rows, out, errors)
    assert query(ws.root, "SELECT spent_cents FROM jobs") == [(job_price(sim),)]
