"""REPLICA: follow the lock holder, keep safe, race for a free lock.

A replica replicates from whoever holds the lock (once its record shows it PROMOTING, FENCING or
PRIMARY and the errant check is clean), stops taking a binlog from a source that lost the lock,
and races only when ``race_refusals`` says nothing stops it.
"""

from __future__ import annotations

from dbfence.agent import core_adoption, failsafe
from dbfence.agent.actions import AcquireLock, ActionReason, DetachSource, Repoint
from dbfence.agent.decide_lease import keep_replica_safe, release_unwanted_lease
from dbfence.agent.decide_race import collect_race_refusals
from dbfence.agent.decide_round import RefusalReason, Round, fresh, sync_discovery
from dbfence.agent.decide_takeover import takeover_refusals
from dbfence.agent.observation import DiscoveryTag
from dbfence.agent.state import Role, Trigger


def handle_replica(r: Round) -> None:
    obs = r.obs
    keep_replica_safe(r)
    detach_lost_source(r)
    release_unwanted_lease(r)
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        return
    if obs.repair.awaiting_restart:
        _await_repair(r)
        return
    primary = ready_primary(r)
    if primary is not None:
        _follow_holder(r, primary, Role.PRIMARY)
        return
    holder = unready_holder(r)
    if holder is not None:
        record = obs.member(holder)
        assert record is not None  # unready_holder checked it
        _follow_holder(r, holder, record.info.role)
        return
    sync_discovery(r, None, ActionReason.NOT_PRIMARY)
    if not obs.lock.reachable:
        r.refuse(RefusalReason.DCS_UNREACHABLE)
    elif obs.lock.holder is not None:
        r.refuse(RefusalReason.PRIMARY_NOT_READY, obs.lock.holder)
    else:
        collect_race_refusals(r)
        if r.refusals and not takeover_refusals(r):
            # Refused (its own writes nobody received) while no other member may race either, yet
            # it holds all they hold but never-acknowledged writes: nobody else would ever race.
            r.refusals.clear()
        if not r.refusals:
            r.move(Trigger.LOCK_FREE_AND_ELIGIBLE)
            r.emit(AcquireLock(ActionReason.LOCK_FREE_AND_ELIGIBLE))


def _await_repair(r: Round) -> None:
    """Our fence killed mysqld (the repair keeper says so; only [rejoin] truncate does that) and
    this agent restarted since: STARTING passed into REPLICA with mysqld down, and nothing here
    would ever start it. It holds commits no replica received (in doubt until recovery removes
    them): fenced for errant GTIDs, where the repair is asked for once a primary is ready.
    Found by the model checker (fence by crash, then the agent crashed)."""
    r.refuse(RefusalReason.ERRANT_GTIDS, "mysqld killed by the fence: its commits no replica received "
             "await the repair")
    r.move(Trigger.ERRANT_GTIDS)
    sync_discovery(r, None, ActionReason.ERRANT_GTIDS)


def _follow_holder(r: Round, holder: str, role: Role) -> None:
    """Replicate from the lock holder (``role``: what its record says): a PRIMARY, or one still
    PROMOTING or FENCING. The lock holder's binlog is the cluster's history whatever its role.

    Following a promoting holder is what lets its promotion finish: a lossless holder whose
    semi-sync was left on (a primary whose agent restarted and won again) writes its fencing
    token only once a replica acknowledges it. Following a fencing holder is what lets a
    switchover finish: it releases the lock only once the target has everything it has. It is
    safe: such a holder's gate is closed (it admits only as PRIMARY), a promoting holder steps
    down only before writing anything (and then holds a prefix of what the more advanced peer
    holds, so nothing here forks), and the repoint needs a clean errant check against it. What
    looks errant against a holder that has not applied its relay log yet may not be once it
    has, and a FENCING holder may be a promotion that failed behind us: only a PRIMARY's check
    fences.
    """
    obs = r.obs
    replication = obs.db.replication
    check = replication.errant
    following = False
    if check is None or check.against != holder:
        r.refuse(RefusalReason.ERRANT_UNCHECKED, unchecked_detail(r, holder))
    elif not check.clean and role is not Role.PRIMARY:
        errant = ",".join(check.gtids)
        r.refuse(RefusalReason.PRIMARY_NOT_READY, f"{holder} (errant against it so far: {errant})")
    elif not check.clean:
        r.refuse(RefusalReason.ERRANT_GTIDS, ",".join(check.gtids))
        r.move(Trigger.ERRANT_GTIDS)
        sync_discovery(r, None, ActionReason.ERRANT_GTIDS)
        return
    elif replication.source != holder or not replication.receiving:
        # Also restarts an IO thread stopped while its source was without the lock.
        r.emit(Repoint(holder, acknowledges(r), ActionReason.FOLLOW_PRIMARY))
    else:
        # Advertised for reads only once it provably follows a primary cleanly.
        following = role is Role.PRIMARY and obs.db.health.healthy
    sync_discovery(r, DiscoveryTag.REPLICA if following else None, ActionReason.FOLLOW_PRIMARY)


def ready_primary(r: Round) -> str | None:
    """The lock holder, when it is another node whose fresh record says PRIMARY."""
    lock = r.obs.lock
    if not lock.reachable or lock.holder is None or lock.holder == r.me:
        return None
    record = r.obs.member(lock.holder)
    if record is None or record.info.role is not Role.PRIMARY or not fresh(r, record):
        return None
    return lock.holder


#: Roles of a lock holder that replicas follow before it admits (see ``_follow_holder``).
_FOLLOWED_UNREADY_ROLES = frozenset({Role.PROMOTING, Role.FENCING})


def unchecked_detail(r: Round, holder: str) -> str:
    """The detail of an ERRANT_UNCHECKED refusal: the holder, and why it could not be checked
    when the adapter knows (soak seed 305: a fenced node cut off from the new primary's mysqld
    waited 100 s, its status saying only ``errant_unchecked: db1``)."""
    problem = r.obs.db.replication.errant_problem
    return f"{holder} ({problem})" if problem else holder


def unready_holder(r: Round) -> str | None:
    """The lock holder, when it is another node whose fresh record says PROMOTING or FENCING."""
    lock = r.obs.lock
    if not lock.reachable or lock.holder is None or lock.holder == r.me:
        return None
    record = r.obs.member(lock.holder)
    if record is None or record.info.role not in _FOLLOWED_UNREADY_ROLES or not fresh(r, record):
        return None
    return lock.holder


def detach_lost_source(r: Round) -> None:
    """Stop taking the binlog of a source that no longer holds the lock (IO thread only).

    A source that lost the lock has fenced: its gate blocked before it released the lock or
    reached its deadline, so nothing it ships afterwards was acknowledged to a client. Such
    events (e.g. commits that sat in a frozen mysqld's commit path) are missing on the new
    primary and would only make this node errant. In lossless mode every acknowledged commit
    is already in some replica's relay log, so detaching as soon as the lock is free loses
    nothing and keeps race positions still. In async mode acknowledged commits may exist only
    on the old primary, and their tail may still arrive while the lock is free: detach only
    once another node holds it. The relay log keeps being applied either way.
    """
    lock = r.obs.lock
    replication = r.obs.db.replication
    source = replication.source
    if source is None or not replication.receiving or not lock.reachable or lock.holder == source:
        return
    if core_adoption.unmanaged_source(r.obs) is not None:
        return  # a running primary no agent manages yet: it may take writes that wait for our acks
    if failsafe.keeps_source(r.obs.failsafe, source, r.now):
        return  # promised: it may still be admitting, and its commits wait for our acks
    if lock.holder is not None or r.config.lossless:
        r.emit(DetachSource(ActionReason.SOURCE_LOST_LOCK))


def acknowledges(r: Round) -> bool:
    """Whether this replica acknowledges lossless commits: only if it can become primary. A
    commit whose one copy sits on a node that never races would be lost at the next failover."""
    return r.config.lossless and r.config.priority > 0
