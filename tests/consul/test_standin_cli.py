"""``python -m dbfence.lab.consul_standin``: readiness line, serving, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import consul
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "dbfence.lab.consul_standin", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


def _ready_line(process: subprocess.Popen[str], timeout: float = 10) -> str:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    assert readable, "no readiness line"
    return process.stdout.readline()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_runs_serves_and_stops_on_signal(stop_signal: signal.Signals) -> None:
    process = _start(
        "--http-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0", "--node", "cli-node", "--min-ttl", "50ms"
    )
    try:
        line = _ready_line(process)
        match = re.search(r"ready http=127\.0\.0\.1:(\d+) dns=127\.0\.0\.1:(\d+) node=cli-node", line)
        assert match, line
        client = consul.Consul("127.0.0.1", int(match.group(1)))
        assert client.kv.put("hello", "world") is True
        assert client.agent.self()["Config"]["NodeName"] == "cli-node"
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_arguments_exit_2() -> None:
    process = _start("--http-addr", "nonsense")
    assert process.wait(timeout=10) == 2
    assert process.stderr is not None
    assert "HOST:PORT" in process.stderr.read()
