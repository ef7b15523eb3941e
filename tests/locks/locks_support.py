"""Helpers for the lock tests: raw writes, the multi-process race worker, figures."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from dbfence.locks import DcsConfig, HolderInfo, LockConflict, LockSettings, open_lock


def holder(node: str) -> HolderInfo:
    return HolderInfo(node=node, address="127.0.0.1", gate_port=3307, acquired_at=time.time())


def put_raw(config: DcsConfig, key: str, value: bytes) -> None:
    """Write ``value`` under ``key`` with no lease/session, bypassing dbfence's encoders."""
    if config.kind == "etcd":
        import grpc  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
        from pyetcd import etcdrpc  # noqa: PLC0415

        target = config.endpoints[0].removeprefix("http://")
        with grpc.insecure_channel(target) as channel:
            etcdrpc.KVStub(channel).Put(etcdrpc.PutRequest(key=key.encode(), value=value), timeout=5.0)
        return
    import consul  # noqa: PLC0415

    host, port = config.endpoints[0].removeprefix("http://").rsplit(":", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # python-consul2 warns on construction
        client = consul.Consul(host=host, port=int(port))
    assert client.kv.put(key, value) is True


def race_worker(
    config: DcsConfig,
    cluster: str,
    node: str,
    settings: LockSettings,
    barrier: Any,
    results: Any,
    rounds: int,
) -> None:
    """One contender process: every round, everyone calls try_acquire at the same instant.

    Reports ``(round, node, "won"|"lost"|"error", token, detail)``. The round's winner
    releases only after every contender has reported, then everyone races again.
    """
    lock = open_lock(config, cluster, node, settings)
    try:
        lock.open_session()
        for round_number in range(rounds):
            barrier.wait(timeout=60)
            try:
                grant = lock.try_acquire(holder(node))
                results.put((round_number, node, "won", grant.token, ""))
            except LockConflict as exc:
                results.put((round_number, node, "lost", exc.token, str(exc)))
            except Exception as exc:  # reported to the parent, which fails the test with it
                results.put((round_number, node, "error", None, repr(exc)))
            barrier.wait(timeout=60)
            lock.release()
            barrier.wait(timeout=60)
    finally:
        try:
            lock.close_session()
        finally:
            lock.close()


def record_figure(name: str, value: float, unit: str = "s") -> None:
    """Print a measured figure and append it to $DBFENCE_LOCK_FIGURES (JSON lines) when set."""
    print(f"FIGURE {name} = {value:.4f} {unit}")
    path = os.environ.get("DBFENCE_LOCK_FIGURES")
    if path:
        with Path(path).open("a") as handle:
            handle.write(json.dumps({"name": name, "value": value, "unit": unit}) + "\n")
