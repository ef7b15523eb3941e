"""etcd with user/password authentication and with mutual TLS: the options work, wrong ones are refused."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from dbfence.lab.binaries import find_binary
from dbfence.lab.procs import ProcessRef, free_port, port_open, spawn, stop
from dbfence.lab.wait import wait_until
from dbfence.locks import DcsAccessDenied, DcsUnreachable
from dbfence.locks.etcd import EtcdLeaseLock, EtcdOptions
from tests.locks.conftest import ETCD_SETTINGS
from tests.locks.locks_support import holder


def _start_etcd(directory: Path, scheme: str, extra: list[str]) -> tuple[ProcessRef, str]:
    client = f"{scheme}://127.0.0.1:{free_port()}"
    argv = [
        find_binary("etcd"), "--name=sec", f"--data-dir={directory / 'data'}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls=http://127.0.0.1:{free_port()}", "--log-level=warn", "--logger=zap", *extra,
    ]
    ref = spawn(argv, directory / "etcd.log")
    port = int(client.rsplit(":", 1)[1])
    wait_until(partial(port_open, "127.0.0.1", port), timeout=20, what="etcd to listen")
    return ref, client


def _lock(client: str, **options: str) -> EtcdLeaseLock:
    return EtcdLeaseLock(EtcdOptions(endpoints=(client,), **options), "sec", "db1", ETCD_SETTINGS)


@pytest.fixture
def auth_etcd() -> Iterator[str]:
    directory = Path(tempfile.mkdtemp(prefix="etcd-auth-"))
    ref, client = _start_etcd(directory, "http", [])
    try:
        etcdctl = [find_binary("etcdctl"), f"--endpoints={client}"]
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}

        def ctl(*args: str) -> None:
            subprocess.run([*etcdctl, *args], check=True, env=env, capture_output=True, timeout=20)

        def healthy() -> bool:
            probe = subprocess.run(
                [*etcdctl, "endpoint", "health"], check=False, env=env, capture_output=True, timeout=5
            )
            return probe.returncode == 0

        wait_until(healthy, timeout=20, what="etcd health")
        ctl("user", "add", "root:rootpw")
        ctl("user", "add", "agent:agentpw")
        ctl("role", "add", "dbfence")
        ctl("role", "grant-permission", "dbfence", "--prefix=true", "readwrite", "dbfence/")
        ctl("user", "grant-role", "agent", "dbfence")
        ctl("auth", "enable")
        yield client
    finally:
        stop(ref, grace=5.0)
        shutil.rmtree(directory, ignore_errors=True)


def test_user_password_auth(auth_etcd: str) -> None:
    lock = _lock(auth_etcd, user="agent", password="agentpw")
    try:
        grant = lock.try_acquire(holder("db1"))
        assert lock.snapshot().lock is not None
        assert lock.renew().token == grant.token
        lock.close_session()
    finally:
        lock.close()
    for options in ({}, {"user": "agent", "password": "wrong"}):
        anonymous = _lock(auth_etcd, **options)
        try:
            with pytest.raises(DcsAccessDenied):
                anonymous.snapshot()
        finally:
            anonymous.close()


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_etcd() -> Iterator[tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("no `openssl` binary to make the test certificates")
    directory = Path(tempfile.mkdtemp(prefix="etcd-tls-"))
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt")
    extensions = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    (directory / "san.ext").write_text(extensions)
    for name in ("server", "client"):
        _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr")
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")
    ref, client = _start_etcd(directory, "https", [
        f"--cert-file={directory / 'server.crt'}", f"--key-file={directory / 'server.key'}",
        f"--trusted-ca-file={directory / 'ca.crt'}", "--client-cert-auth",
    ])
    try:
        yield client, directory
    finally:
        stop(ref, grace=5.0)
        shutil.rmtree(directory, ignore_errors=True)


def test_mutual_tls(tls_etcd: tuple[str, Path]) -> None:
    client, certs = tls_etcd
    lock = _lock(client, ca_cert=str(certs / "ca.crt"), cert=str(certs / "client.crt"),
                 key=str(certs / "client.key"))
    try:
        grant = wait_until(lambda: lock.try_acquire(holder("db1")), timeout=10, what="a TLS acquire")
        assert lock.snapshot().lock is not None and grant.token is not None
        lock.close_session()
    finally:
        lock.close()
    # Without a client certificate the server refuses the handshake: unreachable, quickly.
    no_cert = _lock(client, ca_cert=str(certs / "ca.crt"))
    try:
        with pytest.raises(DcsUnreachable):
            no_cert.snapshot()
    finally:
        no_cert.close()
