"""``dbfence demo``: a newcomer's first look at a real failover, finishing on its own.

Three real MariaDB servers, a three-member etcd cluster (or, with ``--dcs consul``, the Consul
stand-in, whose DNS the demo queries as ``dig`` would and prints before, during and after the crash)
and three dbfence agents on loopback addresses; a small application writes through discovery (the
etcd key, or Consul DNS) and the gates; the primary's mysqld is killed; the demo shows, as it
happens, the old primary fencing and releasing, a replica winning the race and promoting, the other
replica following it, discovery moving, and then the old node coming back and rejoining as a replica
(its agent starts the crashed mysqld, after copying the binlog tail that crash recovery cuts: with
``[rejoin] truncate`` systemd's Restart= is off and the agent owns restarts). Then the new primary's
host is cut off by a network partition (its clients still reach its gate, so it takes commits no
replica acknowledges); after the heal it repairs itself (``[rejoin] mode = "truncate"``): it saves
those transactions to a file, removes them and is back as a replica. Without network namespaces
(they need root; the Consul stand-in's demo runs on loopback) the same fault is a hung mysqld
(SIGSTOP, then SIGCONT). It ends with all three nodes healthy, counting acknowledged writes that are
missing on the primary: in lossless mode there must be none. A demo that fails keeps its directory
and says where: the agents' logs in it are what tells why.
"""

from __future__ import annotations

import shutil
import signal
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
from dbfence.lab import netns as lab_netns
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
                address = lab.in_client(primary_address, lab.cluster, etcd=lab.dcs_endpoints)[0]
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


def repaired_line(lab: LabCluster, node: str) -> str:
    """What the node's repair did, from its agent's /status: removed GTIDs and where it saved them."""
    repair = lab.agent_status(node, timeout=1.0).get("repair") or {}
    last = repair.get("last") or {}
    removed = [gtid for gtid in str(last.get("errant_before") or "").split(",") if gtid]
    if not removed:
        return "it had nothing errant to remove"
    return (f"{len(removed)} transaction(s) no replica had acknowledged ({', '.join(removed)}) saved to "
            f"{repair.get('saved_file') or '?'}, then removed")


def restarted_line(lab: LabCluster, node: str) -> str:
    """What the node's agent did to start its crashed mysqld, from its /status."""
    restart = lab.agent_status(node, timeout=1.0).get("mysqld_restart") or {}
    copy = restart.get("binlog_tail_saved")
    return (f"its agent started mysqld {restart.get('restarts', 0)} time(s)"
            + (f", after copying its binlog tail to {copy}" if copy else ""))


def failure(exc: BaseException, lab_directory: Path) -> click.ClickException:
    """The demo's error, saying where its files are kept for a look (the agents' logs among them)."""
    message = exc.format_message() if isinstance(exc, click.ClickException) \
        else f"{type(exc).__name__}: {exc}"
    return click.ClickException(f"{message}\n[demo] kept for a look: {lab_directory} (the agents' logs: "
                                f"{lab_directory / 'agents'}/*.log, the servers' in {lab_directory}/db*/)")


def verify(lab: LabCluster, writer: DiscoveryWriter, primary: str) -> tuple[int, int]:
    """(acknowledged writes missing on the primary, unknown-outcome writes that landed)."""
    with lab.connect(primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.demo")
        present = {int(row[0]) for row in cur.fetchall()}
    missing = [i for i in writer.acknowledged if i not in present]
    landed = [i for i in writer.unknown if i in present]
    return len(missing), len(landed)


def second_fault(lab: LabCluster, writer: DiscoveryWriter, primary: str, no_netns: str | None) -> str:
    """Partition ``primary``'s host (or, without namespaces, hang its mysqld) under write load, heal
    it, and watch it repair itself and rejoin. Returns the primary at the end."""
    if no_netns:
        click.echo(f"[demo] 5/7 SIGSTOP of {primary}'s mysqld: a hung database that still holds commits "
                   f"no replica acknowledged (a partition needs network namespaces: {no_netns}); watching:")
        lab.kill_mysql(primary, signal.SIGSTOP)
    else:
        click.echo(f"[demo] 5/7 network partition: {primary}'s host is cut off from the DCS and its peers, "
                   "its clients still reach its gate; watching:")
        lab.isolate(primary)
    cut = time.monotonic()
    gate = lab.agent(primary).address
    try:
        watch(lab, cut, lambda: writer.first_ack_after(cut, gate) is not None, timeout=60)
    finally:
        if no_netns:
            lab.kill_mysql(primary, signal.SIGCONT)
        else:
            lab.heal(primary)
    healed = time.monotonic()
    first = writer.first_ack_after(cut, gate)
    assert first is not None
    new = next(p for p in lab.primaries() if p != primary)
    click.echo(f"[demo]      first write acknowledged by {new} {first - cut:.2f}s after the fault; "
               f"{'SIGCONT' if no_netns else 'partition healed'}: {primary} repairs itself "
               "([rejoin] mode = \"truncate\")")
    watch(lab, healed, lambda: lab.agent_status(primary, timeout=0.5).get("role") == "replica", timeout=90)
    click.echo(f"[demo]      {primary} is back as a replica of {new} {time.monotonic() - healed:.2f}s after "
               f"the heal: {repaired_line(lab, primary)}")
    return new


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the cluster running and print how to use and stop it.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where to put the lab (default: a new temporary directory).")
@click.option("--dcs", type=click.Choice(["etcd", "consul"]), default="etcd", show_default=True,
              help="The lock service and discovery: etcd (the primary key), or the Consul stand-in "
                   "(applications resolve primary.<cluster>.service.consul).")
def demo_command(keep: bool, directory: Path | None, dcs: str) -> None:
    """A live failover and a self-repair on real servers, from start to teardown in under a minute."""
    root = directory or Path(tempfile.mkdtemp(prefix="dbfence-demo-"))
    what = "a 3-member etcd cluster" if dcs == "etcd" else "the Consul stand-in (HTTP API and DNS)"
    # A partition needs network namespaces (root); the Consul stand-in's demo stays on loopback,
    # where its DNS answers name the 127.0.0.x addresses a newcomer can dig.
    no_netns = ("the Consul stand-in's demo runs on loopback" if dcs == "consul"
                else lab_netns.unavailable_reason())
    where = "on loopback addresses" if no_netns else "each host in a network namespace of its own"
    click.echo(f"[demo] 1/7 starting 3 MariaDB servers, {what} and 3 dbfence agents in {root} ({where})")
    started = time.monotonic()
    try:
        lab = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=3,
                                    dcs="etcd" if dcs == "etcd" else "consul",
                                    etcd_members=3 if dcs == "etcd" else 1, agents=True, netns=not no_netns,
                                    agent_tuning=AgentTuning(ttl=3.0, margin=1.0, cooldown=0.0,
                                                             rejoin="truncate")))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    writer = DiscoveryWriter(lab, "app.demo")
    failed = True  # until the end: a failed demo keeps its directory, the agents' logs in it
    try:
        old = lab.primaries()[0]
        click.echo(f"[demo] cluster up in {time.monotonic() - started:.1f}s; the agents elected {old} "
                   "(lossless mode: semi-synchronous replication, AFTER_SYNC)")
        print_cluster(lab)
        writer.create_table(old)
        how = "the etcd key" if dcs == "etcd" else "Consul DNS"
        click.echo(f"[demo] 2/7 an application writes rows through discovery ({how}) and the gates")
        if lab.consul is not None:
            _print_dns(lab.consul.dns_address, lab.cluster, None,
                       consul_dns_answer(lab.consul.dns_address, lab.cluster))
        lab.in_client(writer.start)  # with namespaces, the application lives in the client's
        wait_until(lambda: len(writer.acknowledged) >= 20, timeout=30, what="the first writes")
        click.echo(f"[demo]      {len(writer.acknowledged)} writes acknowledged by {old}")

        click.echo(f"[demo] 3/7 kill -9 of {old}'s mysqld, under write load; watching:")
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

        # With [rejoin] truncate the agent owns mysqld's restarts (systemd's Restart= stays off): a
        # start of our own would race it, and one that won would skip the copy of the binlog tail
        # and the recovery that cuts unacknowledged commits, leaving them errant.
        click.echo(f"[demo] 4/7 {old}'s agent copies the binlog tail crash recovery reads, then starts "
                   f"its mysqld again: {old} comes back fenced and must rejoin as a replica")
        watch(lab, crashed, lambda: lab.agent_status(old, timeout=0.5).get("role") == "replica", timeout=90)
        click.echo(f"[demo]      {old} rejoined as a replica of {new} {time.monotonic() - crashed:.2f}s "
                   f"after the crash: {restarted_line(lab, old)}")

        final = second_fault(lab, writer, new, no_netns)

        time.sleep(1.0)  # a little more load on the primary before the count
        writer.finish()
        roles = {a.name: lab.agent_status(a.name, timeout=1.0).get("role") for a in lab.agents}
        healthy = sorted(name for name, role in roles.items() if role in ("primary", "replica"))
        listed = ", ".join(f"{name}: {role}" for name, role in roles.items())
        click.echo(f"[demo] 6/7 {len(healthy)} of 3 nodes healthy ({listed}); counting: every "
                   f"acknowledged write must be on the primary, {final}")
        missing, landed = verify(lab, writer, final)
        click.echo(f"[demo]      acknowledged: {len(writer.acknowledged)}, refused while no primary "
                   f"admitted: {writer.refused}, outcome unknown: {len(writer.unknown)} "
                   f"({landed} of them landed), acknowledged but LOST: {missing}")
        print_cluster(lab)
        if missing:
            raise click.ClickException(f"{missing} acknowledged writes are missing on {final}")
        if len(healthy) != 3:
            raise click.ClickException(f"the demo ended with {', '.join(sorted(set(roles) - set(healthy)))} "
                                       "not healthy")
        failed = False
    except (click.ClickException, WaitTimeout, LabError) as exc:
        raise failure(exc, lab.directory) from exc
    finally:
        writer.finish()
        if keep:
            where = f"--etcd {','.join(lab.dcs_endpoints)}" if lab.consul is None \
                else f"--consul {lab.consul.http_address}"
            click.echo(f"[demo] 7/7 left running. Connect: mysql -h <primary gate> -P "
                       f"{lab.agents[0].gate_port} (see {lab.directory / 'lab.json'}); "
                       f"inspect: dbfence locks {where} --cluster {lab.cluster}")
            click.echo(f"[demo]      stop it with: dbfence lab down --dir {lab.directory} --purge")
        else:
            stopped = lab.down()
            click.echo(f"[demo] 7/7 stopped {len(stopped)} processes by pid; done in "
                       f"{time.monotonic() - started:.0f}s")
            if failed:
                click.echo(f"[demo] failed: {root} is kept, the agents' logs in {lab.directory / 'agents'}")
            elif directory is None:
                shutil.rmtree(root, ignore_errors=True)
