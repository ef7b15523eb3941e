"""The gate: a fencing TCP proxy in front of the local mysqld (see gate.py for the agent's API)."""

from dbfence.breaker.config import DEFAULT_GATE_PORT, GateConfig, GateConfigError
from dbfence.breaker.gate import Gate, GateError
from dbfence.breaker.state import Admitting, Blocking, GateState, IllegalTransition
from dbfence.breaker.stats import ConnectionInfo, DrainResult, GateStats, WorkerStats

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
