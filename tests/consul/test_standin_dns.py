"""The stand-in's DNS interface, queried with dnspython and once with dig."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import consul
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.standin_helpers import client_for, wait_until


def ask(standin: ConsulStandin, name: str, rdtype: str = "A", tcp: bool = False) -> Any:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=standin.dns_port, timeout=2)
    return dns.query.udp(query, "127.0.0.1", port=standin.dns_port, timeout=2)


def answers(response: Any, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(r.to_text() for rrset in response.answer if rrset.rdtype == wanted for r in rrset)


@pytest.fixture
def lab_cluster(standin: ConsulStandin) -> ConsulStandin:
    """Service "lab": db1 primary on 127.0.0.11:3307, db2 replica on the node address :3308, both passing."""
    client = client_for(standin)
    client.agent.service.register(
        "lab",
        service_id="lab-db1",
        address="127.0.0.11",
        port=3307,
        tags=["primary"],
        check=consul.Check.ttl("30s"),
    )
    client.agent.service.register(
        "lab", service_id="lab-db2", port=3308, tags=["replica"], check=consul.Check.ttl("30s")
    )
    client.agent.check.ttl_pass("service:lab-db1")
    client.agent.check.ttl_pass("service:lab-db2")
    return standin


def test_tagged_a_and_srv_answers(lab_cluster: ConsulStandin) -> None:
    response = ask(lab_cluster, "primary.lab.service.consul")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert answers(response, "A") == ["127.0.0.11"]
    assert all(rrset.ttl == 0 for rrset in response.answer)
    response = ask(lab_cluster, "primary.lab.service.consul", "SRV")
    assert answers(response, "SRV") == ["1 1 3307 7f00000b.addr.dc1.consul."]
    glue = {rrset.name.to_text(): [r.to_text() for r in rrset] for rrset in response.additional}
    assert glue["7f00000b.addr.dc1.consul."] == ["127.0.0.11"]


def test_srv_target_is_the_node_when_the_service_has_no_address(lab_cluster: ConsulStandin) -> None:
    response = ask(lab_cluster, "replica.lab.service.dc1.consul", "SRV")
    assert answers(response, "SRV") == ["1 1 3308 standin.node.dc1.consul."]
    glue = {rrset.name.to_text(): [r.to_text() for r in rrset] for rrset in response.additional}
    assert glue["standin.node.dc1.consul."] == ["127.0.0.1"]
    assert answers(ask(lab_cluster, "replica.lab.service.consul"), "A") == ["127.0.0.1"]


def test_untagged_rfc2782_and_case_insensitive_lookups(lab_cluster: ConsulStandin) -> None:
    assert answers(ask(lab_cluster, "lab.service.consul"), "A") == ["127.0.0.1", "127.0.0.11"]
    assert len(answers(ask(lab_cluster, "_lab._tcp.service.consul", "SRV"), "SRV")) == 2
    assert answers(ask(lab_cluster, "_lab._primary.service.consul", "SRV"), "SRV") == [
        "1 1 3307 7f00000b.addr.dc1.consul."
    ]
    assert answers(ask(lab_cluster, "PRIMARY.Lab.Service.Consul"), "A") == ["127.0.0.11"]
    assert answers(ask(lab_cluster, "standin.node.consul"), "A") == ["127.0.0.1"]
    assert answers(ask(lab_cluster, "7f00000b.addr.dc1.consul"), "A") == ["127.0.0.11"]


def test_unknown_names_are_nxdomain_with_an_soa(lab_cluster: ConsulStandin) -> None:
    for name in (
        "nope.service.consul",
        "standby.lab.service.consul",
        "other.node.consul",
        "lab.service.dc9.consul",
    ):
        response = ask(lab_cluster, name)
        assert response.rcode() == dns.rcode.NXDOMAIN, name
        assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]


def test_failing_check_drops_the_instance_from_dns(lab_cluster: ConsulStandin) -> None:
    client = client_for(lab_cluster)
    client.agent.check.ttl_fail("service:lab-db1", notes="fenced")
    response = ask(lab_cluster, "primary.lab.service.consul")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(lab_cluster, "lab.service.consul"), "A") == ["127.0.0.1"]


def test_ttl_expiry_drops_the_instance_from_dns(standin: ConsulStandin) -> None:
    client = client_for(standin)
    client.agent.service.register(
        "lab",
        service_id="db1",
        address="127.0.0.12",
        port=3307,
        tags=["primary"],
        check=consul.Check.ttl("300ms"),
    )
    client.agent.check.ttl_pass("service:db1")
    assert answers(ask(standin, "primary.lab.service.consul"), "A") == ["127.0.0.12"]
    wait_until(
        lambda: ask(standin, "primary.lab.service.consul").rcode() == dns.rcode.NXDOMAIN,
        timeout=2,
        what="the expired instance to leave DNS",
    )


def test_warning_instances_follow_dns_only_passing(standin_factory: Callable[..., ConsulStandin]) -> None:
    for only_passing, expected in ((False, dns.rcode.NOERROR), (True, dns.rcode.NXDOMAIN)):
        standin = standin_factory(dns_only_passing=only_passing)
        client = client_for(standin)
        client.agent.service.register(
            "lab", service_id="db2", port=3308, tags=["replica"], check=consul.Check.ttl("30s")
        )
        client.agent.check.ttl_warn("service:db2")
        assert ask(standin, "replica.lab.service.consul").rcode() == expected


def test_udp_answers_without_edns_are_limited_to_three_records(standin: ConsulStandin) -> None:
    client = client_for(standin)
    for n in range(5):
        client.agent.service.register(
            "many", service_id=f"m{n}", address=f"127.0.0.{20 + n}", port=3307, check=consul.Check.ttl("30s")
        )
        client.agent.check.ttl_pass(f"service:m{n}")
    assert len(answers(ask(standin, "many.service.consul"), "A")) == 3
    assert len(answers(ask(standin, "many.service.consul", tcp=True), "A")) == 5
    # Like Consul, the limit is for plain 512-byte UDP only: an EDNS client gets what fits its size.
    edns = dns.message.make_query("many.service.consul", "A", use_edns=0, payload=4096)
    reply = dns.query.udp(edns, "127.0.0.1", port=standin.dns_port, timeout=2)
    assert len(answers(reply, "A")) == 5
    small = dns.message.make_query("many.service.consul", "A", use_edns=0, payload=512)
    reply = dns.query.udp(small, "127.0.0.1", port=standin.dns_port, timeout=2)
    assert len(answers(reply, "A")) == 3


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")
def test_dig_accepts_the_answers(lab_cluster: ConsulStandin) -> None:
    output = subprocess.run(
        [
            "dig",
            "@127.0.0.1",
            "-p",
            str(lab_cluster.dns_port),
            "primary.lab.service.consul",
            "+tries=1",
            "+time=2",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "status: NOERROR" in output
    assert "flags: qr aa rd" in output
    assert "primary.lab.service.consul. 0\tIN\tA\t127.0.0.11" in output
    srv = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(lab_cluster.dns_port), "+short", "lab.service.consul", "SRV"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.split("\n")
    assert sorted(line for line in srv if line) == [
        "1 1 3307 7f00000b.addr.dc1.consul.",
        "1 1 3308 standin.node.dc1.consul.",
    ]


def test_garbage_packets_get_formerr_and_the_server_keeps_answering(lab_cluster: ConsulStandin) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fshort", ("127.0.0.1", lab_cluster.dns_port)
        )
        reply, _ = sock.recvfrom(512)
    assert reply[:2] == b"\x12\x34"
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    assert answers(ask(lab_cluster, "primary.lab.service.consul"), "A") == ["127.0.0.11"]
