"""The gate: a fencing TCP proxy in front of the local mysqld (see gate.py for the agent's API)."""

from dbfence.breaker.config import DEFAULT_GATE_PORT, GateConfig, GateConfigError
from dbfence.breaker.gate import ConnectionInfo, DrainResult, Gate, GateError, GateStats, WorkerStats
from dbfence.breaker.state import Admitting, Blocking, GateState, IllegalTransition

__all__ = [
    "DEFAULT_GATE_PORT",
    "Admitting",
    "Blocking",
    "ConnectionInfo",
    "DrainResult",
    "Gate",
    "GateConfig",
    "GateConfigError",
    "GateError",
    "GateState",
    "GateStats",
    "IllegalTransition",
    "WorkerStats",
]
