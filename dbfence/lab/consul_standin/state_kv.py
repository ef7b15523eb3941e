"""The stand-in's KV store: entries, tombstones, and the locks sessions take on keys.

Why apart: KV is the lock protocol's ground (``?acquire``/``?release``, LockIndex, lock-delay) and
its index rules are subtle. Invariants (Consul's state store): a no-op write keeps ModifyIndex; a
delete leaves a tombstone so a prefix's index never goes back until tombstones are reaped; a key in
lock-delay refuses ``?acquire`` with a plain ``false`` before anything else is checked; a plain or
CAS write keeps the holder's session but carries LockIndex 0.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

from dbfence.lab.consul_standin.model import (
    KVEntry,
    Session,
    StandinConfig,
    StandinError,
)
from dbfence.lab.consul_standin.state_core import StateCore


class KVState(StateCore):
    """Keys, values, tombstones and the locks sessions hold on keys (acquire, release, lock-delay)."""

    def __init__(self, config: StandinConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock)
        self._kv: dict[str, KVEntry] = {}
        self._tombstones: dict[str, int] = {}
        self._tombstone_born: dict[str, float] = {}
        self._kv_table_index = 0
        self._lock_delay_until: dict[str, float] = {}

    # Provided by SessionState (state_sessions.py): only a live session may acquire.
    _sessions: dict[str, Session]

    def _kv_write(self, entry: KVEntry, index: int) -> None:
        self._kv[entry.key] = entry
        self._tombstones.pop(entry.key, None)
        self._tombstone_born.pop(entry.key, None)
        self._kv_table_index = max(self._kv_table_index, index)

    def _kv_remove(self, key: str, index: int) -> None:
        if self._kv.pop(key, None) is not None:
            self._tombstones[key] = index
            self._tombstone_born[key] = self.clock()
            self._kv_table_index = max(self._kv_table_index, index)

    def reap_tombstones(self, older_than: float = 0.0) -> int:
        """Forget tombstones at least ``older_than`` seconds old (Consul's tombstone GC); returns how many.

        A prefix whose newest change was a delete then reports the lower index of what is left: the
        index goes backwards, as it does on Consul, and blocking clients must cope.
        """
        with self.cond:
            return self._reap_tombstones_locked(older_than)

    def _reap_tombstones_locked(self, older_than: float) -> int:
        now = self.clock()
        doomed = [k for k, born in self._tombstone_born.items() if now - born >= older_than]
        for key in doomed:
            self._tombstones.pop(key, None)
            self._tombstone_born.pop(key, None)
        if doomed:
            self._changed()
        return len(doomed)

    def _kv_set(self, proposed: KVEntry, existing: KVEntry | None) -> None:
        """Store unless unchanged (Consul skips no-op writes, keeping ModifyIndex)."""
        if existing is not None and existing.same_content(proposed):
            return
        index = self._next_index()
        create_index = existing.create_index if existing is not None else index
        self._kv_write(dataclasses.replace(proposed, create_index=create_index, modify_index=index), index)
        self._changed()

    def kv_get(self, key: str) -> tuple[int, KVEntry | None]:
        entry = self._kv.get(key)
        if entry is not None:
            return entry.modify_index, entry
        return max(self._kv_table_index, 1), None

    def _prefix_index(self, prefix: str, entries: Iterable[KVEntry]) -> int:
        if prefix == "":
            return max(self._kv_table_index, 1)
        sub_index = max((e.modify_index for e in entries), default=0)
        sub_index = max(
            [sub_index, *(i for k, i in self._tombstones.items() if k.startswith(prefix))], default=0
        )
        return sub_index if sub_index else max(self._kv_table_index, 1)

    def kv_list(self, prefix: str) -> tuple[int, list[KVEntry]]:
        entries = sorted((e for k, e in self._kv.items() if k.startswith(prefix)), key=lambda e: e.key)
        return self._prefix_index(prefix, entries), entries

    def kv_keys(self, prefix: str, separator: str) -> tuple[int, list[str]]:
        index, entries = self.kv_list(prefix)
        keys: list[str] = []
        seen: set[str] = set()
        for entry in entries:
            key = entry.key
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
            if key not in seen:
                seen.add(key)
                keys.append(key)
        return index, keys

    def kv_put(
        self,
        key: str,
        value: bytes | None,
        flags: int,
        *,
        cas: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
    ) -> bool:
        """PUT /v1/kv/<key>: plain set, ?cas, ?acquire or ?release (at most one of the last three)."""
        with self.cond:
            existing = self._kv.get(key)
            if release is not None:
                return self._kv_unlock(key, value, flags, release, existing)
            if acquire is not None:
                return self._kv_lock(key, value, flags, acquire, existing)
            if cas is not None:
                if cas == 0 and existing is not None:
                    return False
                if cas != 0 and (existing is None or existing.modify_index != cas):
                    return False
            # A plain or CAS write keeps the holder's session but, as in Consul's state store, carries the
            # request's LockIndex (0): use ?acquire with the holder's session to update a held lock's value.
            proposed = KVEntry(
                key=key,
                value=value,
                flags=flags,
                session=existing.session if existing is not None else "",
                lock_index=0,
                create_index=0,
                modify_index=0,
            )
            self._kv_set(proposed, existing)
            return True

    def _kv_lock(
        self, key: str, value: bytes | None, flags: int, session_id: str, existing: KVEntry | None
    ) -> bool:
        # Consul enforces lock-delay on the leader before anything else, answering plain false.
        until = self._lock_delay_until.get(key)
        if until is not None and until > self.clock():
            return False
        if not session_id:
            raise StandinError(500, "missing session")
        if session_id not in self._sessions:
            raise StandinError(500, f'invalid session "{session_id}"')
        if existing is None:
            lock_index = 1
        elif existing.session == session_id:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        proposed = KVEntry(key, value, flags, session_id, lock_index, 0, 0)
        self._kv_set(proposed, existing)
        return True

    def _kv_unlock(
        self, key: str, value: bytes | None, flags: int, session_id: str, existing: KVEntry | None
    ) -> bool:
        if not session_id:
            raise StandinError(500, "missing session")
        if existing is None or existing.session != session_id:
            return False
        proposed = KVEntry(key, value, flags, "", existing.lock_index, 0, 0)
        self._kv_set(proposed, existing)
        return True

    def kv_delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
        with self.cond:
            if cas is not None:
                existing = self._kv.get(key)
                if existing is None:
                    return True  # Consul: a CAS delete of a missing key reports success
                if existing.modify_index != cas:
                    return False
                self._kv_remove(key, self._next_index())
                self._changed()
                return True
            doomed = (
                [k for k in self._kv if k.startswith(key)]
                if recurse
                else [k for k in (key,) if k in self._kv]
            )
            if doomed:
                index = self._next_index()
                for k in doomed:
                    self._kv_remove(k, index)
                self._changed()
            return True
