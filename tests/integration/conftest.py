"""Fixtures for tests that drive the real client over real sockets against the simulator."""
from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest

from ledger.client import RemoteTask, SoraClient
from ledger.sim import SimConfig, SimServer
from tests.helpers import api_env

# Shaped like a real key (sora- and 32 characters) so the generic masking is exercised too.
API_KEY = "sora-Tq3v9Zk2LmN8pR4sW6yB1cD5fG7hJ0xA"
POSTGRES_SERVER = "postgresql://root@127.0.0.1:5432"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                   "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxies_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or CI's proxy variables must not reroute the tests' local traffic."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api_key() -> str:
    """The key the simulators expect and the clients send."""
    return API_KEY


@pytest.fixture
def protocol(request: pytest.FixtureRequest) -> str:
    """The protocol simulators speak: sora_hk, unless the test is parametrized over both
    (``tests.helpers.both_protocols``)."""
    return str(getattr(request, "param", "sora_hk"))


@pytest.fixture
def make_sim(protocol: str) -> Iterator[Callable[..., SimServer]]:
    """Start simulators with SimConfig fields as keywords (quick generations, the test key, the
    test's protocol)."""
    servers: List[SimServer] = []

    def make(**config: Any) -> SimServer:
        port = config.pop("port", 0)
        config.setdefault("protocol", protocol)
        config.setdefault("api_key", API_KEY)
        config.setdefault("gen_seconds", 0.2)
        config.setdefault("seed", 7)
        server = SimServer(SimConfig(**config), port=port).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sim(make_sim: Callable[..., SimServer]) -> SimServer:
    """A simulator with default settings."""
    return make_sim()


@pytest.fixture
def make_client() -> Iterator[Callable[..., SoraClient]]:
    """Build clients with tiny backoffs so retries take milliseconds; all closed afterwards."""
    clients: List[SoraClient] = []

    def make(base_url: str, api_key: Any = API_KEY, **options: Any) -> SoraClient:
        options.setdefault("backoff_factor", 0.001)
        options.setdefault("connect_timeout", 2.0)
        options.setdefault("read_timeout", 5.0)
        client = SoraClient(base_url, api_key, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(sim: SimServer, make_client: Callable[..., SoraClient]) -> SoraClient:
    """A client of ``sim`` holding the right key."""
    return make_client(sim.base_url)


@pytest.fixture
def wait_terminal() -> Callable[..., RemoteTask]:
    """Poll like the worker does until a task is completed or failed."""

    def wait(client: SoraClient, task_id: str, timeout: float = 5.0) -> RemoteTask:
        deadline = time.monotonic() + timeout
        while True:
            task = client.get(task_id)
            if task.is_terminal or time.monotonic() > deadline:
                return task
            time.sleep(0.05)

    return wait


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (the kernel just handed it out and it was released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def work_env(sim: SimServer) -> Dict[str, str]:
    """Settings for a `ledger work` against ``sim`` (in its protocol), with the waits shrunk to test size."""
    return {"SORA_BASE_URL": sim.base_url, "SORA_API_KEY": API_KEY, "GEN_COUNT_PER_SEGMENT": "1",
            "POLL_MIN_INTERVAL": "0.05", "RETRY_BASE_DELAY": "0.1", "RECONCILE_GRACE_SECONDS": "0.2", **api_env(sim)}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{POSTGRES_SERVER}/test", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES_SERVER}/{name}"
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
