"""The ``dbfence`` command line."""

from __future__ import annotations

import click

from dbfence import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbfence")
def main() -> None:
    """dbfence: a fencing HA agent for MySQL/MariaDB."""


# Subcommands register here, one line each, so each area owns its own module.
from dbfence.lab.cli import lab_group  # noqa: E402

main.add_command(lab_group)
from dbfence.demo import demo_command  # noqa: E402

main.add_command(demo_command)
from dbfence.config_cli import config_group  # noqa: E402

main.add_command(config_group)
from dbfence.locks.cli import locks as locks_group  # noqa: E402

main.add_command(locks_group)
from dbfence.agent.cli import agent_command  # noqa: E402

main.add_command(agent_command)
from dbfence.ops_cli import (  # noqa: E402
    history_command,
    pause_command,
    resume_command,
    status_command,
    switchover_command,
)

for _command in (status_command, switchover_command, pause_command, resume_command, history_command):
    main.add_command(_command)
from dbfence.preflight.cli import check_command  # noqa: E402

main.add_command(check_command)
