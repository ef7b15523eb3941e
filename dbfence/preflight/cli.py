"""``dbfence check --config FILE``: one line per check, exit status by the worst result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dbfence.preflight.result import worst
from dbfence.preflight.run import run_checks


@click.command("check")
@click.option("--config", "path", type=click.Path(path_type=Path), required=True,
              help="The agent's TOML configuration file.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON list.")
def check_command(path: Path, as_json: bool) -> None:
    """Check this host against what the agent relies on (mysqld settings, accounts, DCS, ports).

    Exit status: 0 all ok, 1 warnings, 2 failures. Run it as the agent's user, before starting it.
    """
    checks = run_checks(path)
    if as_json:
        click.echo(json.dumps([check.to_json() for check in checks], indent=2))
    else:
        for check in checks:
            click.echo(check.line())
    sys.exit(int(worst(checks)))
