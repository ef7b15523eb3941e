"""Fixtures for the Consul stand-in tests: every test gets its own stand-in on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dbfence.lab.consul_standin import ConsulStandin


@pytest.fixture
def standin_factory() -> Iterator[Callable[..., ConsulStandin]]:
    started: list[ConsulStandin] = []

    def make(**options: Any) -> ConsulStandin:
        standin = ConsulStandin(http_port=0, dns_port=0, **options).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def standin(standin_factory: Callable[..., ConsulStandin]) -> ConsulStandin:
    return standin_factory()
