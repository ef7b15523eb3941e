"""The agent's own start-time check of proxy_protocol_networks (gate.proxy_protocol = true), against
a real MariaDB: the same rule as `dbfence check`'s, a refusal for its failure, a warning otherwise."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbfence.config import load_config
from dbfence.lab.agents import AgentTuning, agent_address, write_agent_files
from dbfence.lab.cluster import LabCluster
from dbfence.preflight.at_start import proxy_protocol_refusal

pytestmark = pytest.mark.timeout(180)
ROOT = str(Path(__file__).resolve().parents[2])


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def lab_and_config(lab_factory: Callable[..., LabCluster]) -> Iterator[tuple[LabCluster, Path]]:
    lab = lab_factory(mysql_count=1, etcd_members=1)
    address = agent_address(1)
    tuning = AgentTuning(ttl=3.0, margin=1.0, proxy_protocol=True, backend_source="127.0.0.2")
    path = write_agent_files(lab, lab.node("db1"), address, _free_port(address), _free_port(address), tuning)
    yield lab, path


def _set_networks(lab: LabCluster, value: str) -> None:
    with lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL proxy_protocol_networks = %s", (value,))


def test_a_mysqld_that_would_refuse_the_gates_header_stops_the_agent_with_the_fix(
        lab_and_config: tuple[LabCluster, Path], caplog: pytest.LogCaptureFixture) -> None:
    lab, path = lab_and_config
    config = load_config(path)
    refusal = proxy_protocol_refusal(config)
    assert refusal is not None and refusal.startswith("gate.proxy_protocol = true, but "), refusal
    assert "SET GLOBAL proxy_protocol_networks = '127.0.0.2/32'" in refusal
    # The agent itself: it refuses to start, saying why and how to fix it.
    started = subprocess.run([sys.executable, "-m", "dbfence", "agent", "--config", str(path)],
                             capture_output=True, text=True, timeout=60, check=False,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    assert started.returncode == 1, started.stderr[-2000:]
    assert f"refusing to start: {refusal}" in started.stderr

    _set_networks(lab, "127.0.0.2/32")
    assert proxy_protocol_refusal(config) is None

    # Listing more than the gate: clients there may claim any address. Started, but said loudly.
    _set_networks(lab, "127.0.0.2/32,10.0.0.0/8")
    with caplog.at_level(logging.WARNING, logger="dbfence.agent"):
        assert proxy_protocol_refusal(config) is None
    [warning] = [json.loads(record.getMessage()) for record in caplog.records]
    assert warning["event"] == "proxy_protocol_networks" and "10.0.0.0/8" in warning["detail"]
    _set_networks(lab, "")


def test_off_or_mysqld_down_never_refuses(lab_and_config: tuple[LabCluster, Path],
                                          caplog: pytest.LogCaptureFixture) -> None:
    lab, path = lab_and_config
    text = path.read_text()
    path.write_text(text.replace("proxy_protocol = true", "proxy_protocol = false", 1))
    assert proxy_protocol_refusal(load_config(path)) is None  # not asked at all
    path.write_text(text)
    lab.kill_mysql("db1")
    with caplog.at_level(logging.WARNING, logger="dbfence.agent"):
        assert proxy_protocol_refusal(load_config(path)) is None
    assert "proxy_protocol_unchecked" in caplog.text
