"""The PROXY protocol header the gate sends ahead of a client's bytes, so that mysqld sees the client.

Version 2 (binary), not version 1 (one line of text). MariaDB accepts both (checked on 10.11), and the
two carry the same thing, but version 2 is a fixed layout: a 16-byte prefix and the two addresses as
packed bytes (28 bytes for IPv4), built without formatting numbers into text, with nothing to escape
or mis-parse. Its 12-byte signature cannot be mistaken for the start of a MySQL packet, and it has a
LOCAL command for a connection that carries no client address (mysqld then uses the socket's own).

The header is written first on each backend connection, before anything the client sends. mysqld
speaks first, but it only reads its socket after its greeting, and then takes the header from the
front of the client's first packet, so sending it at connect is enough. mysqld accepts it only from an
address its ``proxy_protocol_networks`` lists (``localhost`` stands for its Unix socket); from any
other it drops the connection. A listed address may still connect without a header (then its own
address counts), so listing the gate's backend address does not disturb the agent's own sessions.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

__all__ = ["PROXY_HEADER_STARTS", "SIGNATURE", "proxy_header"]

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
# The first 4 bytes by which mysqld recognises a header of either version, where it expects the
# header of a MySQL packet.
PROXY_HEADER_STARTS: Final = (b"PROX", SIGNATURE[:4])
_VERSION_2_PROXY: Final = 0x21  # version 2, command PROXY (the addresses follow)
_VERSION_2_LOCAL: Final = 0x20  # version 2, command LOCAL (no addresses: use the socket's own)
_TCP_OVER_IPV4: Final = 0x11
_TCP_OVER_IPV6: Final = 0x21
_PORTS = struct.Struct("!HH")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_and_port(address: object) -> tuple[Address, int] | None:
    """An (address, port) pair of a TCP socket, as transports report them; None for anything else."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])  # no IPv6 zone in the header
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a client of a dual-stack listener: mysqld should see plain IPv4
    return ip, int(address[1])


def _as_ipv6(ip: Address) -> ipaddress.IPv6Address:
    return ip if isinstance(ip, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{ip}")


def proxy_header(client: object, gate: object) -> bytes:
    """The header for a client at ``client`` connected to the gate at ``gate`` (the client socket's
    peer and local addresses). A LOCAL header when either is not an IP address and port."""
    source, destination = _ip_and_port(client), _ip_and_port(gate)
    if source is None or destination is None:
        return SIGNATURE + struct.pack("!BBH", _VERSION_2_LOCAL, 0, 0)
    (source_ip, source_port), (destination_ip, destination_port) = source, destination
    ports = _PORTS.pack(source_port, destination_port)
    if isinstance(source_ip, ipaddress.IPv4Address) and isinstance(destination_ip, ipaddress.IPv4Address):
        family, addresses = _TCP_OVER_IPV4, source_ip.packed + destination_ip.packed
    else:  # one family for both: an IPv4 end is written as its IPv4-mapped IPv6 address
        family, addresses = _TCP_OVER_IPV6, _as_ipv6(source_ip).packed + _as_ipv6(destination_ip).packed
    body = addresses + ports
    return SIGNATURE + struct.pack("!BBH", _VERSION_2_PROXY, family, len(body)) + body
