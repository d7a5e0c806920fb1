"""Discovery rules, validation of every bad-input class, and the parameter cascade."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ledger.settings import Settings
from ledger.storyboard import Layout, discover, read_storyboard
from tests.helpers import segments


def names(paths):
    return sorted(p.name for p in paths)


def write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def read(path: Path, cwd: Path, settings: Settings = None, **layout):
    settings = settings or Settings()
    lay = Layout(cwd=cwd, input_dir=layout.get("input_dir", cwd / "input"), output_dir=cwd / "output",
                 output_mode=layout.get("mode", "centralized"))
    return read_storyboard(path, settings, lay)


def test_discovery_is_recursive_case_insensitive_and_skips_other_files(tmp_path: Path):
    inp = tmp_path / "input"
    for rel in ["storyboard_a.json", "sub/deeper/StoryBoard_B.JSON", "sub/storyboard.json",
                "_template.json", "my_storyboard.json", "storyboard_c.json.bak", "notes.txt", ".hidden/storyboard_x.json"]:
        write(inp / rel, "{}")
    assert names(discover(inp)) == ["StoryBoard_B.JSON", "storyboard.json", "storyboard_a.json"]


def test_discovery_survives_a_symlink_loop_and_skips_the_output_tree(tmp_path: Path):
    inp = tmp_path / "input"
    write(inp / "a" / "storyboard_1.json", "{}")
    os.symlink(inp, inp / "a" / "loop")  # a -> input -> a -> ...
    write(inp / "output" / "storyboard_old.json", "{}")
    found = discover(inp, skip=[inp / "output"])
    assert names(found) == ["storyboard_1.json"]


def test_legacy_format_with_bom_and_comments_expands_to_versions(tmp_path: Path):
    doc = {
        "_comment": "ignored",
        "metadata": {"project_name": "P"},
        "character_bible": {"Mia": "hero"},
        "segments": [{"segment_index": 1, "prompt_text": "A drone shot.", "duration_seconds": 15,
                      "resolution": "vertical", "is_pro": False, "image_url": "https://example.com/ref.jpg",
                      "director_intent": "Establishing shot.", "_note": "also ignored",
                      "asset": {"characters": [{"name": "Mia", "id": "c1"}], "scene": "city", "props": []}}],
    }
    path = tmp_path / "input" / "storyboard_a.json"
    path.parent.mkdir()
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    parsed = read(path, tmp_path)
    assert parsed.problems == [] and parsed.warnings == []
    assert [(j.segment_index, j.version) for j in parsed.jobs] == [(1, 1), (1, 2)]
    assert parsed.jobs[0].params == {"prompt": "A drone shot.", "is_pro": False, "duration": 15, "resolution": "vertical",
                                     "quality": "normal", "remove_watermark": True,
                                     "image_url": "https://example.com/ref.jpg"}
    assert parsed.jobs[0].target_dir == "output/storyboard_a/Segment_1"
    assert parsed.project_name == "P"


def test_cascade_segment_over_defaults_over_settings(tmp_path: Path):
    doc = {"defaults": {"resolution": "vertical", "is_pro": True, "versions": 3},
           "segments": [{"segment_index": 1, "prompt_text": "a"},
                        {"segment_index": 2, "prompt_text": "b", "resolution": "horizontal", "duration_seconds": 25,
                         "versions": 1}]}
    settings = Settings(default_duration=15, gen_count_per_segment=2, default_remove_watermark=False)
    parsed = read(write(tmp_path / "input" / "storyboard_c.json", doc), tmp_path, settings)
    first = [j for j in parsed.jobs if j.segment_index == 1]
    second = [j for j in parsed.jobs if j.segment_index == 2]
    assert len(first) == 3 and len(second) == 1
    assert first[0].params == {"prompt": "a", "is_pro": True, "duration": 15, "resolution": "vertical",
                               "quality": "high", "remove_watermark": False}
    assert second[0].params["resolution"] == "horizontal" and second[0].params["duration"] == 25


def test_layouts_match_the_earlier_tool(tmp_path: Path):
    path = write(tmp_path / "input" / "ep1" / "scenes" / "storyboard_x.json", segments("a"))
    central = read(path, tmp_path)
    assert central.jobs[0].target_dir == "output/ep1/scenes/storyboard_x/Segment_1"
    in_place = read(path, tmp_path, mode="in-place")
    assert in_place.jobs[0].target_dir == "input/ep1/scenes/storyboard_x_assets/Segment_1"


@pytest.mark.parametrize("doc, pointer, words", [
    ('{"segments": [', "/", "invalid JSON at line 1"),
    ({"metadata": {}}, "/", "'segments' is a required property"),
    ({"segments": []}, "/segments", "should be non-empty"),
    ({"segments": [{"prompt_text": "x"}]}, "/segments/0", "'segment_index' is a required property"),
    ({"segments": [{"segment_index": 0, "prompt_text": "x"}]}, "/segments/0/segment_index", "less than the minimum"),
    ({"segments": [{"segment_index": 1, "prompt_text": "   "}]}, "/segments/0/prompt_text", "non-empty string"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "duration_seconds": 12}]},
     "/segments/0/duration_seconds", "use one of 10, 15, 25"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "resolution": "square"}]},
     "/segments/0/resolution", "'square' is not allowed"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "C:\\pics\\ref.jpg"}]},
     "/segments/0/image_url", "http(s) URL"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "file:///etc/passwd"}]},
     "/segments/0/image_url", "http(s) URL"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "duration_seconds": 25}]},
     "/segments/0/duration_seconds", "needs the Pro model"),
    ({"defaults": {"duration_seconds": 25}, "segments": [{"segment_index": 1, "prompt_text": "x"}]},
     "/defaults/duration_seconds", "needs the Pro model"),
    ({"segments": [{"segment_index": 2, "prompt_text": "x"}, {"segment_index": 2, "prompt_text": "y"}]},
     "/segments/1/segment_index", "used twice (first at /segments/0)"),
    ({"defaults": {"duraton": 10}, "segments": [{"segment_index": 1, "prompt_text": "x"}]}, "/defaults", "duraton"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "is_pro": "yes"}]}, "/segments/0/is_pro", "not of type 'boolean'"),
])
def test_each_bad_input_names_file_pointer_and_problem(tmp_path: Path, doc, pointer, words):
    path = write(tmp_path / "input" / "storyboard_bad.json", doc)
    parsed = read(path, tmp_path)
    assert not parsed.valid and parsed.jobs == []
    line = str(parsed.problems[0])
    assert line.startswith(f"input/storyboard_bad.json: {pointer}: "), line
    assert words in line, line


def test_not_utf8_is_reported(tmp_path: Path):
    path = tmp_path / "input" / "storyboard_latin1.json"
    path.parent.mkdir()
    path.write_bytes('{"segments": [{"segment_index": 1, "prompt_text": "caf\xe9"}]}'.encode("latin-1"))
    assert "not UTF-8" in str(read(path, tmp_path).problems[0])


def test_unknown_keys_are_warnings_not_errors(tmp_path: Path):
    doc = {"title": "x", "segments": [{"segment_index": 1, "prompt_text": "x", "promt": "typo"}]}
    parsed = read(write(tmp_path / "input" / "storyboard_w.json", doc), tmp_path)
    assert parsed.valid and len(parsed.jobs) == 2
    assert [w.pointer for w in parsed.warnings] == ["/title", "/segments/0/promt"]


def test_unchanged_fingerprint_skips_parsing(tmp_path: Path):
    path = write(tmp_path / "input" / "storyboard_u.json", segments("a"))
    first = read(path, tmp_path)
    lay = Layout(cwd=tmp_path, input_dir=tmp_path / "input", output_dir=tmp_path / "output")
    again = read_storyboard(path, Settings(), lay, known_fingerprint=first.fingerprint)
    assert again.unchanged and again.jobs == []
    # a setting that shapes jobs changes the fingerprint, so the file is parsed again
    more = read_storyboard(path, Settings(gen_count_per_segment=3), lay, known_fingerprint=first.fingerprint)
    assert not more.unchanged and len(more.jobs) == 3


def test_bundled_examples_and_template_are_valid_without_warnings():
    repo = Path(__file__).resolve().parents[2]
    files = sorted((repo / "input" / "examples").rglob("*.json")) + [repo / "input" / "_template.json"]
    assert len(files) >= 3
    for path in files:
        parsed = read(path, repo)
        assert parsed.valid and parsed.warnings == [], (path, parsed.problems, parsed.warnings)
        assert parsed.jobs
