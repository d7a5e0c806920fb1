"""The CLI in Chinese when the locale says so (or LEDGER_LANG=zh), English otherwise; the API's own
words are never translated."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import segments, spawn
from tests.integration.test_failures import REJECT


def _run(ws, env):
    proc = spawn(ws.root, env, "run", "--no-progress")
    return (proc.communicate(timeout=60), proc.returncode)


def test_a_run_speaks_chinese_under_a_chinese_locale(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("fine", f"bad {REJECT}"))
    ws.storyboard("storyboard_broken.json", {"segments": [{"segment_index": 1}]})
    (out, err), code = _run(ws, {**work_env, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LEDGER_LANG": ""})
    assert code == 1, (out, err)
    assert "已扫描 input 中的 2 个分镜文件" in out and "用时" in out and "已保存 1 个" in out, out
    assert "无效：" in err and "错误：" in err, err
    assert "失败：" in out and "内容审核未通过" in out  # the API's words stay as the API wrote them
    assert "Finished in" not in out and "error:" not in err


def test_english_unless_asked(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("fine"))
    (out, err), code = _run(ws, {**work_env, "LANG": "en_US.UTF-8", "LC_ALL": "", "LEDGER_LANG": ""})
    assert code == 0 and "Finished in" in out and "Scanned 1 storyboard file in input" in out, out
    (out, err), code = _run(ws, {**work_env, "LANG": "en_US.UTF-8", "LC_ALL": "", "LEDGER_LANG": "zh"})
    assert code == 0 and "没有需要处理的任务" in out, out


def test_ledger_lang_in_the_projects_env_file_is_heard(ws, sim, work_env):
    ws.storyboard("storyboard_a.json", segments("fine"))
    (ws.root / ".env").write_text("LEDGER_LANG=zh\n", encoding="utf-8")
    machine = {k: v for k, v in os.environ.items() if k != "LEDGER_LANG"}  # not set in the environment
    result = subprocess.run([sys.executable, "-m", "ledger", "run", "--no-progress"], cwd=ws.root, text=True,
                            env={**machine, **work_env, "LANG": "en_US.UTF-8", "LC_ALL": ""}, capture_output=True,
                            timeout=60)
    assert result.returncode == 0 and "已扫描" in result.stdout, result.stdout + result.stderr


def test_first_contact_errors_in_chinese(ws, sim, work_env):
    """The errors a newcomer meets first: a cap in the wrong currency, an unwritable output folder."""
    ws.storyboard("storyboard_a.json", segments("never paid for"))
    zh = {**work_env, "LEDGER_LANG": "zh"}
    proc = spawn(ws.root, zh, "run", "--no-progress", "--max-spend", "¥5")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "错误：" in err and "--max-spend ¥5.00：本次运行没有任务以 CNY 计价" in err, err
    (ws.root / "afile").write_text("x")
    proc = spawn(ws.root, {**zh, "OUTPUT_DIR": "afile/out"}, "work", "--no-progress")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "视频无法保存到" in err and "未提交任何任务" in err, err
    assert sim.stats()["creates_received"] == 0
