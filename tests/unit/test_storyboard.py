"""Discovery rules, validation of every bad-input class, and the parameter cascade."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ledger.settings import Settings
from ledger.storyboard import Layout, discover, printable, read_storyboard
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
     "/segments/0/image_url", "is a local file; the API only accepts http(s) URLs"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "file:///etc/passwd"}]},
     "/segments/0/image_url", "is a local file"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "./a.png"}]},
     "/segments/0/image_url", "is a local file"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "ref.png"}]},
     "/segments/0/image_url", "is a local file"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "www.x.com/a.jpg"}]},
     "/segments/0/image_url", "needs http:// or https:// in front (https://www.x.com/a.jpg)"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "ftp://x.com/a.jpg"}]},
     "/segments/0/image_url", "must be an http:// or https:// URL, not ftp:"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": "https:///a.jpg"}]},
     "/segments/0/image_url", "has no host name"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "image_url": 7}]},
     "/segments/0/image_url", "must be an http(s) URL, or null for none"),
    ({"segments": [{"segment_index": 1.0, "prompt_text": "x"}]},
     "/segments/0/segment_index", "segment_index must be a whole number without a decimal point (1, not 1.0)"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "versions": 2.0}]},
     "/segments/0/versions", "versions must be a whole number without a decimal point (2, not 2.0)"),
    ({"defaults": {"duration_seconds": 10.0}, "segments": [{"segment_index": 1, "prompt_text": "x"}]},
     "/defaults/duration_seconds", "whole number without a decimal point (10, not 10.0)"),
    ({"segments": [{"segment_index": 2147483648, "prompt_text": "x"}]},
     "/segments/0/segment_index", "2147483648 is greater than the maximum of 2147483647"),
    ({"segments": [{"segment_index": 2 ** 63, "prompt_text": "x"}]},
     "/segments/0/segment_index", "greater than the maximum of 2147483647"),
    ({"segments": [{"segment_index": 10 ** 30, "prompt_text": "x"}]},
     "/segments/0/segment_index", "greater than the maximum of 2147483647"),
    ({"segments": [{"segment_index": True, "prompt_text": "x"}]}, "/segments/0/segment_index", "not of type 'integer'"),
    ({"segments": [{"segment_index": 1, "prompt_text": "a\u0000b"}]}, "/segments/0/prompt_text", "NUL character"),
    ('{"segments": [{"segment_index": 1, "prompt_text": "\\ud800"}]}', "/segments/0/prompt_text",
     "contains \\ud800, half of a UTF-16 surrogate pair on its own"),
    ('{"segments": [{"segment_index": 1, "prompt_text": "x"}], "character_bible": {"\\udfff": 1}}',
     "/character_bible/\\udfff", "the key contains \\udfff"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "duration_seconds": 25}]},
     "/segments/0/duration_seconds", "needs the Pro model"),
    ({"defaults": {"duration_seconds": 25}, "segments": [{"segment_index": 1, "prompt_text": "x"}]},
     "/defaults/duration_seconds", "needs the Pro model"),
    ({"segments": [{"segment_index": 2, "prompt_text": "x"}, {"segment_index": 2, "prompt_text": "y"}]},
     "/segments/1/segment_index", "used twice (first at /segments/0)"),
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
    assert [w.pointer for w in parsed.warnings] == ["/segments/0/promt", "/title"]


def test_unknown_keys_anywhere_are_warnings_naming_the_key_meant(tmp_path: Path):
    doc = {"metadata": {"projct_name": "P"},
           "defaults": {"duraton": 10, "image_url": "https://x.com/a.jpg", "_note": "a comment"},
           "segments": [{"segment_index": 1, "prompt_text": "x", "colour": "red",
                         "asset": {"scen": "city", "characters": [{"nmae": "Mia"}]}}]}
    parsed = read(write(tmp_path / "input" / "storyboard_w.json", doc), tmp_path)
    assert parsed.valid and len(parsed.jobs) == 2  # warnings never block
    assert [str(w) for w in parsed.warnings] == [
        "input/storyboard_w.json: /defaults/duraton: unknown key 'duraton' ignored; did you mean 'duration_seconds'? "
        "(prefix a key with '_' to mark a comment)",
        "input/storyboard_w.json: /defaults/image_url: 'image_url' can only be set per segment, not in defaults; ignored",
        "input/storyboard_w.json: /metadata/projct_name: unknown key 'projct_name' ignored; did you mean 'project_name'? "
        "(prefix a key with '_' to mark a comment)",
        "input/storyboard_w.json: /segments/0/asset/characters/0/nmae: unknown key 'nmae' ignored; did you mean 'name'? "
        "(prefix a key with '_' to mark a comment)",
        "input/storyboard_w.json: /segments/0/asset/scen: unknown key 'scen' ignored; did you mean 'scene'? "
        "(prefix a key with '_' to mark a comment)",
        "input/storyboard_w.json: /segments/0/colour: unknown key 'colour' ignored (prefix it with '_' to mark a comment)",
    ]


@pytest.mark.parametrize("doc, line", [
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "duraton_seconds": 15}]},
     "/segments/0/duraton_seconds: unknown key — did you mean duration_seconds?"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "Duration_Seconds": 15}]},
     "/segments/0/Duration_Seconds: unknown key — did you mean duration_seconds?"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "is_pr": True}]},
     "/segments/0/is_pr: unknown key — did you mean is_pro?"),
    ({"defaults": {"resolutoin": "vertical"}, "segments": [{"segment_index": 1, "prompt_text": "x"}]},
     "/defaults/resolutoin: unknown key — did you mean resolution?"),
    ({"defualts": {"is_pro": True}, "segments": [{"segment_index": 1, "prompt_text": "x"}]},
     "/defualts: unknown key — did you mean defaults?"),
    ({"segments": [{"segment_index": 1, "prompt_text": "x", "provider": "kling", "kling": {"mdoe": "pro"}}]},
     "/segments/0/kling/mdoe: unknown key — did you mean mode?"),
    ({"defaults": {"Kling": {"mode": "pro"}}, "segments": [{"segment_index": 1, "prompt_text": "x"}]},
     "/defaults/Kling: unknown key — did you mean kling?"),
])
def test_a_near_miss_of_a_paid_key_is_an_error_at_its_pointer(tmp_path: Path, doc, line):
    """Before: a warning, and the job was paid at the default (15 s asked, 10 s paid)."""
    parsed = read(write(tmp_path / "input" / "storyboard_p.json", doc), tmp_path)
    assert [str(p) for p in parsed.problems] == [f"input/storyboard_p.json: {line}"]
    assert parsed.jobs == [] and parsed.warnings == []


def test_a_provider_block_names_a_misspelt_option_at_its_key_and_any_other_unknown_one_once(tmp_path: Path):
    doc = {"segments": [{"segment_index": 1, "prompt_text": "x", "provider": "kling",
                         "kling": {"mdoe": "pro", "motion": "fast", "_note": "a comment"}}]}
    parsed = read(write(tmp_path / "input" / "storyboard_k.json", doc), tmp_path)
    assert [str(p).split(": ", 1)[1] for p in parsed.problems] == [
        "/segments/0/kling: unknown option 'motion' for the kling provider (it takes 'cfg_scale', 'mode', "
        "'negative_prompt', 'sound')",
        "/segments/0/kling/mdoe: unknown key — did you mean mode?"]


def test_far_unknown_keys_stay_warnings_and_underscore_keys_stay_comments(tmp_path: Path):
    doc = {"defaults": {"_duraton_seconds": 15, "frame_rate": 24},
           "segments": [{"segment_index": 1, "prompt_text": "x", "_Is_Pro": True, "camera_angle": "low"}]}
    parsed = read(write(tmp_path / "input" / "storyboard_c.json", doc), tmp_path)
    assert parsed.valid and parsed.problems == []
    assert [w.pointer for w in parsed.warnings] == ["/defaults/frame_rate", "/segments/0/camera_angle"]


def test_character_bible_is_free_form(tmp_path: Path):
    doc = {"character_bible": {"Mia": {"age": 30, "looks": ["tall"]}}, "segments": [{"segment_index": 1, "prompt_text": "x"}]}
    parsed = read(write(tmp_path / "input" / "storyboard_b.json", doc), tmp_path)
    assert parsed.valid and parsed.warnings == []


@pytest.mark.parametrize("doc, line", [
    ({"segments": [{"segment_index": 1, "promt_text": "x"}]},
     "/segments/0/promt_text: unknown key 'promt_text': did you mean 'prompt_text'? ('prompt_text' is required)"),
    ({"segments": [{"Segment_Index": 1, "prompt_text": "x"}]},
     "/segments/0/Segment_Index: unknown key 'Segment_Index': did you mean 'segment_index'? ('segment_index' is required)"),
    ({"segmnets": [{"segment_index": 1, "prompt_text": "x"}]},
     "/segmnets: unknown key 'segmnets': did you mean 'segments'? ('segments' is required)"),
])
def test_a_near_miss_of_a_required_key_is_one_clear_error(tmp_path: Path, doc, line):
    parsed = read(write(tmp_path / "input" / "storyboard_t.json", doc), tmp_path)
    assert [str(p) for p in parsed.problems] == [f"input/storyboard_t.json: {line}"]
    assert parsed.warnings == [] and parsed.jobs == []


def test_a_missing_required_key_with_no_near_miss_is_named(tmp_path: Path):
    doc = {"segments": [{"segment_index": 1, "text": "x"}]}
    parsed = read(write(tmp_path / "input" / "storyboard_t.json", doc), tmp_path)
    assert [str(p) for p in parsed.problems] == ["input/storyboard_t.json: /segments/0: 'prompt_text' is a required property"]
    assert [w.pointer for w in parsed.warnings] == ["/segments/0/text"]


def test_one_reading_reports_every_problem_of_a_file(tmp_path: Path):
    doc = {"defaults": {"duration_seconds": 25, "qualty": "high"},
           "segments": [{"segment_index": 1, "prompt_text": "x", "resolution": "square"},
                        {"segment_index": 1, "prompt_text": "y", "is_pro": "yes"},
                        {"segment_index": 2, "promt_text": "z", "image_url": "www.x.com/a.jpg"},
                        {"segment_index": 3.0, "prompt_text": "w", "is_pro": True}]}
    parsed = read(write(tmp_path / "input" / "storyboard_all.json", doc), tmp_path)
    assert [str(p).split(": ", 1)[1] for p in parsed.problems] == [
        "/defaults/duration_seconds: duration 25s needs the Pro model (is_pro: true); normal generations take 10 or 15 seconds",
        "/defaults/qualty: unknown key — did you mean quality?",
        "/segments/0/resolution: 'square' is not allowed here; use one of 'horizontal', 'vertical'",
        "/segments/1/is_pro: 'yes' is not of type 'boolean'",
        "/segments/1/segment_index: segment_index 1 is used twice (first at /segments/0)",
        "/segments/2/image_url: image_url needs http:// or https:// in front (https://www.x.com/a.jpg)",
        "/segments/2/promt_text: unknown key 'promt_text': did you mean 'prompt_text'? ('prompt_text' is required)",
        "/segments/3/segment_index: segment_index must be a whole number without a decimal point (3, not 3.0)",
    ]
    assert parsed.warnings == []
    assert parsed.jobs == []


def test_a_file_wrong_everywhere_gets_a_bounded_answer(tmp_path: Path):
    doc = {"segments": [{"segment_index": 0, "prompt_text": ""} for _ in range(300)]}
    parsed = read(write(tmp_path / "input" / "storyboard_bad.json", doc), tmp_path)
    assert len(parsed.problems) == 101
    assert str(parsed.problems[-1]).endswith("more like these")


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path):
    prompt = "[{" * 500 + ' \\" ' + "]}" * 10
    parsed = read(write(tmp_path / "input" / "storyboard_b.json", segments(prompt)), tmp_path)
    assert parsed.valid and parsed.jobs[0].params["prompt"] == prompt


@pytest.mark.parametrize("depth, valid", [(60, True), (65, False), (900, False), (200_000, False)])
def test_nesting_is_limited_without_recursion(tmp_path: Path, depth, valid):
    text = ('{"segments": [{"segment_index": 1, "prompt_text": "x"}], "character_bible": '
            + "[" * depth + "]" * depth + "}")
    parsed = read(write(tmp_path / "input" / "storyboard_deep.json", text), tmp_path)
    assert parsed.valid is valid
    if not valid:
        assert [str(p) for p in parsed.problems] == [
            "input/storyboard_deep.json: /: nested deeper than 64 levels of arrays and objects"]


def test_an_integer_too_long_for_python_is_invalid_not_a_crash(tmp_path: Path):
    text = '{"segments": [{"segment_index": 1, "prompt_text": "x", "versions": 1' + "0" * 5000 + "}]}"
    parsed = read(write(tmp_path / "input" / "storyboard_big.json", text), tmp_path)
    assert not parsed.valid and parsed.jobs == []


def test_the_largest_segment_index_the_database_holds_is_accepted(tmp_path: Path):
    doc = {"segments": [{"segment_index": 2147483647, "prompt_text": "x"}]}
    parsed = read(write(tmp_path / "input" / "storyboard_max.json", doc), tmp_path)
    assert parsed.valid and parsed.jobs[0].target_dir.endswith("/Segment_2147483647")


def test_printable_escapes_undecodable_bytes_surrogates_and_control_characters():
    assert printable(os.fsdecode(b"storyboard_\xff.json")) == "storyboard_\\xff.json"
    assert printable("a\ud800b\nc") == "a\\ud800b\\nc"
    assert printable("海边 ok") == "海边 ok"


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
    files = sorted((repo / "examples").rglob("*.json")) + [repo / "input" / "_template.json"]
    assert len(files) >= 3
    for path in files:
        parsed = read(path, repo)
        assert parsed.valid and parsed.warnings == [], (path, parsed.problems, parsed.warnings)
        assert parsed.jobs


def test_the_template_is_not_scanned_sends_no_image_and_says_so():
    """What input/_template.json's comments claim holds: it is not a storyboard name, its
    image_url is null (nothing is sent for it), and its cascade is the one its comments describe."""
    repo = Path(__file__).resolve().parents[2]
    template = repo / "input" / "_template.json"
    assert template not in discover(repo / "input")
    doc = json.loads(template.read_text(encoding="utf-8"))
    assert doc["segments"][0]["image_url"] is None
    parsed = read(template, repo)
    params = parsed.jobs[0].params
    assert "image_url" not in params
    assert params["prompt"] == doc["segments"][0]["prompt_text"]
    assert "director_intent" not in json.dumps(params) and "Mia" not in json.dumps(params)
    assert len(parsed.jobs) == doc["segments"][0]["versions"]


def test_a_key_written_twice_in_one_object_is_an_error_at_its_pointer(tmp_path: Path):
    """Before: JSON's last-one-wins kept the second prompt silently, and that is what was paid for."""
    raw = ('{"segments": [{"segment_index": 1, "prompt_text": "a quiet harbour"},\n'
           '              {"segment_index": 2, "prompt_text": "海浪", "duration_seconds": 10,\n'
           '               "prompt_text": "海浪拍岸, at night", "_note": "x", "_note": "comments may repeat"}],\n'
           ' "metadata": {"project_name": "P", "project_name": "Q"}}')
    path = tmp_path / "input" / "storyboard_d.json"
    path.parent.mkdir(parents=True)
    path.write_text(raw, encoding="utf-8")
    parsed = read(path, tmp_path)
    assert not parsed.valid and parsed.jobs == []
    assert [str(p) for p in parsed.problems] == [
        "input/storyboard_d.json: /metadata/project_name: the key 'project_name' is written 2 times in this object; "
        "JSON keeps only the last value, so which one is meant is unclear: keep one",
        "input/storyboard_d.json: /segments/1/prompt_text: the key 'prompt_text' is written 2 times in this object; "
        "JSON keeps only the last value, so which one is meant is unclear: keep one",
    ]
