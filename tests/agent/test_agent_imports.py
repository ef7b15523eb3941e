"""What an agent process imports (issue 18: each module is memory in the agent and, shared at
the fork, in its gate workers): not the operator CLI's commands, and only its own DCS backend's
client: no gRPC for a Consul-backed agent, no Consul client for an etcd-backed one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What `dbfence agent` imports before its first round: the CLI entry point and the agent
# command, the daemon, and the backend's lock module (as dbfence.locks.factory imports it).
_IMPORTS = """
import json, sys
import dbfence.cli, dbfence.agent.cli, dbfence.agent.daemon, dbfence.locks.{backend}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_of(backend: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _IMPORTS.format(backend=backend)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(("backend", "absent"), [
    ("consul", ("grpc", "pyetcd", "google.protobuf")),
    ("etcd", ("consul",)),
])
def test_an_agent_imports_its_backend_only_and_no_operator_commands(
        backend: str, absent: tuple[str, ...]) -> None:
    modules = _modules_of(backend)
    assert "dbfence.agent.daemon" in modules  # the control: the imports ran
    for name in (*absent, "dbfence.ops_cli", "dbfence.locks.cli"):
        assert name not in modules, f"a {backend}-backed agent imports {name}"
