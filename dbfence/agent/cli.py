"""``dbfence agent --config FILE``: the per-host daemon (run by systemd)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dbfence.config import ConfigError, load_config


@click.command("agent")
@click.option("--config", "path", type=click.Path(path_type=Path), required=True,
              help="The agent's TOML configuration (see docs/configuration.md).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def agent_command(path: Path, log_level: str) -> None:
    """Run the HA agent for the local mysqld until SIGTERM."""
    from dbfence.agent.daemon import AgentStartError, configure_logging, run_agent  # noqa: PLC0415

    try:
        config = load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(log_level)
    for notice in config.notices:
        logging.getLogger("dbfence.agent").warning("configuration %s: %s", path, notice)
    try:
        run_agent(config)
    except AgentStartError as exc:
        raise click.ClickException(f"refusing to start: {exc}") from None
