"""Key layout and the records stored in the DCS, with strict parsing.

Layout, for a cluster named ``C`` (identical in etcd and Consul):

* ``dbfence/C/leader``          the lock key; JSON :class:`HolderInfo`, bound to the holder's lease/session
* ``dbfence/C/members/<node>``  one JSON :class:`MemberRecord` per agent, bound to that agent's lease/session
* ``dbfence/C/intent``          operator intent (pause, switchover target): JSON :class:`Intent`, not leased
* ``dbfence/C/history/<id>``    bounded list of JSON :class:`HistoryEntry` (failovers...), not leased

Parsing never lets an exception other than :class:`BadData` escape: garbage in any
key is reported with the full key name, so an operator can find and fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from dbfence.locks.errors import BadData

KEY_ROOT = "dbfence"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Records larger than this are refused: nothing we write comes close, and a huge value
# in a key is more likely an accident than data.
MAX_VALUE_BYTES = 64 * 1024


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is usable as one path segment of a key, else raise ``ValueError``."""
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' or '-' (max 128)")
    return name


@dataclass(frozen=True)
class ClusterKeys:
    """Every key name dbfence uses for one cluster."""

    cluster: str

    def __post_init__(self) -> None:
        check_name("cluster", self.cluster)

    @property
    def prefix(self) -> str:
        return f"{KEY_ROOT}/{self.cluster}/"

    @property
    def leader(self) -> str:
        return f"{self.prefix}leader"

    @property
    def primary(self) -> str:
        """Discovery key: the admitting primary's gate address (etcd; bound to its lease)."""
        return f"{self.prefix}primary"

    @property
    def members_prefix(self) -> str:
        return f"{self.prefix}members/"

    def member(self, node: str) -> str:
        return f"{self.members_prefix}{check_name('node', node)}"

    @property
    def intent(self) -> str:
        return f"{self.prefix}intent"

    @property
    def failsafe(self) -> str:
        """The failsafe member list (docs/failsafe.md): not bound to any lease."""
        return f"{self.prefix}failsafe"

    @property
    def history_prefix(self) -> str:
        return f"{self.prefix}history/"

    def history_entry(self, entry_id: str) -> str:
        return f"{self.history_prefix}{entry_id}"

    def node_of_member_key(self, key: str) -> str:
        """The node name at the end of a member key (as stored; validated by the parser)."""
        return key[len(self.members_prefix) :]


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class HolderInfo:
    """Value of the lock key: who holds it. ``acquired_at`` is wall time, for display only."""

    node: str
    address: str
    gate_port: int
    acquired_at: float

    def describe(self) -> str:
        return f"{self.node} ({self.address}:{self.gate_port})"


@dataclass(frozen=True)
class MemberRecord:
    """One agent's published view of itself. ``last_seen`` is wall time of publication."""

    node: str
    role: str
    healthy: bool
    reasons: tuple[str, ...] = ()
    gtid_position: str = ""  # applied
    gate_state: str = ""
    version: str = ""
    last_seen: float = 0.0
    # What peers need to rank, follow and check this node:
    priority: int = 100
    server_id: int | None = None
    gtid_binlog_state: str = ""  # for errant-GTID checks against this node as primary
    lag_seconds: float | None = None
    address: str = ""  # the gate's address applications use
    gate_port: int = 0
    mysql_host: str = ""  # where replicas connect to replicate from this node
    mysql_port: int = 0
    # What its IO thread wrote to the relay log (a replica): it may hold acknowledged commits
    # not applied yet, and peers must not overtake it (empty: not a replica, or an older agent).
    gtid_received: str = ""
    # The lock holder's fencing token when this record was written (None: free or unknown).
    seen_token: int | None = None
    # The agent's HTTP API (``http://host:port`` or ``https://``; empty: none): where a node
    # being rebuilt fetches this one's backup stream, and a primary asks it for failsafe promises.
    api_url: str = ""
    # While its mysqld stays down after the fence killed it: the binlog state it had at the kill
    # (empty: none published), for a takeover without a primary (docs/decision-core.md).
    gtid_binlog_state_at_kill: str = ""


@dataclass(frozen=True)
class FailsafeList:
    """The members a primary asks for promises during a DCS outage, written under its token;
    a node not named here does not race while it exists (docs/failsafe.md)."""

    token: int
    members: tuple[str, ...]
    written_by: str = ""
    written_at: float = 0.0  # wall time, for display only


@dataclass(frozen=True)
class Intent:
    """Operator intent kept in the DCS (read by every agent)."""

    paused: bool = False
    pause_reason: str = ""
    switchover_target: str | None = None
    requested_by: str = ""
    requested_at: float = 0.0


@dataclass(frozen=True)
class HistoryEntry:
    """One line of cluster history (failover, switchover, pause...)."""

    at: float
    kind: str
    node: str = ""
    detail: str = ""
    token: int | None = None


# ---------------------------------------------------------------------------- encoding


def encode(record: HolderInfo | MemberRecord | Intent | HistoryEntry | FailsafeList) -> bytes:
    data = asdict(record)
    if isinstance(record, MemberRecord):
        data["reasons"] = list(record.reasons)
        legacy = _legacy_http_address(record.api_url)
        if legacy:
            data["http_address"] = legacy
    if isinstance(record, FailsafeList):
        data["members"] = list(record.members)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _load_object(key: str, raw: bytes | str | None) -> Mapping[str, Any]:
    if raw is None:
        raise BadData(key, "key has no value")
    if len(raw) > MAX_VALUE_BYTES:
        raise BadData(key, f"value is {len(raw)} bytes, larger than {MAX_VALUE_BYTES}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        preview = raw[:40]
        raise BadData(key, f"not JSON ({exc.__class__.__name__}): {preview!r}") from None
    if not isinstance(data, dict):
        raise BadData(key, f"expected a JSON object, got {type(data).__name__}")
    return data


class _Fields:
    """Typed access to a decoded JSON object, raising BadData that names the key and field."""

    def __init__(self, key: str, data: Mapping[str, Any]) -> None:
        self.key = key
        self.data = data

    def _get(self, name: str, default: Any, required: bool) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                raise BadData(self.key, f"field {name!r} is missing")
            return default
        return self.data[name]

    def text(self, name: str, default: str = "", required: bool = False) -> str:
        value = self._get(name, default, required)
        if not isinstance(value, str):
            raise BadData(self.key, f"field {name!r} must be a string, got {type(value).__name__}")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._get(name, None, False)
        if value is not None and not isinstance(value, str):
            raise BadData(self.key, f"field {name!r} must be a string or null, got {type(value).__name__}")
        return value

    def flag(self, name: str, default: bool = False, required: bool = False) -> bool:
        value = self._get(name, default, required)
        if not isinstance(value, bool):
            raise BadData(self.key, f"field {name!r} must be true or false, got {type(value).__name__}")
        return value

    def integer(self, name: str, default: int = 0, required: bool = False) -> int:
        value = self._get(name, default, required)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadData(self.key, f"field {name!r} must be an integer, got {type(value).__name__}")
        return value

    def optional_integer(self, name: str) -> int | None:
        if self._get(name, None, False) is None:
            return None
        return self.integer(name)

    def number(self, name: str, default: float = 0.0, required: bool = False) -> float:
        value = self._get(name, default, required)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadData(self.key, f"field {name!r} must be a number, got {type(value).__name__}")
        return float(value)

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._get(name, [], False)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BadData(self.key, f"field {name!r} must be a list of strings")
        return tuple(value)


def parse_holder(key: str, raw: bytes | str | None) -> HolderInfo:
    fields = _Fields(key, _load_object(key, raw))
    node = fields.text("node", required=True)
    try:
        check_name("node", node)
    except ValueError as exc:
        raise BadData(key, str(exc)) from None
    port = fields.integer("gate_port", required=True)
    if not 0 <= port <= 65535:
        raise BadData(key, f"field 'gate_port' out of range: {port}")
    return HolderInfo(
        node=node,
        address=fields.text("address", required=True),
        gate_port=port,
        acquired_at=fields.number("acquired_at", required=True),
    )


def parse_member(key: str, raw: bytes | str | None, node_in_key: str) -> MemberRecord:
    fields = _Fields(key, _load_object(key, raw))
    node = fields.text("node", required=True)
    if node != node_in_key:
        raise BadData(key, f"field 'node' is {node!r} but the key names {node_in_key!r}")
    return MemberRecord(
        node=node,
        role=fields.text("role", required=True),
        healthy=fields.flag("healthy", required=True),
        reasons=fields.texts("reasons"),
        gtid_position=fields.text("gtid_position"),
        gate_state=fields.text("gate_state"),
        version=fields.text("version"),
        last_seen=fields.number("last_seen"),
        priority=fields.integer("priority", default=100),
        server_id=fields.optional_integer("server_id"),
        gtid_binlog_state=fields.text("gtid_binlog_state"),
        lag_seconds=None if fields.data.get("lag_seconds") is None else fields.number("lag_seconds"),
        address=fields.text("address"),
        gate_port=fields.integer("gate_port"),
        mysql_host=fields.text("mysql_host"),
        mysql_port=fields.integer("mysql_port"),
        gtid_received=fields.text("gtid_received"),
        seen_token=fields.optional_integer("seen_token"),
        api_url=fields.text("api_url") or _api_url_of_legacy(fields.text("http_address")),
        gtid_binlog_state_at_kill=fields.text("gtid_binlog_state_at_kill"),
    )


# Until 0.1 a record named the agent's HTTP API twice: ``api_url`` and ``http_address``
# (host:port, plain HTTP, read by the failsafe). For one release records still carry the old
# key (derived from api_url) for agents not yet upgraded, and a record that has only the old
# key is read as ``http://host:port``: a rolling upgrade keeps the failsafe working both ways.
# Remove both in the next release.
def _legacy_http_address(api_url: str) -> str:
    return api_url.removeprefix("http://").rstrip("/") if api_url.startswith("http://") else ""


def _api_url_of_legacy(http_address: str) -> str:
    return f"http://{http_address}" if http_address else ""


def parse_failsafe_list(key: str, raw: bytes | str | None) -> FailsafeList:
    fields = _Fields(key, _load_object(key, raw))
    members = fields.texts("members")
    for node in members:
        try:
            check_name("node", node)
        except ValueError as exc:
            raise BadData(key, str(exc)) from None
    return FailsafeList(token=fields.integer("token", required=True), members=members,
                        written_by=fields.text("written_by"), written_at=fields.number("written_at"))


def parse_intent(key: str, raw: bytes | str | None) -> Intent:
    fields = _Fields(key, _load_object(key, raw))
    return Intent(
        paused=fields.flag("paused"),
        pause_reason=fields.text("pause_reason"),
        switchover_target=fields.optional_text("switchover_target"),
        requested_by=fields.text("requested_by"),
        requested_at=fields.number("requested_at"),
    )


def parse_history(key: str, raw: bytes | str | None) -> HistoryEntry:
    fields = _Fields(key, _load_object(key, raw))
    return HistoryEntry(
        at=fields.number("at", required=True),
        kind=fields.text("kind", required=True),
        node=fields.text("node"),
        detail=fields.text("detail"),
        token=fields.optional_integer("token"),
    )


# ---------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class LockState:
    """The lock key as read from the DCS.

    ``holder`` is ``None`` only in a lenient snapshot whose lock key held garbage
    (the lock is then taken by an unknown party: nobody else can acquire it).
    ``token`` is the fencing token: etcd create revision, Consul ModifyIndex of the
    acquiring write. ``lock_index`` is Consul's LockIndex (``None`` on etcd).
    ``ttl_left`` is the server's remaining lease TTL in seconds when the backend can
    know it (etcd), else ``None`` (Consul does not expose it).
    """

    key: str
    holder: HolderInfo | None
    token: int
    session_id: str
    ttl_left: float | None
    lock_index: int | None = None
    modify_index: int = 0


@dataclass(frozen=True)
class MemberEntry:
    """A member record with the lease/session it is bound to ("" when unbound)."""

    key: str
    record: MemberRecord
    session_id: str


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything an agent needs to decide, read at one DCS index.

    ``index`` is the DCS index of the read (etcd revision, Consul X-Consul-Index); pass it
    to ``wait_for_change``. ``lock`` is ``None`` when nobody holds the lock.
    ``problems`` lists keys skipped in a lenient read (always empty in a strict read).
    """

    cluster: str
    index: int
    lock: LockState | None
    members: tuple[MemberEntry, ...]
    intent: Intent = field(default_factory=Intent)
    problems: tuple[BadData, ...] = ()
    failsafe: FailsafeList | None = None
    # The DCS index of the newest history write, when the backend reads it with the snapshot
    # (etcd); None when unknown: then any change of ``index`` may be a new history entry.
    history_index: int | None = None

    def member(self, node: str) -> MemberRecord | None:
        for entry in self.members:
            if entry.record.node == node:
                return entry.record
        return None
