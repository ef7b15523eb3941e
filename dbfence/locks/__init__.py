"""Lease locks in etcd or Consul: the lock that makes "one writer" true.

The agent uses one :class:`LeaseLock` (built by :func:`open_lock`); see
``dbfence/locks/base.py`` for the contract of every method and docs/locks.md for
the protocol.
"""

from dbfence.locks.base import LeaseGrant, LeaseLock, LockSettings
from dbfence.locks.errors import (
    BadData,
    DcsAccessDenied,
    DcsUnreachable,
    LockConflict,
    LockError,
    LockLost,
    SessionExpired,
)
from dbfence.locks.factory import DcsConfig, load_config, open_lock
from dbfence.locks.model import (
    ClusterKeys,
    ClusterSnapshot,
    FailsafeList,
    HistoryEntry,
    HolderInfo,
    Intent,
    LockState,
    MemberEntry,
    MemberRecord,
)

__all__ = [
    "BadData",
    "ClusterKeys",
    "ClusterSnapshot",
    "DcsAccessDenied",
    "DcsConfig",
    "DcsUnreachable",
    "FailsafeList",
    "HistoryEntry",
    "HolderInfo",
    "Intent",
    "LeaseGrant",
    "LeaseLock",
    "LockConflict",
    "LockError",
    "LockLost",
    "LockSettings",
    "LockState",
    "MemberEntry",
    "MemberRecord",
    "SessionExpired",
    "load_config",
    "open_lock",
]
