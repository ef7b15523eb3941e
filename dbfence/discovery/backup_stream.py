"""Serving and fetching a donor's backup stream over the agent's HTTP API (``GET /v1/backup``).

The donor's agent relays ``mariadb-backup --stream=mbstream`` (already paced to the configured
rate by :class:`dbfence.mysql.rebuild.BackupStream`) as a chunked response; the receiving agent
sends the API token (``Authorization: Bearer``) and, with mutual TLS, its client certificate. A
copy that fails on the donor is cut off without the final chunk, so the receiver sees an
incomplete body and fails, never a short copy.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

log = logging.getLogger("dbfence.agent")

#: () -> (estimated bytes, chunks); raises to refuse (another copy running, mysqld down, ...).
BackupSource = Callable[[], tuple[int, Iterable[bytes]]]
ESTIMATE_HEADER = "X-Dbfence-Estimated-Bytes"
PATH = "/v1/backup"


class BackupFetchError(OSError):
    """The donor refused the copy, or the stream broke off."""


def serve_backup(handler: BaseHTTPRequestHandler, source: BackupSource, idle_timeout: float = 120.0) -> None:
    """Answer ``GET /v1/backup`` on ``handler`` with the donor's stream. The caller has checked
    that the client belongs to the cluster (API token, client certificate): the copy holds every
    row and the password hashes of the mysql schema."""
    try:
        estimate, chunks = source()
    except Exception as exc:  # any refusal becomes a 503 with the reason, never a crash
        _refuse(handler, HTTPStatus.SERVICE_UNAVAILABLE, f"no backup from this node: {exc}")
        return
    handler.connection.settimeout(idle_timeout)  # the receiver writes to disk between reads
    handler.send_response(HTTPStatus.OK)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header(ESTIMATE_HEADER, str(estimate))
    handler.end_headers()
    sent = 0
    try:
        for chunk in chunks:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        handler.wfile.write(b"0\r\n\r\n")
        log.info(json.dumps({"event": "backup_served", "bytes": sent}))
    except Exception as exc:  # cut the stream short: the receiver must see an incomplete copy
        handler.close_connection = True
        log.warning(json.dumps({"event": "backup_cut", "bytes": sent, "error": str(exc)}))


def _refuse(handler: BaseHTTPRequestHandler, status: HTTPStatus, message: str) -> None:
    body = (message + "\n").encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def fetch_backup(url: str, token: str | None, timeout: float = 120.0, chunk: int = 1 << 20,
                 tls: ssl.SSLContext | None = None) -> tuple[int, BackupBody]:
    """Open ``url`` (the donor's API base, ``http://`` or ``https://``; ``tls`` holds the cluster CA
    and this agent's client certificate) and return (estimated bytes, chunks of the stream)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackupFetchError(f"not an http:// or https:// API address: {url!r}")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                           context=tls or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", PATH, headers=headers)
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise BackupFetchError(f"cannot get a backup from {url}: {exc}") from None
    if resp.status != HTTPStatus.OK:
        detail = resp.read(2000).decode(errors="replace").strip()
        conn.close()
        raise BackupFetchError(f"{url}{PATH} answered {resp.status}: {detail}")
    estimate = int(resp.headers.get(ESTIMATE_HEADER) or 0)
    return estimate, BackupBody(url, conn, resp, chunk)


class BackupBody:
    """The chunks of a donor's stream; :meth:`close` hangs up before or during reading (the
    donor then stops its copy), which a generator not started yet could not do."""

    def __init__(self, url: str, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 chunk: int) -> None:
        self.url = url
        self.conn = conn
        self.resp = resp
        self.chunk = chunk

    def __iter__(self) -> Iterator[bytes]:
        try:
            while data := self.resp.read(self.chunk):
                yield data
        except (OSError, http.client.HTTPException) as exc:
            raise BackupFetchError(f"the backup stream from {self.url} broke off: {exc!r}") from None
        finally:
            self.close()

    def close(self) -> None:
        self.conn.close()
