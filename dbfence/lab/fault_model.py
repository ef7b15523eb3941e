"""What a fault of the matrix is: a :class:`Fault` row, the :class:`FaultContext` its injector
gets, and the :data:`Heal` it returns.

Many injectors act in steps before the fault strikes: a table lock holding a replica's applier,
a replica delayed or cut off from the primary, an agent paused, etcd members killed; then a wait
for writes to build up, and only then the strike. Each such step is registered on the context
(:meth:`FaultContext.step`) with its undo, as it acts. :func:`inject` runs an injector and, when
it fails, undoes every step already taken (latest first) at once, and keeps a line saying what
they did and for how long (:meth:`FaultContext.acted`): a fault that could not be injected may
still have acted on the cluster, and the soak's record must say so. After a heal,
:meth:`FaultContext.undo_steps` undoes whatever steps that heal left (it failed half-way, say).
A step's undo runs at most once, whichever of the heal or the cleanup calls it first.

Every fault family (``faults_process``, ``faults_database``, ``faults_dcs``, ``partition``) and the
registry (:mod:`dbfence.lab.faults`) import these types from here, and this module imports none of
them: the families never import the registry, so no import circle can form through it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from dbfence.lab.workload import DiscoveryWriter

Heal = Callable[[], None]

# How long an injector waits for writes to build up before it strikes. Ten acknowledgements
# take 0.1 s (median) to 1.2 s (p99.9) with the soak's two writers on a loaded machine; a wait
# much longer than that means the cluster is not writing through the target (it is failing
# over, say), and meanwhile the steps already taken act on it (seed 301: a table lock held a
# laggard's applier for the whole 30 s the wait used to allow).
PREPARATION_WAIT = 10.0
# A preparation that waits for writes begins only while they flow: one acknowledged this recently.
WRITING_RECENTLY = 2.0


@dataclass
class Step:
    """One thing an injector did to the cluster, and its undo (idempotent: call it as a heal)."""

    # "held db2's applier (LOCK TABLES app.soak READ)": a verb phrase, past tense; empty for a
    # step that does not act on the cluster (a watcher thread), undone but never reported
    what: str
    undo: Heal
    began: float = field(default_factory=time.monotonic)
    undone: float | None = None  # when its undo returned (or failed)
    undo_error: str | None = None
    _undoing: bool = False

    def __call__(self) -> None:
        if self._undoing:
            return
        self._undoing = True
        try:
            self.undo()
        except Exception as exc:
            self.undo_error = f"{type(exc).__name__}: {exc}"[:160]
            raise
        finally:
            self.undone = time.monotonic()

    def describe(self) -> str:
        lasted = f" for {self.undone - self.began:.1f} s" if self.undone is not None else " (not undone)"
        failed = f" (its undo failed: {self.undo_error})" if self.undo_error else ""
        return f"{self.what}{lasted}{failed}"


@dataclass
class FaultContext:
    lab: LabCluster
    tuning: AgentTuning
    writer: DiscoveryWriter
    primary: str  # the primary when the fault was injected
    table: str
    notes: list[str] = field(default_factory=list)  # figures the fault measured, for the report
    problems: list[str] = field(default_factory=list)  # what the fault's own checks found wrong
    steps: list[Step] = field(default_factory=list)  # what the injector did, in order
    preparation_wait: float = PREPARATION_WAIT

    def others(self) -> list[str]:
        """The other nodes: those with agents (a lab without agents: its MariaDB servers)."""
        names = [a.name for a in self.lab.agents] or [n.name for n in self.lab.mysql]
        return [name for name in names if name != self.primary]

    def wait_for_more_writes(self, count: int, *, what: str) -> None:
        """Until ``count`` more writes are acknowledged than now (a lag to build up, say)."""
        marker = len(self.writer.acknowledged)
        wait_until(lambda: len(self.writer.acknowledged) >= marker + count, timeout=self.preparation_wait,
                   what=what)

    def wait_until_writing(self, *, before: str) -> None:
        """Until a write was acknowledged within :data:`WRITING_RECENTLY` seconds. A preparation
        that then waits for more writes checks this before it acts: in the middle of a failover
        its act would only hold the cluster (a laggard's applier locked, a replica cut off) for
        the whole wait, and fail."""
        def writing() -> bool:
            acknowledged = self.writer.acknowledged
            # the latest acknowledgement is the last one inserted (a race with the writer's
            # threads raises, which wait_until takes as "not yet")
            last = next(reversed(acknowledged.values()))[0] if acknowledged else None
            return last is not None and time.monotonic() - last <= WRITING_RECENTLY
        wait_until(writing, timeout=self.preparation_wait, what=f"writes acknowledged before {before}")

    def step(self, what: str, undo: Heal) -> Step:
        """Register something the injector has just done (or is about to do) to the cluster."""
        taken = Step(what, undo)
        self.steps.append(taken)
        return taken

    def undo_steps(self) -> None:
        """Undo every step not undone yet, latest first; one undo that fails does not stop the
        others (it is kept on its step, for :meth:`acted`)."""
        for taken in reversed(self.steps):
            with contextlib.suppress(Exception):  # kept on the step, reported by acted()
                taken()

    def acted(self) -> str | None:
        """What the steps did and for how long ("its preparation held db2's applier (...) for
        30.1 s"), or None when the injector had taken none."""
        acting = [s.describe() for s in self.steps if s.what]
        return "its preparation " + "; then ".join(acting) if acting else None


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


def inject(fault: Fault, ctx: FaultContext) -> Heal:
    """Inject ``fault``; when the injection fails, undo the steps it took before re-raising (see
    the module docstring), so that :meth:`FaultContext.acted` says what acted, and how long."""
    try:
        return fault.inject(ctx)
    except BaseException:
        ctx.undo_steps()
        raise


def not_injected(exc: BaseException, ctx: FaultContext) -> str:
    """The record of a fault that :func:`inject` could not inject: why, and what its preparation
    did meanwhile ("WaitTimeout: ...; its preparation held db2's applier (...) for 10.0 s")."""
    acted = ctx.acted()
    return f"{type(exc).__name__}: {exc}"[:200] + (f"; {acted}" if acted else "")


def exited(alive: Callable[[], bool]) -> Callable[[], bool]:
    """A wait condition: the process whose liveness ``alive`` reports has gone."""
    return lambda: not alive()
