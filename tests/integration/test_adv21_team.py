"""Adversarial: team mode, a key revoked between its create and the create's look-up."""
from __future__ import annotations

import time

from tests.helpers import query, segments, spawn
from tests.integration.test_paid_once import finish


def test_a_key_revoked_after_its_create_went_out_is_not_paid_again_with_another_key(ws, make_sim, work_env):
    """Team mode, one account, two keys. Key A's create reaches the API (made and billed) and its
    answer is lost; right after, key A is revoked (the team lead rotates a key that leaked). The
    look-up with key A answers 401: STOP_AUTH with another key in rotation retires A and moves the
    `submitting` job to `pending` ("not created"), and the same run sends the create again with key
    B — two generations paid for one video, within one run."""
    from tests.integration.test_team import KEY_A, KEY_B, team_env

    keys = {KEY_A: None, KEY_B: None}
    sim = make_sim(gen_seconds=0.3, api_key=None, keys=keys)
    env = {**team_env(sim, work_env, f"{KEY_A},{KEY_B}"), "PROVIDER": "sora_hk", "RECONCILE_GRACE_SECONDS": "1"}
    prompt = "the create whose key is revoked a moment later"
    ws.storyboard("storyboard_a.json", segments(prompt))
    sim.inject("create", "lost_create")
    proc = spawn(ws.root, env, "run", "--no-progress")
    deadline = time.monotonic() + 30
    while sim.stats()["tasks_created"] < 1:
        assert time.monotonic() < deadline and proc.poll() is None, ("no create", proc.communicate())
        time.sleep(0.005)
    del keys[KEY_A]  # revoked: every call with it is now refused (401)
    code, out, errors = finish(proc)
    assert sim.stats()["tasks_created"] == 1, (query(ws.root, "SELECT state, error_message FROM jobs"), out, errors)
