"""The few bits of the MySQL client/server protocol the gate needs.

The gate never interprets queries. It only (1) writes a handshake-phase ERR packet to a client it
refuses, (2) counts command packets a client sends (sequence id 0), and (3) reads the server status
flags of the last reply so a drain can tell whether a connection sits inside a transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Error codes sent to refused clients. No SQL state marker: in the handshake phase the client has
# not yet announced CLIENT_PROTOCOL_41, and drivers (PyMySQL, libmysqlclient) accept the bare form.
ER_CON_COUNT_ERROR: Final = 1040  # too many connections: the code drivers already know
ER_OPTION_PREVENTS_STATEMENT: Final = 1290  # what a read-only server answers: "not the primary"
CR_CONN_HOST_ERROR: Final = 2003  # the gate cannot reach its local mysqld

SERVER_STATUS_IN_TRANS: Final = 0x0001
SERVER_MORE_RESULTS_EXISTS: Final = 0x0008

COM_QUIT_PACKET: Final = b"\x01\x00\x00\x00\x01"
_MAX_MESSAGE: Final = 512


def handshake_error_packet(code: int, message: str) -> bytes:
    """A complete ERR packet (header + payload) with sequence id 0, ready to write to the client."""
    if not 0 < code < 0x10000:
        raise ValueError(f"error code out of range: {code}")
    text = message.encode("utf-8", "replace")[:_MAX_MESSAGE]
    if text.startswith(b"#"):
        # A leading '#' would be read as an SQL state marker.
        text = b" " + text
    payload = b"\xff" + code.to_bytes(2, "little") + text
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


def not_primary_message(reason: str) -> str:
    return f"dbfence: this node is not the primary ({reason})"


class CommandCounter:
    """Counts command packets (sequence id 0) in the client-to-server byte stream.

    Fed every chunk as it is forwarded; keeps only the bytes still owed to the current packet and, in
    the rare case a chunk ends inside a 4-byte header, that header's first bytes. Stops counting if
    the client switches to TLS, since the stream is then opaque.
    """

    __slots__ = ("_owed", "_partial_header", "_seen_login", "commands", "opaque")

    def __init__(self) -> None:
        self.commands = 0
        self.opaque = False
        self._owed = 0
        self._partial_header = b""
        self._seen_login = False

    def feed(self, data: bytes) -> None:
        if self.opaque:
            return
        if self._partial_header:
            data = self._partial_header + data
            self._partial_header = b""
        pos = self._owed
        end = len(data)
        count = 0
        while pos + 4 <= end:
            length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
            seq = data[pos + 3]
            if seq == 0:
                count += 1
            elif not self._seen_login and seq == 1:
                self._seen_login = True
                # A 32-byte first client packet is an SSLRequest: everything after it is TLS.
                if length == 32:
                    self.opaque = True
                    self.commands += count
                    return
            pos += 4 + length
        if pos < end:
            self._partial_header = data[pos:]
            self._owed = 0
        else:
            self._owed = pos - end
        self.commands += count


@dataclass(frozen=True)
class ReplyEnd:
    """How a server reply chunk ends: ``terminal`` when the last packet closes a command's reply."""

    terminal: bool
    in_transaction: bool | None  # None when the last packet carries no status (ERR)


def _lenenc_size(first: int) -> int:
    if first < 0xFB:
        return 1
    if first == 0xFC:
        return 3
    if first == 0xFD:
        return 4
    if first == 0xFE:
        return 9
    return 1  # 0xFB (NULL) is one byte


def reply_end(chunk: bytes) -> ReplyEnd | None:
    """Read the last packet of a server chunk that starts on a packet boundary.

    Returns None when the chunk does not parse as whole packets (it began mid-packet or ends
    mid-packet); callers then know nothing and must stay conservative.
    """
    pos = 0
    end = len(chunk)
    last = -1
    while pos + 4 <= end:
        last = pos
        pos += 4 + (chunk[pos] | (chunk[pos + 1] << 8) | (chunk[pos + 2] << 16))
    if pos != end or last < 0:
        return None
    length = chunk[last] | (chunk[last + 1] << 8) | (chunk[last + 2] << 16)
    payload = chunk[last + 4 : last + 4 + length]
    if not payload:
        return ReplyEnd(terminal=False, in_transaction=None)
    kind = payload[0]
    if kind == 0xFF:
        return ReplyEnd(terminal=True, in_transaction=None)
    if kind == 0xFE and len(payload) == 5:  # classic EOF: warnings(2) status(2)
        status = payload[3] | (payload[4] << 8)
    elif (kind == 0x00 and len(payload) >= 7) or (kind == 0xFE and 7 <= len(payload) < 0xFFFFFF):
        # OK packet (or an EOF-style OK with CLIENT_DEPRECATE_EOF): header, two lenenc ints, status.
        offset = 1
        offset += _lenenc_size(payload[offset])
        if offset >= len(payload):
            return None
        offset += _lenenc_size(payload[offset])
        if offset + 2 > len(payload):
            return None
        status = payload[offset] | (payload[offset + 1] << 8)
    else:
        return ReplyEnd(terminal=False, in_transaction=None)
    if status & SERVER_MORE_RESULTS_EXISTS:
        return ReplyEnd(terminal=False, in_transaction=bool(status & SERVER_STATUS_IN_TRANS))
    return ReplyEnd(terminal=True, in_transaction=bool(status & SERVER_STATUS_IN_TRANS))


def ends_login(chunk: bytes) -> bool:
    """True when a server chunk of the login phase ends with the OK that completes the login.

    The greeting starts with the protocol version (10), auth-switch requests with 0xFE, extra auth
    data with 0x01, a failed login with 0xFF: only the final OK starts with 0x00. A chunk that does
    not parse as whole packets is not taken for the end (the caller keeps watching).
    """
    pos, end, last = 0, len(chunk), -1
    while pos + 4 <= end:
        last = pos
        pos += 4 + (chunk[pos] | (chunk[pos + 1] << 8) | (chunk[pos + 2] << 16))
    if pos != end or last < 0:
        return False
    payload = chunk[last + 4 :]
    return len(payload) >= 7 and payload[0] == 0x00


def reply_end_of_tail(tail: bytes, complete: bool) -> ReplyEnd | None:
    """:func:`reply_end` for a chunk of which only the last bytes are known.

    With the whole chunk (``complete``) this is exact. Otherwise every offset where a packet header
    would end exactly at the tail's end is a candidate last packet; the answer stands only if all
    candidates that parse agree, else None (the caller then waits, as for any unknown reply).
    """
    if complete:
        return reply_end(tail)
    answers = set()
    for start in range(len(tail) - 4):
        length = tail[start] | (tail[start + 1] << 8) | (tail[start + 2] << 16)
        if start + 4 + length == len(tail):
            answer = reply_end(tail[start:])
            if answer is not None:
                answers.add(answer)
    return answers.pop() if len(answers) == 1 else None
