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
from tests.helpers import spawn
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
    assert "2 storyboard(s), 2 exported: 1 segment(s) picked, 1 with a single done take, 1 decided by the lowest done " \
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
    assert "skipped input/storyboard_x.json: no segment has a done take with its video on disk" in result.output
    assert "1 storyboard(s), 0 exported, 1 skipped" in result.output
    assert "gap: segment 1: v1 failed" in result.output
    assert not (ws.root / "output/export").exists()


def _read_back(ws, fmt: str, name: str):
    """(clip names in order, their lengths in seconds, their files) of one export, read with the
    library an editor's import goes through (OpenTimelineIO and its adapters, JSON for the rest)."""
    base = ws.root / "output/export" / name
    if fmt in ("otio", "edl", "fcpxml"):
        path, adapter = {"otio": (".otio", None), "edl": (".edl", "cmx_3600"), "fcpxml": (".xml", "fcp_xml")}[fmt]
        options = {"rate": 30} if fmt == "edl" else {}
        timeline = otio.adapters.read_from_file(str(base.with_name(base.name + path)), adapter_name=adapter,
                                                **options)
        clips = [c for c in timeline.tracks[0] if isinstance(c, otio.schema.Clip)]
        return ([c.name for c in clips], [c.duration().to_seconds() for c in clips],
                [Path(c.media_reference.target_url.replace("file://", "")).name for c in clips])
    if fmt == "manifest":
        manifest = json.loads((base.with_name(base.name + "_selects") / "manifest.json").read_text(encoding="utf-8"))
        return ([f"Segment_{c['segment_index']} v{c['version']}" for c in manifest["clips"]],
                [c["duration_seconds"] for c in manifest["clips"]], [Path(c["source_path"]).name for c in manifest["clips"]])
    content = json.loads((base.with_name(base.name + "_jianying") / "draft_content.json").read_text(encoding="utf-8"))
    videos = {m["id"]: m for m in content["materials"]["videos"]}
    placed = [s for track in content["tracks"] if track["type"] == "video" for s in track["segments"]]
    return ([videos[s["material_id"]]["material_name"] for s in placed],
            [s["target_timerange"]["duration"] / 1e6 for s in placed], [Path(videos[s["material_id"]]["path"]).name for s in placed])


@pytest.mark.parametrize("video", ["mp4", "unreadable"])
def test_run_then_pick_then_every_format_writes_a_file_for_every_picked_storyboard(ws, video):
    """Before: takes whose length the MP4 reader could not read (a relay's container, a fake API's
    bytes) all became gaps, so `export --format otio` wrote no file for a storyboard with picks and
    said "no segment has a done take". A done take on disk is always a clip; its requested length
    stands in when the file's own cannot be read, with a note."""
    from tests.fake_api import FakeApi

    served = None if video == "mp4" else b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8
    with FakeApi(gen_seconds=0.2, video=served) as api:
        ws.storyboard("storyboard_a.json", {"segments": [
            {"segment_index": 1, "prompt_text": "first shot", "duration_seconds": 10},
            {"segment_index": 2, "prompt_text": "second shot", "duration_seconds": 15}]})
        ws.storyboard("ep2/storyboard_b.json", {"segments": [{"segment_index": 1, "prompt_text": "only shot"}]})
        env = {**api.env(), "POLL_MIN_INTERVAL": "0.05"}
        proc = spawn(ws.root, env, "run", "--no-progress")
        assert proc.wait(timeout=120) == 0, proc.communicate()
    for ref in ("storyboard_a#1v2", "storyboard_b#1v1"):
        picked = spawn(ws.root, env, "pick", ref)
        assert picked.wait(timeout=60) == 0, picked.communicate()
    listed = spawn(ws.root, env, "picks", "--json")
    assert [(p["storyboard"], p["segment_index"], p["version"]) for p in json.loads(listed.communicate()[0])] == [
        ("input/ep2/storyboard_b.json", 1, 1), ("input/storyboard_a.json", 1, 2)]
    files = {(s, v): Path(take(ws, s, v, "input/storyboard_a.json")[2]).name for s in (1, 2) for v in (1, 2)}
    lengths = [2.0, 2.0] if video == "mp4" else [10.0, 15.0]
    for fmt in ("otio", "edl", "fcpxml", "manifest", "jianying"):
        proc = spawn(ws.root, env, "export", "--format", fmt)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (fmt, out, err)
        assert "2 storyboard(s), 2 exported" in out and "skipped" not in out, out
        assert ("its requested length (10 s) is used" in out) is (video == "unreadable"), out
        names, seconds, paths = _read_back(ws, fmt, "storyboard_a")
        assert names == ["Segment_1 v2", "Segment_2 v1"], (fmt, names)
        assert seconds == pytest.approx(lengths, abs=0.05), (fmt, seconds)
        assert paths == [files[(1, 2)], files[(2, 1)]], fmt
        assert _read_back(ws, fmt, "ep2/storyboard_b")[0] == ["Segment_1 v1"], fmt
