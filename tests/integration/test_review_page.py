"""`ledger review` without a browser: what the written page contains and how it is written."""
from __future__ import annotations

import json
import re
import sys

from tests.helpers import spawn
from tests.integration.takes import STORY, generate, take


def page_text(ws, *args: str) -> str:
    result = ws.cli("review", *args)
    assert result.exit_code == 0, result.output
    return (ws.root / result.output.strip().splitlines()[-1]).read_text(encoding="utf-8")


def test_the_page_is_one_file_with_relative_videos_and_nothing_from_the_network(ws, work_env):
    generate(ws, work_env, {"第一集 #1/storyboard_a.json": STORY})
    text = page_text(ws)
    sources = re.findall(r'<noscript><video class="\w+" controls muted preload="metadata" src="([^"]+)"></video>'
                         r'</noscript>', text)
    assert len(sources) == 4 and text.count("<video") == 4  # every player waits in a <noscript>
    assert all(s.startswith("%E7%AC%AC%E4%B8%80%E9%9B%86%20%231/storyboard_a/Segment_") for s in sources), sources
    assert not re.search(r'(src|href)=["\']?(https?:)?//', text)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert text.count("<script>") == 1 and text.count("<style>") == 1
    assert list((ws.root / "output").glob(".review.html.tmp-*")) == []


def test_text_from_storyboards_is_escaped_not_run(ws, work_env):
    generate(ws, work_env, {"storyboard_x.json": {"segments": [
        {"segment_index": 1, "prompt_text": "<script>alert('x')</script> & \"quotes\"",
         "director_intent": "<img src=x onerror=alert(1)>"}]}}, versions=1)
    text = page_text(ws)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert text.count("<script>") == 1


def test_takes_made_before_the_storyboard_changed_are_marked_stale(ws, work_env):
    generate(ws, work_env)
    edited = json.loads(json.dumps(STORY))
    edited["segments"][0]["prompt_text"] = "无人机俯瞰清晨的霓虹城市。"
    del edited["segments"][1]
    ws.storyboard("ep1/storyboard_a.json", edited)
    text = page_text(ws)
    assert text.count('class="badge stale"') == 4
    assert "the storyboard changed after it was generated (prompt)" in text
    assert "the segment is no longer in the storyboard" in text
    assert "prompt it was generated from" in text and "无人机俯瞰黄昏时的霓虹城市。" in text
    assert "4</b> stale take(s)" in text
    # the failed takes of segment 3 are not "stale": nothing was generated
    assert text.count('class="stale-why"') == 4


def test_summary_counts_states_money_and_picks(ws, work_env):
    generate(ws, work_env)
    ws.cli("pick", "storyboard_a#2v2")
    text = page_text(ws, "--storyboard", "*storyboard_a*", "--output", "elsewhere/page.html")
    assert '<li class="done"><b>4</b> done</li>' in text and '<li class="failed"><b>2</b> failed</li>' in text
    assert "spent <b>$1.80</b>" in text and 'picked <b id="picked-count">1</b> of <b>3</b>' in text
    assert f'data-picked="{take(ws, 2, 2)[0]}"' in text
    assert re.search(r'src="\.\./output/ep1/storyboard_a/Segment_1/1_v1_\w{8}\.mp4"', text)


def test_review_of_an_empty_ledger_and_of_an_unknown_glob(ws):
    assert "no ledger here" in ws.cli("review").output
    assert ws.cli("scan").exit_code == 0
    text = page_text(ws)
    assert "No takes in this ledger yet" in text
    missing = ws.cli("review", "--storyboard", "nothing*")
    assert missing.exit_code == 2 and "no storyboard in this ledger matches 'nothing*'" in missing.output


def test_open_hands_the_page_to_the_default_browser(ws, work_env):
    generate(ws, work_env)
    opener = f"{sys.executable} -c \"import sys; open('opened.txt', 'w').write(sys.argv[1])\" %s"
    process = spawn(ws.root, {**work_env, "BROWSER": opener}, "review", "--open")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert (ws.root / "opened.txt").read_text() == (ws.root / "output/review.html").as_uri()
    assert out.strip() == "output/review.html"
