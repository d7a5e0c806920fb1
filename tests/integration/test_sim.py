"""The simulator as users and tests meet it: protocol, timing, files, faults and the ``ledger sim`` command."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict

import pytest
import requests

from ledger.client import SoraClient
from ledger.errors import AuthError, BadParameters, RateLimited, TransientError
from ledger.sim import GENERATION_FAILED_MESSAGE, SimServer

MakeSim = Callable[..., SimServer]
MakeClient = Callable[..., SoraClient]


def test_progress_rises_with_time_until_the_video_is_ready(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim(gen_seconds=1.0)
    client = make_client(sim.base_url)
    task = client.create({"prompt": "A slow dolly shot."})
    first = client.get(task.task_id)
    assert (first.status, first.progress, first.video_url, first.completed_at) == ("pending", 0, None, None)

    time.sleep(0.35)
    middle = client.get(task.task_id)
    time.sleep(0.3)
    later = client.get(task.task_id)
    assert middle.status == later.status == "processing"
    assert 0 < middle.progress < later.progress < 100

    time.sleep(0.45)
    done = client.get(task.task_id)
    assert (done.status, done.progress) == ("completed", 100)
    assert done.video_url and done.completed_at and done.created_at
    assert done.completed_at >= done.created_at and done.raw["created_at"].endswith("+08:00")
    assert sim.stats()["polls_per_task"] == {task.task_id: 4}


def test_fail_rate_fails_tasks_with_a_chinese_message(make_sim: MakeSim, make_client: MakeClient,
                                                      wait_terminal: Callable) -> None:
    sim = make_sim(fail_rate=1.0, gen_seconds=0)
    client = make_client(sim.base_url)
    task = wait_terminal(client, client.create({"prompt": "Anything."}).task_id)
    assert task.is_failed and task.error_msg == GENERATION_FAILED_MESSAGE


def test_durations_follow_the_model(client: SoraClient) -> None:
    assert client.create({"prompt": "Pro", "is_pro": True, "duration": 25}).cost == 150
    with pytest.raises(BadParameters) as info:
        client.create({"prompt": "Normal", "is_pro": False, "duration": 25})
    assert "10, 15" in str(info.value)


def test_keys_are_checked_only_when_the_simulator_has_one(make_sim: MakeSim, make_client: MakeClient) -> None:
    open_sim = make_sim(api_key=None)
    assert make_client(open_sim.base_url, "whatever").balance() == 100_000
    assert make_client(open_sim.base_url, None).balance() == 100_000

    closed_sim = make_sim()
    with pytest.raises(AuthError):
        make_client(closed_sim.base_url, None).balance()


@pytest.mark.parametrize("shape", ["list", "object"])
def test_the_task_list_pages_newest_first_and_filters_by_status(make_sim: MakeSim, shape: str,
                                                                api_key: str) -> None:
    sim = make_sim(list_shape=shape, gen_seconds=0)
    client = SoraClient(sim.base_url, api_key)
    made = [client.create({"prompt": f"shot {i}"}).task_id for i in range(4)]
    made.append(client.create({"prompt": "shot 4 [policy-reject]"}).task_id)

    pages = [client.list(page=page, page_size=2) for page in (1, 2, 3, 4)]

    assert [[t.task_id for t in page] for page in pages] == [made[:2:-1], made[2:0:-1], made[:1], []]
    assert [t.task_id for t in client.list(status="failed")] == [made[4]]
    raw = requests.get(f"{sim.base_url}/tasks", params={"page_size": 2},
                       headers={"Authorization": f"Bearer {api_key}"}, timeout=5).json()["data"]
    assert isinstance(raw, list) if shape == "list" else (raw["total"], len(raw["tasks"])) == (5, 2)
    client.close()


def test_videos_are_served_with_lengths_and_ranges(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim(gen_seconds=0)
    client = make_client(sim.base_url)
    url = client.get(client.create({"prompt": "x"}).task_id).video_url
    assert url is not None
    whole = requests.get(url, timeout=5)
    size = len(whole.content)
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Accept-Ranges"] == "bytes" and int(whole.headers["Content-Length"]) == size
    assert hashlib.sha256(whole.content).hexdigest() == sim.stats()["video_sha256"]

    answers: Dict[str, requests.Response] = {
        wanted: requests.get(url, headers={"Range": wanted}, timeout=5)
        for wanted in ("bytes=100-199", "bytes=3000-", "bytes=-43", f"bytes={size}-")
    }
    assert answers["bytes=100-199"].status_code == 206
    assert answers["bytes=100-199"].headers["Content-Range"] == f"bytes 100-199/{size}"
    assert answers["bytes=100-199"].content == whole.content[100:200]
    assert answers["bytes=3000-"].content == whole.content[3000:]
    assert answers["bytes=-43"].content == whole.content[-43:]
    assert answers[f"bytes={size}-"].status_code == 416


def test_video_urls_are_signed(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim(gen_seconds=0)
    client = make_client(sim.base_url)
    url = client.get(client.create({"prompt": "x"}).task_id).video_url
    assert url is not None
    tampered = url.replace("expires=", "expires=9")
    assert requests.get(tampered, timeout=5).status_code == 403
    assert requests.get(url.split("?")[0], timeout=5).status_code == 403


def test_generated_videos_are_deterministic_and_of_the_asked_size(make_sim: MakeSim) -> None:
    one, two = make_sim(video_bytes=3_000_000, seed=11), make_sim(video_bytes=3_000_000, seed=11)
    assert one.stats()["video_sha256"] == two.stats()["video_sha256"]
    assert one.stats()["video_size"] == 3_000_000
    assert make_sim(video_bytes=3_000_000, seed=12).stats()["video_sha256"] != one.stats()["video_sha256"]


def test_random_faults_hit_requests_at_the_configured_rate(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim(fault_rate=1.0, seed=3)
    client = make_client(sim.base_url, get_retries=0)
    for _ in range(10):
        with pytest.raises((TransientError, RateLimited)):
            client.create({"prompt": "x"})
        client.backoff = type(client.backoff)()  # a 429 would pause this loop; that is tested elsewhere
    faults = sim.stats()["faults_injected"]
    assert sum(faults.values()) == 10 and set(faults) <= {"http_502_html", "envelope_500", "drop",
                                                         "rate_limit", "lost_create"}
    assert sim.stats()["tasks_created"] == faults.get("lost_create", 0)


def test_faults_can_be_queued_and_counters_read_over_http(sim: SimServer, api_key: str) -> None:
    admin = requests.post(f"{sim.origin}/_sim/faults", json={"route": "balance", "kind": "rate_limit",
                                                            "retry_after": 7}, timeout=5)
    assert admin.json() == {"ok": True}
    bad = requests.post(f"{sim.origin}/_sim/faults", json={"route": "balance", "kind": "truncate"}, timeout=5)
    assert bad.status_code == 400 and "file route" in bad.json()["error"]

    answer = requests.get(f"{sim.base_url}/balance", headers={"Authorization": f"Bearer {api_key}"}, timeout=5)
    assert (answer.status_code, answer.headers["Retry-After"], answer.json()["code"]) == (429, "7", 429)
    stats = requests.get(f"{sim.origin}/_sim/stats", timeout=5).json()
    assert stats["requests_by_route"] == {"balance": 1} and stats["faults_injected"] == {"rate_limit": 1}


def test_stop_closes_the_port_and_open_connections(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim()
    client = make_client(sim.base_url, get_retries=0)
    assert client.balance() == 100_000  # leaves a keep-alive connection open
    sim.stop()
    with pytest.raises(TransientError):
        client.balance()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_the_sim_command_prints_its_url_serves_and_stops_cleanly(stop_signal: int, api_key: str) -> None:
    command = [sys.executable, "-c", "from ledger.sim.command import sim; sim()",
               "--port", "0", "--balance", "1234", "--gen-seconds", "0", "--api-key", api_key]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        assert process.stdout is not None
        try:
            banner = process.stdout.readline()
            assert banner.startswith("Sora simulator listening on http://127.0.0.1:")
            base_url = banner.split()[-1]
            with SoraClient(base_url, api_key) as client:
                assert client.balance() == 1234
            process.send_signal(stop_signal)
            process.wait(timeout=10)
            out = banner + process.stdout.read()  # the same reader: readline() may have buffered more
        finally:
            process.kill()
    assert process.returncode == 0, out
    assert f"SORA_BASE_URL={base_url}" in out and api_key not in out
    assert out.rstrip().endswith("Sora simulator stopped.")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.4, 0.7, 1.0])
def test_the_sim_command_stops_cleanly_on_ctrl_c_at_any_moment_of_its_start(delay: float) -> None:
    """Ctrl+C while Python loads ledger's modules, while options are parsed or the port is bound:
    one word or the usual goodbye, never a traceback or click's "Aborted!", and no process left."""
    process = subprocess.Popen([sys.executable, "-m", "ledger", "sim", "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    # -SIGINT: the signal came before any of ledger's code ran — while the interpreter started, or
    # while runpy looked up the `ledger` package — where only Python's own handler exists (it may
    # print a traceback of runpy's frames, none of ours).
    assert process.returncode in (0, 130, -signal.SIGINT), (process.returncode, out, err)
    assert "Aborted" not in err + out, err
    if process.returncode == -signal.SIGINT:
        assert "/ledger/" not in err, err
    else:
        assert "Traceback" not in err, err
    if process.returncode == 130:
        assert err.strip() == "interrupted"
    if process.returncode == 0:
        assert out.rstrip().endswith("Sora simulator stopped.")


def test_the_sim_command_speaks_the_videos_protocol_when_asked(api_key: str) -> None:
    command = [sys.executable, "-c", "from ledger.sim.command import sim; sim()", "--port", "0", "--gen-seconds", "0",
               "--api-key", api_key, "--protocol", "openai"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        assert process.stdout is not None
        try:
            base_url = process.stdout.readline().split()[-1]
            hint = process.stdout.readline()
            from ledger.providers.openai_videos import OpenAIVideos

            with OpenAIVideos(base_url, api_key) as client:
                assert client.preflight() is None  # an authenticated list call, no balance to tell
                task = client.create({"model": "sora-2", "prompt": "x", "duration": 4, "size": "720x1280"})
                assert task.task_id.startswith("video_") and task.cost is None
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
        finally:
            process.kill()
    assert f"PROVIDER=openai, OPENAI_BASE_URL={base_url}" in hint
