"""One preflight check's outcome: ok, warn or fail, what was seen, and the exact fix."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.IntEnum):
    """Ordered by severity; the command exits with the worst one's value (Nagios' convention)."""

    OK = 0
    WARN = 1
    FAIL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # the SQL statement or configuration line that makes this check pass

    def line(self) -> str:
        text = f"{self.status.label:<4} {self.name}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix and self.status is not Status.OK else text

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.label, "detail": self.detail, "fix": self.fix}


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.FAIL, detail, fix)


def worst(checks: list[Check]) -> Status:
    return max((check.status for check in checks), default=Status.OK)
