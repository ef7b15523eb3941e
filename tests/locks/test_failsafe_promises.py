"""The failsafe adapters against a real etcd (docs/failsafe.md): promises asked over the agents'
HTTP API, refused without the cluster token, persisted before the answer, kept across a restart,
refused once the lease is gone in a DCS that answers; the lease keeper tells a DCS that cannot be
asked from a lease that is gone."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dbfence.agent.core_config import CoreConfig
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.observation import LeaseView
from dbfence.agent.peer_promises import FailsafeAdapter
from dbfence.agent.promise_book import PromiseBook
from dbfence.agent.promise_client import PromiseClient
from dbfence.agent.sensors import DcsSensor
from dbfence.agent.state import Role, State
from dbfence.breaker import Gate, GateConfig
from dbfence.discovery.http_api import PROMISE_PATH, HttpApi, StatusBoard
from dbfence.discovery.metrics import Metrics
from dbfence.lab.wait import wait_until
from dbfence.locks import LeaseLock, LockError
from tests.locks.conftest import Dcs, EtcdTrio
from tests.locks.locks_support import holder

TOKEN_TEXT = "cluster-secret-token"
TTL = 4.0


@dataclass
class Promiser:
    name: str
    lock: LeaseLock
    sensor: DcsSensor
    adapter: FailsafeAdapter
    http: HttpApi
    role: Role = Role.REPLICA

    @property
    def address(self) -> str:
        host, port = self.http.address
        return f"{host}:{port}"


def _config(name: str) -> CoreConfig:
    return CoreConfig(node_name=name, ttl=TTL, safety_margin=1.0, renew_interval=0.8, failsafe=True)


def _promiser(dcs: Dcs, name: str, state_dir: Path) -> Promiser:
    lock = dcs.lock(name)
    wake = threading.Event()
    sensor = DcsSensor(lock, wake, poll=0.2)
    box: list[Promiser] = []
    adapter = FailsafeAdapter(
        config=_config(name), cluster=lock.keys.cluster, token=TOKEN_TEXT, state_dir=state_dir, wake=wake,
        dcs=sensor, state_of=lambda: State(box[0].role), lease_of=LeaseView, request_timeout=2.0)
    http = HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=TOKEN_TEXT, on_promise=adapter.answer)
    promiser = Promiser(name, lock, sensor, adapter, http)
    box.append(promiser)
    sensor.start()
    http.start()
    wait_until(lambda: sensor.latest.snapshot, timeout=10, what=f"{name}'s first DCS snapshot")
    return promiser


@pytest.fixture
def cluster(etcd_dcs: tuple[Dcs, EtcdTrio],
            tmp_path: Path) -> Iterator[tuple[Dcs, LeaseLock, list[Promiser]]]:
    dcs, _ = etcd_dcs
    primary = dcs.lock("db1")
    primary.open_session()
    primary.try_acquire(holder("db1"))
    promisers = [_promiser(dcs, name, tmp_path / name) for name in ("db2", "db3")]
    try:
        yield dcs, primary, promisers
    finally:
        for promiser in promisers:
            promiser.http.stop()
            promiser.sensor.stop()
            promiser.adapter.stop()


def _ask(client: PromiseClient, token: int, members: tuple[str, ...]) -> None:
    client.ask(token, members, TTL)
    wait_until(lambda: not client.view()[2] or None, timeout=10, what="the promise round to finish")


def _client(promisers: list[Promiser], token: str = TOKEN_TEXT) -> PromiseClient:
    addresses = {p.name: p.address for p in promisers}
    return PromiseClient(cluster=promisers[0].lock.keys.cluster, node="db1", token=token,
                         wake=threading.Event(), timeout=2.0, addresses=lambda: addresses)


def _post(address: str, body: dict[str, object], token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://{address}{PROMISE_PATH}", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"text": text.decode()}


def test_every_member_promises_to_the_holder_and_keeps_it_across_a_restart(
        cluster: tuple[Dcs, LeaseLock, list[Promiser]], tmp_path: Path) -> None:
    _, primary, promisers = cluster
    token = primary.snapshot().lock.token  # type: ignore[union-attr]
    db2 = promisers[0]
    request = {"cluster": primary.keys.cluster, "primary": "db1", "token": token, "duration": TTL}
    # Unauthenticated or wrongly authenticated calls are refused and bind nothing.
    assert _post(db2.address, request, None)[0] == 401
    assert _post(db2.address, request, "wrong")[0] == 401
    assert db2.adapter.book.given() is None
    assert not (tmp_path / "db2" / "promises.json").exists()

    client = _client(promisers)
    started = time.monotonic()
    _ask(client, token, ("db2", "db3"))
    last, complete, asking = client.view()
    assert last is not None and complete == last and not asking
    assert last.granted() == {"db2": TTL, "db3": TTL}
    assert started <= last.sent_at
    for promiser in promisers:
        given = promiser.adapter.book.given()
        assert given is not None and given.to == "db1" and given.token == token
        assert given.until >= last.sent_at + TTL  # it started when the request arrived
        with promiser.adapter.book.may_acquire() as allowed:
            assert not allowed  # the executor's guard: no acquire while it is live
    # Persisted before the answer: a restarted agent is still bound, for the promise's length.
    restarted = PromiseBook(tmp_path / "db2", TTL)
    kept = restarted.load()
    assert kept is not None and kept.to == "db1" and kept.until > time.monotonic() + TTL - 1.5
    # A wrong token of the lock, another cluster, or a member that races: refused.
    assert _post(db2.address, {**request, "token": token + 1}, TOKEN_TEXT)[1]["refusal"] == "not_the_holder"
    assert _post(db2.address, {**request, "cluster": "other"}, TOKEN_TEXT)[1]["refusal"] == "other_cluster"
    assert _post(db2.address, {**request, "token": "x"}, TOKEN_TEXT)[0] == 400
    promisers[1].role = Role.CANDIDATE
    _ask(client, token, ("db2", "db3"))
    last, _, _ = client.view()
    assert last is not None and set(last.granted()) == {"db2"}
    assert "uses_the_lock" in next(a.detail for a in last.answers if a.member == "db3")


def test_a_member_that_sees_the_lock_free_stops_promising(
        cluster: tuple[Dcs, LeaseLock, list[Promiser]]) -> None:
    _, primary, promisers = cluster
    token = primary.snapshot().lock.token  # type: ignore[union-attr]
    primary.release()
    for promiser in promisers:
        wait_until(lambda p=promiser: (p.sensor.latest.snapshot is not None  # type: ignore[misc]
                   and p.sensor.latest.snapshot.lock is None) or None, timeout=10, what="the lock seen free")
    client = _client(promisers)
    _ask(client, token, ("db2", "db3"))
    last, complete, _ = client.view()
    assert last is not None and last.granted() == {} and complete is None
    assert all("lease_expired_in_dcs" in answer.detail for answer in last.answers)
    # A member whose address is unknown, or whose agent does not answer, is a no.
    client = PromiseClient(cluster=primary.keys.cluster, node="db1", token=TOKEN_TEXT, wake=threading.Event(),
                           timeout=0.5, addresses=lambda: {"db2": "127.0.0.1:9"})
    _ask(client, token, ("db2", "db9"))
    last, _, _ = client.view()
    assert last is not None and last.granted() == {}
    assert {answer.member for answer in last.answers} == {"db2", "db9"}


def test_the_keeper_tells_an_unreachable_dcs_from_a_lost_lease(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    dcs, trio = etcd_dcs
    # A lease that outlives the outage: restarting two members took 8 s once under load, past the
    # suite's 4 s TTL, and the lease was then really gone (not what this test is about).
    lock = dcs.lock("db1", replace(dcs.settings, ttl=20))
    keeper = LeaseKeeper(lock, Gate(GateConfig(listen_port=0)), threading.Event(), renew_interval=0.5)
    keeper.renew()
    keeper.acquire(holder("db1"))
    assert keeper.status.held and keeper.status.unreachable_since is None
    followers = [member for member in trio.members if member is not trio.leader()]
    for member in followers:
        trio.kill(member)  # quorum lost: renewals cannot be answered
    keeper.renew()
    status = keeper.status
    assert status.held and status.unreachable_since is not None, status.error
    first = status.unreachable_since
    keeper.renew()
    assert keeper.status.unreachable_since == first  # since the first failure, not the latest
    trio.ensure_all_up()
    wait_until(lambda: (keeper.renew(), keeper.status.error == "" or None)[1], timeout=30,
               what="a renewal once quorum is back")
    assert keeper.status.held and keeper.status.unreachable_since is None
    # The lock deleted under it: the lease is lost, not unreachable (no promise can save it).
    dcs.lock("ops").force_delete_lock()
    keeper.renew()
    assert not keeper.status.held and keeper.status.unreachable_since is None
    keeper.close()


def test_a_promise_file_that_cannot_be_read_binds_for_the_longest_promise(tmp_path: Path) -> None:
    book = PromiseBook(tmp_path, TTL)
    assert book.load() is None  # no file: nothing given
    (tmp_path / "promises.json").write_text("{not json")
    started = time.monotonic()
    given = book.load()
    assert given is not None and given.until >= started + TTL
    with book.may_acquire() as allowed:
        assert not allowed
    # A promise whose end is long past (beyond one period of clock tolerance) binds nothing.
    (tmp_path / "promises.json").write_text(json.dumps(
        {"to": "db1", "token": 3, "duration": TTL, "until_wall": time.time() - 2 * TTL - 1}))
    assert PromiseBook(tmp_path, TTL).load() is None
    with PromiseBook(tmp_path, TTL).may_acquire() as allowed:
        assert allowed


def test_the_promise_endpoint_is_off_without_failsafe() -> None:
    http = HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=TOKEN_TEXT).start()
    try:
        host, port = http.address
        status, _ = _post(f"{host}:{port}", {"cluster": "c", "primary": "db1", "token": 1, "duration": 1.0},
                          TOKEN_TEXT)
        assert status == 403
    finally:
        http.stop()


def test_a_renewal_the_loop_asks_for_runs_on_the_keeper_thread(etcd_dcs: tuple[Dcs, EtcdTrio]) -> None:
    """RenewLock must not make the decision loop wait for a DCS that does not answer (each
    attempt then waits for the call timeout): the loop only asks, the keeper's thread renews,
    and a renewal's deadline still comes from its send time."""
    dcs, trio = etcd_dcs
    lock = dcs.lock("db1")
    attempts: list[float] = []
    renew = lock.renew

    def counted() -> Any:
        attempts.append(time.monotonic())
        return renew()

    lock.renew = counted  # type: ignore[method-assign]  # counts the real calls
    keeper = LeaseKeeper(lock, Gate(GateConfig(listen_port=0)), threading.Event(), renew_interval=2.0)
    keeper.renew()
    keeper.acquire(holder("db1"))
    keeper.start()
    try:
        before = keeper.status.last_renew_ok
        assert before is not None
        wait_until(lambda: time.monotonic() - before >= 1.0 or None, timeout=5, what="a renewal to be due")
        keeper.request_renewal()
        wait_until(lambda: (keeper.status.last_renew_ok or 0) > before or None, timeout=5,
                   what="the keeper's renewal")
        status = keeper.status
        assert status.deadline is not None and status.last_renew_ok is not None
        assert status.deadline - status.last_renew_ok == pytest.approx(dcs.settings.ttl - dcs.settings.margin)
        for member in [m for m in trio.members if m is not trio.leader()]:
            trio.kill(member)  # quorum lost: every renewal waits for the call timeout, then fails
        wait_until(lambda: keeper.dcs_unreachable or None, timeout=15, what="renewals failing as unreachable")
        asked_at = time.monotonic()
        for _ in range(20):
            keeper.request_renewal()
        assert time.monotonic() - asked_at < 0.2  # a renewal on the caller would take 1.5 s each
        counted_before = len(attempts)
        time.sleep(2.0)  # one renewal interval: the keeper's own retry schedule, not 20 extra tries
        assert len(attempts) - counted_before <= 3
    finally:
        keeper.stop()
        trio.ensure_all_up()
        with contextlib.suppress(LockError):
            keeper.close()
