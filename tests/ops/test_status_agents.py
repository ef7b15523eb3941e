"""`dbfence status --agent`: during a DCS outage the agents' HTTP APIs still say who writes and why."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner

from dbfence.discovery.http_api import HttpApi, StatusBoard, StatusReport
from dbfence.discovery.metrics import Metrics
from dbfence.ops_cli import status_command

LINE = "failsafe: writes kept by peer promises (2/2), DCS unreachable for 41 s"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_shows_the_agents_failsafe_line_when_the_dcs_is_down() -> None:
    board = StatusBoard(admits=lambda: True)
    board.publish(StatusReport(role="primary", healthy=True,
                               details={"node": "db1", "failsafe": {"active": True, "line": LINE},
                                        "gate": {"spoofed_headers": 3}}))
    http = HttpApi("127.0.0.1", 0, board, Metrics()).start()
    try:
        host, port = http.address
        dead_etcd = f"http://127.0.0.1:{_closed_port()}"
        args = ["--etcd", dead_etcd, "--cluster", "c1", "--agent", f"{host}:{port}",
                "--agent", f"127.0.0.1:{_closed_port()}"]
        result = CliRunner().invoke(status_command, args)
        assert result.exit_code == 2  # the DCS is unreachable: scripts still see that
        assert (f"agent db1 ({host}:{port}): primary, gate admitting (spoofed_headers 3: clients cut for a "
                f"PROXY header of their own); {LINE}") in result.output
        assert "no answer" in result.output
        as_json = CliRunner().invoke(status_command, [*args, "--json"])
        document = json.loads(as_json.output[: as_json.output.rindex("}") + 1])
        assert document["agents"][0]["failsafe"] == LINE
        assert document["agents"][0]["spoofed_headers"] == 3
    finally:
        http.stop()
