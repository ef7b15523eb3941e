"""Namespaced labs: addresses are planned inside a private subnet, and every namespace, link and
rule the lab makes is gone after ``down`` (or after a crash, by name prefix)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.lab import netns, partition
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.errors import LabError
from dbfence.lab.faults import all_faults
from dbfence.lab.procs import spawn
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory

needs_netns = pytest.mark.skipif(netns.unavailable_reason() is not None,
                                 reason=f"network partitions skipped: {netns.unavailable_reason()}")


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def test_plan_puts_every_host_in_the_private_subnet() -> None:
    layout = netns.plan("abc123", ["db1", "db2"], "10.99.7.0/24")
    assert layout.addresses == {"client": "10.99.7.2", "dcs": "10.99.7.3", "db1": "10.99.7.11",
                                "db2": "10.99.7.12"}
    assert layout.namespace("db2") == "dbf-abc123-db2"
    assert layout.switch == "dbf-abc123-switch"
    assert layout.exec_argv("db1", ["true"]) == ["ip", "netns", "exec", "dbf-abc123-db1", "true"]
    assert netns.NetnsLayout.from_json(layout.to_json()) == layout


@pytest.mark.parametrize("subnet", ["8.8.8.0/24", "10.1.2.0/28", "fd00::/64", "nonsense"])
def test_plan_refuses_public_or_tiny_subnets(subnet: str) -> None:
    with pytest.raises(LabError):
        netns.plan("abc123", ["db1"], subnet)


def test_leftover_cleanup_only_touches_the_labs_own_names() -> None:
    with pytest.raises(LabError, match="outside"):
        netns.remove_leftovers("")


@needs_netns
@pytest.mark.parametrize("dcs", ["etcd", "consul"])
def test_namespaced_lab_uses_only_its_namespaces_and_removes_them_all(lab_factory: LabFactory,
                                                                      dcs: str) -> None:
    links_before = _root_links()
    lab = lab_factory(mysql_count=2, netns=True, dcs=dcs)
    layout = lab.netns
    assert layout is not None
    prefix = layout.prefix
    assert netns.existing_namespaces(prefix) == sorted(layout.namespaces)
    assert _root_links() == links_before  # every veth was born outside the root namespace
    assert {n.host for n in lab.mysql} == {layout.address("db1"), layout.address("db2")}
    assert all(url.startswith(f"http://{layout.address('dcs')}:") for url in lab.dcs_endpoints)
    replica = next(m for m in lab.status()["mysql"] if m["name"] == "db2")
    assert replica["role"] == "replica" and replica["io_running"] == "Yes"

    LabCluster.load(lab.directory).down()
    assert netns.existing_namespaces(prefix) == []
    assert _root_links() == links_before


@needs_netns
def test_partition_drops_traffic_both_ways_and_heal_restores_it(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, netns=True)
    layout = lab.netns
    assert layout is not None

    def db2_io_thread() -> str:
        return str(next(m for m in lab.status()["mysql"] if m["name"] == "db2").get("io_running"))

    assert lab.isolate("db1") == ["dcs", "db2"]
    assert netns.isolated_hosts(layout) == ["db1"]
    # The client still reaches db1 (only the DCS and the peers are cut)...
    with lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    # ...but db1 cannot reach the DCS: a silent drop, so the connection times out.
    probe = subprocess.run(
        layout.exec_argv("db1", [sys.executable, "-c",
                                 "import socket,sys; socket.create_connection(sys.argv[1:3], timeout=1)",
                                 layout.address("dcs"), lab.dcs_endpoints[0].rsplit(":", 1)[1]]),
        capture_output=True, text=True, check=False, timeout=30)
    assert probe.returncode != 0 and "timed out" in probe.stderr
    lab.heal("db1")
    lab.heal("db1")  # healing twice is harmless
    assert netns.isolated_hosts(layout) == []
    wait_until(lambda: db2_io_thread() == "Yes", timeout=30, what="db2 to replicate from db1 again")


@needs_netns
def test_leftovers_of_a_crashed_run_are_found_by_prefix_and_removed() -> None:
    layout = netns.plan(secrets.token_hex(3), ["db1"])
    netns.create(layout)
    sleeper = spawn(layout.exec_argv("db1", ["sleep", "300"]), log_path=Path(os.devnull))
    # `ip netns exec` enters the namespace after spawn returns: poll (seen empty once under load)
    wait_until(lambda: netns.pids_in(layout.namespace("db1")) == [sleeper.pid], timeout=10,
               what="the sleeper inside the db1 namespace")
    assert netns.remove_leftovers(layout.prefix) == sorted(layout.namespaces)
    assert not sleeper.alive()
    assert netns.existing_namespaces(layout.prefix) == []


def test_partition_of_a_loopback_lab_says_it_needs_namespaces(shared_lab: LabCluster) -> None:
    result = CliRunner().invoke(main, ["lab", "partition", "--dir", str(shared_lab.directory), "db1"])
    assert result.exit_code == 2
    assert "without network namespaces" in result.output


@needs_netns
def test_cli_partitions_and_heals_a_namespaced_lab(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, netns=True)
    layout = lab.netns
    assert layout is not None
    cut = CliRunner().invoke(main, ["lab", "partition", "--dir", str(lab.directory), "--from-clients", "db2"])
    assert cut.exit_code == 0, cut.output
    assert "db2 no longer reaches client, dcs, db1" in cut.output
    assert netns.isolated_hosts(layout) == ["db2"]
    healed = CliRunner().invoke(main, ["lab", "heal", "--dir", str(lab.directory), "db2"])
    assert healed.exit_code == 0, healed.output
    assert netns.isolated_hosts(layout) == []


def test_the_fault_registry_lists_the_partition_faults() -> None:
    faults = partition.FAULTS
    assert all_faults()[-len(faults):] == faults
    assert [f.name for f in faults] == ["partition", "partition-lagging-replica",
                                        "partition-laggard-holds-more",
                                        # the failsafe rows: the primary cut off from the DCS only,
                                        # and from the DCS and one peer
                                        "dcs-cut+failsafe", "dcs-and-peer-cut+failsafe"]
    assert all(f.netns and f.until_failover and not f.tmpfs for f in faults)
    assert faults[0].rto_goal(AgentTuning(ttl=3.0)) == 5.0
