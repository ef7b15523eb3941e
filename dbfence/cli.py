"""The ``dbfence`` command line."""

from __future__ import annotations

import importlib

import click

from dbfence import __version__

# Subcommands register here, one line each, so each area owns its own module. They are imported
# only when run (or listed): the agent, a long-lived process, should not carry the lab, the demo
# and their dependencies (several MB of memory per agent).
_COMMANDS = {
    "lab": "dbfence.lab.cli:lab_group",
    "demo": "dbfence.demo:demo_command",
    "config": "dbfence.config_cli:config_group",
    "locks": "dbfence.locks.cli:locks",
    "agent": "dbfence.agent.cli:agent_command",
    "status": "dbfence.ops_cli:status_command",
    "switchover": "dbfence.ops_cli:switchover_command",
    "pause": "dbfence.ops_cli:pause_command",
    "resume": "dbfence.ops_cli:resume_command",
    "history": "dbfence.ops_cli:history_command",
    "rejoin": "dbfence.rejoin_cli:rejoin_group",
    "check": "dbfence.preflight.cli:check_command",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported when one is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            module, _, attribute = _COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{_COMMANDS[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbfence")
def main() -> None:
    """dbfence: a fencing HA agent for MySQL/MariaDB."""
