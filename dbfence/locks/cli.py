"""``dbfence locks``: who holds the lock, its token and TTL, and every member's record."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import click

from dbfence.locks.base import LeaseLock, LockSettings
from dbfence.locks.errors import BadData, DcsAccessDenied, DcsUnreachable, LockConflict, LockError
from dbfence.locks.factory import DcsConfig, load_config, open_lock
from dbfence.locks.model import ClusterSnapshot, LockState, parse_failsafe_list

F = TypeVar("F", bound=Callable[..., Any])
CLI_NODE = "dbfence-cli"  # the CLI never opens a session: this name is never written


@dataclass(frozen=True)
class Connection:
    config: str | None
    etcd: str | None
    consul: str | None
    cluster: str | None
    ca_cert: str | None
    cert: str | None
    key: str | None
    user: str | None
    password: str | None
    acl_token: str | None

    def merged_over(self, parent: Connection | None) -> Connection:
        """Options given to a subcommand win over the same options given to the group."""
        if parent is None:
            return self
        mine = asdict(self)
        theirs = asdict(parent)
        return Connection(**{name: mine[name] if mine[name] is not None else theirs[name] for name in mine})

    def resolve(self) -> tuple[DcsConfig, str]:
        if self.etcd and self.consul:
            raise click.UsageError("give either --etcd or --consul, not both")
        base: DcsConfig | None = None
        cluster = self.cluster
        if self.config:
            try:
                loaded = load_config(self.config)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
            base = loaded.dcs
            cluster = cluster or loaded.cluster
        if self.etcd:
            endpoints = tuple(url.strip() for url in self.etcd.split(",") if url.strip())
            base = DcsConfig(kind="etcd", endpoints=endpoints)
        elif self.consul:
            base = DcsConfig(kind="consul", endpoints=(self.consul,))
        if base is None:
            raise click.UsageError("say where the DCS is: --config FILE, --etcd URLS or --consul ADDR")
        if not cluster:
            raise click.UsageError("--cluster NAME is required (or 'cluster' in the config file)")
        overrides = {
            "ca_cert": self.ca_cert,
            "cert": self.cert,
            "key": self.key,
            "user": self.user,
            "password": self.password,
            "token": self.acl_token,
        }
        merged = {**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}
        merged["endpoints"] = tuple(merged["endpoints"])
        try:
            return DcsConfig(**merged), cluster
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    def open(self) -> tuple[LeaseLock, DcsConfig]:
        config, cluster = self.resolve()
        try:
            return open_lock(config, cluster, CLI_NODE, LockSettings()), config
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None


def connection_options(func: F) -> F:
    options = [
        click.option(
            "--config", "config", type=click.Path(dir_okay=False), help="agent TOML with a [dcs] table"
        ),
        click.option("--etcd", "etcd", metavar="URLS", help="comma-separated etcd endpoints"),
        click.option("--consul", "consul", metavar="ADDR", help="Consul agent HTTP address (host:port)"),
        click.option("--cluster", "cluster", metavar="NAME", help="cluster name"),
        click.option("--ca-cert", "ca_cert", type=click.Path(dir_okay=False), help="CA bundle for TLS"),
        click.option("--cert", "cert", type=click.Path(dir_okay=False), help="client certificate (TLS)"),
        click.option("--key", "key", type=click.Path(dir_okay=False), help="client key (TLS)"),
        click.option("--user", "user", help="etcd user"),
        click.option("--password", "password", envvar="DBFENCE_ETCD_PASSWORD", help="etcd password"),
        click.option("--acl-token", "acl_token", envvar="CONSUL_HTTP_TOKEN", help="Consul ACL token"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _connection(kwargs: dict[str, Any]) -> Connection:
    return Connection(**{name: kwargs.pop(name) for name in list(Connection.__dataclass_fields__)})


def _dcs_errors(func: F) -> F:
    """Turn DCS failures into a one-line error and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (DcsUnreachable, DcsAccessDenied, LockError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------- rendering


def _ago(wall: float, now: float) -> str:
    if wall <= 0:
        return "-"
    seconds = now - wall
    if seconds < 0:
        return "in the future"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall)) if wall > 0 else "-"


def snapshot_to_json(snapshot: ClusterSnapshot, config: DcsConfig) -> dict[str, Any]:
    lock: dict[str, Any] | None = None
    if snapshot.lock is not None:
        lock = asdict(snapshot.lock)
    return {
        "cluster": snapshot.cluster,
        "dcs": {"kind": config.kind, "endpoints": list(config.endpoints)},
        "index": snapshot.index,
        "lock": lock,
        "members": [
            {
                **asdict(entry.record),
                "reasons": list(entry.record.reasons),
                "key": entry.key,
                "session_id": entry.session_id,
            }
            for entry in snapshot.members
        ],
        "intent": asdict(snapshot.intent),
        "problems": [{"key": problem.key, "detail": problem.detail} for problem in snapshot.problems],
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_text(snapshot: ClusterSnapshot, config: DcsConfig, now: float) -> str:
    session_word = "lease" if config.kind == "etcd" else "session"
    lines = [
        f"cluster {snapshot.cluster}   {config.kind} {','.join(config.endpoints)}   index {snapshot.index}"
    ]
    lock = snapshot.lock
    if lock is None:
        lines.append("lock    FREE (nobody holds it)")
    else:
        holder = lock.holder.describe() if lock.holder else "UNREADABLE VALUE (see problems)"
        ttl = f"{lock.ttl_left:.0f}s" if lock.ttl_left is not None else "unknown (Consul does not report it)"
        token = str(lock.token) + (f" (LockIndex {lock.lock_index})" if lock.lock_index is not None else "")
        acquired = (
            f"{_when(lock.holder.acquired_at)} ({_ago(lock.holder.acquired_at, now)})" if lock.holder else "-"
        )
        lines += [
            f"lock    {lock.key}",
            f"  holder      {holder}",
            f"  token       {token}",
            f"  {session_word:<11} {lock.session_id or '- (not bound: never expires)'}",
            f"  ttl left    {ttl}",
            f"  acquired    {acquired}",
        ]
    intent = snapshot.intent
    paused = f"PAUSED ({intent.pause_reason or 'no reason given'})" if intent.paused else "no"
    target = intent.switchover_target or "-"
    lines.append(f"intent  paused: {paused}   switchover target: {target}")
    lines.append(f"members ({len(snapshot.members)})")
    if snapshot.members:
        rows = [
            [
                "NODE",
                "ROLE",
                "HEALTHY",
                "GTID POSITION",
                "GATE",
                "LAST SEEN",
                "VERSION",
                session_word.upper(),
                "REASONS",
            ]
        ]
        for entry in snapshot.members:
            record = entry.record
            holder_mark = (
                "*"
                if lock is not None and lock.holder is not None and lock.holder.node == record.node
                else ""
            )
            rows.append(
                [
                    record.node + holder_mark,
                    record.role,
                    "yes" if record.healthy else "NO",
                    record.gtid_position or "-",
                    record.gate_state or "-",
                    _ago(record.last_seen, now),
                    record.version or "-",
                    entry.session_id or "-",
                    "; ".join(record.reasons) or "-",
                ]
            )
        lines += ["  " + line for line in _table(rows)]
    if snapshot.problems:
        lines.append("problems")
        lines += [f"  {problem}" for problem in snapshot.problems]
    return "\n".join(lines)


def _show_once(lock: LeaseLock, config: DcsConfig, as_json: bool) -> ClusterSnapshot:
    snapshot = lock.snapshot(strict=False)
    if as_json:
        click.echo(json.dumps(snapshot_to_json(snapshot, config), sort_keys=True))
    else:
        click.echo(render_text(snapshot, config, time.time()))
    return snapshot


def _watch(lock: LeaseLock, config: DcsConfig, as_json: bool, refresh: float) -> None:
    """Redraw on every change; text mode also redraws every ``refresh`` s to age the TTL and times."""
    clear = sys.stdout.isatty() and not as_json
    index = 0
    while True:
        try:
            if clear:
                click.echo("\x1b[2J\x1b[H", nl=False)
            elif not as_json and index:
                click.echo("-" * 60)
            index = _show_once(lock, config, as_json).index
            while True:
                new_index = lock.wait_for_change(index, refresh)
                if new_index != index or not as_json:
                    break
        except (DcsUnreachable, DcsAccessDenied) as exc:
            # A watch survives DCS outages: say so and keep trying.
            click.echo(f"error: {exc} (retrying)", err=True)
            time.sleep(1.0)


# ---------------------------------------------------------------------------- commands


@click.group("locks", invoke_without_command=True)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="one JSON document (per change with --watch)")
@click.option("--watch", is_flag=True, help="redraw on every change until interrupted")
@click.option(
    "--refresh", type=float, default=5.0, show_default=True, help="--watch: redraw at least this often"
)
@click.pass_context
@_dcs_errors
def locks(ctx: click.Context, /, as_json: bool, watch: bool, refresh: float, **kwargs: Any) -> None:
    """Show the cluster lock (holder, token, lease, TTL left) and every member record.

    \b
    dbfence locks --etcd http://127.0.0.1:2379 --cluster prod
    dbfence locks --consul 127.0.0.1:8500 --cluster prod --json
    dbfence locks --config /etc/dbfence/dbfence.toml --watch
    dbfence locks --cluster prod --etcd URLS release --force
    """
    connection = _connection(kwargs)
    ctx.obj = connection
    if ctx.invoked_subcommand is not None:
        return
    lock, config = connection.open()
    try:
        if watch:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a watch normally
                _watch(lock, config, as_json, max(0.1, refresh))
        else:
            _show_once(lock, config, as_json)
    finally:
        lock.close()


@locks.command("release")
@connection_options
@click.option("--force", is_flag=True, help="required: this deletes the lock whoever holds it")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.pass_context
@_dcs_errors
def release(ctx: click.Context, /, force: bool, yes: bool, **kwargs: Any) -> None:
    """Delete the cluster lock on an operator's order (for a holder that is dead or fenced)."""
    connection = _connection(kwargs).merged_over(ctx.obj if isinstance(ctx.obj, Connection) else None)
    if not force:
        raise click.UsageError("refusing to delete the lock without --force")
    lock, _config = connection.open()
    try:
        snapshot = lock.snapshot(strict=False)
        current: LockState | None = snapshot.lock
        if current is None:
            click.echo(f"the lock of cluster {snapshot.cluster} is free: nothing to delete")
            return
        who = current.holder.describe() if current.holder else "an unreadable value"
        click.echo(
            f"lock {current.key} is held by {who}, token {current.token}, lease/session {current.session_id}"
        )
        if not yes:
            click.confirm(
                "The holder keeps admitting writes until its next renewal fails: delete the lock "
                "only if that node is dead or fenced. Delete it?",
                abort=True,
            )
        try:
            lock.force_delete_lock(expected_token=current.token)
        except LockConflict as exc:
            click.echo(f"not deleted: {exc}", err=True)
            sys.exit(1)
        click.echo(f"deleted the lock held by {who} (token {current.token})")
    finally:
        lock.close()


def _describe_failsafe(raw: bytes, key: str) -> str:
    try:
        listing = parse_failsafe_list(key, raw)
    except BadData:
        return f"an unreadable value ({raw[:80]!r})"
    written = f", written by {listing.written_by}" if listing.written_by else ""
    if listing.written_at:
        written += f" {_ago(listing.written_at, time.time())} ({_when(listing.written_at)})"
    return f"members {', '.join(listing.members) or '(none)'}, token {listing.token}{written}"


@locks.command("clear-failsafe")
@connection_options
@click.option("--drop", "drop", multiple=True, metavar="NODE",
              help="take only this node (gone for good) out of the list; repeatable; safe while a "
                   "primary runs")
@click.option("--force", is_flag=True, help="delete it even while a node holds the lock or a listed "
                                            "member is alive")
@click.option("--yes", is_flag=True, help="with --force: do not ask for confirmation")
@click.pass_context
@_dcs_errors
def clear_failsafe(ctx: click.Context, /, drop: tuple[str, ...], force: bool, yes: bool,
                   **kwargs: Any) -> None:
    """Delete a stale failsafe member list, or take departed nodes out of it (docs/failsafe.md).

    While the list exists, a node not named in it never races for the lock, and the primaries
    only ever add to it. A list naming only nodes that are gone leaves a new cluster without a
    primary: deleting it is refused while a node holds the lock (it relies on the list) or while
    a listed node is alive (it can take the lock itself), unless --force. --drop NODE removes
    single names instead, which is always safe (the node then never races). Prints what changed.
    """
    connection = _connection(kwargs).merged_over(ctx.obj if isinstance(ctx.obj, Connection) else None)
    lock, _config = connection.open()
    try:
        snapshot = lock.snapshot(strict=False)
        alive_nodes = {e.record.node for e in snapshot.members}
        if drop:
            _drop_failsafe_members(lock, frozenset(drop), alive_nodes, force)
            return
        key = lock.keys.failsafe
        listing = snapshot.failsafe
        alive = sorted(alive_nodes & set(listing.members if listing else ()))
        refusals = []
        if snapshot.lock is not None:
            who = snapshot.lock.holder.describe() if snapshot.lock.holder else "an unreadable holder"
            refusals.append(f"the lock is held by {who} (token {snapshot.lock.token}), which relies on "
                            "the list (--drop NODE takes departed nodes out safely)")
        if alive:
            refusals.append(f"listed node(s) {', '.join(alive)} are alive and can take the lock: the list "
                            "is not stale")
        if refusals and not force:
            click.echo(f"not deleted: {'; '.join(refusals)} (--force to delete it anyway)", err=True)
            sys.exit(1)
        if refusals and not yes:
            click.confirm(f"{'; '.join(refusals)}. Delete the failsafe list anyway?", abort=True)
        deleted = lock.delete_failsafe_list(while_held=force)
        if deleted is None:
            click.echo(f"cluster {snapshot.cluster} has no failsafe list: nothing to delete")
            return
        click.echo(f"deleted the failsafe list {key}: {_describe_failsafe(deleted, key)}")
    except LockConflict as exc:
        click.echo(f"not changed: {exc}", err=True)
        sys.exit(1)
    finally:
        lock.close()


def _drop_failsafe_members(lock: LeaseLock, drop: frozenset[str], alive: set[str], force: bool) -> None:
    living = sorted(drop & alive)
    if living and not force:
        click.echo(f"not changed: {', '.join(living)} still has a live member record (a primary would "
                   "list it again at once; --force to drop it anyway)", err=True)
        sys.exit(1)
    changed = lock.drop_failsafe_members(drop)
    if changed is None:
        click.echo("there is no failsafe list: nothing to drop")
        return
    before, after = changed
    removed = sorted(set(before.members) - set(after.members))
    if not removed:
        click.echo(f"{', '.join(sorted(drop))} not in the failsafe list ({', '.join(before.members)}): "
                   "nothing changed")
        return
    click.echo(f"dropped {', '.join(removed)} from the failsafe list: members now "
               f"{', '.join(after.members) or '(none)'} (token {after.token})")
