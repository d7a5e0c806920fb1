"""Adversarial (issue 22): a create that goes out after ``clear_to_send`` only once the API can be
reached. urllib3 retries a POST whose connection was refused (never sent) with back-offs; the
worker's guard ran before the first attempt, and nothing checks the lease again before a later
attempt. A worker frozen while its POST is being retried loses the job to another worker, which
waits the create's timeout and the grace from the guard's time, finds no task and sends the create
itself; the frozen one, resumed once the API is reachable again, sends it too: paid twice."""
from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from tests.helpers import segments, spawn
from tests.integration.test_team import wait_or_tell
from tests.integration.test_team_frozen import LEDGERS, freeze, ledger  # noqa: F401  (fixture)


class Relay:
    """A TCP relay to ``target`` on a fixed local port that can be taken down (connections refused,
    open ones cut) and brought up again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.conns = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self.listener = self.listener, None
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a bare close would leave it listening)
        listener.close()
        with self.lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.conns.clear()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.parametrize("ledger", LEDGERS, indirect=True)
def test_a_create_retried_after_a_refused_connection_is_not_sent_after_a_takeover(ws, sim, work_env, ledger):
    """A reaches the API through a proxy (a relay). Its first create meets a 429 (Retry-After 3 s); the relay
    is taken down meanwhile. After the pause A clears the job to send (its lease is extended) and
    POSTs: connection refused, which urllib3 retries with back-offs (the body never left). A is
    frozen there. B (straight to the API) takes the job over when A's lease lapses, waits the
    create's timeout and the grace, finds no task and sends it. The relay comes back, A is resumed:
    its next connection attempt succeeds and the POST goes out. One create per job is the contract."""
    port = int(sim.base_url.split(":")[2].split("/")[0])
    relay = Relay(port)
    relay.up()
    sim.inject("create", "rate_limit", retry_after=3)
    base = {**work_env, **ledger.env(), "MAX_CONCURRENT_TASKS": "1", "LEASE_SECONDS": "2", "CONNECT_TIMEOUT": "2",
            "READ_TIMEOUT": "3"}
    # A's calls go through an HTTP proxy (the relay; the simulator answers proxied requests), so A and
    # B name one API base URL and B may take A's jobs up.
    env_a = {**base, "HTTP_PROXY": f"http://127.0.0.1:{relay.port}", "NO_PROXY": ""}
    ws.storyboard("storyboard_r.json", segments("retried shot"))
    assert ws.cli("scan", env=base).exit_code == 0
    a = spawn(ws.root, env_a, "work", "--no-progress")
    wait_or_tell(lambda: sim.stats()["faults_injected"].get("rate_limit") == 1, [a], "A's first create refused (429)")
    relay.down()
    first = ledger.rows("SELECT submitting_at FROM jobs")[0][0]
    wait_or_tell(lambda: ledger.rows("SELECT submitting_at FROM jobs")[0][0] != first, [a],
                 "A clearing its create to send after the pause", timeout=15)
    freeze(a, ledger)
    try:
        assert sim.stats()["creates_received"] == 1, ("A's POST reached the API before the freeze: nothing tested", sim.stats())
        b = spawn(ws.root, base, "work", "--no-progress")
        b_out, b_err = b.communicate(timeout=60)
        assert b.returncode == 0, b_err[-2000:]
        assert ledger.rows("SELECT state, count(*) FROM jobs GROUP BY state") == [("done", 1)], (b_out[-2000:], b_err[-3000:])
        relay.up()
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=60)
    stats = sim.stats()
    assert stats["creates_per_prompt"] == {"retried shot": 1}, (stats, a_err[-2000:])
    assert stats["tasks_created"] == 1
