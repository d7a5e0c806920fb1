"""What the contract tests share: simulators started for a test and stopped after it."""
from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

from ledger.sim.server import SimConfig, SimServer


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimServer]]:
    """``start_sim(protocol, key, **config)``: a started simulator (seed 7 unless given), stopped
    when the test ends."""
    servers: List[SimServer] = []

    def start(protocol: str, key: str, **config: Any) -> SimServer:
        server = SimServer(SimConfig(protocol=protocol, api_key=key, **{"seed": 7, **config})).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
