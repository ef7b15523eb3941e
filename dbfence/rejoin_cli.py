"""``dbfence rejoin approve``: an operator approves one rebuild of a fenced node ([rejoin]).

The approval is node-local (a file in that agent's state directory, spent when the rebuild
starts, when the node serves again or fences anew, and expired after ``[rejoin] approval_ttl``),
so the command asks the node's agent over its HTTP API with the agents' API token
and/or a client certificate from the cluster CA (mutual TLS), as an agent asks its peers; it
finds the agent's address in the node's member record in the DCS unless ``--agent`` names it.
Exit codes: 0 approved, 1 refused (the message says why), 2 DCS, agent or token unreachable.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import click

from dbfence.agent.daemon_config import AgentStartError, read_secret
from dbfence.config import ConfigError, HttpSection, load_config
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
@click.option("--agent", metavar="URL", help="the node's agent HTTP API, http(s)://host:port "
              "(default: the api_url in its member record)")
@click.option("--agent-ca", type=click.Path(dir_okay=False), help="CA of the agents' HTTPS "
              "certificates (default: http.tls_ca of --config)")
@click.option("--agent-cert", type=click.Path(dir_okay=False), help="client certificate for mutual TLS "
              "(default: http.tls_client_cert or tls_cert of --config)")
@click.option("--agent-key", type=click.Path(dir_okay=False), help="its private key")
@click.option("--by", default="cli", show_default=True, help="who approves (logged by the agent)")
@_dcs_errors
def approve_command(node: str, token_file: Path | None, agent: str | None, agent_ca: str | None,
                    agent_cert: str | None, agent_key: str | None, by: str, **kwargs: Any) -> None:
    """Allow one rebuild of NODE that its fencing evidence cannot justify (its errant transactions
    may have been acknowledged: they are saved to a file first), during its current fence only
    and for [rejoin] approval_ttl at most. The same as creating <state_dir>/rebuild-approved on
    that host."""
    http = _http_section(kwargs.get("config"))
    token = _token(token_file, http)
    ca = agent_ca or (http.tls_ca if http else "") or None
    cert = agent_cert or (http.tls_client_cert or http.tls_cert if http else "") or None
    key = agent_key or (http.tls_client_key or http.tls_key if http else "") or None
    if not token and not cert:
        _fail("the agents' API token or a client certificate is needed: --token-file / --agent-cert, "
              "or --config with http.token_file or http.tls_cert", EXIT_UNREACHABLE)
    base = agent if agent and "://" in agent else (f"http://{agent}" if agent else _api_url(node, kwargs))
    context = None
    if base.startswith("https:"):
        try:
            context = ssl.create_default_context(cafile=ca)
            if cert:
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            _fail(f"cannot load the TLS files: {exc}", EXIT_UNREACHABLE)
    query = urllib.parse.urlencode({"by": by})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{base.rstrip('/')}/{APPROVE_REBUILD}?{query}", data=b"", method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10.0, context=context) as response:
            click.echo(response.read().decode(errors="replace").rstrip())
    except urllib.error.HTTPError as exc:
        _fail(f"{node}: {exc.read().decode(errors='replace').rstrip()} (HTTP {exc.code})", EXIT_REFUSED)
    except OSError as exc:
        _fail(f"cannot reach {node}'s agent at {base}: {exc}", EXIT_UNREACHABLE)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _http_section(config: str | None) -> HttpSection | None:
    if not config:
        return None
    try:
        return load_config(Path(config)).http
    except ConfigError as exc:
        _fail(str(exc), EXIT_UNREACHABLE)


def _token(token_file: Path | None, http: HttpSection | None) -> str | None:
    path = str(token_file) if token_file is not None else (http.token_file if http else "")
    try:
        return read_secret(path, "--token-file" if token_file is not None else "http.token_file")
    except AgentStartError as exc:
        _fail(str(exc), EXIT_UNREACHABLE)


def _api_url(node: str, kwargs: dict[str, Any]) -> str:
    lock, _ = _connection(kwargs).open()
    try:
        snapshot = lock.snapshot(strict=False)
    finally:
        lock.close()
    for entry in snapshot.members:
        if entry.record.node == node:
            if not entry.record.api_url:
                _fail(f"{node}'s member record has no HTTP API address (http.listen): use --agent URL",
                      EXIT_REFUSED)
            return entry.record.api_url
    _fail(f"no member record for {node} in the DCS (agent not running?): use --agent URL", EXIT_REFUSED)
