"""The Consul keys beside the lock: the failsafe list, the operator's intent, the history.

Why apart from ``consul.py``, which owns the sessions and the lock key: these are plain reads and
check-and-set writes of keys that live without a session, each a few calls sharing one deadline of
``call_timeout`` seconds. :class:`~dbfence.locks.consul.ConsulLeaseLock` delegates its methods of
the same names here, as the etcd lock does to ``etcd_records.py``. The one write that depends on
the lock's own state, the failsafe list's, is checked there and only written here.

Invariants: Consul's KV has no write conditional on another key, so a delete or a rewrite is a
check-and-set on the index of exactly the entry read (a change in between refuses it, and nothing
is lost); a refused check-and-set is a :class:`LockConflict` that says nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from dbfence.locks.base import deadline_in, failsafe_relied_on, history_id
from dbfence.locks.consul_http import call_within, read_entry
from dbfence.locks.consul_kv import lock_state, newest_history
from dbfence.locks.errors import LockConflict
from dbfence.locks.model import (
    ClusterKeys,
    FailsafeList,
    HistoryEntry,
    Intent,
    encode,
    parse_failsafe_list,
    parse_intent,
)

T = TypeVar("T")


class ConsulRecords:
    """Failsafe list, intent and history of one cluster, over the lock's client."""

    def __init__(self, client: Any, keys: ClusterKeys, call_timeout: float, endpoint: str) -> None:
        self.client = client
        self.keys = keys
        self.call_timeout = call_timeout
        self.endpoint = endpoint

    def _call(self, what: str, deadline: float, fn: Callable[[], T]) -> T:
        return call_within(what, deadline, fn, self.endpoint)

    def _get(self, key: str, deadline: float, what: str) -> dict[str, Any] | None:
        return read_entry(self.client, key, deadline, what, self.endpoint)

    def _delete(self, key: str, deadline: float, what: str) -> None:
        self._call(what, deadline, lambda: self.client.kv.delete(key))

    # ------------------------------------------------------------------ the failsafe list

    def put_failsafe_list(self, listing: FailsafeList, deadline: float) -> None:
        """Write the list; the caller has checked that it holds the lock with ``listing.token``."""
        self._call("write failsafe list", deadline,
                   lambda: self.client.kv.put(self.keys.failsafe, encode(listing)))

    def delete_failsafe_list(self, *, while_held: bool = False) -> bytes | None:
        deadline = deadline_in(self.call_timeout)
        entry = self._get(self.keys.failsafe, deadline, "read failsafe list")
        if entry is None:
            return None
        lock = self._get(self.keys.leader, deadline, "read lock")
        if lock is not None and lock.get("Session") and not while_held:
            raise failsafe_relied_on(lock_state(self.keys, lock, False, []))
        # Consul's KV cannot make a delete conditional on another key: the check above and a
        # delete of exactly the value read (check-and-set on its index).
        index = int(entry.get("ModifyIndex", 0))
        deleted = self._call("delete failsafe list", deadline,
                             lambda: self.client.kv.delete(self.keys.failsafe, cas=index))
        if deleted is not True:
            raise LockConflict(self.keys.failsafe, "the failsafe list changed while deleting it; nothing "
                               "deleted")
        value = entry.get("Value")
        return value if isinstance(value, bytes) else str(value or "").encode()

    def drop_failsafe_members(self, nodes: frozenset[str]) -> tuple[FailsafeList, FailsafeList] | None:
        deadline = deadline_in(self.call_timeout)
        entry = self._get(self.keys.failsafe, deadline, "read failsafe list")
        if entry is None:
            return None
        before = parse_failsafe_list(self.keys.failsafe, entry.get("Value"))
        after = replace(before, members=tuple(m for m in before.members if m not in nodes))
        index = int(entry.get("ModifyIndex", 0))
        written = self._call("rewrite failsafe list", deadline,
                             lambda: self.client.kv.put(self.keys.failsafe, encode(after), cas=index))
        if written is not True:
            raise LockConflict(self.keys.failsafe, "the failsafe list changed while rewriting it; nothing "
                               "changed")
        return before, after

    # ------------------------------------------------------------------ intent and history

    def read_intent(self) -> Intent:
        entry = self._get(self.keys.intent, deadline_in(self.call_timeout), "read intent")
        return parse_intent(self.keys.intent, entry.get("Value")) if entry else Intent()

    def write_intent(self, intent: Intent) -> None:
        self._call("write intent", deadline_in(self.call_timeout),
                   lambda: self.client.kv.put(self.keys.intent, encode(intent)))

    def append_history(self, entry: HistoryEntry, keep: int = 100) -> None:
        deadline = deadline_in(self.call_timeout)
        key = self.keys.history_entry(history_id(entry))
        self._call("append history", deadline, lambda: self.client.kv.put(key, encode(entry)))
        _, keys = self._call(
            "list history", deadline, lambda: self.client.kv.get(self.keys.history_prefix, keys=True)
        )
        stale = sorted(keys or [])[:-keep] if keep > 0 else sorted(keys or [])
        for old in stale:
            self._delete(str(old), deadline, "trim history")

    def read_history(self, limit: int = 50) -> tuple[HistoryEntry, ...]:
        _, entries = self._call(
            "read history",
            deadline_in(self.call_timeout),
            lambda: self.client.kv.get(self.keys.history_prefix, recurse=True),
        )
        return newest_history(entries, limit)
