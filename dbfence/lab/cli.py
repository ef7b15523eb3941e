"""``dbfence lab``: start, inspect and stop local clusters of real servers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from dbfence.lab import netns
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.errors import LabError
from dbfence.lab.mariadb_servers import RECOVERY_ARGS


@click.group("lab")
def lab_group() -> None:
    """Local clusters of real MariaDB and etcd (or the Consul stand-in) servers."""


def _fail(message: str) -> None:
    click.echo(f"dbfence lab: {message}", err=True)
    sys.exit(2)


@lab_group.command("up")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
              help="A new or empty directory for data, logs and lab.json.")
@click.option("--mysql", "mysql_count", type=int, default=3, show_default=True,
              help="Number of MariaDB servers; the first is the primary.")
@click.option("--dcs", type=click.Choice(["etcd", "consul"]), default="etcd", show_default=True)
@click.option("--etcd-members", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--cluster", default="lab", show_default=True, help="Cluster name.")
@click.option("--agents", is_flag=True, help="Also run one dbfence agent per MariaDB server.")
@click.option("--netns", "use_netns", is_flag=True,
              help="Put each host, the DCS and the client in network namespaces (root), for partitions.")
@click.option("--netns-subnet", default=netns.DEFAULT_SUBNET, show_default=True,
              help="Private IPv4 subnet for the namespaces' addresses.")
def up(directory: Path, mysql_count: int, dcs: str, etcd_members: str, cluster: str, agents: bool,
       use_netns: bool, netns_subnet: str) -> None:
    """Start a lab and print where everything is."""
    spec = LabSpec(directory=directory, mysql_count=mysql_count, dcs=dcs,  # type: ignore[arg-type]
                   etcd_members=int(etcd_members), cluster=cluster, agents=agents,
                   netns=use_netns, netns_subnet=netns_subnet)
    try:
        lab = LabCluster.up(spec)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"lab up in {lab.extra['up_seconds']:.1f}s: {len(lab.mysql)} MariaDB, "
               f"{len(lab.etcd) or 'no'} etcd, manifest {lab.directory / 'lab.json'}")
    print_status(lab.status())


@lab_group.command("status")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(directory: Path, as_json: bool) -> None:
    """Show each server: pid, port, role, read_only, GTID positions, replication."""
    try:
        lab = LabCluster.load(directory)
    except LabError as exc:
        _fail(str(exc))
        return
    report = lab.status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_status(report)


@lab_group.command("down")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--purge", is_flag=True, help="Also delete the directory afterwards.")
def down(directory: Path, purge: bool) -> None:
    """Stop every process the lab started (by pid). Safe to run twice."""
    try:
        lab = LabCluster.load(directory)
    except LabError as exc:
        if not directory.exists() or not (directory / "lab.json").exists():
            click.echo(f"nothing to stop: {exc}")
            return
        _fail(str(exc))
        return
    stopped = lab.down()
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if purge:
        shutil.rmtree(lab.directory, ignore_errors=True)
        click.echo(f"removed {lab.directory}")


@lab_group.command("partition")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--from-clients", is_flag=True, help="Cut the client namespace off too.")
@click.argument("host")
def partition(directory: Path, from_clients: bool, host: str) -> None:
    """Cut HOST (db1, db2, ...) off from the DCS and its peers; needs a lab started with --netns."""
    try:
        cut = LabCluster.load(directory).isolate(host, from_clients=from_clients)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"{host} no longer reaches {', '.join(cut)}")


@lab_group.command("start-mysql")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--recovery", is_flag=True,
              help="Start with --init-rpl-role=SLAVE: crash recovery truncates the binlog tail that "
                   "was never committed in the engine (the repair's start command).")
@click.argument("name")
def start_mysql(directory: Path, recovery: bool, name: str) -> None:
    """Start the lab's mysqld NAME again (after it was killed); returns once it accepts clients."""
    try:
        node = LabCluster.load(directory).start_mysql(name, extra_args=RECOVERY_ARGS if recovery else ())
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"{name} started, pid {node.pid}")


@lab_group.command("heal")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.argument("host")
def heal(directory: Path, host: str) -> None:
    """Undo `dbfence lab partition HOST`."""
    try:
        LabCluster.load(directory).heal(host)
    except LabError as exc:
        _fail(str(exc))
        return
    click.echo(f"{host} healed")


@lab_group.command("netns-cleanup")
@click.option("--yes", is_flag=True, help="Really remove them (and stop every process inside).")
def netns_cleanup(yes: bool) -> None:
    """List, or with --yes remove, every lab network namespace (dbf-*), e.g. after a crashed run.

    This includes the namespaces of labs that are still running: stop those first.
    """
    if (reason := netns.unavailable_reason()) is not None:
        _fail(reason)
        return
    if not yes:
        found = netns.existing_namespaces()
        click.echo(f"would remove {', '.join(found)} (add --yes)" if found else "no lab namespaces")
        return
    removed = netns.remove_leftovers()
    click.echo(f"removed {', '.join(removed)}" if removed else "no lab namespaces left over")


def print_status(report: dict[str, Any]) -> None:
    rows = [("NODE", "PID", "PORT", "ROLE", "RO", "GTID_CURRENT", "REPLICATION")]
    for node in report["mysql"]:
        if node.get("role") == "unreachable":
            rows.append((node["name"], str(node["pid"]), str(node["port"]), "unreachable", "-", "-",
                         node.get("error", "")[:60]))
            continue
        repl = "-"
        if node["role"] == "replica":
            repl = (f"io={node['io_running']} sql={node['sql_running']} "
                    f"lag={node['seconds_behind']} from :{node['master_port']}")
            if node["last_error"]:
                repl += f" error: {node['last_error'][:60]}"
        rows.append((node["name"], str(node["pid"]), str(node["port"]), node["role"],
                     "ON" if node["read_only"] else "OFF", node["gtid_current_pos"] or "''", repl))
    for member in report["etcd"]:
        rows.append((member["name"], str(member["pid"]), member["client_url"].rsplit(":", 1)[1], "etcd",
                     "-", "-", "healthy" if member["healthy"] else ("down" if not member["alive"] else
                                                                    "unhealthy")))
    if report.get("consul"):
        consul = report["consul"]
        rows.append(("consul", str(consul["pid"]), consul["http_address"].rsplit(":", 1)[1],
                     "consul-standin", "-", "-", f"dns {consul['dns_address']}, "
                     + ("up" if consul["healthy"] else "down")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
