"""A local simulator of the video API: ``SimServer`` for tests, ``ledger sim`` for rehearsals."""
from .server import GENERATION_FAILED_MESSAGE, POLICY_MESSAGE, POLICY_TRIGGER, SimConfig, SimServer

__all__ = ["GENERATION_FAILED_MESSAGE", "POLICY_MESSAGE", "POLICY_TRIGGER", "SimConfig", "SimServer"]
