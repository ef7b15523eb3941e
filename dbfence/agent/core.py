"""The public face of the decision core: everything the agent loop needs, from one module.

    from dbfence.agent import core
    decision = core.decide(observation, state, config)

Pure like the modules it re-exports (checked by tests/agent/test_core_purity.py).
"""

from __future__ import annotations

from dbfence.agent.actions import (
    AcquireLock,
    Action,
    ActionReason,
    AdmitGate,
    BlockGate,
    ClearSwitchover,
    DetachSource,
    FailDiscoveryCheck,
    Promote,
    PublishMember,
    RecordFailover,
    RegisterDiscovery,
    ReleaseLock,
    RenewLock,
    Repoint,
    SetReadOnly,
    WaitRelayLog,
    WriteFencingToken,
)
from dbfence.agent.core_config import CoreConfig, CoreConfigError
from dbfence.agent.decide import Decision, Refusal, RefusalReason, decide, race_refusals
from dbfence.agent.gtid import Gtid, GtidParseError, GtidPosition, candidate_sort_key
from dbfence.agent.observation import (
    DiscoveryTag,
    ErrantCheck,
    GateView,
    HealthVerdict,
    LeaseView,
    LocalDatabase,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    ObservationError,
    OperatorIntents,
    ReplicationState,
)
from dbfence.agent.state import IllegalTransitionError, Role, State, Trigger

__all__ = [
    "AcquireLock",
    "Action",
    "ActionReason",
    "AdmitGate",
    "BlockGate",
    "ClearSwitchover",
    "CoreConfig",
    "CoreConfigError",
    "Decision",
    "DetachSource",
    "DiscoveryTag",
    "ErrantCheck",
    "FailDiscoveryCheck",
    "GateView",
    "Gtid",
    "GtidParseError",
    "GtidPosition",
    "HealthVerdict",
    "IllegalTransitionError",
    "LeaseView",
    "LocalDatabase",
    "LockView",
    "MemberInfo",
    "MemberRecord",
    "Observation",
    "ObservationError",
    "OperatorIntents",
    "Promote",
    "PublishMember",
    "RecordFailover",
    "Refusal",
    "RefusalReason",
    "RegisterDiscovery",
    "ReleaseLock",
    "RenewLock",
    "ReplicationState",
    "Repoint",
    "Role",
    "SetReadOnly",
    "State",
    "Trigger",
    "WaitRelayLog",
    "WriteFencingToken",
    "candidate_sort_key",
    "decide",
    "race_refusals",
]
