"""STARTING on a new cluster's running primary: adopt it without fencing (issue 17).

The rules are in :mod:`dbfence.agent.core_adoption`; this module turns their verdict into the
round's actions. Pure, like all the core.
"""

from __future__ import annotations

from dbfence.agent import core_adoption
from dbfence.agent.actions import AcquireLock, ActionReason, FailDiscoveryCheck
from dbfence.agent.decide_lease import keep_gate_closed
from dbfence.agent.decide_promotion import handle_promoting
from dbfence.agent.decide_round import RefusalReason, Round
from dbfence.agent.state import Trigger


def adopt_running_primary(r: Round) -> bool:
    """Handle a STARTING round on a running primary (mysqld writable, no source, new cluster):
    take the lock or, holding it, promote; or wait, unfenced, for the facts. False: start as
    ever (fenced), with the reason recorded when this node was a writable one."""
    verdict = core_adoption.adoption(r.obs, r.state, r.config)
    if isinstance(verdict, core_adoption.NotAdopted):
        r.refuse(RefusalReason.NOT_ADOPTED, verdict.why)
    if not isinstance(verdict, core_adoption.Adopt | core_adoption.AwaitFacts):
        return False
    # mysqld stays writable for the clients connected to it; the gate stays closed.
    if r.obs.discovery is not None:
        r.emit(FailDiscoveryCheck(ActionReason.STARTUP))
    keep_gate_closed(r)
    if isinstance(verdict, core_adoption.AwaitFacts):
        r.refuse(RefusalReason.ADOPTION_PENDING, verdict.missing)
        r.wake_at(verdict.until)
    elif r.obs.lease.held:
        r.move(Trigger.ADOPTED)
        handle_promoting(r)  # fences at once should the lease be in trouble
    else:
        r.emit(AcquireLock(ActionReason.ADOPT_RUNNING_PRIMARY))
    return True
