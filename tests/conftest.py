"""Fixtures shared by every test area: labs of real servers, started and always stopped."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbfence.lab import procs
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.consul_standin import ConsulStandin

LabFactory = Callable[..., LabCluster]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make unit` runs two workers), each worker hands out lab ports from a
    slice of the lab's range of its own, it and every process it starts (the env is inherited)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker.startswith("gw") or not count or procs.PORTS_ENV in os.environ:
        return
    ports = procs._LISTEN_PORTS
    width = len(ports) // int(count)
    first = ports.start + int(worker.removeprefix("gw")) * width
    os.environ[procs.PORTS_ENV] = f"{first}-{first + width - 1}"


def _lab_root() -> Path:
    # Short paths keep MariaDB's unix socket under the 107-byte limit.
    root = Path(os.environ.get("DBFENCE_TEST_LABS", tempfile.gettempdir())) / "dbfence-tests"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True  # lab fixtures keep a failed test's files for its logs
    return report


_FAILED = pytest.StashKey[bool]()


def _remove_unless_failed(request: pytest.FixtureRequest, directory: Path) -> None:
    # Each lab is ~400 MB of data directories: a full run would otherwise fill a small disk.
    if not request.node.stash.get(_FAILED, False) and not os.environ.get("DBFENCE_KEEP_LABS"):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    """Start labs on demand for one test; every one is torn down afterwards, even on failure,
    and its files removed unless the test failed (or DBFENCE_KEEP_LABS is set)."""
    labs: list[LabCluster] = []
    directory = Path(tempfile.mkdtemp(prefix="lab-", dir=_lab_root()))

    def make(**kwargs: Any) -> LabCluster:
        spec = LabSpec(directory=directory / f"lab{len(labs) + 1}", **kwargs)
        lab = LabCluster.up(spec)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            LabCluster.load(lab.directory).down()
        _remove_unless_failed(request, directory)


@pytest.fixture(scope="session")
def shared_lab() -> Iterator[LabCluster]:
    """One lab of 3 MariaDB + 3 etcd for tests that leave it as they found it."""
    directory = Path(tempfile.mkdtemp(prefix="shared-", dir=_lab_root()))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=3, etcd_members=3))
    try:
        yield lab
    finally:
        LabCluster.load(lab.directory).down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def standin_factory() -> Iterator[Callable[..., ConsulStandin]]:
    """Consul stand-ins on free ports, each stopped after the test."""
    started: list[ConsulStandin] = []

    def make(**options: Any) -> ConsulStandin:
        standin = ConsulStandin(http_port=0, dns_port=0, **options).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def standin(standin_factory: Callable[..., ConsulStandin]) -> ConsulStandin:
    return standin_factory()
