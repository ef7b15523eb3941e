"""``dbfence config``: check a configuration and print it with every default filled in."""

from __future__ import annotations

from pathlib import Path

import click

from dbfence.config import ConfigError, load_config
from dbfence.config_docs import render_config


@click.group("config")
def config_group() -> None:
    """Validate and show the agent's configuration."""


def _load(path: Path) -> str:
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for notice in config.notices:
        click.echo(f"warning: {notice}", err=True)
    return render_config(config)


@config_group.command("show")
@click.option("--config", "path", type=click.Path(path_type=Path), required=True,
              help="The agent's TOML configuration file.")
def show(path: Path) -> None:
    """Print the effective configuration (TOML, with every default and its meaning)."""
    click.echo(_load(path))


@config_group.command("check")
@click.option("--config", "path", type=click.Path(path_type=Path), required=True)
def check(path: Path) -> None:
    """Exit 0 if the configuration is valid, 1 with the reason otherwise."""
    _load(path)
    click.echo(f"{path}: ok")
