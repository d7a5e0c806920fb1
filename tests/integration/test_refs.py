"""Short job references (`ledger show`, `ledger pick`): any unique tail of the storyboard's path,
`.json` optional; ambiguity is said, with the candidates, never guessed."""
from __future__ import annotations

import json

import pytest

from ledger.db import open_ledger
from ledger.refs import BadReference, resolve
from ledger.store import Store
from tests.helpers import query, segments


@pytest.fixture
def ledger(ws):
    ws.storyboard("ep1/storyboard_a.json", segments("one", "two"))
    ws.storyboard("ep2/storyboard_a.json", segments("uno"))
    ws.storyboard("storyboard_b.json", segments("eins", versions=1))
    ws.storyboard("storyboardXa.json", segments("not a"))  # `_` must not act as a LIKE wildcard
    result = ws.cli("scan", env={"GEN_COUNT_PER_SEGMENT": "2"})
    assert result.exit_code == 0, result.output
    return Store(open_ledger(ws.db_url), cwd=ws.root)


def job_id(ws, path: str, segment: int, version: int) -> int:
    return query(ws.root, "SELECT j.id FROM jobs j JOIN storyboards s ON s.id = j.storyboard_id "
                          "WHERE s.path = ? AND j.segment_index = ? AND j.version = ?", path, segment, version)[0][0]


@pytest.mark.parametrize("ref", ["ep1/storyboard_a#2v1", "ep1/storyboard_a.json#2v1", "input/ep1/storyboard_a.json#2v1",
                                 "input/ep1/storyboard_a#2v1", "./input/ep1/storyboard_a.json#2v1"])
def test_any_unique_tail_of_the_path_names_the_job(ws, ledger, ref):
    assert resolve(ledger, ref, ws.root).id == job_id(ws, "input/ep1/storyboard_a.json", 2, 1)


def test_an_absolute_path_and_an_id_name_the_job(ws, ledger):
    wanted = job_id(ws, "input/ep1/storyboard_a.json", 1, 2)
    assert resolve(ledger, f"{ws.root}/input/ep1/storyboard_a.json#1v2", ws.root).id == wanted
    assert resolve(ledger, str(wanted), ws.root).id == wanted


def test_a_segment_with_one_version_needs_no_version(ws, ledger):
    assert resolve(ledger, "storyboard_b#1", ws.root).id == job_id(ws, "input/storyboard_b.json", 1, 1)


def test_segment_without_version_is_ambiguous_when_there_are_several(ws, ledger):
    with pytest.raises(BadReference) as caught:
        resolve(ledger, "ep1/storyboard_a#2", ws.root)
    message = str(caught.value)
    assert "ambiguous" in message and "2 versions" in message
    assert "input/ep1/storyboard_a.json#2v1 (pending)" in message and "input/ep1/storyboard_a.json#2v2" in message


def test_an_ambiguous_path_tail_lists_the_candidates(ws, ledger):
    with pytest.raises(BadReference) as caught:
        resolve(ledger, "storyboard_a#1v1", ws.root)
    message = str(caught.value)
    assert "matches 2 storyboards" in message
    assert "input/ep1/storyboard_a.json" in message and "input/ep2/storyboard_a.json" in message
    assert "storyboardXa" not in message
    assert "e.g. ep1/storyboard_a.json#1v1" in message or "e.g. ep2/storyboard_a.json#1v1" in message


def test_unknown_names_say_what_is_missing(ws, ledger):
    with pytest.raises(BadReference, match="no storyboard in this ledger is 'nope'"):
        resolve(ledger, "nope#1v1", ws.root)
    with pytest.raises(BadReference, match="has no segment 9"):
        resolve(ledger, "storyboard_b#9", ws.root)
    with pytest.raises(BadReference, match=r"has no version 5 \(versions: 1, 2\)"):
        resolve(ledger, "ep2/storyboard_a#1v5", ws.root)
    with pytest.raises(BadReference, match="is not a job reference"):
        resolve(ledger, "storyboard_b", ws.root)
    with pytest.raises(BadReference, match="no job 999"):
        resolve(ledger, "999", ws.root)


def test_show_takes_short_references_and_prints_json(ws, ledger):
    result = ws.cli("show", "storyboard_b#1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["storyboard"] == "input/storyboard_b.json" and data["segment_index"] == 1 and data["version"] == 1
    assert data["state"] == "pending" and data["picked"] is False and data["history"] == []
    assert data["parameters"]["prompt"] == "eins"
    same = json.loads(ws.cli("status", "--json", "--job", "storyboard_b.json#1v1").output)
    assert same["id"] == data["id"]
    ambiguous = ws.cli("show", "storyboard_a#1")
    assert ambiguous.exit_code == 2 and "ambiguous" in ambiguous.output
