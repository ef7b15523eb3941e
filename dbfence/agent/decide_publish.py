"""This node's member record: published when it changed, and as a heartbeat.

Replication progress (the applied and received GTID positions) moves with every heartbeat commit
of the primary. Republishing on each move made an idle 3-node cluster write its DCS several times
a second, and each write woke every peer (issue 18). Positions matter only to a race: who may
race (``decide_race``), and the winner's ``overtaken``/``awaiting_peers`` checks until its token
is written. So in lossless mode, while a primary that finished its promotion holds the lock, a
moved position waits for the heartbeat (``publish_interval``). Asynchronous replicas publish every
move: they stop receiving at different moments when the primary dies, and a winner that raced on a
rival's heartbeat-old position lost that rival's extra data (seen in an e2e test). Whenever a race
can be on it goes out at once, like any other change: the lock is free, the holder is still a
candidate or promoting, it is fencing (a switchover waits for its target to catch up), or its
record does not (yet) show it serving with its token. A record is always published whole, so a
record published for any other reason (a new ``seen_token`` when a new holder appears, say)
carries the positions of that moment.
"""

from __future__ import annotations

from dataclasses import replace

from dbfence.agent.actions import ActionReason, AdmitGate, BlockGate, PublishMember
from dbfence.agent.decide_round import Round
from dbfence.agent.observation import MemberInfo
from dbfence.agent.state import Role


def publish_member(r: Round) -> None:
    """Publish this node's record when it changed or is due for a heartbeat."""
    obs = r.obs
    if not obs.lock.reachable:
        return
    admitting = obs.gate.admitting
    for action in r.actions:
        if isinstance(action, BlockGate):
            admitting = False
        elif isinstance(action, AdmitGate):
            admitting = True
    # A mysqld the fence killed stays down until the repair: its record says what it had at the
    # kill, so a takeover without a primary can still prove it holds everything (issue 16). A
    # mysqld down after a crash of its own, not run since, says what its binlog files hold (seed
    # 443: its crash recovery failed for good); never once mysqld answers again.
    killed = obs.repair if obs.repair.awaiting_restart else None
    at_kill, id_at_kill = (None, None) if killed is None else (killed.binlog_state_at_kill,
                                                               killed.server_id_at_kill)
    if killed is None and obs.db.binlog_state is None:
        at_kill, id_at_kill = obs.repair.binlog_state_on_disk, obs.repair.server_id_on_disk
    info = MemberInfo(
        name=r.me,
        role=r.state.role,
        healthy=obs.db.health.healthy,
        position=obs.db.position,
        gate_admitting=admitting,
        priority=r.config.priority,
        received=obs.db.received,
        seen_token=obs.lock.token if obs.lock.holder is not None else None,
        server_id=obs.db.server_id if obs.db.server_id is not None else id_at_kill,
        binlog_state=obs.db.binlog_state,
        binlog_state_at_kill=at_kill,
    )
    own = obs.member(r.me)
    # Only in lossless mode: there a racing winner waits for every rival's fresh record before it
    # writes anything (``awaiting_peers``). Asynchronous replicas stop receiving at different
    # moments and a winner racing on a replica's heartbeat-old position lost data (an e2e test:
    # the more advanced replica ended errant).
    progress_waits = r.config.lossless and primary_serves(r)
    if own is None or _changed(own.info, info, progress_waits=progress_waits):
        r.emit(PublishMember(info, ActionReason.MEMBER_CHANGED))
    elif r.now - own.last_seen >= r.config.publish_interval:
        r.emit(PublishMember(info, ActionReason.MEMBER_HEARTBEAT))
    else:
        r.wake_at(own.last_seen + r.config.publish_interval)


def primary_serves(r: Round) -> bool:
    """The lock holder finished its promotion: nobody races while it holds the lock."""
    holder, token = r.obs.lock.holder, r.obs.lock.token
    if holder is None:
        return False
    if holder == r.me:
        return r.state.role is Role.PRIMARY
    record = r.obs.member(holder)
    return record is not None and record.info.role is Role.PRIMARY and record.info.seen_token == token


def _changed(published: MemberInfo, now: MemberInfo, *, progress_waits: bool) -> bool:
    if not progress_waits:
        return published != now
    return _without_progress(published) != _without_progress(now)


def _without_progress(info: MemberInfo) -> MemberInfo:
    return replace(info, position=None, received=None, binlog_state=None)
