"""The remote path end to end: a client in its own network namespace, the agent and a stand-in mysqld
in the database host's, the kernel forwarding and fencing the client's connection (no relay).

Each test builds its two namespaces (tests/breaker/remote_lab.py) and removes them.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfence.breaker.bpf import ATTACH_TCX_EGRESS, ATTACH_TCX_INGRESS, attached_programs
from dbfence.breaker.passthrough import probe
from dbfence.lab.netns import NamespaceRunner, unavailable_reason
from tests.breaker.remote_lab import BACKEND_PORT, CLIENT_IP, DB_IP, FLOOD, GATE_PORT, TICK, RemoteLab
from tests.breaker.waiting import receive_exactly, wait_until

_MISSING = unavailable_reason() or probe()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"no remote path here: {_MISSING}")


@pytest.fixture
def lab() -> Iterator[RemoteLab]:
    with tempfile.TemporaryDirectory(prefix="dbfence-remote-") as directory:
        built = RemoteLab(Path(directory))
        try:
            built.start_backend()
            built.start_agent()
            yield built
        finally:
            built.close()


@pytest.fixture
def client(lab: RemoteLab) -> Iterator[NamespaceRunner]:
    runner = NamespaceRunner(lab.client_ns, threads=4)
    yield runner
    runner.close()


def connect(client: NamespaceRunner, port: int = GATE_PORT) -> socket.socket:
    return client.call(socket.create_connection, (DB_IP, port), 5)


def peer_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def received_by_backend(lab: RemoteLab, sock: socket.socket) -> int:
    return lab.backend_peers().get(peer_of(sock), {}).get("received", -1)


def stays(condition_value: object, read: object, seconds: float) -> bool:
    """Whether ``read()`` keeps returning ``condition_value`` for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if read() != condition_value:  # type: ignore[operator]
            return False
        time.sleep(0.02)
    return True


def test_an_admitted_remote_client_reaches_mysqld_in_the_kernel_with_its_own_address(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    assert lab.remote_path == "on: eth0"
    lab.command(admit_for=60)
    with connect(client) as sock:
        sock.sendall(b"ping")
        assert receive_exactly(sock, 4) == b"ping"
        # mysqld's peer is the client's own address and port: no proxy in between.
        wait_until(lambda: received_by_backend(lab, sock) == 4, 5, "the backend to count the bytes")
        assert sock.getsockname()[0] == CLIENT_IP
        stats = lab.command(stats=True)
        rows = [row for row in stats["connections"] if row["client"] == peer_of(sock)]
        assert [row["forwarding"] for row in rows] == ["remote-kernel"]
        assert all(worker["open_connections"] == 0 for worker in stats["workers"])  # no relay
        assert stats["remote_path"] == "on: eth0"


class Reader:
    """Counts the bytes a socket receives, on a thread of its own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.received, self.data = sock, 0, bytearray()
        sock.settimeout(0.2)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.received += len(chunk)
            if len(self.data) < 1 << 16:
                self.data += chunk

    def stamps(self) -> list[int]:
        """The ticks' send times (ns): a tick is stamped before it is sent, never after."""
        whole = len(self.data) // 8 * 8
        return [value for (value,) in struct.iter_unpack("=Q", bytes(self.data[:whole]))]


def test_from_the_deadline_not_one_byte_passes_either_way_with_the_agent_frozen(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    deadline = float(lab.command(admit_for=3.0)["deadline"])
    commands, flood, ticks = connect(client), connect(client), connect(client)
    try:
        commands.sendall(b"before")
        assert receive_exactly(commands, 6) == b"before"
        flood.sendall(FLOOD)  # mysqld sends as fast as TCP lets it; the client reads all it gets
        # mysqld stamps and sends 8 bytes every 20 ms: a stamp later than the deadline reaching the
        # client is a byte that passed after it (whatever the ingress side did to the ACKs).
        ticks.sendall(TICK)
        flooded, ticked = Reader(flood), Reader(ticks)
        wait_until(lambda: flooded.received > 1 << 20 and ticked.received > 40, 10, "mysqld's bytes")
        lab.freeze_agent(True)
        wait_until(lambda: time.monotonic() > deadline + 0.5, 10, "the deadline to pass")
        commands.sendall(b"after the deadline")
        assert received_by_backend(lab, commands) == 6
        # Nothing more reaches mysqld, and nothing more of mysqld's reaches the client.
        assert stays(flooded.received, lambda: flooded.received, 1.0), "mysqld's flood reached the client"
        assert stays(6, lambda: received_by_backend(lab, commands), 0.5)
        late = [stamp for stamp in ticked.stamps() if stamp > deadline * 1e9]
        assert late == [], f"{len(late)} ticks sent after the deadline reached the client"
        assert lab.backend_peers()[peer_of(ticks)]["sent"] > ticked.received  # mysqld did try
    finally:
        lab.freeze_agent(False)
        for sock in (commands, flood, ticks):
            sock.close()


def test_a_client_that_stops_reading_holds_mysqld_back(lab: RemoteLab, client: NamespaceRunner) -> None:
    lab.command(admit_for=60)
    with connect(client) as sock:
        sock.sendall(FLOOD)  # and never read

        def sent() -> int:
            return lab.backend_peers().get(peer_of(sock), {}).get("sent", 0)

        wait_until(lambda: sent() > 0, 5, "mysqld to start sending")
        # TCP end to end: mysqld blocks once the client's window and its own buffer are full.
        wait_until(lambda: stays(sent(), sent, 1.0), 30, "mysqld to be held back")
        assert sent() < 64 << 20


def test_replication_and_other_ports_are_never_caught(lab: RemoteLab, client: NamespaceRunner) -> None:
    deadline = float(lab.command(admit_for=1.5)["deadline"])
    with connect(client, BACKEND_PORT) as direct:  # what a replica or a monitor does
        direct.sendall(b"binlog")
        assert receive_exactly(direct, 6) == b"binlog"
        lab.freeze_agent(True)
        try:
            wait_until(lambda: time.monotonic() > deadline + 0.2, 10, "the deadline to pass")
            direct.sendall(b"still flowing")
            assert receive_exactly(direct, 13) == b"still flowing"
        finally:
            lab.freeze_agent(False)
    rows = lab.command(stats=True)["connections"]
    assert all(row["client"] != peer_of(direct) for row in rows)


def test_a_block_cuts_admitted_clients_and_sends_new_ones_to_the_worker(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    lab.command(admit_for=60)
    admitted = connect(client)
    try:
        admitted.sendall(b"hi")
        assert receive_exactly(admitted, 2) == b"hi"
        name = peer_of(admitted)  # before the reset, which unbinds the socket
        lab.command(block="test block")
        # The agent destroys mysqld's socket: the client's pool hears an RST.
        admitted.settimeout(10)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            while admitted.recv(100):
                pass
            raise ConnectionResetError  # a FIN instead of an RST still ends the link
        wait_until(lambda: lab.backend_peers().get(name, {}).get("closed") == 1, 10, "mysqld's end to close")
    finally:
        admitted.close()
    with connect(client) as refused:
        header = receive_exactly(refused, 4)
        body = receive_exactly(refused, header[0] | header[1] << 8 | header[2] << 16)
        assert body[0] == 0xFF and struct.unpack("<H", body[1:3])[0] == 1290
        assert b"test block" in body


def test_the_path_is_removed_when_the_agent_stops(lab: RemoteLab) -> None:
    db = NamespaceRunner(lab.db_ns, threads=1)
    try:
        def programs() -> list[int]:
            index = socket.if_nametoindex("eth0")
            return attached_programs(index, ATTACH_TCX_INGRESS) + attached_programs(index, ATTACH_TCX_EGRESS)

        assert len(db.call(programs)) == 2
        assert f"dbfence_remote_{GATE_PORT}" in lab.in_db("nft", "list", "tables")
        assert lab.command(stop=True) == {"stopped": True}
        assert db.call(programs) == []
        assert "dbfence_remote" not in lab.in_db("nft", "list", "tables")
    finally:
        db.close()


def test_a_killed_agent_leaves_its_flows_fenced_and_the_next_agent_cuts_them(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    deadline = float(lab.command(admit_for=2.0)["deadline"])
    orphan = connect(client)
    try:
        orphan.sendall(b"before")
        assert receive_exactly(orphan, 6) == b"before"
        name = peer_of(orphan)
        assert lab.agent is not None
        lab.agent.kill()  # no stop, no block: the filter stays attached with the last fence word
        lab.agent.wait()
        wait_until(lambda: time.monotonic() > deadline + 0.2, 10, "the deadline to pass")
        orphan.sendall(b"after")
        assert stays(6, lambda: lab.backend_peers().get(name, {}).get("received"), 1.0)
        lab.start_agent()  # finds the old filter, destroys what it admitted, then detaches it
        assert lab.remote_path == "on: eth0"
        wait_until(lambda: lab.backend_peers().get(name, {}).get("closed") == 1, 10, "the orphan to be cut")
        assert lab.backend_peers()[name]["received"] == 6
    finally:
        orphan.close()
    lab.command(admit_for=60)
    with connect(client) as fresh:
        fresh.sendall(b"new")
        assert receive_exactly(fresh, 3) == b"new"


def test_replies_routed_around_the_filtered_interfaces_are_dropped(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    # A second link, made after the agent started (so not filtered), and a route that sends the
    # database host's packets for the client over it: an asymmetric path around the egress filter.
    subprocess.run(["ip", "-n", lab.client_ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1",
                    "netns", lab.db_ns], check=True, timeout=30)
    for namespace, address in ((lab.client_ns, "10.214.8.2/24"), (lab.db_ns, "10.214.8.11/24")):
        subprocess.run(["ip", "-n", namespace, "addr", "add", address, "dev", "eth1"], check=True, timeout=30)
        subprocess.run(["ip", "-n", namespace, "link", "set", "eth1", "up"], check=True, timeout=30)
    subprocess.run(["ip", "-n", lab.db_ns, "route", "add", f"{CLIENT_IP}/32", "via", "10.214.8.2",
                    "dev", "eth1"], check=True, timeout=30)
    lab.command(admit_for=60)
    with pytest.raises(OSError):  # the SYN was forwarded to mysqld; its SYN-ACK may not leave
        client.call(socket.create_connection, (DB_IP, GATE_PORT), 2).close()
    with connect(client, BACKEND_PORT) as direct:  # not a forwarded flow: the same route is fine
        direct.sendall(b"ok")
        assert receive_exactly(direct, 2) == b"ok"


def test_a_drain_sends_new_remote_clients_to_the_workers_at_once(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    lab.command(admit_for=60)
    db = NamespaceRunner(lab.db_ns, threads=1)
    try:
        # A client of the database host itself (loopback: the workers relay it) keeps the drain open.
        local = db.call(socket.create_connection, (DB_IP, GATE_PORT), 5)
        local.sendall(b"busy")
        assert receive_exactly(local, 4) == b"busy"
        admitted = connect(client)
        admitted.sendall(b"hi")
        assert receive_exactly(admitted, 2) == b"hi"
        lab.command(drain=5.0)
        wait_until(lambda: lab.command(stats=True)["state"] == "draining", 5, "the drain to start")
        with connect(client) as refused:  # not forwarded to mysqld: the worker answers
            header = receive_exactly(refused, 4)
            body = receive_exactly(refused, header[0] | header[1] << 8 | header[2] << 16)
            assert body[0] == 0xFF and b"draining for switchover" in body
        local.close()
        admitted.close()
    finally:
        db.close()


def test_a_drain_lets_forwarded_flows_run_until_they_close_and_cuts_the_rest_at_its_end(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    lab.command(admit_for=60)
    leaving, staying = connect(client), connect(client)
    try:
        for sock in (leaving, staying):
            sock.sendall(b"hi")
            assert receive_exactly(sock, 2) == b"hi"
        staying_name = peer_of(staying)
        started = time.monotonic()
        lab.command(drain=6.0)  # no worker link at all: only the forwarded flows keep it open
        wait_until(lambda: lab.command(stats=True)["state"] == "draining", 5, "the drain to start")
        # Admitted flows are not cut when the drain starts: their transactions may still be running.
        leaving.sendall(b"commit")
        assert receive_exactly(leaving, 6) == b"commit"
        leaving.close()  # this client leaves by itself during the drain
        assert lab.command(drain_result=True) == {}, "the drain ended before its time"
        # The other is cut when the drain ends: an RST, and mysqld's end closed.
        staying.settimeout(15)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            while staying.recv(100):
                pass
            raise ConnectionResetError  # a FIN instead of an RST still ends the link
        wait_until(lambda: lab.backend_peers().get(staying_name, {}).get("closed") == 1, 10,
                   "mysqld's end to close")
        assert time.monotonic() - started > 5.0, "cut before the drain's end"
        wait_until(lambda: lab.command(drain_result=True) != {}, 10, "the drain's result")
        result = lab.command(drain_result=True)
        assert (result["closed_gracefully"], result["cut"]) == (1, 1), result
    finally:
        leaving.close()
        staying.close()


def read_error(sock: socket.socket, timeout: float) -> int:
    """The MySQL error code of the packet a worker answers with (0 if it is no ERR packet)."""
    header = receive_exactly(sock, 4, timeout)
    body = receive_exactly(sock, header[0] | header[1] << 8 | header[2] << 16, timeout)
    return int(struct.unpack("<H", body[1:3])[0]) if body[0] == 0xFF else 0


def test_forwarded_flows_count_against_the_backend_cap(lab: RemoteLab, client: NamespaceRunner) -> None:
    lab.command(stop=True)
    lab.start_agent(max_connections=2)  # the gate's backend cap: 2 connections to mysqld in all
    lab.command(admit_for=60)
    forwarded = [connect(client) for _ in range(2)]
    try:
        for sock in forwarded:
            sock.sendall(b"hold")
            assert receive_exactly(sock, 4) == b"hold"
        names = [peer_of(sock) for sock in forwarded]
        # The filter's room is used up: the next client is not forwarded. Once the agent has
        # counted the two flows (about a second), the workers' share of the cap is 0: ERR 1040.
        refused = False
        deadline = time.monotonic() + 10
        while not refused and time.monotonic() < deadline:
            with connect(client) as extra:
                # A refusing worker speaks first; a relayed link waits for mysqld's greeting, which
                # the stand-in never sends (allowed until the agent has counted the flows).
                try:
                    refused = read_error(extra, 0.5) == 1040
                except AssertionError:
                    refused = False
        assert refused, "the workers did not count the forwarded flows against the cap"
        peers = lab.backend_peers()
        assert sum(1 for peer in peers if peer.startswith(f"{CLIENT_IP}:")) == 2, peers
        assert set(names) <= set(peers)
    finally:
        for sock in forwarded:
            sock.close()


def test_an_ipv6_remote_client_is_relayed_by_a_worker_and_fenced_there(
        lab: RemoteLab, client: NamespaceRunner) -> None:
    # The filter and the DNAT rule are IPv4 only: an IPv6 client of another host reaches the
    # workers through the same port (a dual-stack gate), while IPv4 clients keep the kernel path.
    client6, db6 = "fd00:dbf:7::2", "fd00:dbf:7::11"
    for namespace, address in ((lab.client_ns, client6), (lab.db_ns, db6)):
        subprocess.run(["ip", "-n", namespace, "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad"],
                       check=True, timeout=30)
    lab.command(stop=True)
    lab.start_agent(listen_host="::")
    assert lab.remote_path == "on: eth0"
    lab.command(admit_for=60)
    v6 = client.call(socket.create_connection, (db6, GATE_PORT), 5)
    v4 = connect(client)
    try:
        for sock in (v6, v4):
            sock.sendall(b"ping")
            assert receive_exactly(sock, 4) == b"ping"
        host, port = v6.getsockname()[:2]
        rows = {row["client"]: row["forwarding"] for row in lab.command(stats=True)["connections"]}
        assert rows == {f"[{host}]:{port}": "worker", peer_of(v4): "remote-kernel"}, rows
        # mysqld sees the IPv4 client itself, and the worker (the gate's address) for the IPv6 one.
        wait_until(lambda: received_by_backend(lab, v4) == 4, 5, "the backend to count the bytes")
        peers = lab.backend_peers()
        assert all(peer.startswith((f"{CLIENT_IP}:", f"{DB_IP}:")) for peer in peers), peers
        assert sum(1 for peer in peers if peer.startswith(f"{DB_IP}:")) == 1, peers
        lab.command(block="test block")
        v6.settimeout(10)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            while v6.recv(100):
                pass
            raise ConnectionResetError  # the worker closes a cut link: a FIN is an end too
    finally:
        v6.close()
        v4.close()
    with client.call(socket.create_connection, (db6, GATE_PORT), 5) as refused:
        assert read_error(refused, 10) == 1290
