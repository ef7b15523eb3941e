"""Discovery through Consul, the same against the stand-in and a real ``consul agent -dev``.

A failed check propagates, it does not teleport: the agent syncs the check to the servers in the
background and DNS may answer from any server. So the tests poll DNS and ``?passing`` until the
old primary is gone and record how long it took, as an application would experience it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul
import dns.message
import dns.query
import dns.rcode
import pytest

from dbfence.discovery.consul_catalog import ConsulCatalog, ServiceIdentity
from dbfence.lab.consul_standin import ConsulStandin
from tests.consul.real_consul import start_real_consul
from tests.consul.standin_helpers import wait_until
from tests.locks.locks_support import record_figure

# Generous: a real Consul syncs a check change within moments; this only bounds a broken sync.
PROPAGATION_BOUND = 10.0


@dataclass
class DiscoveryConsul:
    name: str
    http_address: str
    dns_port: int

    def client(self) -> Any:
        host, port = self.http_address.rsplit(":", 1)
        return consul.Consul(host=host, port=int(port))

    def catalog(self, cluster: str, node: str, address: str) -> ConsulCatalog:
        return ConsulCatalog(f"http://{self.http_address}", ServiceIdentity(cluster, node, address, 3307),
                             check_ttl=30)

    def resolve(self, name: str, *, edns: bool = False) -> list[str]:
        # dnspython turns EDNS on whenever a payload is given: pass one only for an EDNS query.
        query = (dns.message.make_query(name, "A", use_edns=0, payload=4096) if edns
                 else dns.message.make_query(name, "A"))
        answer = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=2)
        if answer.rcode() == dns.rcode.NXDOMAIN:
            return []
        return sorted(item.address for rrset in answer.answer for item in rrset)

    def passing(self, cluster: str, tag: str) -> list[str]:
        _, rows = self.client().health.service(cluster, tag=tag, passing=True)
        return sorted(row["Service"]["Address"] for row in rows)


@pytest.fixture(params=["standin", "standin-slow-sync", "real"])
def discovery_consul(request: pytest.FixtureRequest) -> Iterator[DiscoveryConsul]:
    if request.param.startswith("standin"):
        # The slow one syncs check changes to its catalog 300 ms late: clients that do not poll fail.
        delay = 0.3 if request.param == "standin-slow-sync" else 0.0
        standin = ConsulStandin(http_port=0, dns_port=0, catalog_sync_delay=delay).start()
        try:
            yield DiscoveryConsul(f"consul-{request.param}", standin.http_address, standin.dns_port)
        finally:
            standin.stop()
        return
    directory = Path(tempfile.mkdtemp(prefix="consul-real-"))
    try:
        real = start_real_consul(directory)
        try:
            yield DiscoveryConsul("consul-real", real.http_address, real.dns_port)
        finally:
            real.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _until(probe: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    wait_until(probe, timeout=PROPAGATION_BOUND, interval=0.005, what=what)
    return time.monotonic() - started


def test_a_failed_check_leaves_dns_and_passing_after_propagation(discovery_consul: DiscoveryConsul) -> None:
    db1 = discovery_consul.catalog("orders", "db1", "127.0.0.11")
    db2 = discovery_consul.catalog("orders", "db2", "127.0.0.12")
    db1.register("primary")
    db2.register("replica")
    db1.pass_check("admitting")
    db2.pass_check("replicating")
    _until(lambda: discovery_consul.resolve("primary.orders.service.consul") == ["127.0.0.11"],
           "db1 in DNS as the primary")

    db1.fail_check("fencing: database unhealthy")
    failed_at = time.monotonic()
    _until(lambda: discovery_consul.passing("orders", "primary") == [], "db1 out of ?passing")
    passing_gone = time.monotonic() - failed_at
    _until(lambda: discovery_consul.resolve("primary.orders.service.consul") == [], "db1 out of DNS")
    dns_gone = time.monotonic() - failed_at
    record_figure(f"{discovery_consul.name} failed check -> gone from ?passing", passing_gone)
    record_figure(f"{discovery_consul.name} failed check -> gone from DNS", dns_gone)

    db2.register("primary")
    db2.pass_check()
    db1.register("replica")
    appeared = _until(lambda: discovery_consul.resolve("primary.orders.service.consul") == ["127.0.0.12"],
                      "db2 in DNS as the primary")
    record_figure(f"{discovery_consul.name} new primary registered -> in DNS", appeared)
    assert discovery_consul.passing("orders", "primary") == ["127.0.0.12"]


def test_tag_filters_are_case_insensitive(discovery_consul: DiscoveryConsul) -> None:
    db1 = discovery_consul.catalog("orders", "db1", "127.0.0.11")
    db1.register("primary")
    db1.pass_check()
    _until(lambda: discovery_consul.passing("orders", "primary") == ["127.0.0.11"], "db1 passing")
    assert discovery_consul.passing("orders", "PRIMARY") == ["127.0.0.11"]
    assert discovery_consul.resolve("Primary.Orders.service.consul") == ["127.0.0.11"]


def test_the_udp_answer_limit_applies_only_without_edns(discovery_consul: DiscoveryConsul) -> None:
    for n in range(5):
        member = discovery_consul.catalog("many", f"db{n}", f"127.0.0.{20 + n}")
        member.register("replica")
        member.pass_check()
    _until(lambda: len(discovery_consul.passing("many", "replica")) == 5, "five passing members")
    _until(lambda: len(discovery_consul.resolve("replica.many.service.consul", edns=True)) == 5,
           "five members in an EDNS answer")
    assert len(discovery_consul.resolve("replica.many.service.consul")) == 3


def test_a_vanished_check_is_registered_again(discovery_consul: DiscoveryConsul) -> None:
    """The agent forgot the service (restarted without it, or an operator deregistered it)."""
    db1 = discovery_consul.catalog("orders", "db1", "127.0.0.11")
    db1.register("primary")
    db1.pass_check()
    assert discovery_consul.client().agent.service.deregister(db1.identity.service_id) is True
    assert discovery_consul.client().agent.check.ttl_pass(db1.identity.check_id) is False  # a 404
    db1.pass_check("admitting")
    assert db1.reregistrations == 1
    _until(lambda: discovery_consul.passing("orders", "primary") == ["127.0.0.11"], "db1 passing again")
    discovery_consul.client().agent.service.deregister(db1.identity.service_id)
    db1.fail_check("fencing")  # fencing with a vanished check: registered again, and critical
    assert db1.reregistrations == 2
    checks = discovery_consul.client().agent.checks()
    assert checks[db1.identity.check_id]["Status"] == "critical"
    assert discovery_consul.passing("orders", "primary") == []
