"""The HTTP API answers load balancers by role, and guards its mutating endpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from dbfence.discovery.http_api import CommandResult, HttpApi, StatusBoard, StatusReport
from dbfence.discovery.metrics import Metrics


def request(api: HttpApi, path: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = api.address
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def board() -> StatusBoard:
    return StatusBoard()


@pytest.fixture
def commands() -> list[tuple[str, dict[str, str]]]:
    return []


@pytest.fixture
def api(board: StatusBoard, commands: list[tuple[str, dict[str, str]]]) -> Iterator[HttpApi]:
    def handle(command: str, args: dict[str, str]) -> CommandResult:
        commands.append((command, args))
        return CommandResult(202, f"{command} requested")

    server = HttpApi("127.0.0.1", 0, board, Metrics(), token="s3cret", on_command=handle).start()
    try:
        yield server
    finally:
        server.stop()


def test_primary_endpoint_is_200_only_on_the_admitting_primary(api: HttpApi, board: StatusBoard) -> None:
    assert request(api, "/primary")[0] == 503  # starting
    board.publish(StatusReport(role="primary", gate_admitting=True, healthy=True))
    assert request(api, "/primary")[0] == 200
    assert request(api, "/replica")[0] == 503
    board.publish(StatusReport(role="primary", gate_admitting=False, healthy=False))  # fencing
    assert request(api, "/primary")[0] == 503


def test_replica_endpoint_honours_the_lag_bound(api: HttpApi, board: StatusBoard) -> None:
    board.publish(StatusReport(role="replica", healthy=True, lag_seconds=4.0))
    assert request(api, "/replica")[0] == 200
    assert request(api, "/replica?lag=5")[0] == 200
    assert request(api, "/replica?lag=3")[0] == 503
    assert request(api, "/replica?lag=junk")[0] == 503
    board.publish(StatusReport(role="replica", healthy=False, lag_seconds=0.0))
    assert request(api, "/replica")[0] == 503


def test_status_is_json_with_details(api: HttpApi, board: StatusBoard) -> None:
    board.publish(StatusReport(role="replica", healthy=True, details={"token": 7, "lock_holder": "db1"}))
    status, body = request(api, "/status")
    assert status == 200
    assert json.loads(body) == {"role": "replica", "gate_admitting": False, "healthy": True,
                                "lag_seconds": None, "token": 7, "lock_holder": "db1"}
    assert request(api, "/nope")[0] == 404


def test_mutations_need_the_token(api: HttpApi, commands: list[tuple[str, dict[str, str]]]) -> None:
    assert request(api, "/pause", "POST")[0] == 401
    assert request(api, "/pause", "POST", {"Authorization": "Bearer wrong"})[0] == 401
    assert commands == []
    status, body = request(api, "/switchover?to=db2", "POST", {"Authorization": "Bearer s3cret"})
    assert (status, body) == (202, "switchover requested\n")
    assert commands == [("switchover", {"to": "db2"})]


def test_mutations_are_off_without_a_token(board: StatusBoard) -> None:
    server = HttpApi("127.0.0.1", 0, board, Metrics()).start()
    try:
        status, body = request(server, "/pause", "POST", {"Authorization": "Bearer "})
        assert status == 403 and "off" in body
    finally:
        server.stop()


def test_metrics_exposition_format() -> None:
    metrics = Metrics()
    metrics.inc("failovers_total", "Failovers this agent took part in.")
    metrics.set("role", "1 for the current role.", 1, {"role": "primary"})
    metrics.observe("renew_seconds", "Lease renewal latency.", 0.004)
    metrics.observe("renew_seconds", "Lease renewal latency.", 0.010)
    metrics.set("label_escape", "Escaping.", 1, {"reason": 'say "hi"\\n'})
    text = metrics.render()
    assert "# TYPE dbfence_failovers_total counter\ndbfence_failovers_total 1.0\n" in text
    assert 'dbfence_role{role="primary"} 1.0' in text
    assert "dbfence_renew_seconds_count 2.0\ndbfence_renew_seconds_sum 0.014" in text
    assert "# TYPE dbfence_renew_seconds_max gauge\ndbfence_renew_seconds_max 0.01" in text
    assert 'reason="say \\"hi\\"\\\\n"' in text
    with pytest.raises(ValueError, match="only goes up"):
        metrics.inc("failovers_total", "x", -1)
    with pytest.raises(ValueError, match="is a counter"):
        metrics.set("failovers_total", "x", 3)
