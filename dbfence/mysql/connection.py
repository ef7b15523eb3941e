"""Blocking PyMySQL connections with every timeout set, and errors mapped to typed ones.

These calls block; the agent loop runs them off its event loop.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
import pymysql
import pymysql.cursors
from pymysql.connections import Connection
from pymysql.protocol import FieldDescriptorPacket, MysqlPacket

from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlQueryError, MysqlUnavailableError
from dbfence.mysql.flavour import ServerVersion, parse_server_version
from dbfence.mysql.verdict import Reason

Row = dict[str, Any]
if TYPE_CHECKING:
    DbConnection = Connection[pymysql.cursors.DictCursor]
else:  # PyMySQL's Connection is generic only in its type stubs
    DbConnection = Connection

ER_CON_COUNT_ERROR = 1040
ER_ACCESS_DENIED_ERROR = 1045
ER_QUERY_INTERRUPTED = 1317
ER_STATEMENT_TIMEOUT = 1969  # MariaDB max_statement_time
CR_CONN_HOST_ERROR = 2003
CR_SERVER_GONE_ERROR = 2006
CR_SERVER_LOST = 2013


# Column descriptions already parsed, by their packet's bytes and the connection's encoding.
_DESCRIPTIONS: dict[tuple[str, bytes], FieldDescriptorPacket] = {}
_DESCRIPTIONS_KEPT = 512  # a few dozen statements' columns; past this the cache starts over


class _Connection(DbConnection):
    """PyMySQL's connection, parsing each distinct column description once (issue 18).

    Every result carries a description packet per column, and PyMySQL parses each one into an
    object (six length-coded strings, their decoding, a struct): for ``SHOW SLAVE STATUS``'s ~57
    columns that was half of the statement's CPU, at several rounds a second, for the same bytes
    every time. Equal bytes (and encoding) parse to equal descriptions, so a parsed one is reused;
    nothing reads a description's packet again after parsing it. The cache is shared (the fresh
    connections of the probes reuse it too) and bounded."""

    def _read_packet(self, packet_type: type[MysqlPacket] = MysqlPacket) -> MysqlPacket:
        if packet_type is not FieldDescriptorPacket:
            return super()._read_packet(packet_type)  # type: ignore[no-untyped-call,no-any-return]
        data: bytes = super()._read_packet(MysqlPacket).get_all_data()  # type: ignore[no-untyped-call]
        key = (self.encoding, data)
        field = _DESCRIPTIONS.get(key)
        if field is None:
            field = FieldDescriptorPacket(data, self.encoding)
            if len(_DESCRIPTIONS) >= _DESCRIPTIONS_KEPT:
                _DESCRIPTIONS.clear()
            _DESCRIPTIONS[key] = field
        return field


@dataclass(frozen=True)
class Endpoint:
    """Where mysqld listens. ``unix_socket`` wins over host/port when set."""

    host: str = "127.0.0.1"
    port: int = 3306
    unix_socket: str | None = None

    def __str__(self) -> str:
        return self.unix_socket if self.unix_socket else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 0.5
    read_s: float = 5.0
    write_s: float = 5.0


def classify_error(exc: BaseException) -> Reason:
    """Map a PyMySQL/socket error to a probe reason."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return Reason.QUERY_TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return Reason.CONNECT_REFUSED
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        text = str(exc.args[1]) if len(exc.args) > 1 else ""
        if code == ER_CON_COUNT_ERROR:
            return Reason.TOO_MANY_CONNECTIONS
        if code == ER_ACCESS_DENIED_ERROR:
            return Reason.AUTH_FAILED
        if code == CR_CONN_HOST_ERROR:
            if "timed out" in text:
                return Reason.CONNECT_TIMEOUT
            if "refused" in text or f"[Errno {errno.ECONNREFUSED}]" in text or "No such file" in text:
                return Reason.CONNECT_REFUSED
            return Reason.CONNECT_FAILED
        if code in (CR_SERVER_LOST, CR_SERVER_GONE_ERROR):
            return Reason.QUERY_TIMEOUT if "timed out" in text else Reason.QUERY_FAILED
    return Reason.QUERY_FAILED


def error_text(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"


def connect(
    endpoint: Endpoint, credentials: Credentials, timeouts: Timeouts, *, database: str | None = None
) -> DbConnection:
    """Open an autocommit connection; raise MysqlUnavailableError naming why it failed."""
    try:
        conn: DbConnection = _Connection(
            # PyMySQL 1.2 builds a fresh TLS context for every connection in its "preferred"
            # mode (35-55 ms of CPU each, measured here); on a Unix socket or loopback TLS
            # protects nothing, and the agent connects several times a second.
            ssl_disabled=is_local(endpoint) or None,
            host=endpoint.host,
            port=endpoint.port,
            unix_socket=endpoint.unix_socket,
            user=credentials.user,
            password=credentials.password,
            database=database,
            connect_timeout=timeouts.connect_s,
            read_timeout=timeouts.read_s,
            write_timeout=timeouts.write_s,
            autocommit=True,
            charset="utf8mb4",
            cursorclass=pymysql.cursors.DictCursor,
        )
    except (pymysql.err.MySQLError, OSError) as exc:
        reason = classify_error(exc)
        if reason is Reason.QUERY_TIMEOUT:  # the handshake never came: the server is hung
            reason = Reason.CONNECT_TIMEOUT
        raise MysqlUnavailableError(reason, f"connect to {endpoint}: {error_text(exc)}") from None
    return conn


def is_local(endpoint: Endpoint) -> bool:
    """A Unix socket, a loopback address or an address of this host's own interfaces: traffic
    that never leaves the host (the kernel routes it over loopback)."""
    if endpoint.unix_socket:
        return True
    if endpoint.host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return False
    return address.is_loopback or address in _own_addresses()


_OWN_ADDRESSES_TTL_S = 30.0
_own_cache: tuple[float, frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]] = (-1e9, frozenset())


def _own_addresses() -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This host's interface addresses, re-read every 30 s (an address moved away must not stay
    "local" for long: connections to it would then cross the network without TLS)."""
    global _own_cache
    read_at, addresses = _own_cache
    now = time.monotonic()
    if now - read_at < _OWN_ADDRESSES_TTL_S:
        return addresses
    found = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(entry.address.split("%")[0]))
    _own_cache = (now, frozenset(found))
    return _own_cache[1]


def query(conn: DbConnection, statement: str, params: Sequence[Any] | None = None) -> list[Row]:
    """Run one statement and return its rows; lost connections become MysqlUnavailableError."""
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())
    except pymysql.err.MySQLError as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code is not None and code >= 2000:  # client-side: the connection is unusable
            raise MysqlUnavailableError(
                classify_error(exc), f"{statement[:60]!r}: {error_text(exc)}"
            ) from None
        raise MysqlQueryError(
            statement[:200], code, str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        ) from None
    except OSError as exc:
        raise MysqlUnavailableError(classify_error(exc), f"{statement[:60]!r}: {error_text(exc)}") from None


def query_one(conn: DbConnection, statement: str, params: Sequence[Any] | None = None) -> Row:
    rows = query(conn, statement, params)
    if not rows:
        raise MysqlQueryError(statement[:200], None, "returned no row")
    return rows[0]


def server_version(conn: DbConnection) -> ServerVersion:
    return parse_server_version(str(query_one(conn, "SELECT VERSION() AS v")["v"]))


def close_quietly(conn: DbConnection | None) -> None:
    """Close without waiting on a hung server (no COM_QUIT round trip)."""
    if conn is None:
        return
    with contextlib.suppress(Exception):  # closing a dead socket must never raise
        conn._force_close()  # type: ignore[attr-defined]


def thread_id(conn: DbConnection) -> int:
    """The server's id for this session (what KILL and the processlist use)."""
    return int(conn.thread_id())  # type: ignore[no-untyped-call]
