"""The agent's HTTP API: health checks for load balancers, status for humans, metrics for Prometheus.

``GET /primary`` answers 200 only on the node whose gate admits, ``GET /replica`` 200 only on a
replica that replicates (optionally within ``?lag=SECONDS``): the convention HAProxy's ``httpchk``
and other load balancers already use. The endpoints that act or answer for the cluster (switchover,
pause, resume; ``POST /failsafe/promise``, where a primary cut off from the DCS asks this agent for
a promise, docs/failsafe.md; ``GET /v1/backup``) are off unless the cluster token or mutual TLS is
configured, and then require ``Authorization: Bearer <token>`` (when a token is configured) and a
client certificate from the cluster CA (when mutual TLS is on: :mod:`dbfence.discovery.api_tls`).

The server runs on its own threads and reads an immutable :class:`StatusReport` the agent loop
swaps in, so a slow HTTP client can never hold up the loop. That report can be old: the loop may
be busy, or the whole agent may just have been resumed from a pause (SIGSTOP, a VM freeze) that
outlived its lease. So whether this node admits is never taken from the report: every answer
reads the gate's fence word (what the gate workers read) at the moment it is given, and answers
that depend on the report's facts (replica, health) refuse once the report is older than
``stale_after``.
"""

from __future__ import annotations

import hmac
import json
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dbfence.discovery.api_tls import has_verified_peer
from dbfence.discovery.backup_stream import PATH as BACKUP_PATH
from dbfence.discovery.backup_stream import BackupSource, serve_backup
from dbfence.discovery.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dbfence.discovery.metrics import Metrics

# Would the gate admit a new client right now? (the gate's fence word, read when called)
FenceReader = Callable[[], bool]


def _never_admits() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What the loop knew when it made the report (monotonic ``at``); ``details`` is the /status
    JSON body. ``replicating``: replication from the primary works (both threads run, lag known)."""

    role: str = "starting"
    healthy: bool = False
    lag_seconds: float | None = None
    replicating: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    lease_deadline: float | None = None  # monotonic; the lease's seconds left are computed per answer


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer about this node, computed when the request arrives."""

    report: StatusReport
    now: float
    gate_admitting: bool  # from the fence word, read after ``now``
    stale: bool  # the report is older than the board's ``stale_after``

    @property
    def primary(self) -> bool:
        return self.report.role == "primary" and self.gate_admitting

    @property
    def healthy(self) -> bool:
        return self.report.healthy and not self.stale

    def replica(self, max_lag: str | None) -> bool:
        report = self.report
        if report.role != "replica" or self.gate_admitting or not self.healthy or not report.replicating:
            return False
        if max_lag is None:
            return True
        try:
            bound = float(max_lag)
        except ValueError:
            return False
        return report.lag_seconds is not None and report.lag_seconds <= bound

    def summary(self) -> dict[str, Any]:
        return {"role": self.report.role, "gate_admitting": self.gate_admitting, "healthy": self.healthy,
                "lag_seconds": self.report.lag_seconds,
                "report_age_seconds": round(self.now - self.report.at, 3)}


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: int
    message: str


#: POST path (without its slash) of an operator's approval of one rebuild of this node.
APPROVE_REBUILD = "rejoin/approve"
# (command, arguments) -> result; commands: "switchover" (to=NODE), "pause", "resume",
# APPROVE_REBUILD (by=WHO).
CommandHandler = Callable[[str, dict[str, str]], CommandResult]
# A failsafe promise request (the JSON body) -> (HTTP status, JSON answer).
PromiseHandler = Callable[[Mapping[str, Any]], tuple[int, Mapping[str, Any]]]
PROMISE_PATH = "/failsafe/promise"
_MAX_PROMISE_BODY = 4096


class StatusBoard:
    """Holds the latest report (the loop publishes, HTTP threads read: an atomic swap) and the
    fence reader every answer consults at the moment it is given."""

    def __init__(self, admits: FenceReader = _never_admits, *, stale_after: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 gate_report: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self._report = StatusReport()
        self._admits = admits
        self._clock = clock
        self.stale_after = stale_after
        # What /status adds to the report's "gate" when it is asked (the gate workers' counters
        # and connections: asking them wakes them, so not on every round of the loop).
        self.gate_report = gate_report

    def publish(self, report: StatusReport) -> None:
        self._report = report

    @property
    def report(self) -> StatusReport:
        return self._report

    def answer(self) -> Answer:
        report = self._report
        now = self._clock()
        return Answer(report=report, now=now, gate_admitting=self._admits(),
                      stale=now - report.at > self.stale_after)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], board: StatusBoard, metrics: Metrics,
                 token: str | None, on_command: CommandHandler | None,
                 backup: BackupSource | None = None,
                 on_promise: PromiseHandler | None = None, tls: ssl.SSLContext | None = None,
                 mutual: bool = False) -> None:
        super().__init__(address, _Handler)
        self.board = board
        self.metrics = metrics
        self.token = token
        self.on_command = on_command
        self.backup = backup  # [rejoin] mode = rebuild: this node can be a donor
        self.on_promise = on_promise
        self.tls = tls
        self.mutual = mutual  # protected endpoints need a client certificate from the cluster CA

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake runs here, on the request's own thread: a slow or silent client
        never holds up the thread that accepts connections."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        # The raw socket is detached into the TLS one (closed by wrap_socket if the handshake
        # fails): close the TLS socket here, the caller's close of the raw one is then a no-op.
        wrapped = self.tls.wrap_socket(request, server_side=True)
        try:
            super().finish_request(wrapped, client_address)
        finally:
            self.shutdown_request(wrapped)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A prober that gave up before its answer (a load balancer's or a monitor's timeout), or
        a client whose TLS handshake failed (no or a foreign certificate, plain HTTP to the TLS
        port), is routine: the standard server would print a traceback to the agent's log each time."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


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
        board = self.server.board
        if url.path in ("/primary", "/master", "/read-write"):
            # Read last, right before the reply goes out: the fence may close at any moment.
            answer = board.answer()
            self._send_json(HTTPStatus.OK if answer.primary else HTTPStatus.SERVICE_UNAVAILABLE,
                            answer.summary())
        elif url.path in ("/replica", "/read-only"):
            answer = board.answer()
            self._send_json(HTTPStatus.OK if answer.replica(query.get("lag"))
                            else HTTPStatus.SERVICE_UNAVAILABLE, answer.summary())
        elif url.path in ("/health", "/liveness"):
            answer = board.answer()
            self._send_json(HTTPStatus.OK if answer.healthy else HTTPStatus.SERVICE_UNAVAILABLE,
                            answer.summary())
        elif url.path == "/status":
            gate_now = board.gate_report() if board.gate_report is not None else None
            self._send_json(HTTPStatus.OK, _status_document(board.answer(), gate_now))
        elif url.path == "/metrics":
            self._send(HTTPStatus.OK, self.server.metrics.render(), METRICS_CONTENT_TYPE)
        elif url.path == BACKUP_PATH and self.server.backup is not None:
            if self._authorized("the backup endpoint is off: set http.token_file or mutual TLS\n"):
                serve_backup(self, self.server.backup)
        else:
            self._send(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}\n")

    def _authorized(self, off: str) -> bool:
        """Whether the caller proved it belongs to the cluster; answers itself when not: 403
        (``off``) when neither a token nor mutual TLS is configured, 401 without a client
        certificate from the cluster CA (mutual TLS) or without the right bearer token (when one
        is configured). With both configured, both are required."""
        server = self.server
        if not server.token and not server.mutual:
            self._send(HTTPStatus.FORBIDDEN, off)
            return False
        if server.mutual and not has_verified_peer(self.connection):
            self._send(HTTPStatus.UNAUTHORIZED, "a client certificate from the cluster CA is required "
                                                "(mutual TLS)\n")
            return False
        if server.token:
            supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(supplied.encode(), server.token.encode()):
                self._send(HTTPStatus.UNAUTHORIZED, "a valid 'Authorization: Bearer <token>' is required\n")
                return False
        return True

    def _promise(self) -> None:
        handler = self.server.on_promise
        if handler is None:
            self._send(HTTPStatus.FORBIDDEN, "failsafe is off on this agent\n")
            return
        if not self._authorized("failsafe is off on this agent (no cluster token, no mutual TLS)\n"):
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= _MAX_PROMISE_BODY:
                raise ValueError(f"body of {length} bytes")
            payload = json.loads(self.rfile.read(length))
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._send(HTTPStatus.BAD_REQUEST, f"a promise request is a small JSON object: {exc}\n")
            return
        status, answer = handler(payload)
        self._send_json(status, answer)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path == PROMISE_PATH:
            self._promise()
            return
        command = url.path.strip("/")
        if command not in ("switchover", "pause", "resume", APPROVE_REBUILD):
            self._send(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}\n")
            return
        off = "mutating endpoints are off: set http.token_file or mutual TLS\n"
        if self.server.on_command is None:
            self._send(HTTPStatus.FORBIDDEN, off)
            return
        if not self._authorized(off):
            return
        args = {k: v[-1] for k, v in parse_qs(url.query).items()}
        result = self.server.on_command(command, args)
        self._send(result.status, result.message.rstrip("\n") + "\n")


def _status_document(answer: Answer, gate_now: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The loop's details, with what can change between report and answer computed now
    (``gate_now``: the board's ``gate_report``, read for this answer)."""
    document: dict[str, Any] = {**answer.summary(), **answer.report.details}
    document["gate_admitting"] = answer.gate_admitting
    document["healthy"] = answer.healthy
    gate = document.get("gate")
    if isinstance(gate, Mapping):
        document["gate"] = {**gate, **(gate_now or {}), "admitting": answer.gate_admitting}
    lease = document.get("lease")
    deadline = answer.report.lease_deadline
    if isinstance(lease, Mapping) and deadline is not None:
        document["lease"] = {**lease, "seconds_left": round(deadline - answer.now, 3)}
    return document


class HttpApi:
    """The agent's HTTP endpoints on ``host:port`` (port 0 picks a free one); HTTPS with ``tls``,
    and with ``mutual`` the protected endpoints require a verified client certificate."""

    def __init__(self, host: str, port: int, board: StatusBoard, metrics: Metrics,
                 token: str | None = None, on_command: CommandHandler | None = None,
                 backup: BackupSource | None = None,
                 on_promise: PromiseHandler | None = None, tls: ssl.SSLContext | None = None,
                 mutual: bool = False) -> None:
        if mutual and (tls is None or tls.verify_mode == ssl.CERT_NONE):
            raise ValueError("mutual TLS needs a server TLS context that asks for client certificates")
        self._server = _Server((host, port), board, metrics, token, on_command, backup, on_promise,
                               tls, mutual)
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
