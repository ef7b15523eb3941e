"""The stand-in's HTTP server: the standard library's ThreadingHTTPServer, one thread per connection,
turning each request into a :class:`Request` for :class:`ConsulAPI` and its :class:`Reply` back into bytes.

Why apart: the wire (chunked bodies, keep-alive, Nagle) has nothing to do with Consul's semantics.
Invariants: every request gets an answer (a malformed body is a 400); a client that went away is
not an error.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dbfence.lab.consul_standin.http_api import ConsulAPI
from dbfence.lab.consul_standin.http_wire import Reply, Request, text_reply


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    server_version = "Consul-standin"
    sys_version = ""
    api: ConsulAPI
    verbose: bool = False

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:
            sys.stderr.write("consul-standin http: " + (format % args) + "\n")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline().split(b";", 1)[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._send(text_reply(400, "malformed request body"))
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(parts.path),
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        self._send(self.api.handle(request))

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Vary", "Accept-Encoding")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = _serve  # noqa: N815 - names the stdlib dispatches on
    do_PUT = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815
    do_HEAD = _serve  # noqa: N815


class StandinHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_http_server(api: ConsulAPI, host: str, port: int, verbose: bool = False) -> StandinHTTPServer:
    handler = type("StandinHandler", (_Handler,), {"api": api, "verbose": verbose})
    return StandinHTTPServer((host, port), handler)
