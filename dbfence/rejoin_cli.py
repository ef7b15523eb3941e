"""``dbfence rejoin approve``: an operator approves one rebuild of a fenced node ([rejoin]).

The approval is node-local (a file in that agent's state directory, spent when the rebuild
starts), so the command asks the node's agent over its HTTP API with the agents' API token; it
finds the agent's address in the node's member record in the DCS unless ``--agent`` names it.
Exit codes: 0 approved, 1 refused (the message says why), 2 DCS, agent or token unreachable.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from dbfence.agent.daemon_config import AgentStartError, read_secret
from dbfence.config import ConfigError, load_config
from dbfence.discovery.http_api import APPROVE_REBUILD
from dbfence.locks.cli import _connection, _dcs_errors, connection_options
from dbfence.ops_cli import EXIT_REFUSED

EXIT_UNREACHABLE = 2


@click.group("rejoin")
def rejoin_group() -> None:
    """How fenced former primaries repair themselves ([rejoin], docs/operations.md)."""


@rejoin_group.command("approve")
@connection_options
@click.option("--node", required=True, metavar="NODE", help="the fenced node that may be rebuilt once")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="file with the agents' API token (default: http.token_file of --config)")
@click.option("--agent", metavar="HOST:PORT",
              help="the node's agent HTTP API (default: the address in its member record)")
@click.option("--by", default="cli", show_default=True, help="who approves (logged by the agent)")
@_dcs_errors
def approve_command(node: str, token_file: Path | None, agent: str | None, by: str, **kwargs: Any) -> None:
    """Allow one rebuild of NODE that its fencing evidence cannot justify (its errant transactions
    may have been acknowledged: they are saved to a file first). The same as creating
    <state_dir>/rebuild-approved on that host."""
    token = _token(token_file, kwargs.get("config"))
    base = f"http://{agent}" if agent else _api_url(node, kwargs)
    query = urllib.parse.urlencode({"by": by})
    request = urllib.request.Request(f"{base.rstrip('/')}/{APPROVE_REBUILD}?{query}", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10.0) as response:
            click.echo(response.read().decode(errors="replace").rstrip())
    except urllib.error.HTTPError as exc:
        click.echo(f"{node}: {exc.read().decode(errors='replace').rstrip()} (HTTP {exc.code})", err=True)
        sys.exit(EXIT_REFUSED)
    except OSError as exc:
        click.echo(f"error: cannot reach {node}'s agent at {base}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)


def _token(token_file: Path | None, config: str | None) -> str:
    try:
        path = str(token_file) if token_file is not None else (
            load_config(Path(config)).http.token_file if config else "")
        token = read_secret(path, "--token-file" if token_file is not None else "http.token_file")
    except (ConfigError, AgentStartError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if not token:
        click.echo("error: the agents' API token is needed: --token-file, or --config with http.token_file",
                   err=True)
        sys.exit(EXIT_UNREACHABLE)
    return token


def _api_url(node: str, kwargs: dict[str, Any]) -> str:
    lock, _ = _connection(kwargs).open()
    try:
        snapshot = lock.snapshot(strict=False)
    finally:
        lock.close()
    for entry in snapshot.members:
        if entry.record.node == node:
            if not entry.record.api_url:
                click.echo(f"error: {node}'s member record has no HTTP API address (http.listen): "
                           "use --agent HOST:PORT", err=True)
                sys.exit(EXIT_REFUSED)
            return entry.record.api_url
    click.echo(f"error: no member record for {node} in the DCS (agent not running?): use --agent HOST:PORT",
               err=True)
    sys.exit(EXIT_REFUSED)
