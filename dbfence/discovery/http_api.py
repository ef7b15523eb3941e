"""The agent's HTTP API: health checks for load balancers, status for humans, metrics for Prometheus.

``GET /primary`` answers 200 only on the node whose gate admits, ``GET /replica`` 200 only on a
healthy replica (optionally within ``?lag=SECONDS``): the convention HAProxy's ``httpchk`` and
other load balancers already use. Mutating endpoints (switchover, pause, resume) are off unless a
token is configured, and then require ``Authorization: Bearer <token>``.

The server runs on its own threads and only reads an immutable :class:`StatusReport` the agent
loop swaps in, so a slow HTTP client can never hold up the loop.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dbfence.discovery.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dbfence.discovery.metrics import Metrics


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What the endpoints need to answer; ``details`` is the /status JSON body."""

    role: str = "starting"
    gate_admitting: bool = False
    healthy: bool = False
    lag_seconds: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: int
    message: str


# (command, arguments) -> result; commands: "switchover" (to=NODE), "pause", "resume".
CommandHandler = Callable[[str, dict[str, str]], CommandResult]


class StatusBoard:
    """Holds the latest report; the loop publishes, HTTP threads read (an atomic swap)."""

    def __init__(self) -> None:
        self._report = StatusReport()

    def publish(self, report: StatusReport) -> None:
        self._report = report

    @property
    def report(self) -> StatusReport:
        return self._report


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], board: StatusBoard, metrics: Metrics,
                 token: str | None, on_command: CommandHandler | None) -> None:
        super().__init__(address, _Handler)
        self.board = board
        self.metrics = metrics
        self.token = token
        self.on_command = on_command


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # A status endpoint must never hang a prober: give up on slow clients quickly.
    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        """Health checks arrive several times a second; do not log each one."""

    def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(payload, indent=2, default=str) + "\n", "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        report = self.server.board.report
        summary = {"role": report.role, "gate_admitting": report.gate_admitting,
                   "healthy": report.healthy, "lag_seconds": report.lag_seconds}
        if url.path in ("/primary", "/master", "/read-write"):
            ok = report.gate_admitting and report.role == "primary"
            self._send_json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, summary)
        elif url.path in ("/replica", "/read-only"):
            self._send_json(HTTPStatus.OK if _replica_ok(report, query.get("lag"))
                            else HTTPStatus.SERVICE_UNAVAILABLE, summary)
        elif url.path in ("/health", "/liveness"):
            self._send_json(HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE, summary)
        elif url.path == "/status":
            self._send_json(HTTPStatus.OK, {**summary, **report.details})
        elif url.path == "/metrics":
            self._send(HTTPStatus.OK, self.server.metrics.render(), METRICS_CONTENT_TYPE)
        else:
            self._send(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}\n")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        command = url.path.strip("/")
        if command not in ("switchover", "pause", "resume"):
            self._send(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}\n")
            return
        token = self.server.token
        if not token or self.server.on_command is None:
            self._send(HTTPStatus.FORBIDDEN, "mutating endpoints are off: set http.token_file\n")
            return
        supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            self._send(HTTPStatus.UNAUTHORIZED, "a valid 'Authorization: Bearer <token>' is required\n")
            return
        args = {k: v[-1] for k, v in parse_qs(url.query).items()}
        result = self.server.on_command(command, args)
        self._send(result.status, result.message.rstrip("\n") + "\n")


def _replica_ok(report: StatusReport, max_lag: str | None) -> bool:
    if report.role != "replica" or not report.healthy or report.gate_admitting:
        return False
    if max_lag is None:
        return True
    try:
        bound = float(max_lag)
    except ValueError:
        return False
    return report.lag_seconds is not None and report.lag_seconds <= bound


class HttpApi:
    """The agent's HTTP endpoints on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, host: str, port: int, board: StatusBoard, metrics: Metrics,
                 token: str | None = None, on_command: CommandHandler | None = None) -> None:
        self._server = _Server((host, port), board, metrics, token, on_command)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dbfence-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> HttpApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
