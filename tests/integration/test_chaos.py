"""Chaos: 200 jobs, 10 % injected transport faults, three kill -9 of the worker, then resume."""
from __future__ import annotations

import random
import time

import pytest

from tests.helpers import api_env, every_protocol, leftovers, query, segments, spawn
from tests.integration.test_work import sha, videos


@pytest.mark.slow
@every_protocol
def test_chaos_every_job_ends_with_a_reason_nothing_paid_twice(ws, make_sim, work_env, capsys, monkeypatch):
    sim = make_sim(gen_seconds=0.5, fault_rate=0.10, create_latency=0.05)
    # Chaos rehearses finding lost creates in the task list. Where the documented list does not show
    # prompts (MiniMax v2), a lost create stays unresolved by design (its provider's tests cover
    # that): here the simulator shows them.
    if hasattr(sim.protocol, "shows_prompt"):
        monkeypatch.setattr(sim.protocol, "shows_prompt", True)
    env = {**work_env, **api_env(sim), "MAX_CONCURRENT_TASKS": "16", "GEN_COUNT_PER_SEGMENT": "2",
           "MAX_ATTEMPTS": "8"}
    # 100 segments x 2 versions: every prompt exists twice, the hard case for finding a lost create
    ws.storyboard("storyboard_chaos.json", segments(*[f"chaos shot {i}" for i in range(100)]))
    assert ws.cli("scan", env=env).exit_code == 0
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    for _ in range(3):
        proc = spawn(ws.root, env, "work", "--no-progress")
        time.sleep(rng.uniform(1.0, 4.0))
        proc.kill()
        proc.wait()
    runs = 0
    while runs < 3:  # resume until the ledger says there is nothing left to do
        runs += 1
        final = spawn(ws.root, env, "work", "--no-progress")
        out, errors = final.communicate(timeout=300)
        assert final.returncode in (0, 1), (seed, out, errors[-3000:])
        if not query(ws.root, "SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'failed')")[0][0]:
            break
    elapsed = time.monotonic() - started

    outcome = dict(query(ws.root, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert set(outcome) <= {"done", "failed"} and sum(outcome.values()) == 200, (seed, outcome)
    assert query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'failed' AND "
                          "(error_kind IS NULL OR error_message IS NULL)") == [(0,)]
    stats = sim.stats()
    linked = {t for (t,) in query(ws.root, "SELECT remote_task_id FROM jobs WHERE remote_task_id IS NOT NULL")}
    created = {t["task_id"] for t in sim.tasks()}
    orphans = created - linked  # paid for and belonging to no job: a video paid twice
    assert orphans == set(), seed
    # money: what the ledger says was spent is what the account was billed, to the cent
    charged = sim.config.balance - stats["balance"]
    assert query(ws.root, "SELECT sum(spent_cents) FROM jobs") == [(charged,)], seed
    assert leftovers(ws.root) == [], seed
    files = videos(ws.root)
    assert len(files) == outcome.get("done", 0)
    assert all(sha(f) == stats["video_sha256"] for f in files)
    with capsys.disabled():
        print(f"\nchaos ({sim.config.protocol}, seed {seed}): 200 jobs, 3 kill -9, {runs} resume run(s), {elapsed:.0f} s; "
              f"{outcome.get('done', 0)} done, {outcome.get('failed', 0)} failed; "
              f"{sum(stats['faults_injected'].values())} faults injected ({stats['faults_injected']}), "
              f"{stats['creates_received']} creates received, "
              f"{stats['tasks_created']} tasks paid, 0 paid twice, 0 temp files, ledger spend = billed = {charged} cents")
