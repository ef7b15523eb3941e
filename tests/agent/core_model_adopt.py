"""The model of :mod:`core_model` with a cluster that runs before its agents: adoption (issue 17).

At the start n1's mysqld is a running primary (writable, no source, lossless semi-sync on) that a
client writes to directly, and n2 and n3 replicate from it; no agent runs anywhere and the DCS has
no history. The agents start in any order (the base model's ``agent-restart`` events, which cost
no fault budget), and every fault of the base model may strike meanwhile.

Extra events: ``direct-write n1``, a write by the client connected straight to n1's mysqld, possible
while n1 is writable and the client has not moved to the gate. The client moves to the gate when
n1's agent first serves as ``PRIMARY`` (an operator would move it then; what happens if the agent
dies before they do is documented in docs/install.md, not modelled).

Extra invariants, checked in every state:

* **never two writers**: the gates that admit, plus n1 while the direct client is attached and
  its mysqld is writable, are at most one node;
* **no acknowledged write lost**: a client write (direct or through a gate) is acknowledged when
  another node receives it while the commit still waits for that (lossless semi-sync, AFTER_SYNC:
  its mysqld has not crashed since; a crash fails the commit, whatever crash recovery ships later).
  Acknowledged writes form one history: one acknowledged on a fork of it means an acknowledged
  write was lost, and a gate admits only on a node that holds every acknowledged write.
  Out of scope: a write that only a replica *without a running agent* acknowledged. No record shows
  what that replica holds, so another replica may win without it (this checker found it: n2's
  agent waits, n1's agent starts, n1 takes a direct write that only agent-less n3 receives, n1's
  mysqld crashes, its agent starts as a replica, n2 takes over). The same holds for any replica
  whose agent crashed, in a managed cluster too; docs/install.md says to start every agent
  promptly, the primary's last.

The liveness check of the base model applies unchanged: once faults stop, every agent runs
(``faults_stop`` starts the missing ones) and the cluster must reach one admitting primary that
every other node follows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dbfence.agent.actions import Action, SetReadOnly
from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, Db, Dcs, Model, ModelViolationError, Node, World, is_prefix, replace

#: The node that runs as a primary before any agent, and its direct client.
UNMANAGED = "n1"


@dataclass(frozen=True, slots=True)
class AdoptionWorld(World):
    # The node the direct client writes to (None: it moved to the gate).
    direct_writer: str | None = None
    # The longest history acknowledged to clients so far.
    acked: tuple[str, ...] = ()
    # Client writes whose commit waits for a replica: (node, index in its history).
    pending: tuple[tuple[str, int], ...] = ()


class AdoptionModel(Model):
    """The base model plus the unmanaged primary, its direct client and the extra invariants."""

    def initial_unmanaged(self, history: tuple[str, ...] = (UNMANAGED,)) -> AdoptionWorld:
        primary = Node(db=Db(history=history, read_only=False, semi_sync=self.lossless))
        replica = Node(db=Db(history=history, source=UNMANAGED, receiving=True))
        nodes = tuple(primary if name == UNMANAGED else replica for name in NAMES)
        assert all(node.agent is None for node in nodes)
        return AdoptionWorld(0, nodes, Dcs(), self.limits.faults, self.limits.writes,
                             direct_writer=UNMANAGED, acked=history)

    def start_agents(self, world: World, *names: str) -> World:
        return self.drive(world, [f"agent-restart {name}" for name in names])

    # ------------------------------------------------------------------ events

    def successors(self, world: World) -> Iterator[tuple[str, World]]:
        trace = self._trace
        for label, after in super().successors(world):
            self._trace = (*trace, label)
            yield label, self.track_acknowledged(self._note_client_write(label, after))
            self._trace = trace

    @staticmethod
    def _note_client_write(label: str, world: World) -> World:
        """A client write (direct or through a gate) now waits for a replica to receive it."""
        assert isinstance(world, AdoptionWorld)
        event, _, name = label.partition(" ")
        if event not in ("write", "direct-write"):
            return world
        written = (name, len(world.nodes[NAMES.index(name)].db.history) - 1)
        return replace(world, pending=(*world.pending, written))

    def _successors(self, world: World) -> Iterator[tuple[str, World]]:
        yield from super()._successors(world)
        assert isinstance(world, AdoptionWorld)
        name = world.direct_writer
        if name is None or not world.writes_left:
            return
        index = NAMES.index(name)
        node = world.nodes[index]
        if node.db.alive and not node.db.read_only:
            db = replace(node.db, history=(*node.db.history, name))
            yield f"direct-write {name}", self._set_node(
                replace(world, writes_left=world.writes_left - 1), index, replace(node, db=db))

    def _execute(self, world: World, index: int) -> World:
        world = super()._execute(world, index)
        assert isinstance(world, AdoptionWorld)
        agent = world.nodes[index].agent
        if (world.direct_writer == NAMES[index] and agent is not None
                and agent.state.role is Role.PRIMARY):
            world = replace(world, direct_writer=None)  # the client moves to the gate
        return world

    direct_cuts = 0  # SetReadOnly(True) on n1 while its direct client was attached

    def _apply(self, world: World, index: int, action: Action) -> World:
        assert isinstance(world, AdoptionWorld)
        db = world.nodes[index].db
        if (isinstance(action, SetReadOnly) and action.read_only and world.direct_writer == NAMES[index]
                and db.alive and not db.read_only):
            self.direct_cuts += 1  # read_only = ON kills the direct client's session
        return super()._apply(world, index, action)

    def settle(self, world: World, rounds: int = 40) -> World:
        return self.track_acknowledged(super().settle(world, rounds))

    # ------------------------------------------------------------------ invariants

    def track_acknowledged(self, world: World) -> World:
        """A waiting client write that another node received is acknowledged; one whose mysqld
        crashed failed (the client got an error)."""
        assert isinstance(world, AdoptionWorld)
        if not world.pending:
            return world
        acked, pending = world.acked, []
        for name, position in world.pending:
            index = NAMES.index(name)
            db = world.nodes[index].db
            if not db.alive or len(db.history) <= position:
                continue
            written = db.history[:position + 1]
            holders = [other for other_index, other in enumerate(world.nodes)
                       if other_index != index and is_prefix(written, other.db.history)]
            if not holders:
                pending.append((name, position))
                continue
            if all(other.agent is None for other in holders):
                continue  # acknowledged by replicas no agent speaks for: out of scope (above)
            if not is_prefix(acked, written) and not is_prefix(written, acked):
                raise ModelViolationError(
                    f"acknowledged writes lost: {acked} was acknowledged, and now {written} on another "
                    "fork", self._trace)
            if len(written) > len(acked):
                acked = written
        return replace(world, acked=acked, pending=tuple(pending))

    def check_world(self, world: World, trace: tuple[str, ...]) -> None:
        super().check_world(world, trace)
        assert isinstance(world, AdoptionWorld)
        now = float(world.now)
        writers = {NAMES[i] for i, node in enumerate(world.nodes) if node.gate.admits(now)}
        for name in writers:
            history = world.nodes[NAMES.index(name)].db.history
            if not is_prefix(world.acked, history):
                raise ModelViolationError(
                    f"{name} admits at t={now} without acknowledged writes: {history} lacks "
                    f"{world.acked}", trace)
        if world.direct_writer is not None:
            db = world.nodes[NAMES.index(world.direct_writer)].db
            if db.alive and not db.read_only:
                writers.add(world.direct_writer)
        if len(writers) > 1:
            raise ModelViolationError(
                f"two writers at t={now}: {sorted(writers)} (direct client on {world.direct_writer})", trace)


__all__ = ["UNMANAGED", "AdoptionModel", "AdoptionWorld"]
