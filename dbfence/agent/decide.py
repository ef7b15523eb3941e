"""The decision core: ``decide(observation, state, config) -> Decision``.

Pure, in the sans-I/O style: no sockets, no DCS or database clients, no clock, no
logging. Time arrives in the observation, effects leave as :mod:`actions`, and the
reasons for doing nothing leave as :class:`Refusal` values the CLI can show.

Policy summary (details in docs/decision-core.md):

* PRIMARY keeps admitting only while its lease is held and ``now < deadline``; when
  the lease is lost or expired, or the database turns unhealthy, or an operator asks
  for a switchover, it goes FENCING.
* FENCING fails the discovery check, blocks the gate and cuts connections (for a
  switchover: drains it first, so transactions in flight can finish), sets read-only;
  it releases the lock only when the observation shows all of that done (and, for a
  switchover, once the target has applied everything).
* A REPLICA races only when the lock is free and it is healthy, caught up, the most
  advanced reachable candidate (ties: priority, then name), not paused, past the
  cooldown, and holds no unreplicated writes of its own (a former primary).
* The winner promotes step by step (relay log, stop replication, writable, token)
  and only then admits; replicas follow the lock holder as soon as its record says
  PROMOTING (a lossless token write may wait for their ack), FENCING or PRIMARY.
* FENCED (a former primary) rejoins only through a clean errant-GTID check against
  the current primary; with ``rejoin_mode = truncate`` or ``rebuild`` it may first remove
  errant transactions that were provably never acknowledged, or be rebuilt (:mod:`rejoin`).
* Pause freezes every role change except the safety fence of a lease holder whose
  lease is lost or expired; renewals continue.

The rules live in sibling modules, one responsibility each: ``decide_round`` (the
:class:`Decision` and the round accumulator), ``decide_lease`` (renew, fence, release),
``decide_race`` (who may race), ``decide_replica``, ``decide_promotion`` (CANDIDATE,
PROMOTING), ``decide_primary``, ``decide_fence`` (STARTING, FENCING, FENCED) and
``decide_publish`` (the member record). This module dispatches on the role and publishes the
member record; it re-exports the public names.
"""

from __future__ import annotations

from dataclasses import replace

from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide_fence import handle_fenced, handle_fencing, handle_starting
from dbfence.agent.decide_primary import handle_primary
from dbfence.agent.decide_promotion import handle_candidate, handle_promoting
from dbfence.agent.decide_publish import publish_member
from dbfence.agent.decide_race import race_refusals
from dbfence.agent.decide_replica import handle_replica
from dbfence.agent.decide_round import TRANSITIONAL_ROLES, Decision, Refusal, RefusalReason, Round
from dbfence.agent.observation import Observation
from dbfence.agent.state import Role, State, Trigger

__all__ = [
    "TRANSITIONAL_ROLES",
    "Decision",
    "Refusal",
    "RefusalReason",
    "Role",
    "State",
    "Trigger",
    "decide",
    "race_refusals",
]


def decide(observation: Observation, state: State, config: CoreConfig) -> Decision:
    """Decide what this agent does next. Pure: same inputs, same decision."""
    state = _remember_members(observation, state, config)
    current = Round(observation, config, state)
    _HANDLERS[state.role](current)
    publish_member(current)
    return current.finish()


_HANDLERS = {
    Role.STARTING: handle_starting,
    Role.REPLICA: handle_replica,
    Role.CANDIDATE: handle_candidate,
    Role.PROMOTING: handle_promoting,
    Role.PRIMARY: handle_primary,
    Role.FENCING: handle_fencing,
    Role.FENCED: handle_fenced,
}


def _remember_members(observation: Observation, state: State, config: CoreConfig) -> State:
    """Who this agent process has seen, and since when it reads the DCS (the takeover waits for
    every member it has seen, and for the records of the others to come back after a start)."""
    seen = frozenset(record.name for record in observation.members) - {config.node_name}
    if not seen <= state.members_seen:
        state = replace(state, members_seen=state.members_seen | seen)
    if state.first_read_at is None and observation.lock.reachable and observation.lock.read_yet:
        state = replace(state, first_read_at=observation.now)
    return state

