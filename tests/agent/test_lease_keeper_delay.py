"""The lease keeper measures the gap between renewals and says when one came late (a real DCS:
the Consul stand-in)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.lab.consul_standin import ConsulStandin
from dbfence.locks import LockSettings
from dbfence.locks.consul import ConsulLeaseLock, ConsulOptions
from dbfence.locks.model import HolderInfo

INTERVAL = 0.2


def test_a_late_renewal_is_measured_and_logged_with_the_lease_left(
        standin: ConsulStandin, caplog: pytest.LogCaptureFixture) -> None:
    lock = ConsulLeaseLock(ConsulOptions(address=standin.http_address), "keeper", "db1",
                           LockSettings(ttl=10, margin=3.0, call_timeout=2.0, lock_delay=0))
    keeper = LeaseKeeper(lock, Gate(GateConfig()), threading.Event(), renew_interval=INTERVAL)
    try:
        keeper.renew()  # opens the session
        keeper.acquire(HolderInfo(node="db1", address="127.0.0.1", gate_port=3307, acquired_at=time.time()))
        assert keeper.status.held
        with caplog.at_level(logging.WARNING, logger="dbfence.agent"):
            keeper.renew()  # on time: nothing to say
            assert not [r for r in caplog.records if "renewal late" in r.getMessage()]
            stalled_from = time.monotonic()
            while time.monotonic() - stalled_from < 3 * INTERVAL:  # the stall being measured
                time.sleep(0.01)
            keeper.renew()
        status = keeper.status
        assert status.worst_renew_gap >= 3 * INTERVAL
        assert status.least_lease_left is not None and status.least_lease_left < 10 - 3.0 - 3 * INTERVAL
        late = [r.getMessage() for r in caplog.records if "renewal late" in r.getMessage()]
        assert len(late) == 1 and "of lease were left" in late[0]
    finally:
        keeper.close()
