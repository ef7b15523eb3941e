"""CANDIDATE and PROMOTING: from a won race to an admitting primary, one observable step a round.

Before anything is written the winner waits for its rivals to see its lease and steps down if
one holds more data than it (``_overtaken``); then relay log, stop replication, writable, fencing
token, and only then PRIMARY.
"""

from __future__ import annotations

from dataclasses import replace

from dbfence.agent import core_adoption
from dbfence.agent.actions import (
    AcquireLock,
    ActionReason,
    Promote,
    RecordFailover,
    ReleaseLock,
    SetReadOnly,
    WaitRelayLog,
    WriteFencingToken,
)
from dbfence.agent.decide_ack_holders import Holding, holds_past_own_write, local_holding, round_concerns
from dbfence.agent.decide_lease import (
    fence_now,
    keep_gate_closed,
    lease_trouble,
    release_unwanted_lease,
    renew_if_due,
)
from dbfence.agent.decide_primary import serve
from dbfence.agent.decide_race import collect_race_refusals, ranked_names, rivals_of
from dbfence.agent.decide_round import RefusalReason, Round, fresh
from dbfence.agent.decide_takeover import takeover_refusals
from dbfence.agent.gtid import GtidPosition
from dbfence.agent.state import Trigger


def handle_candidate(r: Round) -> None:
    obs = r.obs
    keep_gate_closed(r)
    lease = obs.lease
    if lease.held:
        if obs.intents.paused:
            # Frozen: keep what we won, promote nothing until resumed.
            r.refuse(RefusalReason.PAUSED)
            renew_if_due(r)
        elif lease.valid_at(r.now) and lease_trouble(r) is None:
            r.move(Trigger.LEASE_ACQUIRED)
            r.state = replace(r.state, awaited_rivals=rivals_to_await(r))
            handle_promoting(r)
        else:
            r.move(Trigger.NO_LONGER_ELIGIBLE)
            release_unwanted_lease(r)
        return
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
    elif not obs.lock.reachable:
        r.refuse(RefusalReason.DCS_UNREACHABLE)
        r.move(Trigger.NO_LONGER_ELIGIBLE)
    elif obs.lock.holder is not None:
        r.move(Trigger.RACE_LOST)
    else:
        collect_race_refusals(r)
        if r.refusals and not takeover_refusals(r):
            r.refusals.clear()  # a takeover without a primary (decide_takeover) still holds
        if r.refusals:
            r.move(Trigger.NO_LONGER_ELIGIBLE)
        else:
            r.emit(AcquireLock(ActionReason.LOCK_FREE_AND_ELIGIBLE))


def rivals_to_await(r: Round) -> frozenset[str]:
    """Lossless: the rivals with fresh records when we won, whom ``_awaiting_peers`` waits for
    even once their records are gone."""
    if not r.config.lossless:
        return frozenset()
    return frozenset(rival.record.name for rival in rivals_of(r) if fresh(r, rival.record))


def handle_promoting(r: Round) -> None:
    obs = r.obs
    trouble = lease_trouble(r)
    if trouble is not None:
        fence_now(r, trouble)
    elif not obs.db.health.healthy and not obs.intents.paused:
        fence_now(r, Trigger.DB_UNHEALTHY)
    else:
        keep_gate_closed(r)
        renew_if_due(r)
        if obs.intents.paused:
            r.refuse(RefusalReason.PAUSED)
        elif not obs.lock.reachable and not _written_anything(r):
            # No member records this round: nothing shows what the rivals hold now (a rival's
            # record may lag what it received, as the race's own did). Promoting blind lost a
            # write another node held (the model checker's check_keeps_acknowledged).
            r.refuse(RefusalReason.DCS_UNREACHABLE, "no promotion step without the members' records")
        elif not _overtaken(r) and not _awaiting_peers(r):
            _promotion_step(r)


def _overtaken(r: Round) -> bool:
    """Step down when a rival holds strictly more data, until our token is in.

    Records can lag (a peer publishes after we raced; after a restart of every agent, their
    records come back one by one): until the token is written, handing the lock back keeps
    the lossless promise. The gate never admitted (PROMOTING), so a token write still waiting
    for a semi-sync ack — which the rival, holding writes we lack, will never give — is only
    an unacknowledged transaction of our own; we rejoin without it (errant: fenced, repaired).
    Ties (applied position, priority, name) never cause a step-down: the data is the same; but a
    tie of our token (written by Promote, unacknowledged) with a write the rival received at the
    same sequence number is no tie: it holds what we lack (the model checker found a winner
    promoting past it once the rival's mysqld came back). Nor do we stay ahead of a member the
    race does not rank that received writes we lack (it may have acknowledged them;
    decide_ack_holders): we leave the lock to its takeover.
    """
    obs = r.obs
    holds = obs.db.holds
    token = obs.lease.token
    if obs.db.fencing_token == token or holds is None:
        return False
    rivals = rivals_of(r)
    me = local_holding(r)
    ahead = [rival.record.name for rival in rivals if (
        rival.holds.rank_key() > holds.rank_key()
        # Our own token at the sequence number of a write it received ties by rank.
        or (r.config.lossless and holds_past_own_write(Holding.of(rival.record.info, ()), me)))
        and not _own_writes_read_later(r, rival.holds)]
    # A member the race does not rank (FENCED: a winner whose mysqld died while it promoted, now
    # back) that received writes we lack: it may have acknowledged them (decide_ack_holders).
    received = [concern for concern in round_concerns(r, ranked_names(rivals)) if concern.unknown is None]
    if not ahead and not received:
        return False
    if ahead:
        r.refuse(RefusalReason.PEER_MORE_ADVANCED, ", ".join(ahead))
    for concern in received:
        r.refuse(concern.reason, concern.detail())
    r.move(Trigger.OVERTAKEN)
    if token is not None and obs.fence_complete:
        r.emit(ReleaseLock(token, ActionReason.OVERTAKEN))
    return True


def _own_writes_read_later(r: Round, theirs: GtidPosition) -> bool:
    """A running primary being adopted (core_adoption) is not behind a replica that only shows
    more of its own writes: its clients wrote them after its facts were read."""
    obs = r.obs
    holds, server_id = obs.db.holds, obs.db.server_id
    return (core_adoption.running_primary(obs) and holds is not None and server_id is not None
            and not core_adoption.holds_what_it_lacks(theirs, holds, server_id))


def _written_anything(r: Round) -> bool:
    """Past the promotion's point of no return: mysqld writable, or our fencing token written."""
    db = r.obs.db
    return db.read_only is not True or db.fencing_token == r.obs.lease.token


def _awaiting_peers(r: Round) -> bool:
    """Before anything is written, wait for every live rival to publish a record that saw our
    lease.

    We raced on records that can be a round old: a replica that received the old primary's
    last (acknowledged) commits may not have published them yet. A rival that sees a new
    holder has stopped receiving from the old one (lossless) and publishes what it holds, which
    ``_overtaken`` then compares. Nor is anything written while a peer of unknown position
    may hold acknowledged writes we lack (the race's ``peer_position_unknown``).

    Lossless: a rival whose record was fresh when we won is waited for even once its record is
    stale or gone (``State.awaited_rivals``), until a fresh record of it saw our lease and shows
    what it holds. Its agent cut off from the DCS (or paused, or dead), or its mysqld down, says
    nothing of what it received since its last record: the old primary's last commit,
    acknowledged by that replica alone (the model checker's check_new_primaries: the primary
    dies, the only replica holding its last write is cut off before it publishes it, its record
    expires, the winner promoted without the write). Stale records of members not fresh when we
    won are not waited for.
    """
    obs = r.obs
    token = obs.lease.token
    if _written_anything(r):
        return False
    rivals = rivals_of(r)
    waiting = [rival.record.name for rival in rivals
               if rival.record.info.seen_token != token and fresh(r, rival.record)]
    current = {record.name: record.info for record in obs.members if fresh(r, record)}
    awaited = frozenset(name for name in r.state.awaited_rivals if name not in current
                        or current[name].seen_token != token or current[name].holds is None)
    if awaited != r.state.awaited_rivals:
        r.state = replace(r.state, awaited_rivals=awaited)  # its record saw us: _overtaken compared it
    for name in sorted(awaited):
        info = current.get(name)
        if info is None:
            waiting.append(f"{name} (no fresh record since we won: it may hold acknowledged writes its "
                           "last record did not show; bring it back, or restart this agent if it left "
                           "for good)")
        elif info.holds is None:
            waiting.append(f"{name} (its position unknown since we won, its mysqld down: it may hold "
                           "acknowledged writes its last record did not show)")
    if waiting:
        r.refuse(RefusalReason.AWAITING_PEERS, ", ".join(waiting))  # PROMOTING wakes up soon anyway
    # A peer's mysqld may die after we raced (seed 401): it may hold acknowledged writes we lack,
    # so we keep the lock and write nothing until its position is known (decide_ack_holders).
    unknown = [concern for concern in round_concerns(r, ranked_names(rivals)) if concern.unknown is not None]
    for concern in unknown:
        r.refuse(concern.reason, concern.detail())
    return bool(waiting or unknown)


def _promotion_step(r: Round) -> None:
    """One observable step of the promotion; the next step waits for its effect."""
    obs = r.obs
    token = obs.lease.token
    assert token is not None  # only called with a held lease
    replication = obs.db.replication
    if replication.source is not None:
        if not replication.relay_log_applied:
            r.emit(WaitRelayLog(r.config.relay_wait_timeout, ActionReason.PROMOTION))
        else:
            r.emit(Promote(r.config.lossless, ActionReason.PROMOTION))
    elif obs.db.read_only is not False:
        # The point of no return: from here on the cooldown of this failover runs.
        r.emit(SetReadOnly(read_only=False, reason=ActionReason.PROMOTION))
        if obs.db.fencing_token != token:
            r.emit(WriteFencingToken(token, ActionReason.PROMOTION))
        r.emit(RecordFailover(ActionReason.FAILOVER_STARTED))
    elif obs.db.fencing_token != token:
        r.emit(WriteFencingToken(token, ActionReason.PROMOTION))
    else:
        r.move(Trigger.PROMOTION_COMPLETE)
        if obs.new_cluster is True:
            # A new cluster's first primary (an adopted one writes no SetReadOnly step): from now
            # on the cluster has a history, and a source without a record is a member whose agent
            # died, no longer a running primary to wait for (dbfence/agent/core_adoption.py).
            r.emit(RecordFailover(ActionReason.FIRST_PRIMARY))
        serve(r)
