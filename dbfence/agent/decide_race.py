"""The race rules: who may take a free lock, and who a racing replica defers to.

``race_refusals`` lists everything that stops this node from racing (pause, health, cooldown,
lag, a more advanced rival, a peer the race cannot rank that may hold acknowledged writes this
node lacks (``decide_ack_holders``), unreplicated writes of its own). The rival and own-writes
rules are shared with promotion (step down when overtaken) and switchover (is the target suitable), so a
rule holds the same wherever it is judged: no acknowledged write is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbfence.agent import core_adoption, failsafe
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide_ack_holders import RIVAL_ROLES, collect_ack_holder_refusals
from dbfence.agent.decide_round import Refusal, RefusalReason, Round, fresh
from dbfence.agent.gtid import BinlogState, GtidPosition, RankKey, candidate_sort_key, maybe_acknowledged
from dbfence.agent.observation import MemberRecord, Observation
from dbfence.agent.state import Role, State


@dataclass(frozen=True, slots=True)
class Rival:
    """A peer that could take the lock instead of this node: what it holds once its relay log
    is applied, and what it has applied."""

    record: MemberRecord
    holds: GtidPosition
    applied: GtidPosition

    def sort_key(self) -> tuple[RankKey, RankKey, int, tuple[int, ...]]:
        info = self.record.info
        return candidate_sort_key(self.holds, self.applied, info.priority, info.name)


def rivals_of(r: Round) -> list[Rival]:
    """Promotable peers with a known position that a racing replica must not overtake.

    In lossless mode stale and unhealthy records count too: a paused agent, or a replica whose
    applier is stuck, may sit on the only copy of acknowledged writes (a semi-sync ack means
    "in a relay log", not "applied"); only that node can keep them. Callers let unhealthy
    peers win ties: they do not race, and waiting for them would stall for nothing.
    """
    rivals: list[Rival] = []
    for record in r.obs.members:
        info = record.info
        holds = info.holds
        if record.name == r.me or info.position is None or holds is None:
            continue
        if info.priority <= 0 or info.role not in RIVAL_ROLES:
            continue
        if not r.config.lossless and not (info.healthy and fresh(r, record)):
            continue
        if stays_out_for_own_writes(r, record):
            continue
        rivals.append(Rival(record, holds, info.position))
    return rivals


def ranked_names(rivals: list[Rival]) -> frozenset[str]:
    """The members the race ranks (the others are judged by ``decide_ack_holders``)."""
    return frozenset(rival.record.name for rival in rivals)


def ranked_by_peers(r: Round) -> frozenset[str]:
    """The members a peer's race ranks, as this node sees them: its rivals, and itself unless its
    role, priority or writes of its own nobody else has keep it out of a race."""
    db = r.obs.db
    peers = [(record.info.position, record.info.holds, record.info.history) for record in r.obs.members
             if record.name != r.me]
    me_out = (r.state.role not in RIVAL_ROLES or r.config.priority <= 0 or db.position is None
              or db.server_id is None or db.holds != db.position
              or bool(_unreplicated_own_domains(db.position, db.server_id, peers)))
    return ranked_names(rivals_of(r)) | (frozenset() if me_out else frozenset({r.me}))


def stays_out_for_own_writes(r: Round, rival: MemberRecord) -> bool:
    """Whether ``rival`` refuses to race for unreplicated writes of its own (judged as it does,
    from the other positions it sees: ours and the other records).

    What it holds beyond the rest of us is then its own writes that no other node received: in
    lossless mode never acknowledged (no replica had them), so nothing is lost without them, and
    deferring to a node that will not race would leave the cluster without a primary. It rejoins
    under the winner (or is fenced for its errant writes). A rival that received more than it
    applied may hold others' (acknowledged) writes: it still counts.
    """
    info = rival.info
    if info.server_id is None or info.position is None or info.holds != info.position:
        return False
    peers = [(r.obs.db.position, r.obs.db.holds, r.obs.db.history)] + [
        (record.info.position, record.info.holds, record.info.history) for record in r.obs.members
        if record.name not in (r.me, info.name)
    ]
    return bool(_unreplicated_own_domains(info.position, info.server_id, peers))


#: What a race compares of a peer: applied position, what it holds, its history (binlog state
#: with both; None when unknown).
PeerData = tuple[GtidPosition | None, GtidPosition | None, BinlogState | None]


def _unreplicated_own_domains(position: GtidPosition, server_id: int, peers: list[PeerData]) -> list[int]:
    """Domains whose last transaction this server wrote, no peer reached, and that do not simply
    extend every peer's stream (``_own_writes_lead``): the node must rejoin under a primary."""
    applied = [peer_position for peer_position, _, _ in peers if peer_position is not None]
    domains = set(position.own_unreplicated_domains(server_id, applied)) | _forked_own_domains(
        position, server_id, peers)
    return [domain for domain in sorted(domains)
            if not _own_writes_lead(position, server_id, domain, [holds for _, holds, _ in peers])]


def _forked_own_domains(position: GtidPosition, server_id: int, peers: list[PeerData]) -> set[int]:
    """Domains whose last transaction this server wrote while a peer holds another server's
    transaction with the same sequence number: two histories, surely forked there, whatever a
    higher sequence number elsewhere suggests (it may have passed the other branch only).

    Unless a peer's binlog state shows it holds that very transaction: then it was replicated,
    and the clash is the other peer's branch, not ours (a handed-over old primary whose last
    write the target received, the third node errant at the same sequence number)."""
    forked = set()
    for gtid in position.gtids:
        if gtid.server_id != server_id:
            continue
        if any(history is not None and history.holds(gtid) for _, _, history in peers):
            continue
        for _, holds, _ in peers:
            theirs = None if holds is None else holds.get(gtid.domain_id)
            if theirs is not None and theirs.seq_no == gtid.seq_no and theirs.server_id != server_id:
                forked.add(gtid.domain_id)
    return forked


def race_refusals(observation: Observation, config: CoreConfig) -> tuple[Refusal, ...]:
    """Everything that stops this node from racing for a free lock (empty: it may race)."""
    r = Round(observation, config, State())
    collect_race_refusals(r)
    return tuple(r.refusals)


def collect_race_refusals(r: Round, *, fenced_holders: bool = True) -> None:
    """``fenced_holders``: also refuse for a FENCED member's writes this node lacks (the takeover
    without a primary proves that itself, against every member)."""
    obs, config = r.obs, r.config
    db = obs.db
    intents = obs.intents
    if intents.paused:
        r.refuse(RefusalReason.PAUSED)
    unmanaged = core_adoption.unmanaged_source(obs)
    if unmanaged is not None:
        r.refuse(RefusalReason.SOURCE_UNMANAGED, core_adoption.unmanaged_source_detail(obs, unmanaged))
    blocked = failsafe.race_blocked(obs.failsafe, r.me, r.now)
    if blocked is not None:
        r.refuse(RefusalReason(blocked[0]), blocked[1])
        given = obs.failsafe.given
        if given is not None and obs.failsafe.promise_live(r.now):
            r.wake_at(given.until)
    if not db.health.healthy:
        r.refuse(RefusalReason.DB_UNHEALTHY, ", ".join(db.health.reasons))
    if config.priority <= 0:
        r.refuse(RefusalReason.NOT_PROMOTABLE)
    target = intents.switchover_target
    operator_override = intents.skip_cooldown or target == r.me
    if obs.last_failover_at is not None and not operator_override:
        cooldown_end = obs.last_failover_at + config.cooldown
        if r.now < cooldown_end:
            r.refuse(RefusalReason.COOLDOWN, f"until {cooldown_end:g}")
            r.wake_at(cooldown_end)
    if target is not None and target != r.me and _switchover_target_can_race(r, target):
        r.refuse(RefusalReason.SWITCHOVER_TO_OTHER, target)
    position, holds = db.position, db.holds
    if position is None or holds is None or db.server_id is None:
        _refuse_if_lagging(r)
        r.refuse(RefusalReason.POSITION_UNKNOWN)
        return
    rivals = rivals_of(r)
    if not (config.lossless and all(rival.holds.rank_key() < holds.rank_key() for rival in rivals)):
        # Lossless and holding more than any rival: this node is the only one that can keep
        # what it received, so it races and applies its relay log while promoting.
        _refuse_if_lagging(r)
    mine = candidate_sort_key(holds, position, config.priority, r.me)
    for rival in rivals:
        if rival.holds.rank_key() > holds.rank_key():
            ahead = True  # it holds more: whatever its health or priority, only it can keep that
        elif not rival.record.info.healthy or target == r.me:
            ahead = False  # an unhealthy peer does not race; the switchover target yields only to data
        else:
            ahead = rival.sort_key() > mine
        if ahead:
            r.refuse(RefusalReason.PEER_MORE_ADVANCED, f"{rival.record.name} holds {rival.holds}")
    for detail in fenced_writes_lacking(r, r.me, db.history) if fenced_holders else ():
        r.refuse(RefusalReason.PEER_MORE_ADVANCED, detail)
    collect_ack_holder_refusals(r, ranked_names(rivals))
    peers = [(record.info.position, record.info.holds, record.info.history) for record in obs.members
             if record.name != r.me]
    unreplicated = _unreplicated_own_domains(position, db.server_id, peers)
    if unreplicated:
        r.refuse(RefusalReason.UNREPLICATED_OWN_WRITES,
                 "domains " + ",".join(str(domain) for domain in unreplicated))


def fenced_writes_lacking(r: Round, subject: str, history: BinlogState | None) -> list[str]:
    """Lossless: FENCED members holding writes that ``subject`` (holding ``history``) lacks and
    that may have been acknowledged (``gtid.maybe_acknowledged``), one detail each.

    A fenced former primary's writes are on a replica when acknowledged, so rivals used to leave
    FENCED members out. A node fenced while promoting is another matter: as a replica it received
    the previous primary's acknowledged writes, and it may be the only live copy besides that
    primary, fenced too (soak seed 403: both killed by their fences; a third node lacking the
    writes, its agent restarted as a replica, would have raced past them once they were back).
    A member's state is its live history or, while a fence's kill keeps its mysqld down, its
    state at the kill; a member whose state is unknown (its mysqld down) counts as before.

    Overlap with ``decide_ack_holders``' second rule: a live FENCED member whose binlog state shows
    another server's writes we lack, no fork, priority > 0, gets a refusal from each. Not folded:
    this one also judges a killed member's state at the kill (the second rule skips unknown
    positions), its own writes a third node received, forked domains and priority-0 members; that
    one also judges FENCING, stale PRIMARY and stays-out members, and positions without binlog
    states. Either removed fails a model check (seed 403's liveness; seed 401's lost write).
    """
    if not r.config.lossless or history is None:
        return []
    obs = r.obs
    members = [(record.name, record.info.known_history, record.info.server_id, record.info.role)
               for record in obs.members if record.name != r.me]
    mine = obs.db.history if obs.db.history is not None else obs.repair.binlog_state_at_kill
    members.append((r.me, mine, obs.db.server_id or obs.repair.server_id_at_kill, r.state.role))
    everyone: list[tuple[str, BinlogState, int | None]] = [(subject, history, None)]
    everyone += [(name, state, server_id) for name, state, server_id, _ in members
                 if name != subject and state is not None]
    fenced = [(name, state, server_id) for name, state, server_id, role in members
              if name != subject and state is not None and server_id is not None and role is Role.FENCED]
    details = []
    for name, state, server_id in fenced:
        missing = maybe_acknowledged(history, name, state, server_id, everyone)
        if missing:
            details.append(f"{name} (fenced) holds {','.join(map(str, missing))} this node lacks, maybe "
                           "acknowledged")
    return details


def _own_writes_lead(position: GtidPosition, server_id: int, domain: int,
                     peer_holds: list[GtidPosition | None]) -> bool:
    """Whether this node's own unreplicated writes in ``domain`` only extend what every peer has.

    They do when every peer's record is known and, in that domain, has nothing or an earlier
    transaction of this very server: the peer's stream ends inside ours, so it has nothing we
    lack there. Such a node (a primary whose agent restarted with a commit no replica received:
    never acknowledged, as semi-sync had no ack for it) is the most advanced, and the others
    rightly defer to it; refusing it too would leave the cluster without a primary for good. A
    peer whose last transaction there came from another server may hold writes we lack (we
    wrote as a primary and were fenced): then we must rejoin under a primary first.
    """
    own = position.get(domain)
    assert own is not None  # one of our own unreplicated domains
    if not peer_holds:
        return False  # no record to compare with (every agent restarting): nothing shows it leads
    for holds in peer_holds:
        if holds is None:
            return False
        theirs = holds.get(domain)
        if theirs is not None and (theirs.server_id != server_id or theirs.seq_no >= own.seq_no):
            return False
    return True


def _switchover_target_can_race(r: Round, target: str) -> bool:
    """Whether a switchover target may still take the lock, so the others leave it to it.

    An intent can outlive its use: a target that became primary and fenced before it cleared
    the intent (a stall, a pause) is FENCED and never races, nor does one with writes of its own
    that nobody else has (a former primary: it must rejoin first); a target that holds less
    than this node yields to it (it never overtakes data). Deferring to either would leave the cluster
    without a primary until an operator cleared the intent.
    """
    record = r.obs.member(target)
    if record is None or not record.info.healthy or not fresh(r, record):
        return False
    theirs, mine = record.info.holds, r.obs.db.holds
    if record.info.role not in RIVAL_ROLES or theirs is None or stays_out_for_own_writes(r, record):
        return False
    return mine is None or theirs.rank_key() >= mine.rank_key()


def _refuse_if_lagging(r: Round) -> None:
    replication = r.obs.db.replication
    if not replication.relay_log_applied:
        r.refuse(RefusalReason.RELAY_LOG_NOT_APPLIED)
    lag = replication.lag_seconds
    if lag is None or lag > r.config.max_lag_seconds:
        r.refuse(RefusalReason.LAG_TOO_HIGH, "unknown" if lag is None else f"{lag:g}s")


def switchover_target_suitable(r: Round, target: str | None) -> bool:
    record = None if target is None else r.obs.member(target)
    return (
        record is not None
        and fresh(r, record)
        and record.info.healthy
        and record.info.role is Role.REPLICA
        and record.info.position is not None
        and record.info.priority > 0
        # A target with writes of its own nobody else has (it was a primary) would not race.
        and not stays_out_for_own_writes(r, record)
    )
