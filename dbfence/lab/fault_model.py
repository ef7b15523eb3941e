"""What a fault of the matrix is: a :class:`Fault` row, the :class:`FaultContext` its injector
gets, and the :data:`Heal` it returns.

Every fault family (``faults_process``, ``faults_database``, ``faults_dcs``, ``partition``) and the
registry (:mod:`dbfence.lab.faults`) import these types from here, and this module imports none of
them: the families never import the registry, so no import circle can form through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from dbfence.lab.workload import DiscoveryWriter

Heal = Callable[[], None]


@dataclass
class FaultContext:
    lab: LabCluster
    tuning: AgentTuning
    writer: DiscoveryWriter
    primary: str  # the primary when the fault was injected
    table: str
    notes: list[str] = field(default_factory=list)  # figures the fault measured, for the report
    problems: list[str] = field(default_factory=list)  # what the fault's own checks found wrong

    def others(self) -> list[str]:
        return [a.name for a in self.lab.agents if a.name != self.primary]

    def wait_for_more_writes(self, count: int, *, what: str) -> None:
        """Until ``count`` more writes are acknowledged than now (a lag to build up, say)."""
        marker = len(self.writer.acknowledged)
        wait_until(lambda: len(self.writer.acknowledged) >= marker + count, timeout=30, what=what)


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    inject: Callable[[FaultContext], Heal]
    # Hold until another node admits (at most ``hold`` seconds), or for exactly ``hold`` seconds.
    until_failover: bool
    hold: Callable[[AgentTuning], float]
    dcs: frozenset[str] = frozenset({"etcd", "consul"})
    etcd_members: int = 1  # needs at least this many etcd members
    tmpfs: bool = False  # needs the primary's data directory on a small tmpfs of its own
    # From this many seconds after injection until heal, no write may be acknowledged.
    quiet_after: Callable[[AgentTuning], float | None] = lambda tuning: None
    rto_goal: Callable[[AgentTuning], float | None] = lambda tuning: None
    netns: bool = False  # needs a lab in network namespaces (the partition faults)
    # The primary must keep its role through the fault (no failover), and the writers already
    # connected must keep getting acknowledgements while it lasts.
    keeps_primary: bool = False
    failsafe: bool = False  # needs agents with [failover] failsafe = true (docs/failsafe.md)
    long: bool = False  # too long for `make test`: benchmarks/faults.py only
    # The struck node can renew no lease from injection to heal (cut off from the DCS, no DCS
    # quorum, its agent stopped or dead): from one TTL on, its gate may admit only on promises.
    leaseless: bool = False


def exited(alive: Callable[[], bool]) -> Callable[[], bool]:
    """A wait condition: the process whose liveness ``alive`` reports has gone."""
    return lambda: not alive()
