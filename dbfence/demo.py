"""``dbfence demo``: a newcomer's first look at a real failover, finishing on its own.

Three real MariaDB servers, a three-member etcd cluster (or, with ``--dcs consul``, the Consul
stand-in, whose DNS the demo queries as ``dig`` would and prints before, during and after the
crash) and three dbfence agents on loopback addresses; a small application writes through
discovery (the etcd key, or Consul DNS) and the gates; the
primary's mysqld is killed; the demo shows, as it happens, the old primary fencing and releasing,
a replica winning the race and promoting, the other replica following it, discovery moving, and
then the old node coming back and rejoining as a replica. It ends by counting acknowledged
writes that are missing on the new primary: in lossless mode there must be none.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from dbfence.discovery import NoPrimary, primary_address
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.errors import LabError
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter


def print_cluster(lab: LabCluster) -> None:
    rows = [("NODE", "ROLE", "GATE", "LOCK HOLDER", "TOKEN", "LEASE LEFT", "GTID", "SOURCE", "HEALTH")]
    for agent in lab.agents:
        s = lab.agent_status(agent.name, timeout=0.5)
        if "lease" not in s:  # agent down, or not through its first round yet
            rows.append((agent.name, str(s.get("role", "down")), "-", "-", "-", "-", "-", "-", "-"))
            continue
        lease = s["lease"]
        db = s["database"]
        rows.append((
            agent.name, s["role"], "admitting" if s["gate"]["admitting"] else "blocked",
            str(s["lock"]["holder"] or "-"), str(s["lock"]["token"] or "-"),
            "-" if lease["seconds_left"] is None else f"{lease['seconds_left']:.1f}s",
            db["gtid_position"] or "-", db["replication_source"] or "-",
            "ok" if db["healthy"] else "; ".join(db["reasons"])[:50],
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def consul_dns_answer(dns_address: str, cluster: str, timeout: float = 0.5) -> list[str]:
    """``primary.<cluster>.service.consul`` A and SRV, as ``dig +noall +answer`` prints them."""
    host, port = dns_address.rsplit(":", 1)
    name = f"primary.{cluster}.service.consul"
    lines: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.SRV):
        try:
            query = dns.message.make_query(name, rdtype)
            answer = dns.query.udp(query, host, port=int(port), timeout=timeout)
        except (dns.exception.DNSException, OSError) as exc:
            lines.append(f";; {dns.rdatatype.to_text(rdtype)}: no answer ({type(exc).__name__})")
            continue
        if answer.rcode() != dns.rcode.NOERROR or not answer.answer:
            lines.append(f";; {dns.rdatatype.to_text(rdtype)}: {dns.rcode.to_text(answer.rcode())}, "
                         "no record")
            continue
        lines += [line for rrset in answer.answer for line in rrset.to_text().splitlines()]
    return lines


def _print_dns(dns_address: str, cluster: str, offset: float | None, answer: list[str]) -> None:
    when = "       " if offset is None else f"  +{offset:5.2f}s"
    host, port = dns_address.rsplit(":", 1)
    click.echo(f"{when}  Consul DNS, as `dig @{host} -p {port} primary.{cluster}.service.consul A` "
               "(and SRV) prints it:")
    for line in answer:
        click.echo(f"             {line}")


def watch(lab: LabCluster, started: float, until: Any, timeout: float) -> None:
    """Print every role change and discovery change as it happens, until ``until()`` holds."""
    roles: dict[str, str] = {}
    discovered = ""
    dns_seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for agent in lab.agents:
            s = lab.agent_status(agent.name, timeout=0.5)
            now_role = str(s.get("role", "down"))
            if roles.get(agent.name) != now_role:
                if agent.name in roles:
                    why = s.get("fenced_reason") or ""
                    click.echo(f"  +{time.monotonic() - started:5.2f}s  {agent.name}: "
                               f"{roles[agent.name]} -> {now_role}" + (f" ({why})" if why else ""))
                roles[agent.name] = now_role
        if lab.consul is not None:
            answer = consul_dns_answer(lab.consul.dns_address, lab.cluster)
            if answer != dns_seen:
                _print_dns(lab.consul.dns_address, lab.cluster, time.monotonic() - started, answer)
                dns_seen = answer
        else:
            try:
                address = primary_address(lab.cluster, etcd=lab.dcs_endpoints)[0]
            except NoPrimary:
                address = "nobody"
            if address != discovered:
                click.echo(f"  +{time.monotonic() - started:5.2f}s  discovery (etcd key): "
                           f"primary is {address}")
                discovered = address
        if until():
            return
        time.sleep(0.05)
    raise WaitTimeout(f"the demo waited {timeout:.0f}s for the cluster to settle")


def verify(lab: LabCluster, writer: DiscoveryWriter, primary: str) -> tuple[int, int]:
    """(acknowledged writes missing on the primary, unknown-outcome writes that landed)."""
    with lab.connect(primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.demo")
        present = {int(row[0]) for row in cur.fetchall()}
    missing = [i for i in writer.acknowledged if i not in present]
    landed = [i for i in writer.unknown if i in present]
    return len(missing), len(landed)


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the cluster running and print how to use and stop it.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where to put the lab (default: a new temporary directory).")
@click.option("--dcs", type=click.Choice(["etcd", "consul"]), default="etcd", show_default=True,
              help="The lock service and discovery: etcd (the primary key), or the Consul stand-in "
                   "(applications resolve primary.<cluster>.service.consul).")
def demo_command(keep: bool, directory: Path | None, dcs: str) -> None:
    """A live failover on real servers, from start to teardown in about a minute."""
    root = directory or Path(tempfile.mkdtemp(prefix="dbfence-demo-"))
    what = "a 3-member etcd cluster" if dcs == "etcd" else "the Consul stand-in (HTTP API and DNS)"
    click.echo(f"[demo] 1/6 starting 3 MariaDB servers, {what} and 3 dbfence agents in {root}")
    started = time.monotonic()
    try:
        lab = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=3,
                                    dcs="etcd" if dcs == "etcd" else "consul",
                                    etcd_members=3 if dcs == "etcd" else 1, agents=True,
                                    agent_tuning=AgentTuning(ttl=3.0, margin=1.0, cooldown=0.0)))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    writer = DiscoveryWriter(lab, "app.demo")
    try:
        old = lab.primaries()[0]
        click.echo(f"[demo] cluster up in {time.monotonic() - started:.1f}s; the agents elected {old} "
                   "(lossless mode: semi-synchronous replication, AFTER_SYNC)")
        print_cluster(lab)
        writer.create_table(old)
        how = "the etcd key" if dcs == "etcd" else "Consul DNS"
        click.echo(f"[demo] 2/6 an application writes rows through discovery ({how}) and the gates")
        if lab.consul is not None:
            _print_dns(lab.consul.dns_address, lab.cluster, None,
                       consul_dns_answer(lab.consul.dns_address, lab.cluster))
        writer.start()
        wait_until(lambda: len(writer.acknowledged) >= 20, timeout=30, what="the first writes")
        click.echo(f"[demo]      {len(writer.acknowledged)} writes acknowledged by {old}")

        click.echo(f"[demo] 3/6 kill -9 of {old}'s mysqld, under write load; watching:")
        lab.kill_mysql(old)
        crashed = time.monotonic()
        old_gate = lab.agent(old).address

        watch(lab, crashed, lambda: writer.first_ack_after(crashed, old_gate) is not None and all(
            lab.agent_status(a.name, timeout=0.5).get("role") in ("primary", "replica") for a in lab.agents
            if a.name != old), timeout=60)
        first = writer.first_ack_after(crashed, old_gate)
        assert first is not None
        new = lab.primaries()[0]
        click.echo(f"[demo]      first write acknowledged by {new} {first - crashed:.2f}s after the crash")
        print_cluster(lab)
        if lab.consul is not None:
            _print_dns(lab.consul.dns_address, lab.cluster, None,
                       consul_dns_answer(lab.consul.dns_address, lab.cluster))

        click.echo(f"[demo] 4/6 restarting {old}'s mysqld: it comes back fenced and must rejoin as a replica")
        lab.start_mysql(old)
        restarted = time.monotonic()
        watch(lab, restarted, lambda: lab.agent_status(old, timeout=0.5).get("role") == "replica", timeout=60)
        click.echo(f"[demo]      {old} rejoined as a replica of {new} after "
                   f"{time.monotonic() - restarted:.2f}s")

        time.sleep(1.0)  # a little more load on the new primary before the count
        writer.finish()
        click.echo("[demo] 5/6 counting: every acknowledged write must be on the new primary")
        missing, landed = verify(lab, writer, new)
        click.echo(f"[demo]      acknowledged: {len(writer.acknowledged)}, refused while no primary "
                   f"admitted: {writer.refused}, outcome unknown: {len(writer.unknown)} "
                   f"({landed} of them landed), acknowledged but LOST: {missing}")
        print_cluster(lab)
        if missing:
            raise click.ClickException(f"{missing} acknowledged writes are missing on {new}")
    finally:
        writer.finish()
        if keep:
            where = f"--etcd {','.join(lab.dcs_endpoints)}" if lab.consul is None \
                else f"--consul {lab.consul.http_address}"
            click.echo(f"[demo] 6/6 left running. Connect: mysql -h <primary gate> -P "
                       f"{lab.agents[0].gate_port} (see {lab.directory / 'lab.json'}); "
                       f"inspect: dbfence locks {where} --cluster {lab.cluster}")
            click.echo(f"[demo]      stop it with: dbfence lab down --dir {lab.directory} --purge")
        else:
            stopped = lab.down()
            click.echo(f"[demo] 6/6 stopped {len(stopped)} processes by pid; done in "
                       f"{time.monotonic() - started:.0f}s")
            if directory is None:
                shutil.rmtree(root, ignore_errors=True)
