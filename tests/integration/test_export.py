"""`ledger export`: the chosen take of every segment in story order, read back with the same
libraries an editor's import goes through. Durations come from the files, not the request."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import opentimelineio as otio
import pytest

from ledger.export import Clip, Cut, write_manifest
from tests.integration.takes import STORY, generate, make_mp4, take

SECONDS = {(1, 1): 1.5, (1, 2): 2.5, (2, 1): 3.0, (2, 2): 4.0}
SINGLE = {"metadata": {"project_name": "single"},
          "segments": [{"segment_index": 1, "prompt_text": "only one take", "versions": 1}]}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cut(ws, work_env):
    """storyboard_a: segment 1 has two done takes and no pick, segment 2 has its v2 picked,
    segment 3 failed; storyboard_b: one segment with a single take. Every take is a real MP4
    of its own length."""
    generate(ws, work_env, {"ep1/storyboard_a.json": STORY, "storyboard_b.json": SINGLE})
    for (segment, version), seconds in SECONDS.items():
        make_mp4(ws.root / take(ws, segment, version)[2], seconds)
    make_mp4(ws.root / take(ws, 1, 1, "input/storyboard_b.json")[2], 2.0, "maroon")
    assert ws.cli("pick", "storyboard_a#2v2").exit_code == 0
    ws.before = {p: digest(p) for p in (ws.root / "output").rglob("*.mp4")}
    return ws


def path_of(ws, segment: int, version: int) -> Path:
    return (ws.root / take(ws, segment, version)[2]).resolve()


def untouched(ws) -> bool:
    """Every take is still there with the same bytes, and no temporary file is left."""
    takes = {p: digest(p) for p in (ws.root / "output").rglob("*.mp4") if "export" not in p.parts}
    temps = [p for p in (ws.root / "output").rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    return takes == ws.before and temps == []


def test_otio_round_trip_has_story_order_names_file_durations_and_paths(cut):
    ws = cut
    result = ws.cli("export", "--format", "otio")
    assert result.exit_code == 0, result.output
    assert "input/ep1/storyboard_a.json → output/export/ep1/storyboard_a.otio: 2 clip(s), 5.5 s " \
           "(1 picked, 0 only done take, 1 lowest done version)" in result.output
    assert "gap: segment 3: v1 failed: 内容审核未通过：提示词可能违反内容政策" in result.output
    assert "2 storyboard(s): 1 segment(s) picked, 1 with a single done take, 1 decided by the lowest done " \
           "version (no pick), 1 gap(s)." in result.output
    timeline = otio.adapters.read_from_file(str(ws.root / "output/export/ep1/storyboard_a.otio"))
    assert timeline.name == "霓虹城" and len(timeline.tracks) == 1
    items = list(timeline.tracks[0])
    assert [i.name for i in items] == ["Segment_1 v1", "Segment_2 v2", "Segment_3 (no take)"]
    assert [i.duration().value for i in items] == [45, 120, 300]  # 1.5 s and 4 s read from the files; 10 s asked
    assert [i.media_reference.target_url for i in items[:2]] == [path_of(ws, 1, 1).as_uri(), path_of(ws, 2, 2).as_uri()]
    assert items[0].metadata["ledger"]["decided_by"] == "lowest done version"
    assert items[1].metadata["ledger"]["decided_by"] == "pick" and items[1].metadata["ledger"]["prompt"] == STORY["segments"][1]["prompt_text"]
    single = otio.adapters.read_from_file(str(ws.root / "output/export/storyboard_b.otio"))
    assert [(c.name, c.duration().value) for c in single.tracks[0]] == [("Segment_1 v1", 60)]
    assert untouched(ws)


@pytest.mark.parametrize("fmt,suffix,adapter", [("edl", ".edl", "cmx_3600"), ("fcpxml", ".xml", "fcp_xml")])
def test_edl_and_final_cut_xml_are_read_back_by_their_adapters(cut, fmt, suffix, adapter):
    ws = cut
    result = ws.cli("export", "--format", fmt, "--storyboard", "*storyboard_a*", "--fps", "25")
    assert result.exit_code == 0, result.output
    out = ws.root / "output/export/ep1" / f"storyboard_a{suffix}"
    options = {"rate": 25} if fmt == "edl" else {}
    timeline = otio.adapters.read_from_file(str(out), adapter_name=adapter, **options)
    clips = [c for c in timeline.tracks[0] if isinstance(c, otio.schema.Clip)]
    assert [c.name for c in clips] == ["Segment_1 v1", "Segment_2 v2"]
    assert [c.duration().rescaled_to(25).value for c in clips] == [38, 100]  # 1.5 s and 4 s, whole frames
    assert [c.media_reference.target_url for c in clips] == [path_of(ws, 1, 1).as_uri(), path_of(ws, 2, 2).as_uri()]
    # The failed last segment is a trailing gap, which neither format writes down (the summary names it).
    assert "gap: segment 3" in result.output
    assert not (ws.root / "output/export/storyboard_b.edl").exists()
    assert untouched(ws)


def test_manifest_is_a_selects_folder_checked_file_by_file(cut):
    ws = cut
    result = ws.cli("export", "--format", "manifest", "--output", "selects")
    assert result.exit_code == 0, result.output
    folder = ws.root / "selects/ep1/storyboard_a_selects"
    assert sorted(p.name for p in folder.iterdir()) == ["001_seg1_v1.mp4", "002_seg2_v2.mp4", "manifest.csv",
                                                         "manifest.json"]
    assert digest(folder / "001_seg1_v1.mp4") == digest(path_of(ws, 1, 1))
    assert digest(folder / "002_seg2_v2.mp4") == digest(path_of(ws, 2, 2))
    assert (folder / "001_seg1_v1.mp4").stat().st_ino != path_of(ws, 1, 1).stat().st_ino  # a copy
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert [(c["order"], c["segment_index"], c["version"], c["duration_seconds"], c["decided_by"])
            for c in manifest["clips"]] == [(1, 1, 1, 1.5, "lowest done version"), (2, 2, 2, 4.0, "pick")]
    assert manifest["clips"][0]["prompt"] == "无人机俯瞰黄昏时的霓虹城市。"
    assert manifest["clips"][1]["source_path"] == str(path_of(ws, 2, 2))
    assert [g["segment_index"] for g in manifest["gaps"]] == [3]
    with open(folder / "manifest.csv", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"], r["duration_seconds"], r["prompt"]) for r in rows] == [
        ("001_seg1_v1.mp4", "1.5", "无人机俯瞰黄昏时的霓虹城市。"),
        ("002_seg2_v2.mp4", "4.0", "A cat walks across a neon street.")]
    linked = ws.cli("export", "--format", "manifest", "--output", "selects", "--link", "--storyboard", "storyboard_b.json")
    assert linked.exit_code == 0, linked.output
    copy = ws.root / "selects/storyboard_b_selects/001_seg1_v1.mp4"
    assert copy.stat().st_ino == (ws.root / take(ws, 1, 1, "input/storyboard_b.json")[2]).stat().st_ino
    assert untouched(ws)


def test_jianying_draft_lists_the_chosen_files_in_order(cut):
    ws = cut
    result = ws.cli("export", "--format", "jianying", "--storyboard", "*storyboard_a*")
    assert result.exit_code == 0, result.output
    draft = ws.root / "output/export/ep1/storyboard_a_jianying"
    assert (draft / "draft_meta_info.json").is_file()
    content = json.loads((draft / "draft_content.json").read_text(encoding="utf-8"))
    videos = {m["id"]: m for m in content["materials"]["videos"]}
    segments = [s for track in content["tracks"] if track["type"] == "video" for s in track["segments"]]
    assert [videos[s["material_id"]]["material_name"] for s in segments] == ["Segment_1 v1", "Segment_2 v2"]
    assert [videos[s["material_id"]]["path"] for s in segments] == [str(path_of(ws, 1, 1)), str(path_of(ws, 2, 2))]
    assert [s["target_timerange"] for s in segments] == [{"start": 0, "duration": 1_500_000},
                                                          {"start": 1_500_000, "duration": 4_000_000}]
    assert untouched(ws)


def test_a_second_export_replaces_the_first_whole(cut):
    ws = cut
    assert ws.cli("export", "--format", "manifest").exit_code == 0
    assert ws.cli("pick", "storyboard_a#1v2").exit_code == 0
    assert ws.cli("export", "--format", "manifest").exit_code == 0
    folder = ws.root / "output/export/ep1/storyboard_a_selects"
    assert sorted(p.name for p in folder.glob("*.mp4")) == ["001_seg1_v2.mp4", "002_seg2_v2.mp4"]
    assert untouched(ws)


def test_an_export_that_fails_half_way_leaves_the_previous_one_whole(tmp_path):
    good = make_mp4(tmp_path / "takes/1_v1.mp4", 1.0)
    dest = tmp_path / "export/storyboard_a_selects"
    before = Cut("input/storyboard_a.json", "storyboard_a", "a", [Clip(1, 1, 1, good, 1.0, "p", "pick")])
    write_manifest(before, dest)
    broken = Cut("input/storyboard_a.json", "storyboard_a", "a",
                 [Clip(1, 1, 1, good, 1.0, "p", "pick"), Clip(2, 2, 1, tmp_path / "takes/missing.mp4", 1.0, "p", "pick")])
    with pytest.raises(FileNotFoundError):
        write_manifest(broken, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["001_seg1_v1.mp4", "manifest.csv", "manifest.json"]
    assert [p.name for p in dest.parent.iterdir()] == ["storyboard_a_selects"]  # no temporary folder left


def test_a_storyboard_without_done_takes_is_named_not_exported(ws, work_env):
    generate(ws, work_env, {"storyboard_x.json": {"segments": [
        {"segment_index": 1, "prompt_text": "[policy-reject] nothing here"}]}}, versions=1)
    result = ws.cli("export", "--format", "otio")
    assert result.exit_code == 0, result.output
    assert "input/storyboard_x.json: nothing to export (no segment has a done take)" in result.output
    assert "gap: segment 1: v1 failed" in result.output
    assert not (ws.root / "output/export").exists()
