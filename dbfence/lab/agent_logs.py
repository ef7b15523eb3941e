"""What the soak reads back from the lab agents' logs: their role changes, the failsafe
promises each one gave (the givers' own records, which the history checker holds a primary's
writes to when it could hold no lease), and the tenures whose fencing-token rows no server could
be asked for (every mysqld that held them down at every check).

Every agent logs its events as one JSON object after the logging prefix, stamped with the
host's wall clock to the millisecond: the lab runs on one host, so one clock with the writers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from dbfence.lab.cluster import LabCluster
from dbfence.lab.history import Promise, Tenure
from dbfence.lab.soak_report import RoleChange


def log_events(text: str, event: str) -> Iterator[tuple[float, dict[str, Any]]]:
    """(wall clock, the event's JSON) of every ``event`` line of an agent's log text."""
    marker = f'"event": "{event}"'
    for line in text.splitlines():
        if marker not in line or "{" not in line:
            continue
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            body = json.loads(line[line.index("{"):])
        except ValueError:
            continue  # a line cut short by a kill -9, or another process's text
        if isinstance(body, dict) and body.get("event") == event:
            yield stamp, body


def promises_in(giver: str, text: str) -> list[Promise]:
    """The promises one agent's log says it gave (logged after it was persisted, before the
    answer left)."""
    promises = []
    for stamp, body in log_events(text, "promise_given"):
        try:
            promise = Promise(giver, str(body["to"]), int(body["token"]), stamp, float(body["seconds"]))
        except (KeyError, TypeError, ValueError):
            continue
        promises.append(promise)
    return promises


def read_agent_logs(lab: LabCluster) -> dict[str, str]:
    """Every lab agent's log text, by agent name: read once, for every question a check asks."""
    return {agent.name: Path(agent.log).read_text(errors="replace") for agent in lab.agents}


def promises_of(logs: dict[str, str]) -> tuple[Promise, ...]:
    """Every failsafe promise the agents' logs (:func:`read_agent_logs`) show, in time order."""
    promises = [p for name, text in logs.items() for p in promises_in(name, text)]
    return tuple(sorted(promises, key=lambda p: p.at))


def read_promises(lab: LabCluster) -> tuple[Promise, ...]:
    """Every failsafe promise the lab's agents gave, in time order."""
    return promises_of(read_agent_logs(lab))


def tenures_in(node: str, text: str) -> list[Tenure]:
    """The tenures one agent's log shows it began: a fencing-token write (stamped when the
    action began, so the tenure starts no later than its row's own time) followed by an admitting
    gate under the same token, which the agent does only once that write committed. A token
    written but never admitted under (in doubt, or its node killed first) is no tenure here: no
    write could be acknowledged in it."""
    written: dict[int, float] = {}
    tenures: dict[int, Tenure] = {}
    for stamp, body in log_events(text, "action"):
        if body.get("ok") is not True or not isinstance(body.get("token"), int):
            continue
        token = int(body["token"])
        if body.get("action") == "WriteFencingToken":
            begun = stamp - float(body.get("ms") or 0.0) / 1000
            written.setdefault(token, begun)
        elif body.get("action") == "AdmitGate" and token in written and token not in tenures:
            tenures[token] = Tenure(token, node, written[token])
    return sorted(tenures.values(), key=lambda t: t.token)


def tenures_of(logs: dict[str, str]) -> tuple[Tenure, ...]:
    """Every tenure the agents' logs (:func:`read_agent_logs`) show, oldest token first."""
    tenures = [t for name, text in logs.items() for t in tenures_in(name, text)]
    return tuple(sorted(tenures, key=lambda t: t.token))


def read_role_changes(lab: LabCluster, since_wall: float) -> list[RoleChange]:
    """Every agent's role changes after ``since_wall``, from its log, in time order."""
    changes = []
    for agent in lab.agents:
        for stamp, event in log_events(Path(agent.log).read_text(errors="replace"), "role"):
            if stamp >= since_wall:
                changes.append(RoleChange(stamp - since_wall, agent.name, str(event.get("from")),
                                          str(event.get("to")), event.get("why")))
    return sorted(changes, key=lambda c: c.at)
