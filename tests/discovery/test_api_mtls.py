"""Mutual TLS on the agents' HTTP API (docs/failsafe.md): with certificates made here by the
`openssl` command, on loopback only. The protected endpoints (failsafe promises, the backup
stream, switchover) refuse a caller without a client certificate from the cluster CA; a
certificate from another CA fails the handshake; probes need none; the token still works alone
(tests/locks/test_failsafe_promises.py, test_backup_stream.py)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbfence.agent.promise_client import PromiseClient
from dbfence.config import parse_config
from dbfence.discovery.api_tls import ApiTls, ApiTlsError
from dbfence.discovery.backup_stream import BackupFetchError, fetch_backup
from dbfence.discovery.http_api import PROMISE_PATH, CommandResult, HttpApi, StatusBoard
from dbfence.discovery.metrics import Metrics
from dbfence.lab.wait import wait_until
from dbfence.ops_cli import agent_failsafe
from dbfence.preflight import Check, Status
from dbfence.preflight.host import check_api_tls


@dataclass(frozen=True)
class Certs:
    directory: Path

    def __getitem__(self, name: str) -> str:
        return str(self.directory / name)


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt")


def _signed(directory: Path, name: str, ca: str) -> None:
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    if shutil.which("openssl") is None:
        pytest.skip("no `openssl` binary to make the test certificates")
    directory = tmp_path_factory.mktemp("api-tls")
    extensions = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    (directory / "san.ext").write_text(extensions)
    _ca(directory, "cluster-ca")
    _ca(directory, "other-ca")
    _signed(directory, "db1", "cluster-ca")  # one certificate per agent: server and client
    _signed(directory, "db2", "cluster-ca")
    _signed(directory, "intruder", "other-ca")
    yield Certs(directory)


class Calls:
    def __init__(self) -> None:
        self.promises: list[Mapping[str, Any]] = []
        self.commands: list[str] = []
        self.backups = 0

    def promise(self, payload: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
        self.promises.append(payload)
        return 200, {"granted": 4.0}

    def command(self, name: str, args: dict[str, str]) -> CommandResult:
        self.commands.append(name)
        return CommandResult(200, "ok")

    def backup(self) -> tuple[int, Iterator[bytes]]:
        self.backups += 1
        return 6, iter([b"abc", b"def"])


def _serve(certs: Certs, calls: Calls, token: str | None = None) -> HttpApi:
    tls = ApiTls(cert=certs["db1.crt"], key=certs["db1.key"], ca=certs["cluster-ca.crt"])
    return HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=token, on_command=calls.command,
                   backup=calls.backup, on_promise=calls.promise, tls=tls.server_context(),
                   mutual=tls.mutual).start()


def _base(api: HttpApi) -> str:
    host, port = api.address
    return f"https://{host}:{port}"


def _client(certs: Certs, who: str | None) -> ssl.SSLContext:
    """A peer's client context: the cluster CA, and the certificate ``who`` (None: none)."""
    if who is None:
        return ApiTls(ca=certs["cluster-ca.crt"]).client_context()
    tls = ApiTls(cert=certs[f"{who}.crt"], key=certs[f"{who}.key"], ca=certs["cluster-ca.crt"])
    return tls.client_context()


def _call(url: str, context: ssl.SSLContext | None, *, body: dict[str, Any] | None = None,
          token: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


PROMISE = {"cluster": "c", "primary": "db2", "token": 7, "duration": 4.0}


def test_protected_endpoints_need_a_client_certificate_from_the_cluster_ca(certs: Certs) -> None:
    calls = Calls()
    api = _serve(certs, calls)
    base = _base(api)
    try:
        # Probes over HTTPS need no certificate.
        assert _call(f"{base}/health", _client(certs, None)) == 503
        assert _call(f"{base}/metrics", _client(certs, None)) == 200
        # No client certificate: refused, never recorded.
        assert _call(f"{base}{PROMISE_PATH}", _client(certs, None), body=PROMISE) == 401
        assert _call(f"{base}/switchover?to=db2", _client(certs, None), body={}) == 401
        with pytest.raises(BackupFetchError, match="answered 401"):
            fetch_backup(base, None, tls=_client(certs, None))
        assert (calls.promises, calls.commands, calls.backups) == ([], [], 0)
        # A certificate from another CA does not get past the handshake (TLS 1.3: the client
        # learns it on its first read; an HTTP status would be an answer, not an error).
        with pytest.raises(OSError):
            _call(f"{base}{PROMISE_PATH}", _client(certs, "intruder"), body=PROMISE)
        # Plain HTTP to the TLS port gets nothing either.
        with pytest.raises(OSError):
            _call(f"http://{base.removeprefix('https://')}{PROMISE_PATH}", None, body=PROMISE)
        assert calls.promises == []
        # A peer with its certificate from the cluster CA.
        assert _call(f"{base}{PROMISE_PATH}", _client(certs, "db2"), body=PROMISE) == 200
        assert _call(f"{base}/switchover?to=db2", _client(certs, "db2"), body={}) == 200
        estimate, chunks = fetch_backup(base, None, tls=_client(certs, "db2"))
        assert (estimate, b"".join(chunks)) == (6, b"abcdef")
        assert (len(calls.promises), calls.commands, calls.backups) == (1, ["switchover"], 1)
    finally:
        api.stop()


def test_with_a_token_too_both_are_required(certs: Certs) -> None:
    calls = Calls()
    api = _serve(certs, calls, token="cluster-token")
    url = f"{_base(api)}{PROMISE_PATH}"
    try:
        assert _call(url, _client(certs, None), body=PROMISE, token="cluster-token") == 401
        assert _call(url, _client(certs, "db2"), body=PROMISE, token="wrong") == 401
        assert _call(url, _client(certs, "db2"), body=PROMISE) == 401
        assert calls.promises == []
        assert _call(url, _client(certs, "db2"), body=PROMISE, token="cluster-token") == 200
        assert len(calls.promises) == 1
    finally:
        api.stop()


def test_the_promise_client_asks_over_https_with_its_certificate(certs: Certs) -> None:
    calls = Calls()
    api = _serve(certs, calls)
    try:
        def ask(tls: ssl.SSLContext) -> Any:
            client = PromiseClient(cluster="c", node="db2", token=None, wake=threading.Event(), timeout=3.0,
                                   addresses=lambda: {"db1": _base(api)}, tls=tls)
            client.ask(7, ("db1",), 4.0)
            wait_until(lambda: not client.view()[2] or None, timeout=10, what="the promise round")
            client.stop()
            return client.view()

        last, complete, _ = ask(_client(certs, None))
        assert complete is None and last is not None
        assert "HTTP 401" in last.answers[0].detail
        last, complete, _ = ask(_client(certs, "db2"))
        assert complete is not None and complete.granted() == {"db1": 4.0}
        assert calls.promises[-1]["primary"] == "db2"
    finally:
        api.stop()


def test_unusable_files_name_the_setting(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ApiTlsError, match=r"http\.tls_cert: cannot use certificate"):
        ApiTls(cert=str(tmp_path / "missing.crt"), key=certs["db1.key"]).server_context()
    with pytest.raises(ApiTlsError, match=r"http\.tls_ca: cannot use CA file"):
        ApiTls(cert=certs["db1.crt"], key=certs["db1.key"], ca=str(tmp_path / "none.crt")).server_context()
    with pytest.raises(ValueError, match="mutual TLS needs"):
        HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), mutual=True)


def test_status_asks_an_agent_over_https_with_the_cluster_ca(certs: Certs) -> None:
    api = _serve(certs, Calls())
    try:
        row = agent_failsafe(_base(api), ca_file=certs["cluster-ca.crt"])  # no client certificate
        assert "error" not in row and row["role"] == "starting"
        assert "error" in agent_failsafe(_base(api))  # a private CA: not trusted by default
    finally:
        api.stop()


def test_dbfence_check_loads_the_api_certificates(certs: Certs, tmp_path: Path) -> None:
    def checked(ca: str) -> list[Check]:
        return check_api_tls(parse_config({
            "cluster": {"name": "c"}, "node": {"name": "db1"}, "mysql": {"credentials_file": "/x"},
            "dcs": {"kind": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
            "http": {"tls_cert": certs["db1.crt"], "tls_key": certs["db1.key"], "tls_ca": ca}}))

    good = checked(certs["cluster-ca.crt"])
    assert [(c.status, c.name) for c in good] == [(Status.OK, "http.tls")]
    assert "mutual TLS" in good[0].detail
    bad = checked(str(tmp_path / "missing-ca.crt"))
    assert bad[0].status is Status.FAIL and "http.tls_ca: cannot use CA file" in bad[0].detail
