"""The PROXY protocol v2 header, byte by byte (what mysqld makes of it: test_gate_client_address)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from dbfence.breaker.config import GateConfig, GateConfigError
from dbfence.breaker.gate import Gate
from dbfence.breaker.proxy_header import SIGNATURE, proxy_header
from dbfence.lab.echo import EchoBackend
from tests.breaker.waiting import receive_exactly


def test_an_ipv4_client_gives_a_28_byte_tcp4_header() -> None:
    header = proxy_header(("10.1.2.3", 40000), ("10.9.9.9", 3307))
    assert header == (SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12)
                      + bytes([10, 1, 2, 3]) + bytes([10, 9, 9, 9]) + struct.pack("!HH", 40000, 3307))
    assert len(header) == 28


def test_ipv4_mapped_addresses_of_a_dual_stack_listener_are_sent_as_ipv4() -> None:
    mapped = proxy_header(("::ffff:10.1.2.3", 40000, 0, 0), ("::ffff:10.9.9.9", 3307, 0, 0))
    assert mapped == proxy_header(("10.1.2.3", 40000), ("10.9.9.9", 3307))


def test_an_ipv6_client_gives_a_tcp6_header_with_both_ends_in_ipv6() -> None:
    header = proxy_header(("2001:db8::7%eth0", 50000, 0, 2), ("10.9.9.9", 3307))
    assert header[12:16] == bytes([0x21, 0x21]) + struct.pack("!H", 36)
    assert header[16:32] == bytes.fromhex("20010db8000000000000000000000007")
    assert header[32:48] == bytes.fromhex("00000000000000000000ffff0a090909")
    assert header[48:] == struct.pack("!HH", 50000, 3307)


@pytest.mark.parametrize("client", [None, "", "/run/client.sock", ("not-an-ip", 1)])
def test_without_a_client_address_the_header_is_local(client: object) -> None:
    assert proxy_header(client, ("10.9.9.9", 3307)) == SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])


def test_backend_source_is_an_ip_address_and_only_for_tcp() -> None:
    assert GateConfig(backend_source="127.0.0.2", proxy_protocol=True).backend_source == "127.0.0.2"
    with pytest.raises(GateConfigError, match="must be an IP address"):
        GateConfig(backend_source="gate-host")
    with pytest.raises(GateConfigError, match="not to a Unix socket"):
        GateConfig(backend_source="127.0.0.2", backend_socket="/run/mysqld/mysqld.sock")


def test_the_header_is_the_first_thing_mysqld_receives() -> None:
    """Against an echo server: the header, then the client's bytes, on the one backend connection."""
    with EchoBackend() as backend, Gate(GateConfig(listen_port=0, workers=1, backend_port=backend.port,
                                                   kernel_forwarding="off", proxy_protocol=True)) as gate:
        gate.admit(time.monotonic() + 60)
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as sock:
            sock.sendall(b"ping")
            expected = proxy_header(sock.getsockname(), ("127.0.0.1", gate.port)) + b"ping"
            assert receive_exactly(sock, len(expected)) == expected
