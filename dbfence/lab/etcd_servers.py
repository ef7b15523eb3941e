"""A real etcd cluster of one or three members on loopback ports (or on one namespace's address)."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dbfence.lab.binaries import find_binary
from dbfence.lab.procs import ProcessRef, free_port, spawn, stop

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    datadir: str
    initial_cluster: str
    cluster_token: str
    pid: int
    create_time: float

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.create_time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EtcdPlan:
    name: str
    client_url: str
    peer_url: str
    datadir: Path


def plan_members(root: Path, count: int, host: str = HOST) -> list[EtcdPlan]:
    return [
        EtcdPlan(
            name=f"etcd{i}",
            client_url=f"http://{host}:{free_port()}",
            peer_url=f"http://{host}:{free_port()}",
            datadir=root / f"etcd{i}" / "data",
        )
        for i in range(1, count + 1)
    ]


def member_argv(plan: EtcdPlan, initial_cluster: str, token: str, state: str) -> list[str]:
    return [
        find_binary("etcd"),
        f"--name={plan.name}",
        f"--data-dir={plan.datadir}",
        f"--listen-client-urls={plan.client_url}",
        f"--advertise-client-urls={plan.client_url}",
        f"--listen-peer-urls={plan.peer_url}",
        f"--initial-advertise-peer-urls={plan.peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        f"--initial-cluster-state={state}",
        # Loopback is fast: elect quickly so a killed leader is replaced within about a second.
        "--heartbeat-interval=50",
        "--election-timeout=500",
        "--logger=zap",
        "--log-level=warn",
    ]


def start_member(plan: EtcdPlan, initial_cluster: str, token: str, state: str = "new",
                 argv_prefix: Sequence[str] = ()) -> EtcdMember:
    plan.datadir.parent.mkdir(parents=True, exist_ok=True)
    ref = spawn([*argv_prefix, *member_argv(plan, initial_cluster, token, state)],
                plan.datadir.parent / "etcd.log")
    return EtcdMember(
        name=plan.name, client_url=plan.client_url, peer_url=plan.peer_url,
        datadir=str(plan.datadir), initial_cluster=initial_cluster, cluster_token=token,
        pid=ref.pid, create_time=ref.create_time,
    )


def start_cluster(root: Path, count: int, host: str = HOST,
                  argv_prefix: Sequence[str] = ()) -> list[EtcdMember]:
    plans = plan_members(root, count, host)
    initial = ",".join(f"{p.name}={p.peer_url}" for p in plans)
    token = f"dbfence-lab-{secrets.token_hex(4)}"
    return [start_member(p, initial, token, argv_prefix=argv_prefix) for p in plans]


def restart_member(member: EtcdMember, argv_prefix: Sequence[str] = ()) -> EtcdMember:
    """Start a stopped member again from its data directory (it rejoins the cluster)."""
    plan = EtcdPlan(member.name, member.client_url, member.peer_url, Path(member.datadir))
    return start_member(plan, member.initial_cluster, member.cluster_token, state="existing",
                        argv_prefix=argv_prefix)


def healthy(member: EtcdMember, timeout: float = 1.0) -> bool:
    """True when the member answers /health and sees a leader (so it can serve requests)."""
    try:
        with urllib.request.urlopen(f"{member.client_url}/health", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return bool(body.get("health") in ("true", True))


def stop_member(member: EtcdMember) -> None:
    stop(member.process, grace=10.0)
