"""Operator commands: ``dbfence status``, ``switchover``, ``pause``, ``resume``, ``history``.

They talk to the DCS only (the agents act on what they read there), so they work from any host
that can reach etcd or Consul; ``status --agent`` also asks agents' HTTP APIs, which still answer
during a DCS outage (their failsafe state, docs/failsafe.md). Exit codes scripts can rely on:
0 done / a primary admits, 1 refused or timed out (the message says why), 2 DCS unreachable or
bad usage, 3 (status) no primary admits right now.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.request
from typing import Any

import click

from dbfence.locks.base import LeaseLock
from dbfence.locks.cli import _connection, _dcs_errors, connection_options
from dbfence.locks.errors import LockError
from dbfence.locks.model import ClusterSnapshot, Intent
from dbfence.locks.switchover import admitting_primary, switchover_refusal

EXIT_REFUSED = 1
EXIT_NO_PRIMARY = 3


def _open(kwargs: dict[str, Any]) -> LeaseLock:
    lock, _ = _connection(kwargs).open()
    return lock


def _warnings(snapshot: ClusterSnapshot, now_wall: float) -> list[str]:
    out = []
    if snapshot.intent.paused:
        out.append(f"cluster PAUSED ({snapshot.intent.pause_reason or 'no reason given'}): no role changes")
    if snapshot.intent.switchover_target:
        out.append(f"switchover to {snapshot.intent.switchover_target} requested")
    if snapshot.lock is None:
        out.append("nobody holds the lock")
    elif snapshot.lock.holder is None:
        out.append("the lock key holds unreadable data: `dbfence locks release --force` clears it")
    for entry in snapshot.members:
        record = entry.record
        if record.role == "fenced":
            out.append(f"{record.node} is FENCED: {'; '.join(record.reasons) or 'former primary'}")
        if now_wall - record.last_seen > 30:
            out.append(f"{record.node}'s record is {now_wall - record.last_seen:.0f}s old")
    for problem in snapshot.problems:
        out.append(f"bad data: {problem}")
    return out


def status_json(snapshot: ClusterSnapshot) -> dict[str, Any]:
    now = time.time()
    lock = snapshot.lock
    primary = admitting_primary(snapshot)
    return {
        "cluster": snapshot.cluster,
        "primary": None if primary is None else primary.node,
        "lock": None if lock is None else {
            "holder": None if lock.holder is None else lock.holder.node, "token": lock.token,
            "ttl_left": lock.ttl_left},
        "intent": {"paused": snapshot.intent.paused, "switchover_target": snapshot.intent.switchover_target},
        "members": [{
            "node": r.node, "role": r.role, "gate": r.gate_state, "healthy": r.healthy,
            "reasons": list(r.reasons), "gtid_position": r.gtid_position, "lag_seconds": r.lag_seconds,
            "address": f"{r.address}:{r.gate_port}" if r.address else "", "seen_seconds_ago":
            round(now - r.last_seen, 1)} for r in (e.record for e in snapshot.members)],
        "warnings": _warnings(snapshot, now),
        "failsafe_list": None if snapshot.failsafe is None else {
            "members": list(snapshot.failsafe.members), "token": snapshot.failsafe.token},
    }


def agent_failsafe(address: str, timeout: float = 2.0, ca_file: str | None = None) -> dict[str, Any]:
    """One agent's role and failsafe state from its HTTP API (``host:port``, or a URL:
    ``https://host:port`` when the agents' API speaks TLS, checked against ``ca_file``)."""
    base = address if "://" in address else f"http://{address}"
    context = ssl.create_default_context(cafile=ca_file) if base.startswith("https:") else None
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/status", timeout=timeout,
                                    context=context) as response:
            status = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return {"agent": address, "error": str(exc)}
    failsafe = status.get("failsafe") or {}
    gate = status.get("gate") or {}
    return {"agent": address, "node": status.get("node"), "role": status.get("role"),
            "gate_admitting": status.get("gate_admitting"), "failsafe": failsafe.get("line", ""),
            # Clients the gate cut for sending a PROXY header of their own (claiming another
            # address to mysqld); None from agents that do not count them.
            "spoofed_headers": gate.get("spoofed_headers")}


def _render_agents(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if "error" in row:
            lines.append(f"agent {row['agent']}: no answer ({row['error']})")
        else:
            gate = "admitting" if row["gate_admitting"] else "blocked"
            line = f"agent {row['node']} ({row['agent']}): {row['role']}, gate {gate}"
            if row.get("spoofed_headers"):
                line += (f" (spoofed_headers {row['spoofed_headers']}: clients cut for a PROXY header"
                         " of their own)")
            lines.append(line + (f"; {row['failsafe']}" if row["failsafe"] else ""))
    return "\n".join(lines)


def _render(report: dict[str, Any]) -> str:
    lock = report["lock"]
    lines = [f"cluster {report['cluster']}: primary {report['primary'] or 'NONE'}; lock "
             + ("free" if lock is None else f"held by {lock['holder']} (token {lock['token']}, "
                f"ttl left {lock['ttl_left'] if lock['ttl_left'] is not None else '?'}s)")]
    rows = [["NODE", "ROLE", "GATE", "HEALTH", "GTID", "LAG", "GATE ADDRESS", "SEEN"]]
    for m in report["members"]:
        rows.append([m["node"], m["role"], m["gate"] or "-",
                     "ok" if m["healthy"] else "; ".join(m["reasons"])[:48] or "unhealthy",
                     m["gtid_position"] or "-", _lag_text(m),
                     m["address"] or "-", f"{m['seen_seconds_ago']}s ago"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    listing = report.get("failsafe_list")
    if listing is not None:
        lines.append(f"failsafe list (token {listing['token']}): {', '.join(listing['members'])}")
    return "\n".join(lines)


def _lag_text(member: dict[str, Any]) -> str:
    """A replica whose lag is unknown (a replication thread stopped) says so: "-" would read as
    "not applicable", and 0 would be a lie."""
    if member["lag_seconds"] is not None:
        return f"{member['lag_seconds']:g}s"
    return "unknown" if member["role"] == "replica" else "-"


@click.command("status")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
@click.option("--agent", "agents", multiple=True, metavar="HOST:PORT",
              help="also ask this agent's HTTP API (repeatable; https://HOST:PORT when it speaks "
                   "TLS); it answers during a DCS outage")
@click.option("--agent-ca", "agent_ca", type=click.Path(dir_okay=False), default=None,
              help="CA that the agents' HTTPS certificates come from (http.tls_ca)")
@_dcs_errors
def status_command(as_json: bool, agents: tuple[str, ...], agent_ca: str | None, **kwargs: Any) -> None:
    """Every member's role, gate, health and position; the lock; warnings. Exit 3 if no primary."""
    rows = [agent_failsafe(address, ca_file=agent_ca) for address in agents]
    try:
        lock = _open(kwargs)
        try:
            report = status_json(lock.snapshot(strict=False))
        finally:
            lock.close()
    except LockError:
        if rows:  # the DCS is down: what the agents say is all there is
            click.echo(json.dumps({"agents": rows}, indent=2) if as_json else _render_agents(rows))
        raise
    if rows:
        report["agents"] = rows
    text = _render(report)
    if rows:
        text += "\n" + _render_agents(rows)
    click.echo(json.dumps(report, indent=2) if as_json else text)
    if report["primary"] is None:
        sys.exit(EXIT_NO_PRIMARY)


@click.command("pause")
@connection_options
@click.option("--reason", default="maintenance", show_default=True)
@_dcs_errors
def pause_command(reason: str, **kwargs: Any) -> None:
    """Maintenance mode for the whole cluster: no role changes until `dbfence resume`."""
    lock = _open(kwargs)
    try:
        current = lock.read_intent()
        lock.write_intent(Intent(paused=True, pause_reason=reason,
                                 switchover_target=current.switchover_target, requested_by="cli",
                                 requested_at=time.time()))
    finally:
        lock.close()
    click.echo(f"paused: {reason}")


@click.command("resume")
@connection_options
@_dcs_errors
def resume_command(**kwargs: Any) -> None:
    """Leave maintenance mode."""
    lock = _open(kwargs)
    try:
        current = lock.read_intent()
        lock.write_intent(Intent(switchover_target=current.switchover_target, requested_by="cli",
                                 requested_at=time.time()))
    finally:
        lock.close()
    click.echo("resumed")


@click.command("switchover")
@connection_options
@click.option("--to", "target", required=True, metavar="NODE", help="the replica to promote")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait until the target admits")
@click.option("--timeout", default=60.0, show_default=True, help="seconds to wait")
@click.option("--max-lag", default=5.0, show_default=True, help="refuse a target further behind (s)")
@_dcs_errors
def switchover_command(target: str, wait: bool, timeout: float, max_lag: float, **kwargs: Any) -> None:
    """Planned change of primary: the primary fences, waits for the target to catch up, hands over."""
    lock = _open(kwargs)
    try:
        snapshot = lock.snapshot(strict=False)
        refusal = switchover_refusal(snapshot, target, max_lag)
        if refusal:
            click.echo(f"refused: {refusal}", err=True)
            sys.exit(EXIT_REFUSED)
        current = lock.read_intent()
        started = time.monotonic()
        lock.write_intent(Intent(paused=current.paused, pause_reason=current.pause_reason,
                                 switchover_target=target, requested_by="cli", requested_at=time.time()))
        click.echo(f"switchover to {target} requested")
        if not wait:
            return
        while time.monotonic() - started < timeout:
            primary = admitting_primary(lock.snapshot(strict=False))
            if primary is not None and primary.node == target:
                click.echo(f"{target} is the primary after {time.monotonic() - started:.2f}s")
                return
            time.sleep(0.1)
        click.echo(f"timed out after {timeout:g}s; the request stays until `dbfence switchover` "
                   "to another node or an operator clears it", err=True)
        sys.exit(EXIT_REFUSED)
    finally:
        lock.close()


@click.command("history")
@connection_options
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=20, show_default=True)
@_dcs_errors
def history_command(as_json: bool, limit: int, **kwargs: Any) -> None:
    """The last failovers and switchovers, with token, node and reason (kept in the DCS)."""
    lock = _open(kwargs)
    try:
        entries = lock.read_history(limit=limit)
    finally:
        lock.close()
    if as_json:
        click.echo(json.dumps([{"at": e.at, "kind": e.kind, "node": e.node, "token": e.token,
                                "detail": e.detail} for e in entries], indent=2))
        return
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        click.echo(f"{when}  {e.kind:<10}  {e.node:<12}  token {e.token}  {e.detail}")
