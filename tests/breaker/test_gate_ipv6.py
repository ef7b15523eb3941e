"""IPv6 clients through the gate (workers and kernel join): a ``::1`` client of a dual-stack gate
is admitted, shown, fenced and refused as an IPv4 one is; mysqld stays at its IPv4 address."""

from __future__ import annotations

import socket
import time

import pymysql
import pytest

from dbfence.lab.cluster import LabCluster
from tests.breaker.conftest import GateFactory
from tests.breaker.gate_helpers import connect_via, mark_landed
from tests.breaker.test_gate_proxy import insert_mark, new_mark, select_one
from tests.breaker.waiting import wait_until

ER_OPTION_PREVENTS_STATEMENT = 1290


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


def test_an_ipv6_client_is_admitted_shown_fenced_and_refused_like_an_ipv4_one(
        make_gate: GateFactory, gate_lab: LabCluster, forwarding: str) -> None:
    gate = make_gate(listen_host="::")  # dual stack: IPv4 clients too
    gate.admit(time.monotonic() + 30)
    v6, v4 = connect_via(gate, gate_lab, host="::1"), connect_via(gate, gate_lab)
    try:
        assert select_one(v6) == 1 and select_one(v4) == 1
        mark = new_mark()
        insert_mark(v6, mark)
        assert mark_landed(gate_lab, mark)
        clients = {row.client.rsplit(":", 1)[0]: row for row in gate.stats().connections}
        assert set(clients) == {"[::1]", "127.0.0.1"}, clients  # the IPv4 one unmapped
        # The kernel joins IPv4 sockets only (its programs key them by IPv4 address): an IPv6
        # client stays on the worker relay, which fences it per chunk, as it does any link.
        assert clients["[::1]"].forwarding == "worker"
        assert clients["127.0.0.1"].forwarding == forwarding
        gate.block("test block")
        wait_until(lambda: gate.stats().open_connections == 0, 5, "the links to be cut")
        late = new_mark()
        with pytest.raises(pymysql.err.OperationalError):
            insert_mark(v6, late)
        assert not mark_landed(gate_lab, late)
    finally:
        v6.close()
        v4.close()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect_via(gate, gate_lab, host="::1").close()
    assert refused.value.args[0] == ER_OPTION_PREVENTS_STATEMENT
    assert "test block" in refused.value.args[1]
