"""Failsafe with mutual TLS alone between the agents (no API token): real agents keep the primary
writing through etcd's quorum loss on promises asked over HTTPS with their certificates, and a
caller without a certificate from the cluster CA is refused (docs/failsafe.md, docs/install.md).
Certificates are made by the lab (`openssl`), for the agents' loopback addresses."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.faults_dcs import etcd_leader
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import app_connect

pytestmark = pytest.mark.timeout(300)


def _promise_without_a_certificate(lab: LabCluster, name: str) -> int:
    agent = lab.agent(name)
    body = json.dumps({"cluster": lab.cluster, "primary": "intruder", "token": 1, "duration": 3.0}).encode()
    request = urllib.request.Request(f"{agent.http_url}/failsafe/promise", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5, context=agent.tls_context()) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_promises_over_mutual_tls_keep_the_primary_writing_through_quorum_loss(
        lab_factory: LabFactory) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no `openssl` binary to make the lab's certificates")
    tuning = AgentTuning(failsafe=True, api_tls=True)  # TTL 3 s, margin 1 s
    lab = lab_factory(mysql_count=3, dcs="etcd", etcd_members=3, agents=True, agent_tuning=tuning)
    primary = wait_until(lambda: next(iter(lab.primaries()), None), timeout=60, what="a primary")
    replicas = [agent.name for agent in lab.agents if agent.name != primary]
    assert all(agent.http_url.startswith("https://") for agent in lab.agents)
    assert _promise_without_a_certificate(lab, replicas[0]) == 401
    # The primary reads its peers' https:// API addresses from their member records before the
    # outage (its failsafe list then names all three).
    wait_until(lambda: len(lab.agent_status(primary).get("failsafe", {}).get("members") or ()) == 2 or None,
               timeout=30, what="the primary's failsafe membership")

    leader = etcd_leader(lab)
    for member in (leader, next(m for m in lab.etcd if m.name != leader.name)):
        lab.kill_etcd(member.name)
    lost_at = time.monotonic()
    wait_until(lambda: (lab.agent_status(primary).get("failsafe") or {}).get("active") or None,
               timeout=3 * tuning.ttl + 5, what=f"{primary} writing on peer promises over mutual TLS")
    # Past any lease the primary could still hold: writes are acknowledged on promises alone.
    wait_until(lambda: time.monotonic() - lost_at > tuning.ttl + 1 or None, timeout=tuning.ttl + 5,
               what="the lease to run out")
    primary_agent = lab.agent(primary)
    conn = app_connect(lab, primary_agent.address, primary_agent.gate_port)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS app.mtls (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO app.mtls VALUES (1)")
    assert lab.primaries() == [primary]
    status = lab.agent_status(primary)["failsafe"]
    assert status["active"] and status["promises"] == 2, status
