"""Which endpoints count as local, so that the agent skips TLS (35-55 ms of CPU per connection)
only where traffic never leaves the host."""

from __future__ import annotations

import ipaddress
import socket

import psutil
import pytest

from dbfence.mysql.connection import Endpoint, is_local


def test_loopback_socket_and_localhost_are_local() -> None:
    assert is_local(Endpoint("127.0.0.1", 3306))
    assert is_local(Endpoint("::1", 3306))
    assert is_local(Endpoint("localhost", 3306))
    assert is_local(Endpoint("db.example", 3306, unix_socket="/run/mysqld/mysqld.sock"))


def test_an_address_of_this_host_is_local() -> None:
    own = [entry.address for entries in psutil.net_if_addrs().values() for entry in entries
           if entry.family == socket.AF_INET and not ipaddress.ip_address(entry.address).is_loopback]
    if not own:
        pytest.skip("this host has no non-loopback IPv4 address")
    assert is_local(Endpoint(own[0], 3306))


def test_other_hosts_and_names_are_not_local() -> None:
    assert not is_local(Endpoint("192.0.2.7", 3306))  # TEST-NET-1: never assigned here
    assert not is_local(Endpoint("db2.example", 3306))  # a name is not resolved: TLS stays on
