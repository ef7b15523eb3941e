"""`dbfence status` says what is true about a replica's lag."""

from __future__ import annotations

from typing import Any

from dbfence.ops_cli import _render


def member(node: str, role: str, lag: float | None) -> dict[str, Any]:
    return {"node": node, "role": role, "gate": "blocking", "healthy": True, "reasons": [],
            "gtid_position": "0-1-5", "lag_seconds": lag, "address": "", "seen_seconds_ago": 0.4}


def test_a_replica_with_unknown_lag_is_shown_as_unknown_not_zero() -> None:
    report = {"cluster": "c", "primary": "db1", "lock": None, "warnings": [],
              "members": [member("db1", "primary", None), member("db2", "replica", None),
                          member("db3", "replica", 0.0)]}
    rows = {line.split()[0]: line.split() for line in _render(report).splitlines()[2:]}
    assert rows["db1"][5] == "-" and rows["db2"][5] == "unknown" and rows["db3"][5] == "0s"
