"""Consul backend options against the stand-in: ACL token, explicit address beats the environment, CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.lab.procs import free_port, port_open, spawn, stop
from dbfence.lab.wait import wait_until
from dbfence.locks import DcsAccessDenied, LockSettings
from dbfence.locks.consul import ConsulLeaseLock, ConsulOptions, effective_lock_delay
from tests.locks.conftest import CONSUL_SETTINGS
from tests.locks.consul_http import consul_request
from tests.locks.locks_support import holder

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def acl_standin() -> Iterator[str]:
    if importlib.util.find_spec("dbfence.lab.consul_standin") is None:
        pytest.skip("the Consul stand-in (dbfence.lab.consul_standin) is not on this branch yet")
    directory = Path(tempfile.mkdtemp(prefix="standin-acl-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    ref = spawn([sys.executable, "-m", "dbfence.lab.consul_standin", "--http-addr", address,
                 "--dns-addr", f"127.0.0.1:{free_port()}", "--acl-token", TOKEN], directory / "standin.log")
    try:
        wait_until(partial(port_open, "127.0.0.1", port), timeout=20, what="the Consul stand-in")
        yield address
    finally:
        stop(ref, grace=5.0)
        shutil.rmtree(directory, ignore_errors=True)


def _lock(address: str, settings: LockSettings | None = None, **options: str) -> ConsulLeaseLock:
    options_ = ConsulOptions(address=address, **options)
    return ConsulLeaseLock(options_, "acl", "db1", settings or CONSUL_SETTINGS)


def test_acl_token_is_sent_and_a_missing_one_is_access_denied(
    acl_standin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    lock = _lock(acl_standin, token=TOKEN)
    try:
        grant = lock.try_acquire(holder("db1"))
        assert grant.token is not None and lock.renew().token == grant.token
        for options in ({}, {"token": "wrong"}):
            intruder = _lock(acl_standin, None, **options)
            with pytest.raises(DcsAccessDenied):
                intruder.snapshot()
            with pytest.raises(DcsAccessDenied):
                intruder.open_session()
            intruder.close()
        result = CliRunner().invoke(
            main, ["locks", "--consul", acl_standin, "--cluster", "acl", "--acl-token", TOKEN, "--json"]
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["lock"]["token"] == grant.token and data["lock"]["lock_index"] >= 1
        assert data["lock"]["session_id"] == lock.session_id and data["lock"]["ttl_left"] is None
    finally:
        lock.close_session()
        lock.close()


def test_explicit_address_wins_over_consul_http_addr(
    acl_standin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # python-consul2 alone would send this client to port 1.
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    lock = _lock(acl_standin, token=TOKEN)
    try:
        assert lock.snapshot().cluster == "acl"
    finally:
        lock.close()


def test_consul_rejects_ttl_below_ten_seconds(acl_standin: str) -> None:
    with pytest.raises(ValueError, match=r"10\.\.86400"):
        _lock(acl_standin, settings=LockSettings(ttl=5, margin=2, call_timeout=1))


def test_lock_delay_covers_the_holders_deadline_within_consuls_cap(acl_standin: str) -> None:
    assert effective_lock_delay(LockSettings(ttl=10, margin=3, call_timeout=2, lock_delay=1)) == 7
    assert effective_lock_delay(LockSettings(ttl=10, margin=3, call_timeout=2, lock_delay=9)) == 9
    assert effective_lock_delay(LockSettings(ttl=62, margin=2, call_timeout=1)) == 60
    with pytest.raises(ValueError, match="60 s"):
        _lock(acl_standin, settings=LockSettings(ttl=70, margin=3, call_timeout=2))


def test_the_session_binds_no_check_and_carries_the_lock_delay(acl_standin: str) -> None:
    lock = _lock(acl_standin, token=TOKEN)
    try:
        session_id = lock.open_session().session_id
        status, _, info = consul_request(acl_standin, "GET", f"/v1/session/info/{session_id}?token={TOKEN}")
        assert status == 200, info
        assert info[0]["NodeChecks"] is None and info[0]["ServiceChecks"] is None
        assert info[0]["LockDelay"] == 7_000_000_000 and info[0]["Behavior"] == "delete"
        assert info[0]["TTL"] == f"{CONSUL_SETTINGS.ttl}s"
    finally:
        lock.close_session()
        lock.close()
