"""Typed errors of the MySQL adapter. Every failure is one of these (or becomes a Verdict)."""

from __future__ import annotations

from dbfence.mysql.gtid import ErrantRange, Gtid, describe_errant
from dbfence.mysql.verdict import Reason


class MysqlAdapterError(Exception):
    """Base class of every error raised by dbfence.mysql."""


class CredentialsError(MysqlAdapterError):
    """Credentials missing, unreadable, or stored in a file other users can read."""


class UnsafeAccountError(MysqlAdapterError):
    """The application account could write through read_only (SUPER / READ ONLY ADMIN)."""


class UnsupportedServerError(MysqlAdapterError):
    """A server flavour or version dbfence does not drive."""


class MysqlUnavailableError(MysqlAdapterError):
    """The server could not be reached or did not answer; ``reason`` says how."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class MysqlQueryError(MysqlAdapterError):
    """A statement failed on a reachable server."""

    def __init__(self, statement: str, code: int | None, message: str) -> None:
        super().__init__(f"{statement!r} failed: ({code}) {message}")
        self.statement = statement
        self.code = code
        self.message = message


class GtidWaitTimeoutError(MysqlAdapterError):
    """MASTER_GTID_WAIT did not reach the position in time."""


class ReplicationNotConfiguredError(MysqlAdapterError):
    """An action needs a replica but the node has no replication configured."""


class UnsafeOnReplicaError(MysqlAdapterError):
    """A write that would create an errant GTID was asked of a node that replicates."""


class StaleFencingTokenError(MysqlAdapterError):
    """The node already holds a higher fencing token than the one being written."""

    def __init__(self, current: int, offered: int) -> None:
        super().__init__(f"fencing token {offered} is older than the token {current} already stored")
        self.current = current
        self.offered = offered


class ErrantTransactionsError(MysqlAdapterError):
    """The node has GTIDs the primary lacks; it must not rejoin as a replica."""

    def __init__(
        self, node: str, primary: str, errant: tuple[ErrantRange, ...], gtids: tuple[Gtid, ...] = ()
    ) -> None:
        named = ", ".join(str(g) for g in gtids) if gtids else describe_errant(errant)
        ranges = f" (per server: {describe_errant(errant)})" if gtids else ""
        super().__init__(
            f"{node} has transactions {primary} lacks: errant GTIDs {named}{ranges}; "
            f"refusing to replicate {node} from {primary}"
        )
        self.errant = errant
        self.gtids = gtids  # exact list from the node's binlog, when it could be read


class RelayLogDiskFullError(MysqlAdapterError):
    """The file system of the relay log is (nearly) full: replication is not (re)started on it."""

    def __init__(self, node: str, directory: str, free: int, wanted: int) -> None:
        super().__init__(
            f"{node}: the relay log's disk is full ({free >> 20} MiB free on {directory}, want >= "
            f"{wanted >> 20} MiB); not repointing until there is room: MariaDB's IO thread would wait "
            "for space and stall up to 60 s after space returns"
        )
        self.directory = directory
        self.free = free
        self.wanted = wanted
