"""``--max-spend`` holds at any concurrency and any create latency — measured against an independent
fake API (``tests/fake_api.py``, not the project's simulator) whose create answers arrive a second
late on purpose, and whose price list may understate what it bills.

Before: with eight creates in flight before the first answer, a price list that said less than the
API charged (or a list in dollars, read as 0 cents) let every one of them go — 480 cents for a cap
of 100."""
from __future__ import annotations

import pytest

from tests.fake_api import FakeApi
from tests.helpers import query, segments, spawn

CAP = 100  # cents

# How each fake bills and what it says about it; every one answers creates after 1 s.
CASES = {
    # a reseller that raised its prices: GET /pricing says 30 cents, a create bills 60 (and says so)
    "sora_hk-charges-more-than-listed": dict(protocol="sora_hk", charge=60, listed=30),
    # no GET /pricing at all (the fallback table says 30), a create bills 45
    "sora_hk-no-price-list": dict(protocol="sora_hk", charge=45, listed=None),
    # prices and costs written in dollars (0.3), billed as 30 cents: read as cents, every create looked free
    "sora_hk-prices-in-dollars": dict(protocol="sora_hk", charge=30, listed=0.3, listed_pro=1.5, cost_in_answer=0.3),
    # /v1/videos: no price in any answer; billed at the public list (sora-2, 4 s at 10 cents a second)
    "openai": dict(protocol="openai", charge=40),
}


@pytest.mark.parametrize("concurrency", [1, 8, 64])
@pytest.mark.parametrize("case", list(CASES))
def test_max_spend_holds_however_slow_the_create_answers_are(ws, case, concurrency):
    with FakeApi(create_delay=1.0, gen_seconds=0.3, **CASES[case]) as api:
        ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(16)]))
        env = {**api.env(), "GEN_COUNT_PER_SEGMENT": "1", "POLL_MIN_INTERVAL": "0.05", "RETRY_BASE_DELAY": "0.1"}
        proc = spawn(ws.root, env, "run", "--no-progress", "--concurrency", str(concurrency), "--max-spend", f"{CAP}c")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 4, (out, err)
        assert api.charged <= CAP, f"billed {api.charged} cents for a cap of {CAP} ({api.creates} creates)"
        # the cap is used, not merely respected: as many generations as it pays for were made
        assert api.creates == CAP // api.charge, (api.creates, out, err)
        assert "--max-spend $1.00 reached" in err
        # the ledger books what was billed, one create per job, and every paid job was finished
        assert query(ws.root, "SELECT sum(spent_cents), count(*) FROM jobs WHERE remote_task_id IS NOT NULL") == [
            (api.charged, api.creates)]
        assert query(ws.root, "SELECT count(*) FROM jobs WHERE state = 'done'") == [(api.creates,)]


@pytest.mark.parametrize("command", [("run",), ("run", "--dry-run"), ("work",)])
def test_a_cap_in_a_currency_no_job_is_priced_in_is_refused_before_anything_is_paid(ws, command):
    """On a run priced in dollars, `--max-spend ¥5` used to pay on without limit (and the dry run
    said "--max-spend ¥1.00 covers it" for a $1.80 plan): a cap that limits nothing is exit 2."""
    with FakeApi(gen_seconds=0.1, protocol="sora_hk", charge=30, listed=30) as api:
        ws.storyboard("storyboard_a.json", segments(*[f"shot {i}" for i in range(6)]))
        env = {**api.env(), "GEN_COUNT_PER_SEGMENT": "1", "POLL_MIN_INTERVAL": "0.05"}
        if command == ("work",):
            assert ws.cli("scan", env=env).exit_code == 0
        proc = spawn(ws.root, env, *command, "--no-progress", "--max-spend", "¥5")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (out, err)
        assert api.creates == 0
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert "¥5.00" in line and "CNY" in line and "USD" in line and "limit nothing" in line, line
