"""Replication control on a replica: stop receiving without waiting on a silent primary, apply
the relay log (also one a delayed replica holds back), and put GTID mode back afterwards.

Kept apart from ``actions.py`` (fence, promote, repoint, semi-sync, the fencing token), which
builds on these steps: each keeps the relay log, which may hold acknowledged commits that only
this node has.
"""

from __future__ import annotations

import time

from dbfence.mysql.action_session import GONE_CODES, MysqlSession
from dbfence.mysql.connection import DbConnection, query, query_one
from dbfence.mysql.errors import GtidWaitTimeoutError, MysqlQueryError, ReplicationNotConfiguredError
from dbfence.mysql.gtid import GtidPosition, GtidState


class RelayLogControl(MysqlSession):
    """The replica-side steps of promotion and repointing (see :class:`MysqlActions`)."""

    def wait_relay_log_applied(self, timeout_s: float) -> GtidPosition:
        """Wait until everything received from the primary is applied; return that position.

        A stopped SQL thread is started first (the IO thread is left as it is): nothing else
        would apply the relay log, and the wait would time out forever. It happens when a
        ``STOP SLAVE`` that timed out on our side (an applier blocked on a lock) completes in the
        server later, leaving the applier stopped under a node that has since won the lock. With
        the IO thread stopped too, MariaDB in GTID mode would start the applier on a new relay
        log from the applied position, dropping what was received (commits this node may have
        acknowledged): so the SQL thread's own relay-log coordinates are named first, the form
        of CHANGE MASTER that keeps the relay log (as :meth:`lift_apply_delay` does).
        """
        self._require_mariadb("waiting for the relay log")
        with self.session(read_timeout_s=timeout_s + 5.0) as conn:
            return GtidPosition.parse(self._apply_relay_log(conn, timeout_s))

    def _apply_relay_log_the_primary_has(self, conn: DbConnection, primary_state: GtidState,
                                         timeout_s: float) -> None:
        """Before a repoint's CHANGE MASTER deletes the relay log, apply it if the new primary
        has all of it: the new primary may fail before this node fetches it again, and then
        this node would hold less than it acknowledged. What the new primary lacks is left as
        before (applying it would fork this node from its new primary), and so is the relay log of
        a deliberately delayed replica (MASTER_DELAY: it would stay off for the whole delay)."""
        rows = query(conn, self.sql.replica_status_query())
        if not rows:
            return
        status = self.sql.parse_replica_status(rows[0])
        received = status.received_gtid_pos
        if not received or status.apply_delay_s > 0:
            return
        if GtidState.parse(received).errant_against(primary_state):
            return
        self._apply_relay_log(conn, timeout_s)

    def _apply_relay_log(self, conn: DbConnection, timeout_s: float) -> str:
        """Apply everything received (see :meth:`wait_relay_log_applied`); return the received
        position. Raises GtidWaitTimeoutError, with the applier left running, if not done in time."""
        rows = query(conn, self.sql.replica_status_query())
        if not rows:
            raise ReplicationNotConfiguredError(f"{self.name} has no replication configured")
        status = self.sql.parse_replica_status(rows[0])
        received = status.received_gtid_pos
        if status.sql_running == "No":
            if status.io_running == "No":
                query(conn, "CHANGE MASTER TO RELAY_LOG_FILE = %s, RELAY_LOG_POS = %s",
                      (status.relay_log_file, status.relay_log_pos))
            query(conn, "START SLAVE SQL_THREAD")
        statement, params = self.sql.gtid_wait(received, timeout_s)
        reached = int(query_one(conn, statement, params)["reached"])
        if reached != 0:
            applied = query_one(conn, "SELECT @@global.gtid_slave_pos AS p")["p"]
            raise GtidWaitTimeoutError(
                f"{self.name} did not apply its relay log within {timeout_s:g} s: received {received!r}, "
                f"applied {applied!r}"
            )
        self._gtid_mode_back(conn)
        return received

    def _gtid_mode_back(self, conn: DbConnection) -> None:
        """Naming relay-log coordinates turned GTID mode off, and without it the received
        position is no longer kept up to date. Once the relay log is applied with the IO thread
        stopped nothing is left to lose: stop the idle applier and turn GTID mode back on."""
        rows = query(conn, self.sql.replica_status_query())
        if not rows:
            return
        status = self.sql.parse_replica_status(rows[0])
        if status.io_running == "No" and status.using_gtid == "No":
            query(conn, "STOP SLAVE SQL_THREAD")
            query(conn, "CHANGE MASTER TO MASTER_USE_GTID = slave_pos")

    def lift_apply_delay(self) -> bool:
        """Let a delayed replica (MASTER_DELAY) that is being promoted apply its relay log now.

        Its relay log may hold acknowledged commits nobody else has (a semi-sync replica acks on
        receipt), and waiting out the delay would keep the cluster without a primary. Receiving
        stops first; then the delay is set to 0 naming the SQL thread's own relay-log
        coordinates, the one form of CHANGE MASTER that keeps the relay log. False when there
        was no delay. (This leaves GTID mode off until the next CHANGE MASTER: promotion resets
        the replication config, a repoint sets MASTER_USE_GTID again.)
        """
        self._require_mariadb("lifting the apply delay")
        with self.session() as conn:
            rows = query(conn, self.sql.replica_status_query())
            if not rows or self.sql.parse_replica_status(rows[0]).apply_delay_s == 0:
                return False
            self._stop_io_thread(conn)
            query(conn, "STOP SLAVE SQL_THREAD")
            status = self.sql.parse_replica_status(query(conn, self.sql.replica_status_query())[0])
            query(conn, "CHANGE MASTER TO MASTER_DELAY = 0, RELAY_LOG_FILE = %s, RELAY_LOG_POS = %s",
                  (status.relay_log_file, status.relay_log_pos))
            query(conn, "START SLAVE SQL_THREAD")
        return True

    def stop_receiving(self) -> bool:
        """Stop the IO thread only, so the SQL thread applies what the relay log already holds;
        the source stays configured. False when there was nothing to stop (idempotent)."""
        with self.session() as conn:
            rows = query(conn, self.sql.replica_status_query())
            if not rows or self.sql.parse_replica_status(rows[0]).io_running == "No":
                return False
            self._stop_io_thread(conn)
        return True

    def _stop_io_thread(self, conn: DbConnection, patience_s: float = 0.2) -> None:
        """STOP SLAVE IO_THREAD without waiting on a silent primary.

        An IO thread blocked reading from a frozen primary misses the server's first stop signal
        and is signalled again only 2 s later; KILL shuts its socket at once. A signal can also
        land just before the thread blocks, so KILL is repeated for a moment. (A thread that gave
        up on the primary and is reconnecting ignores both for ~2 s: hence the advice to keep
        ``slave_net_timeout`` above the lease TTL, docs/operations.md.) What it had received
        completely stays in the relay log; an event group cut in half is fetched again by GTID,
        or discarded with the replication config on promotion.
        """
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            ids = [int(row["id"]) for row in query(conn, self.sql.io_thread_sessions_query())]
            if not ids:
                break
            for session_id in ids:
                try:
                    query(conn, f"KILL CONNECTION {session_id}")
                except MysqlQueryError as exc:
                    if exc.code not in GONE_CODES:
                        raise
            time.sleep(0.01)
        query(conn, self.sql.stop_io_thread())
