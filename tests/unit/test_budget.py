"""The ``--max-spend`` budget as data: holds, the first create of a kind going alone, and costs
the API reported outranking the price list."""
from __future__ import annotations

from ledger.client import Pricing, RemoteTask
from ledger.errors import ApiError
from ledger.work.budget import Budget, Hold

import pytest


def test_without_a_cap_every_create_goes_and_nothing_waits_for_a_price():
    budget = Budget(None)
    assert [budget.reserve(30, "normal", who, probe=True) for who in "abc"] == [Hold.GO] * 3
    assert budget.reserved == 90


def test_with_a_cap_the_first_create_of_a_kind_goes_alone_until_its_cost_is_known():
    budget = Budget(100)
    first, second = object(), object()
    assert budget.reserve(30, "normal", first, probe=True) is Hold.GO
    assert budget.reserve(30, "normal", second, probe=True) is Hold.WAIT
    assert budget.reserve(50, "pro", second, probe=True) is Hold.GO  # another kind has its own first
    budget.release(50, "pro", second)
    assert budget.spend(30, 60, "normal", first) == 60  # the API charged more than it listed
    assert budget.estimate("normal", 30) == 60
    assert budget.reserve(60, "normal", second, probe=True) is Hold.FULL  # 60 + 60 > 100


def test_a_create_that_did_not_happen_lets_the_next_one_of_its_kind_be_the_first():
    budget = Budget(100)
    first, second = object(), object()
    assert budget.reserve(30, "normal", first, probe=True) is Hold.GO
    budget.release(30, "normal", first)
    assert budget.reserve(30, "normal", second, probe=True) is Hold.GO
    assert budget.reserve(30, "normal", first, probe=True) is Hold.WAIT


@pytest.mark.parametrize("reported", [None, 0, 20])
def test_an_answer_that_says_less_or_nothing_never_frees_what_was_held(reported):
    budget = Budget(100)
    assert budget.reserve(30, "normal", "a") is Hold.GO
    assert budget.spend(30, reported, "normal", "a") == 30
    assert budget.spent == 30 and budget.reserved == 0 and budget.held == 0


def test_a_create_left_unresolved_keeps_its_price_held_but_lets_the_others_go():
    budget = Budget(100)
    assert budget.reserve(30, "normal", "lost", probe=True) is Hold.GO
    budget.give_up_probe("normal", "lost")
    assert budget.reserve(30, "normal", "next", probe=True) is Hold.GO
    assert budget.reserved == 60 and budget.held == 2


@pytest.mark.parametrize("listed", [0.3, "0.30", 0, 29.5])
def test_a_price_list_that_is_not_in_whole_cents_is_refused(listed):
    with pytest.raises(ApiError, match="not a whole number of cents"):
        Pricing.from_api({"normal_price": listed, "pro_price": 150})


@pytest.mark.parametrize("cost, read", [(30, 30), ("30", 30), (30.0, 30), (0.3, None), ("0.30", None), (None, None)])
def test_a_cost_is_read_in_whole_cents_only(cost, read):
    assert RemoteTask.from_api({"task_id": "t", "cost": cost}).cost == read
