"""Replication actions against a source that vanished silently (a partition, no FIN, no RST)."""

from __future__ import annotations

import time

import pytest

from dbfence.lab import netns
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions

pytestmark = pytest.mark.skipif(netns.unavailable_reason() is not None,
                                reason=f"network partitions skipped: {netns.unavailable_reason()}")


def test_promote_does_not_wait_for_the_io_thread_of_a_partitioned_source(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, netns=True)
    with lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE app.partitioned (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO app.partitioned VALUES (1)")
    replica = actions(lab, "db2")

    def has_row() -> bool:
        with lab.connect("db2") as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM app.partitioned")
            row = cur.fetchone()
            return row is not None and row[0] == 1
    wait_until(has_row, timeout=20, what="the row on db2")
    lab.isolate("db1")

    started = time.monotonic()
    lab.in_client(replica.promote, fencing_token=7, holder="db2", semi_sync=None)
    seconds = time.monotonic() - started
    # A bare STOP SLAVE IO_THREAD waits at least one 2 s re-signal round for a thread stuck
    # reading from a silent source; cutting the thread's session first does not.
    assert seconds < 2.0, f"promote took {seconds:.2f} s"
    assert has_row()
    with lab.connect("db2") as conn, conn.cursor() as cur:
        cur.execute("SELECT @@read_only")
        assert cur.fetchone() == (0,)
