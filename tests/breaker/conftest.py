"""One single-node MariaDB lab for the gate tests, and a gate factory that always stops its gates."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.breaker.kernel import probe
from dbfence.lab.cluster import LabCluster, LabSpec

GateFactory = Callable[..., Gate]


@pytest.fixture(scope="package")
def gate_lab() -> Iterator[LabCluster]:
    root = Path(tempfile.gettempdir()) / "dbfence-tests"
    root.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="gate-", dir=root))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=1, etcd_members=1))
    try:
        with lab.connect("db1") as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS gate_t")
            cur.execute("CREATE TABLE IF NOT EXISTS gate_t.marks (mark VARCHAR(64) PRIMARY KEY)")
        yield lab
    finally:
        LabCluster.load(lab.directory).down()
        shutil.rmtree(directory, ignore_errors=True)  # data directories are large; nothing runs here now


@pytest.fixture(params=["worker", "kernel"])
def forwarding(request: pytest.FixtureRequest) -> str:
    """Where admitted links move their bytes: every gate test runs both ways."""
    mode = str(request.param)
    if mode == "kernel":
        missing = probe()
        if missing is not None:
            pytest.skip(f"this host cannot forward in the kernel: {missing}")
    return mode


@pytest.fixture
def make_gate(gate_lab: LabCluster, forwarding: str) -> Iterator[GateFactory]:
    gates: list[Gate] = []
    node = gate_lab.mysql[0]

    def make(**overrides: Any) -> Gate:
        settings: dict[str, Any] = {
            "listen_port": 0,
            "backend_host": node.host,
            "backend_port": node.port,
            "workers": 2,
            # "on", not "auto": a kernel test must fail, not quietly test the worker path.
            "kernel_forwarding": "on" if forwarding == "kernel" else "off",
        }
        settings.update(overrides)
        gate = Gate(GateConfig(**settings))
        gates.append(gate)
        return gate.start()

    try:
        yield make
    finally:
        for gate in gates:
            gate.stop()
