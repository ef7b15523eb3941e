"""The session plumbing under every role action on one mysqld: a fresh short-lived connection
per action, the server's flavour and version (detected at first connect), and its SQL dialect.

Kept apart so that the groups of actions (``relay_log.py``, ``actions.py``) share one base
without sharing one module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dbfence.mysql.connection import (
    DbConnection,
    Endpoint,
    Timeouts,
    close_quietly,
    connect,
    query,
    server_version,
)
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import UnsupportedServerError
from dbfence.mysql.flavour import Flavour, FlavourSql, ServerVersion, sql_for

ER_NO_SUCH_THREAD = 1094
# a replica session that ended between listing and killing
GONE_CODES = frozenset({ER_NO_SUCH_THREAD})


class MysqlSession:
    """Sessions on the mysqld at ``endpoint``, as the agent account ``credentials``."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        timeouts: Timeouts | None = None,
        name: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.timeouts = timeouts or Timeouts(connect_s=1.0, read_s=10.0, write_s=10.0)
        self.name = name or str(endpoint)
        self._version: ServerVersion | None = None

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, read_timeout_s: float | None = None) -> Iterator[DbConnection]:
        timeouts = self.timeouts
        if read_timeout_s is not None:
            timeouts = Timeouts(timeouts.connect_s, read_timeout_s, timeouts.write_s)
        conn = connect(self.endpoint, self.credentials, timeouts)
        try:
            if self._version is None:
                self._version = server_version(conn)
            yield conn
        finally:
            close_quietly(conn)

    def server_version(self) -> ServerVersion:
        """Flavour and version, detected at first connect."""
        if self._version is None:
            with self.session():
                pass
        assert self._version is not None
        return self._version

    @property
    def sql(self) -> FlavourSql:
        return sql_for(self.server_version())

    def _require_mariadb(self, what: str) -> None:
        if self.server_version().flavour is not Flavour.MARIADB:
            raise UnsupportedServerError(f"{what} is implemented for MariaDB only (MySQL GTID sets: todo)")

    def _run(self, conn: DbConnection, statements: list[str]) -> None:
        for statement in statements:
            query(conn, statement)
