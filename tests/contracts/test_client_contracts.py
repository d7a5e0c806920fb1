"""Every provider's real client against every documented exchange of ``tests/contracts/<provider>/``:
the request it builds matches the documented one, and every documented answer reads as it should."""
from __future__ import annotations

import pytest

from ledger.providers import REGISTRY
from tests.contracts import runner

ALL = runner.fixtures()


def test_every_fixture_names_its_source_and_the_date_it_was_read():
    assert ALL, "no contract fixtures at all"
    wrong = {f.id: runner.problems_of(f) for f in ALL if runner.problems_of(f)}
    assert not wrong, wrong


def test_every_fixture_folder_is_a_registered_provider():
    assert set(runner.providers()) <= set(REGISTRY)


@pytest.mark.parametrize("fixture", [f for f in ALL if f.data.get("call")], ids=lambda f: f.id)
def test_the_client_speaks_as_documented(fixture, httpserver, tmp_path):
    runner.run(fixture, httpserver, tmp_path)
