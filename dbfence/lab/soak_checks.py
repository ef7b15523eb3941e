"""The soak's "whole again" check, and its record of what broke: pure functions over what the
agents said (their ``/status`` documents and which ones answer ``/primary``).

A cluster is **whole** when exactly one node admits as primary and acknowledges writes, and
every other node is either a healthy replica replicating from it, or fenced with its reason
named (a former primary with errant GTIDs stays fenced by design until it is repaired). Anything
else after a quiet period is an invariant broken: no primary, two, a primary that acknowledges
nothing, a replica that follows nobody or another node, an agent that does not answer, a node
fenced without a reason, or one stuck in a passing role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeView:
    """What one agent said about itself; ``answering`` False when its /status did not answer."""

    name: str
    answering: bool
    role: str | None = None
    fenced_reason: str | None = None
    replication_source: str | None = None
    healthy: bool | None = None
    errant: tuple[str, ...] = ()

    @classmethod
    def from_status(cls, name: str, status: Mapping[str, Any]) -> NodeView:
        if not status:
            return cls(name, answering=False)
        database = status.get("database") or {}
        return cls(name, True, status.get("role"), status.get("fenced_reason"),
                   database.get("replication_source"), database.get("healthy"),
                   tuple(database.get("errant") or ()))

    def describe(self) -> str:
        if not self.answering:
            return f"{self.name}: agent not answering"
        if self.role == "fenced":
            errant = f" {','.join(self.errant)}" if self.errant else ""
            return f"{self.name}: fenced ({self.fenced_reason}{errant})"
        if self.role == "replica":
            return f"{self.name}: replica of {self.replication_source}"
        return f"{self.name}: {self.role}"


@dataclass(frozen=True, slots=True)
class Wholeness:
    primary: str | None
    problems: tuple[str, ...]
    nodes: tuple[NodeView, ...]

    @property
    def whole(self) -> bool:
        return not self.problems

    @property
    def fenced(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes if n.role == "fenced")

    def describe(self) -> str:
        state = "whole" if self.whole else "NOT whole: " + "; ".join(self.problems)
        return f"{state} [{'; '.join(n.describe() for n in self.nodes)}]"


def wholeness(nodes: Sequence[NodeView], admitting: Sequence[str],
              writes_acknowledged: int | None = None) -> Wholeness:
    """Judge the cluster from every node's view, the nodes whose /primary answers 200 and, when
    given, how many writes were acknowledged during the quiet period: a primary that admits but
    acknowledges nothing (a lossless primary with no replica left to ack) is not whole either."""
    problems: list[str] = []
    primary = admitting[0] if len(admitting) == 1 else None
    if not admitting:
        problems.append("no node admits as primary")
    elif len(admitting) > 1:
        problems.append(f"{len(admitting)} nodes admit as primary: {', '.join(admitting)}")
    elif writes_acknowledged == 0:
        problems.append(f"{primary} admits but acknowledged no write during the quiet period")
    for node in nodes:
        if node.name in admitting:
            if node.answering and node.role != "primary":
                problems.append(f"{node.name} admits but says it is {node.role}")
            continue
        if not node.answering:
            problems.append(f"{node.name}'s agent does not answer")
        elif node.role == "fenced":
            if not node.fenced_reason:
                problems.append(f"{node.name} is fenced with no reason named")
        elif node.role != "replica":
            problems.append(f"{node.name} is still {node.role}")
        elif primary is not None and node.replication_source != primary:
            problems.append(f"{node.name} replicates from {node.replication_source}, not {primary}")
        elif node.healthy is False:
            problems.append(f"{node.name} is an unhealthy replica")
    return Wholeness(primary, tuple(problems), tuple(nodes))


@dataclass(frozen=True, slots=True)
class Breach:
    """An invariant broken: which, when (seconds into the run and wall clock), and the detail."""

    invariant: str
    at: float  # seconds since the run began
    wall: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "at_s": round(self.at, 2), "wall": round(self.wall, 3),
                "detail": self.detail}
