"""Real DCS servers for the lock tests: a 3-member etcd, the Consul stand-in, a real Consul if present.

Each server is a real process started here and stopped by pid. The contract suite
runs once per DCS through the parametrized ``dcs`` fixture.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pytest

from dbfence.lab import etcd_servers
from dbfence.lab.etcd_servers import EtcdMember
from dbfence.lab.procs import ProcessRef, free_port, port_open, spawn, stop
from dbfence.lab.wait import wait_until
from dbfence.locks import DcsConfig, LeaseLock, LockSettings, open_lock
from dbfence.locks.etcd import EtcdLeaseLock
from tests.consul.real_consul import start_real_consul
from tests.locks.locks_support import put_raw

# Short TTLs keep the suite fast. etcd accepts 2 s and more with the lab's 500 ms
# election timeout; Consul's minimum session TTL is 10 s. The call timeout leaves room
# for etcd's fsyncs on a loaded 2-core machine.
ETCD_SETTINGS = LockSettings(ttl=4, margin=2.0, call_timeout=1.5)
CONSUL_SETTINGS = LockSettings(ttl=10, margin=3.0, call_timeout=2.0, lock_delay=1)


def _tmp_root() -> Path:
    root = Path(os.environ.get("DBFENCE_TEST_LABS", tempfile.gettempdir())) / "dbfence-tests"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="locks-", dir=root))


@dataclass
class EtcdTrio:
    """Three real etcd members; tests may kill and restart them (and must leave all three up)."""

    members: list[EtcdMember]

    @property
    def urls(self) -> list[str]:
        return [member.client_url for member in self.members]

    def member_for(self, label: str) -> EtcdMember:
        return next(m for m in self.members if m.client_url.endswith(label))

    def kill(self, member: EtcdMember) -> None:
        member.process.signal(signal.SIGKILL)
        wait_until(lambda: not member.process.alive(), timeout=10, what=f"{member.name} to die")
        with contextlib.suppress(ChildProcessError):  # our child: collect it, leave no zombie
            os.waitpid(member.pid, 0)

    def restart(self, member: EtcdMember) -> None:
        index = self.members.index(member)
        self.members[index] = etcd_servers.restart_member(member)

    def ensure_all_up(self) -> None:
        for member in list(self.members):
            if not member.process.alive():
                self.restart(member)
        for member in self.members:
            wait_until(partial(etcd_servers.healthy, member), timeout=30, what=f"{member.name} healthy")

    def leader(self) -> EtcdMember:
        """The member that is currently the raft leader (asked through the Maintenance API)."""
        import grpc  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
        from pyetcd import etcdrpc  # noqa: PLC0415

        def probe() -> EtcdMember | None:
            for member in self.members:
                if not member.process.alive():
                    continue
                target = member.client_url.removeprefix("http://")
                with grpc.insecure_channel(target) as channel:
                    status = etcdrpc.MaintenanceStub(channel).Status(etcdrpc.StatusRequest(), timeout=1.0)
                if status.leader and status.leader == status.header.member_id:
                    return member
            return None

        return wait_until(probe, timeout=15, what="an etcd leader")

    def stop_all(self) -> None:
        for member in self.members:
            etcd_servers.stop_member(member)
            # stop() skips a member that already exited; collect it anyway (no zombie).
            with contextlib.suppress(ChildProcessError):
                os.waitpid(member.pid, os.WNOHANG)


@pytest.fixture(scope="session")
def etcd_trio() -> Iterator[EtcdTrio]:
    directory = _tmp_root()
    trio = EtcdTrio(etcd_servers.start_cluster(directory, 3))
    try:
        trio.ensure_all_up()
        yield trio
    finally:
        trio.stop_all()
        shutil.rmtree(directory, ignore_errors=True)  # its processes are stopped: nothing to keep


@dataclass
class ConsulServer:
    address: str
    process: ProcessRef | None = None


@pytest.fixture(scope="session")
def consul_standin() -> Iterator[ConsulServer]:
    if importlib.util.find_spec("dbfence.lab.consul_standin") is None:
        pytest.skip("the Consul stand-in (dbfence.lab.consul_standin) is not on this branch yet")
    directory = _tmp_root()
    http_port = free_port()
    address = f"127.0.0.1:{http_port}"
    argv = [sys.executable, "-m", "dbfence.lab.consul_standin", "--http-addr", address,
            "--dns-addr", f"127.0.0.1:{free_port()}"]
    ref = spawn(argv, directory / "standin.log")
    try:
        wait_until(lambda: port_open("127.0.0.1", http_port), timeout=20, what="the Consul stand-in")
        yield ConsulServer(address, ref)
    finally:
        stop(ref, grace=5.0)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def consul_real() -> Iterator[ConsulServer]:
    directory = _tmp_root()
    try:
        real = start_real_consul(directory)
        try:
            yield ConsulServer(real.http_address, real.process)
        finally:
            real.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Dcs:
    """One DCS under test, with a fresh cluster name per test so tests never see each other."""

    name: str
    config: DcsConfig
    settings: LockSettings
    cluster: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:10]}")
    opened: list[LeaseLock] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.config.kind

    def lock(self, node: str, settings: LockSettings | None = None) -> LeaseLock:
        lock = open_lock(self.config, self.cluster, node, settings or self.settings)
        self.opened.append(lock)
        return lock

    def put_raw(self, key: str, value: bytes) -> None:
        """Write a value behind dbfence's back (to plant garbage)."""
        put_raw(self.config, key, value)

    def takeover_delay(self) -> float:
        """How long the DCS refuses the keys of an invalidated lease after it ends (Consul's lock-delay)."""
        if self.kind == "etcd":
            return 0.0
        from dbfence.locks.consul import effective_lock_delay  # noqa: PLC0415

        return effective_lock_delay(self.settings)

    def expiry_timeout(self) -> float:
        """How long a lease may take to vanish on the server after its last renewal."""
        if self.kind == "etcd":
            return self.settings.ttl + 3.0
        # Consul: up to 2 x TTL before invalidation, then the deletes.
        return 2 * self.settings.ttl + 5.0

    def cleanup(self) -> None:
        for lock in self.opened:
            with contextlib.suppress(Exception):  # a test may break the DCS on purpose; TTLs clean up
                lock.close_session()
            lock.close()


@pytest.fixture(params=["etcd", "consul-standin", "consul-real"])
def dcs(request: pytest.FixtureRequest) -> Iterator[Dcs]:
    if request.param == "etcd":
        trio: EtcdTrio = request.getfixturevalue("etcd_trio")
        trio.ensure_all_up()
        under_test = Dcs("etcd", DcsConfig(kind="etcd", endpoints=tuple(trio.urls)), ETCD_SETTINGS)
    else:
        server: ConsulServer = request.getfixturevalue(request.param.replace("-", "_"))
        config = DcsConfig(kind="consul", endpoints=(server.address,))
        under_test = Dcs(request.param, config, CONSUL_SETTINGS)
    try:
        yield under_test
    finally:
        under_test.cleanup()


@pytest.fixture(params=["consul-standin", "consul-real"])
def consul_dcs(request: pytest.FixtureRequest) -> Iterator[Dcs]:
    """Consul only (the Consul contract): the stand-in, and a real ``consul agent -dev`` when on PATH."""
    server: ConsulServer = request.getfixturevalue(request.param.replace("-", "_"))
    config = DcsConfig(kind="consul", endpoints=(server.address,))
    under_test = Dcs(request.param, config, CONSUL_SETTINGS)
    try:
        yield under_test
    finally:
        under_test.cleanup()


@pytest.fixture
def etcd_dcs(etcd_trio: EtcdTrio) -> Iterator[tuple[Dcs, EtcdTrio]]:
    """etcd only (failover tests): the trio is whole again after the test."""
    etcd_trio.ensure_all_up()
    under_test = Dcs("etcd", DcsConfig(kind="etcd", endpoints=tuple(etcd_trio.urls)), ETCD_SETTINGS)
    try:
        yield under_test, etcd_trio
    finally:
        etcd_trio.ensure_all_up()
        under_test.cleanup()


def etcd_lock_of(dcs: Dcs, node: str, endpoints: list[str] | None = None) -> EtcdLeaseLock:
    """An etcd lock of ``dcs``, optionally with its endpoints in a chosen order (first = tried first)."""
    if endpoints is not None:
        dcs.config = replace(dcs.config, endpoints=tuple(endpoints))
    lock = dcs.lock(node)
    assert isinstance(lock, EtcdLeaseLock)
    return lock
