"""``dbfence check``: does this host meet what the agent relies on, before a failover depends on it."""

from dbfence.preflight.result import Check, Status, worst

__all__ = ["Check", "Status", "worst"]
