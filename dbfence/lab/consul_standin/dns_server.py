"""Consul's DNS interface (service, node and addr lookups) written against RFC 1035, standard library only.

Answers the names Consul answers under its domain (default ``consul.``):

* ``[<tag>.]<service>.service[.<dc>].consul`` and RFC 2782 ``_<service>._<tag>.service[.<dc>].consul``
  (``_tcp`` means no tag filter): A/AAAA for the instances' addresses, SRV with port and target,
  plus the target's address in the additional section;
* ``<node>.node[.<dc>].consul`` and ``<hex-ip>.addr[.<dc>].consul``: A/AAAA.

Only instances without a critical check are answered (and without warnings when ``dns_only_passing``);
a service with none is NXDOMAIN, with an SOA in the authority section like Consul. TTLs are 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass

from dbfence.lab.consul_standin.model import PASSING, ServiceInstance
from dbfence.lab.consul_standin.state import StandinState

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1
CLASS_ANY = 255

RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4

UDP_DEFAULT_SIZE = 512
EDNS_PAYLOAD = 4096


class DNSFormatError(ValueError):
    """A packet we cannot parse as a DNS query."""


@dataclass(frozen=True)
class Question:
    message_id: int
    opcode: int
    recursion_desired: bool
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    edns_payload: int | None
    raw_question: bytes  # echoed verbatim, as the client sent it


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    rdata: bytes
    ttl: int = 0
    rclass: int = CLASS_IN

    def encode(self) -> bytes:
        return (
            encode_name(self.name)
            + struct.pack("!HHIH", self.rtype, self.rclass, self.ttl, len(self.rdata))
            + self.rdata
        )


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii", "replace")[:63]
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    jumps = 0
    end: int | None = None
    while True:
        if offset >= len(packet):
            raise DNSFormatError("name runs past the packet")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(packet):
                raise DNSFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            jumps += 1
            if jumps > 32:
                raise DNSFormatError("compression loop")
            continue
        if length & 0xC0:
            raise DNSFormatError("unsupported label type")
        offset += 1
        if length == 0:
            break
        labels.append(packet[offset : offset + length].decode("ascii", "replace"))
        offset += length
    return ".".join(labels), end if end is not None else offset


def parse_query(packet: bytes) -> Question:
    if len(packet) < 12:
        raise DNSFormatError("short header")
    message_id, flags, qdcount, ancount, nscount, arcount = struct.unpack("!HHHHHH", packet[:12])
    if flags & 0x8000:
        raise DNSFormatError("not a query")
    if qdcount != 1:
        raise DNSFormatError("exactly one question is supported")
    name, offset = _read_name(packet, 12)
    if offset + 4 > len(packet):
        raise DNSFormatError("truncated question")
    qtype, qclass = struct.unpack("!HH", packet[offset : offset + 4])
    raw_question = packet[12 : offset + 4]
    offset += 4
    edns_payload: int | None = None
    # Walk answer/authority/additional records looking for the EDNS OPT pseudo-record.
    for _ in range(ancount + nscount + arcount):
        _, offset = _read_name(packet, offset)
        if offset + 10 > len(packet):
            raise DNSFormatError("truncated record")
        rtype, rclass, _ttl, rdlength = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10 + rdlength
        if rtype == TYPE_OPT:
            edns_payload = max(rclass, UDP_DEFAULT_SIZE)
    return Question(
        message_id=message_id,
        opcode=(flags >> 11) & 0xF,
        recursion_desired=bool(flags & 0x0100),
        name=name.lower().rstrip("."),
        qtype=qtype,
        qclass=qclass,
        edns_payload=edns_payload,
        raw_question=raw_question,
    )


@dataclass
class Answer:
    rcode: int = RCODE_OK
    answers: list[Record] | None = None
    authority: list[Record] | None = None
    additional: list[Record] | None = None


def encode_response(question: Question, answer: Answer, max_size: int | None) -> bytes:
    """Assemble the reply; drop trailing records (setting TC for answers) until it fits ``max_size``."""
    answers = list(answer.answers or [])
    authority = list(answer.authority or [])
    additional = list(answer.additional or [])
    opt = [Record("", TYPE_OPT, b"", ttl=0, rclass=EDNS_PAYLOAD)] if question.edns_payload is not None else []
    truncated = False
    while True:
        flags = 0x8000 | (question.opcode << 11) | 0x0400  # QR, opcode, AA
        if question.recursion_desired:
            flags |= 0x0100
        if truncated:
            flags |= 0x0200
        flags |= answer.rcode & 0xF
        records = answers + authority + additional + opt
        header = struct.pack(
            "!HHHHHH", question.message_id, flags, 1, len(answers), len(authority), len(additional) + len(opt)
        )
        packet = header + question.raw_question + b"".join(r.encode() for r in records)
        if max_size is None or len(packet) <= max_size:
            return packet
        if additional:
            additional.pop()
        elif answers:
            answers.pop()
            truncated = True
        elif authority:
            authority.pop()
        else:
            return packet


def error_response(packet: bytes, rcode: int) -> bytes | None:
    """A bare reply carrying only the header, for packets we cannot parse further."""
    if len(packet) < 12:
        return None
    message_id, flags = struct.unpack("!HH", packet[:4])
    reply_flags = 0x8000 | (flags & 0x7900) | (rcode & 0xF)
    return struct.pack("!HHHHHH", message_id, reply_flags, 0, 0, 0, 0)


class ConsulDNS:
    """Turns questions into Consul-shaped answers from the shared state."""

    def __init__(self, state: StandinState) -> None:
        self.state = state
        self.config = state.config
        self.domain = self.config.domain.strip(".").lower()

    # --- records

    def _soa(self) -> Record:
        rdata = (
            encode_name(f"ns.{self.domain}")
            + encode_name(f"hostmaster.{self.domain}")
            + struct.pack("!IIIII", int(time.time()) & 0xFFFFFFFF, 3600, 600, 86400, 0)
        )
        return Record(self.domain, TYPE_SOA, rdata)

    @staticmethod
    def _address_record(name: str, address: str) -> Record | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None  # hostnames would need a CNAME; dbfence registers IPs
        if isinstance(ip, ipaddress.IPv4Address):
            return Record(name, TYPE_A, ip.packed)
        return Record(name, TYPE_AAAA, ip.packed)

    def _node_name(self) -> str:
        return f"{self.config.node}.node.{self.config.datacenter}.{self.domain}"

    def _addr_name(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        return f"{ip.packed.hex()}.addr.{self.config.datacenter}.{self.domain}"

    # --- resolution

    def resolve(self, question: Question, transport_limit: bool) -> Answer:
        if question.opcode != 0:
            return Answer(RCODE_NOTIMP)
        if question.qclass not in (CLASS_IN, CLASS_ANY):
            return Answer(RCODE_NOTIMP)
        name = question.name
        if name == self.domain:
            if question.qtype in (TYPE_SOA, TYPE_ANY):
                return Answer(answers=[self._soa()])
            if question.qtype == TYPE_NS:
                ns = Record(self.domain, TYPE_NS, encode_name(f"ns.{self.domain}"))
                glue = self._address_record(f"ns.{self.domain}", self.config.node_address)
                return Answer(answers=[ns], additional=[glue] if glue else [])
            return self._no_data()
        if not name.endswith("." + self.domain):
            return Answer(RCODE_SERVFAIL)  # not our zone and no recursors configured
        labels = name[: -len(self.domain) - 1].split(".")
        kinds = ("service", "node", "addr")
        if labels[-1] in kinds:
            kind, prefix = labels[-1], labels[:-1]
        elif len(labels) >= 2 and labels[-2] in kinds:
            if labels[-1] != self.config.datacenter.lower():
                return self._nxdomain()
            kind, prefix = labels[-2], labels[:-2]
        else:
            return self._nxdomain()
        if kind == "service":
            return self._service(name, prefix, question.qtype, transport_limit)
        if kind == "node":
            return self._node(name, prefix, question.qtype)
        return self._addr(name, prefix, question.qtype)

    def _nxdomain(self) -> Answer:
        return Answer(RCODE_NXDOMAIN, authority=[self._soa()])

    def _no_data(self) -> Answer:
        return Answer(RCODE_OK, authority=[self._soa()])

    def _address_answer(self, name: str, address: str, qtype: int) -> Answer:
        record = self._address_record(name, address)
        if record is None:
            return self._no_data()
        if qtype in (TYPE_ANY, record.rtype):
            return Answer(answers=[record])
        return self._no_data()

    def _node(self, owner: str, prefix: list[str], qtype: int) -> Answer:
        if len(prefix) != 1 or prefix[0] != self.config.node.lower():
            return self._nxdomain()
        return self._address_answer(owner, self.config.node_address, qtype)

    def _addr(self, owner: str, prefix: list[str], qtype: int) -> Answer:
        if len(prefix) != 1 or len(prefix[0]) not in (8, 32):
            return self._nxdomain()
        try:
            packed = bytes.fromhex(prefix[0])
        except ValueError:
            return self._nxdomain()
        address = str(ipaddress.ip_address(packed))
        return self._address_answer(owner, address, qtype)

    def _service(self, owner: str, prefix: list[str], qtype: int, transport_limit: bool) -> Answer:
        tag: str | None
        if len(prefix) == 1:
            service, tag = prefix[0], None
        elif len(prefix) == 2 and prefix[0].startswith("_") and prefix[1].startswith("_"):
            service, tag = prefix[0][1:], prefix[1][1:]
            if tag == "tcp":
                tag = None
        elif len(prefix) == 2:
            tag, service = prefix
        else:
            return self._nxdomain()
        registered = {n.lower(): n for n in self.state.known_service_names()}
        if service not in registered:
            return self._nxdomain()
        instances = self.state.dns_instances(registered[service], tag)
        if not instances:
            return self._nxdomain()
        random.shuffle(instances)
        query_name = owner
        if qtype in (TYPE_A, TYPE_AAAA, TYPE_ANY):
            records: list[Record] = []
            seen: set[str] = set()
            for instance in instances:
                address = instance.service.address or self.config.node_address
                record = self._address_record(query_name, address)
                if record is None or address in seen or qtype not in (TYPE_ANY, record.rtype):
                    continue
                seen.add(address)
                records.append(record)
            if transport_limit:
                records = records[: self.config.dns_udp_answer_limit]
            return Answer(answers=records) if records else self._no_data()
        if qtype == TYPE_SRV:
            answers: list[Record] = []
            additional: list[Record] = []
            if transport_limit:
                instances = instances[: self.config.dns_udp_answer_limit]
            for instance in instances:
                target, glue = self._srv_target(instance)
                weight = (
                    instance.service.weight_passing
                    if instance.aggregate_status == PASSING
                    else instance.service.weight_warning
                )
                rdata = struct.pack("!HHH", 1, weight, instance.service.port) + encode_name(target)
                answers.append(Record(query_name, TYPE_SRV, rdata))
                if glue is not None and glue not in additional:
                    additional.append(glue)
            return Answer(answers=answers, additional=additional)
        return self._no_data()

    def _srv_target(self, instance: ServiceInstance) -> tuple[str, Record | None]:
        """Like Consul: the node's name, unless the service has its own address (then <hex>.addr.<dc>)."""
        address = instance.service.address
        if address and address != self.config.node_address:
            try:
                target = self._addr_name(address)
            except ValueError:
                return address, None
            return target, self._address_record(target, address)
        target = self._node_name()
        return target, self._address_record(target, self.config.node_address)

    def handle_packet(self, packet: bytes, udp: bool) -> bytes | None:
        try:
            question = parse_query(packet)
        except DNSFormatError:
            return error_response(packet, RCODE_FORMERR)
        try:
            # Consul trims to udp_answer_limit only for plain 512-byte UDP clients; with EDNS it
            # answers as many records as the advertised size holds.
            small_udp = udp and (question.edns_payload or UDP_DEFAULT_SIZE) <= UDP_DEFAULT_SIZE
            answer = self.resolve(question, transport_limit=small_udp)
        except Exception as error:  # never let one bad packet kill the server
            sys.stderr.write(f"consul-standin dns: {question.name}: {error!r}\n")
            answer = Answer(RCODE_SERVFAIL)
        limit = (question.edns_payload or UDP_DEFAULT_SIZE) if udp else 65535
        return encode_response(question, answer, limit)


class DNSServers:
    """UDP and TCP listeners on the same port."""

    def __init__(self, resolver: ConsulDNS, host: str, port: int) -> None:
        self.resolver = resolver
        self.host = host
        # Port 0 picks a free UDP port, which TCP may not have free: retry until both bind.
        for _attempt in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((host, port))
                chosen = udp.getsockname()[1]
                self.tcp = _DNSTCPServer((host, chosen), _tcp_handler(resolver))
            except OSError:
                udp.close()
                if port != 0:
                    raise
                continue
            break
        else:
            raise OSError(f"no port on {host} is free for DNS over both UDP and TCP")
        self.udp = udp
        self.port: int = chosen
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        udp_thread = threading.Thread(target=self._serve_udp, name="consul-standin-dns-udp", daemon=True)
        tcp_thread = threading.Thread(
            target=self.tcp.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="consul-standin-dns-tcp",
            daemon=True,
        )
        self._threads = [udp_thread, tcp_thread]
        for thread in self._threads:
            thread.start()

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.05)
        while not self._stopping.is_set():
            try:
                packet, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            try:
                reply = self.resolver.handle_packet(packet, udp=True)
            except Exception as error:  # one odd packet must not stop the listener
                sys.stderr.write(f"consul-standin dns: dropped a packet: {error!r}\n")
                continue
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(reply, peer)

    def stop(self) -> None:
        self._stopping.set()
        self.tcp.shutdown()
        self.tcp.server_close()
        for thread in self._threads:
            thread.join(timeout=2)
        self.udp.close()


class _DNSTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _tcp_handler(resolver: ConsulDNS) -> type[socketserver.BaseRequestHandler]:
    class TCPHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            connection: socket.socket = self.request
            connection.settimeout(5)
            try:
                while True:
                    header = _recv_exact(connection, 2)
                    if header is None:
                        return
                    (length,) = struct.unpack("!H", header)
                    packet = _recv_exact(connection, length)
                    if packet is None:
                        return
                    reply = resolver.handle_packet(packet, udp=False)
                    if reply is not None:
                        connection.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    return TCPHandler


def _recv_exact(connection: socket.socket, length: int) -> bytes | None:
    data = b""
    while len(data) < length:
        chunk = connection.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return data
