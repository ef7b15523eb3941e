"""Fixtures shared by every test area: labs of real servers, started and always stopped."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.consul_standin import ConsulStandin

LabFactory = Callable[..., LabCluster]


def _lab_root() -> Path:
    # Short paths keep MariaDB's unix socket under the 107-byte limit.
    root = Path(os.environ.get("DBFENCE_TEST_LABS", tempfile.gettempdir())) / "dbfence-tests"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """Start labs on demand for one test; every one is torn down afterwards, even on failure."""
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


@pytest.fixture(scope="session")
def shared_lab() -> Iterator[LabCluster]:
    """One lab of 3 MariaDB + 3 etcd for tests that leave it as they found it."""
    directory = Path(tempfile.mkdtemp(prefix="shared-", dir=_lab_root()))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=3, etcd_members=3))
    try:
        yield lab
    finally:
        LabCluster.load(lab.directory).down()


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
