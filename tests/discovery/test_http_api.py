"""The HTTP API answers load balancers by role, and guards its mutating endpoints."""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from dbfence.breaker.shared import STATE_ADMITTING, STATE_BLOCKING, STATE_DRAINING, SharedRecord, fence_word
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
def fence() -> Iterator[SharedRecord]:
    """The gate's real shared record: the fence word its workers read (blocked until written)."""
    record = SharedRecord.create()
    try:
        yield record
    finally:
        record.close()


def admit(fence: SharedRecord, deadline: float, epoch: int = 1) -> None:
    """What Gate.admit writes: the status first, then the fence word."""
    fence.write_status(STATE_ADMITTING, epoch, 0.0, deadline, "")
    fence.write_fence(fence_word(deadline, epoch))


def block(fence: SharedRecord, epoch: int = 2) -> None:
    fence.write_fence(fence_word(0.0, epoch))
    fence.write_status(STATE_BLOCKING, epoch, 0.0, 0.0, "fencing")


@pytest.fixture
def board(fence: SharedRecord) -> StatusBoard:
    return StatusBoard(fence.admits_now, stale_after=5.0)


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


def test_primary_endpoint_is_200_only_while_the_gate_admits(
        api: HttpApi, board: StatusBoard, fence: SharedRecord) -> None:
    assert request(api, "/primary")[0] == 503  # starting
    board.publish(StatusReport(role="primary", healthy=True))
    assert request(api, "/primary")[0] == 503  # the loop says primary, but the gate is blocked
    admit(fence, time.monotonic() + 60)
    assert request(api, "/primary")[0] == 200
    assert request(api, "/replica")[0] == 503
    block(fence)  # fencing: the report has not caught up yet
    assert request(api, "/primary")[0] == 503
    admit(fence, time.monotonic() + 60, epoch=3)
    fence.write_status(STATE_DRAINING, 3, time.monotonic() + 5, time.monotonic() + 60, "")
    assert request(api, "/primary")[0] == 503  # a switchover drain refuses new clients


def test_primary_endpoint_stops_at_the_fence_deadline_without_a_new_report(
        api: HttpApi, board: StatusBoard, fence: SharedRecord) -> None:
    """The agent loop made its report, then stopped (SIGSTOP): nothing republishes. /primary must
    turn 503 by itself the moment the fence word's deadline passes, as the gate does."""
    deadline = time.monotonic() + 0.4
    admit(fence, deadline)
    board.publish(StatusReport(role="primary", healthy=True, lease_deadline=deadline))
    answers = []
    while True:
        asked_at = time.monotonic()
        code, body = request(api, "/primary")
        answers.append(code)
        if code == 200:
            assert asked_at < deadline, f"200 for a request sent {asked_at - deadline:.4f}s past the deadline"
        elif asked_at > deadline:
            break
        assert asked_at < deadline + 5, "still 200 long after the deadline"
    assert 200 in answers and answers[-1] == 503
    assert json.loads(body)["gate_admitting"] is False
    status = json.loads(request(api, "/status")[1])
    assert status["gate_admitting"] is False and status["role"] == "primary"  # the loop's word, as of
    assert status["report_age_seconds"] >= 0.4


def test_replica_endpoint_honours_the_lag_bound(api: HttpApi, board: StatusBoard) -> None:
    board.publish(StatusReport(role="replica", healthy=True, lag_seconds=4.0, replicating=True))
    assert request(api, "/replica")[0] == 200
    assert request(api, "/replica?lag=5")[0] == 200
    assert request(api, "/replica?lag=3")[0] == 503
    assert request(api, "/replica?lag=junk")[0] == 503
    board.publish(StatusReport(role="replica", healthy=False, lag_seconds=0.0, replicating=True))
    assert request(api, "/replica")[0] == 503


def test_a_replica_that_does_not_replicate_is_not_a_replica(api: HttpApi, board: StatusBoard) -> None:
    """IO thread stopped: its lag is unknown, and a healthy mysqld is not a usable replica."""
    board.publish(StatusReport(role="replica", healthy=True, lag_seconds=None, replicating=False))
    code, body = request(api, "/replica")
    assert code == 503 and json.loads(body)["lag_seconds"] is None
    assert request(api, "/health")[0] == 200  # the database itself is fine


def test_answers_from_a_report_older_than_stale_after_refuse(fence: SharedRecord) -> None:
    now = [100.0]
    board = StatusBoard(fence.admits_now, stale_after=5.0, clock=lambda: now[0])
    board.publish(StatusReport(role="replica", healthy=True, lag_seconds=0.0, replicating=True, at=100.0))
    assert board.answer().replica(None) and board.answer().healthy
    now[0] = 105.5  # the agent was paused: its facts are from before the pause
    assert not board.answer().replica(None) and not board.answer().healthy


def test_status_is_json_with_details(api: HttpApi, board: StatusBoard, fence: SharedRecord) -> None:
    deadline = time.monotonic() + 30
    admit(fence, deadline)
    board.publish(StatusReport(role="primary", healthy=True, lease_deadline=deadline,
                               details={"token": 7, "lock_holder": "db1", "gate": {"port": 3307},
                                        "lease": {"held": True, "seconds_left": 99.0}}))
    status, body = request(api, "/status")
    assert status == 200
    document = json.loads(body)
    assert 0 <= document.pop("report_age_seconds") < 5
    assert 25 < document["lease"].pop("seconds_left") <= 30  # computed when asked, not published
    assert document == {"role": "primary", "gate_admitting": True, "healthy": True,
                        "lag_seconds": None, "token": 7, "lock_holder": "db1",
                        "gate": {"port": 3307, "admitting": True}, "lease": {"held": True}}
    assert request(api, "/nope")[0] == 404


def test_status_asks_the_gate_report_when_asked_and_the_role_answers_never(fence: SharedRecord) -> None:
    """The gate workers' counters and connections are asked for when /status is, not published
    by the loop every round (asking wakes the workers); /primary, /replica and /health never ask."""
    asked: list[float] = []

    def gate_report() -> dict[str, object]:
        asked.append(time.monotonic())
        return {"refused_full": len(asked), "connections": [{"client": "10.0.0.9:5000"}]}

    board = StatusBoard(fence.admits_now, stale_after=5.0, gate_report=gate_report)
    board.publish(StatusReport(role="replica", healthy=True, replicating=True,
                               details={"gate": {"port": 3307, "open_connections": 0}}))
    server = HttpApi("127.0.0.1", 0, board, Metrics()).start()
    try:
        for path in ("/primary", "/replica", "/health", "/metrics"):
            request(server, path)
        assert asked == []
        for expected in (1, 2):  # read afresh for each answer
            status, body = request(server, "/status")
            assert status == 200
            assert json.loads(body)["gate"] == {"port": 3307, "open_connections": 0, "refused_full": expected,
                                                "connections": [{"client": "10.0.0.9:5000"}],
                                                "admitting": False}
    finally:
        server.stop()


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


def test_a_prober_that_hangs_up_before_its_answer_leaves_no_traceback(
        api: HttpApi, board: StatusBoard, capfd: pytest.CaptureFixture[str]) -> None:
    # Found by the soak: its monitor's 0.5 s timeouts filled the agents' logs with tracebacks.
    big = {"pad": "x" * 200_000}  # an answer larger than the socket buffers
    board.publish(StatusReport(role="replica", healthy=True, details=big))
    host, port = api.address
    for _ in range(20):
        with socket.create_connection((host, port), timeout=5) as client:
            client.sendall(b"GET /status HTTP/1.1\r\nHost: agent\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    assert request(api, "/health")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err
    # and the same error inside the handler's own write, deterministically
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        api._server.handle_error(None, ("127.0.0.1", 1))
    assert capfd.readouterr().err == ""
