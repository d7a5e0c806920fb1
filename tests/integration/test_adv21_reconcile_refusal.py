"""Adversarial: a look-up after a lost create that is refused as an account error."""
from __future__ import annotations

import time

import pytest

from tests.helpers import api_env, query, segments, spawn
from tests.integration.test_paid_once import finish


@pytest.fixture
def protocol() -> str:
    return "hailuo"


def test_a_lost_create_whose_look_up_answers_2038_is_not_taken_for_not_created(ws, make_sim, work_env):
    """MiniMax v2: a create's answer is lost (the task was made and billed: MiniMax bills at
    create). Its look-up, the v2 task list, answers code 2038 (real-name verification required —
    documented as an answer of that very list, tests/contracts/hailuo/preflight_v2_error_2038_real_name.json).
    2038 is now an AuthError, and an AuthError at any step is STOP_AUTH, which moves a `submitting`
    job back to `pending` as "not created": the next run, once the account is verified, sends the
    create again and pays for the video twice. A refusal of the look-up proves nothing about the create."""
    sim = make_sim(gen_seconds=0.3)
    env = {**work_env, **api_env(sim), "RECONCILE_GRACE_SECONDS": "1"}
    prompt = "the create whose look-up is refused"
    ws.storyboard("storyboard_a.json", segments(prompt))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    deadline = time.monotonic() + 30
    while sim.stats()["tasks_created"] < 1:  # past the pre-flight (which lists too): the create went out
        assert time.monotonic() < deadline, "no create"
        time.sleep(0.01)
    sim.inject("tasks", "envelope", count=50, code=2038,
               message="real-name verification required, please complete it in the console")
    finish(proc)
    first = query(ws.root, "SELECT state, error_message FROM jobs")
    sim.clear_faults()  # the account is verified; the user runs again
    code, out, errors = finish(spawn(ws.root, env, "work", "--no-progress"))
    assert sim.stats()["creates_per_prompt"][prompt] == 1, (first, query(ws.root, "SELECT state FROM jobs"), out,
                                                            errors)

