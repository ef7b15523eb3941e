"""Consul registration: tags switch with the role, a failed check leaves DNS once it propagates.

The contract of propagation (the same against a real Consul) is in tests/consul/test_discovery_contract.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.message
import dns.query
import dns.rcode
import pytest

from dbfence.discovery.consul_catalog import ConsulCatalog, DiscoveryUnavailable, ServiceIdentity
from dbfence.lab.consul_standin import ConsulStandin
from dbfence.lab.wait import wait_until


def resolve(standin: ConsulStandin, name: str) -> list[str]:
    host, port = standin.dns_address.rsplit(":", 1)
    answer = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=2)
    if answer.rcode() == dns.rcode.NXDOMAIN:
        return []
    return sorted(item.address for rrset in answer.answer for item in rrset)


def catalog(standin: ConsulStandin, node: str, address: str) -> ConsulCatalog:
    return ConsulCatalog(f"http://{standin.http_address}", ServiceIdentity("orders", node, address, 3307),
                         check_ttl=30)


def test_primary_name_follows_the_role(standin: ConsulStandin) -> None:
    db1, db2 = catalog(standin, "db1", "127.0.0.11"), catalog(standin, "db2", "127.0.0.12")
    db1.register("primary")
    db2.register("replica")
    # A new registration starts critical: nobody is in DNS before the agent vouches for it.
    assert resolve(standin, "primary.orders.service.consul") == []
    db1.pass_check("admitting")
    db2.pass_check("replicating")
    assert resolve(standin, "primary.orders.service.consul") == ["127.0.0.11"]
    assert resolve(standin, "replica.orders.service.consul") == ["127.0.0.12"]

    # Failover: the old primary fails its check first, then the new one takes the tag. Consul syncs a
    # check to its servers in the background and DNS may answer from any of them: poll, as apps must.
    db1.fail_check("fencing: database unhealthy")
    failed_at = time.monotonic()
    wait_until(lambda: resolve(standin, "primary.orders.service.consul") == [], timeout=10,
               what="the old primary to leave DNS")
    print(f"FIGURE stand-in failed check -> out of DNS = {time.monotonic() - failed_at:.4f} s")
    db2.register("primary")
    db2.pass_check()
    db1.register("replica")
    wait_until(lambda: resolve(standin, "primary.orders.service.consul") == ["127.0.0.12"], timeout=10,
               what="the new primary in DNS")
    assert db2.healthy_instances("primary") == [{"node": "db2", "address": "127.0.0.12", "port": 3307}]


def test_deregister_removes_the_instance(standin: ConsulStandin) -> None:
    db1 = catalog(standin, "db1", "127.0.0.11")
    db1.register("replica")
    db1.pass_check()
    assert resolve(standin, "replica.orders.service.consul") == ["127.0.0.11"]
    db1.deregister()
    assert resolve(standin, "replica.orders.service.consul") == []


def test_unreachable_agent_is_a_typed_error() -> None:
    gone = ConsulCatalog("http://127.0.0.1:1", ServiceIdentity("orders", "db1", "127.0.0.1", 3307),
                         check_ttl=10, timeout=0.5)
    with pytest.raises(DiscoveryUnavailable, match="Consul service register failed"):
        gone.register("primary")
    with pytest.raises(ValueError, match="http://host:port"):
        ConsulCatalog("localhost", ServiceIdentity("o", "n", "a", 1), check_ttl=1)


def test_acl_token_is_sent(standin_factory: Callable[..., ConsulStandin]) -> None:
    secured = standin_factory(acl_token="tok")
    anonymous = catalog(secured, "db1", "127.0.0.11")
    with pytest.raises(DiscoveryUnavailable):
        anonymous.register("primary")
    trusted = ConsulCatalog(f"http://{secured.http_address}",
                            ServiceIdentity("orders", "db1", "127.0.0.11", 3307), check_ttl=30, token="tok")
    trusted.register("primary")
    trusted.pass_check()
    assert trusted.healthy_instances("primary")[0]["node"] == "db1"
