"""The PROXY protocol header the gate sends ahead of a client's bytes, so that mysqld sees the client.

Version 2 (binary), not version 1 (one line of text). MariaDB accepts both (checked on 10.11), and the
two carry the same thing, but version 2 is a fixed layout: a 16-byte prefix and the two addresses as
packed bytes (28 bytes for IPv4), built without formatting numbers into text, with nothing to escape
or mis-parse. Its 12-byte signature cannot be mistaken for the start of a MySQL packet, and it has a
LOCAL command for a connection that carries no client address (mysqld then uses the socket's own).

The header is written first on each backend connection, before anything the client sends. mysqld
speaks first, but it only reads its socket after its greeting, and then takes the header from the
front of the client's first packet, so sending it at connect is enough. mysqld accepts it only from an
address its ``proxy_protocol_networks`` lists (``localhost`` stands for its Unix socket); any other
is refused (ERR 1130 if no account is granted to that address, else the connection is dropped once
mysqld reads the header). A listed address may still connect without a header (then its own address
counts), so listing the gate's backend address does not disturb the agent's own sessions. mysqld
also believes a second header sent right after the first (measured), so the gate cuts a client whose
own first bytes are one (``dbfence.breaker.link.ClientSide.first_bytes_allowed``).
"""

from __future__ import annotations

import socket
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

_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def _packed(address: object) -> tuple[bytes, int] | None:
    """A TCP socket's (address, port) as packed address bytes (4 for IPv4, IPv4-mapped IPv6
    included, else 16) and the port; None for anything else."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host = str(address[0])
    try:
        return socket.inet_pton(socket.AF_INET, host), int(address[1])
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])  # no zone in the header
    except OSError:
        return None
    if packed.startswith(_MAPPED_PREFIX):
        packed = packed[12:]  # a client of a dual-stack listener: mysqld should see plain IPv4
    return packed, int(address[1])


def proxy_header(client: object, gate: object) -> bytes:
    """The header for a client at ``client`` connected to the gate at ``gate`` (the client socket's
    peer and local addresses). A LOCAL header when either is not an IP address and port."""
    source, destination = _packed(client), _packed(gate)
    if source is None or destination is None:
        return SIGNATURE + struct.pack("!BBH", _VERSION_2_LOCAL, 0, 0)
    (source_ip, source_port), (destination_ip, destination_port) = source, destination
    if len(source_ip) == len(destination_ip) == 4:
        family = _TCP_OVER_IPV4
    else:  # one family for both: an IPv4 end is written as its IPv4-mapped IPv6 address
        family = _TCP_OVER_IPV6
        source_ip, destination_ip = (ip if len(ip) == 16 else _MAPPED_PREFIX + ip
                                     for ip in (source_ip, destination_ip))
    body = source_ip + destination_ip + _PORTS.pack(source_port, destination_port)
    return SIGNATURE + struct.pack("!BBH", _VERSION_2_PROXY, family, len(body)) + body
