"""The stand-in's state: KV store, sessions, lock-delay, agent services and checks, catalog indexes.

Everything lives behind ONE lock with ONE condition variable. Writers bump the Raft-like index and
``notify_all``; blocking queries and the reaper thread wait on the same condition. Deadlines (session
TTLs, TTL checks, lock-delays) use ``time.monotonic``.

Semantics follow Consul's state store (see docs/consul-standin.md for every known deviation).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from dbfence.lab.consul_standin.durations import DurationError, parse_duration
from dbfence.lab.consul_standin.model import (
    BEHAVIOR_DELETE,
    BEHAVIOR_RELEASE,
    CRITICAL,
    MAX_LOCK_DELAY,
    PASSING,
    SERF_CHECK_ID,
    WARNING,
    CatalogNode,
    Check,
    CheckDefinition,
    KVEntry,
    Service,
    ServiceDefinition,
    ServiceInstance,
    Session,
    SessionRequest,
    StandinConfig,
    StandinError,
)

T = TypeVar("T")


class StandinState:
    """Thread-safe in-memory model of one Consul agent that is also the only server of its datacenter."""

    def __init__(self, config: StandinConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{config.node}.{config.datacenter}.dbfence"))
        self._lock = threading.Lock()
        self.cond = threading.Condition(self._lock)
        self._stopping = False
        self._index = 0
        # Fault switches (PUT /v1/standin/control): answer 500 "No cluster leader" / 429 to every request.
        self.no_leader = False
        self.rate_limited = False
        self._blocked_queries = 0
        # KV
        self._kv: dict[str, KVEntry] = {}
        self._tombstones: dict[str, int] = {}
        self._tombstone_born: dict[str, float] = {}
        self._kv_table_index = 0
        self._lock_delay_until: dict[str, float] = {}
        # sessions
        self._sessions: dict[str, Session] = {}
        self._session_deadline: dict[str, float] = {}
        self._sessions_index = 0
        # agent + catalog
        self._services: dict[str, Service] = {}
        self._checks: dict[str, Check] = {}
        self._check_deadline: dict[str, float] = {}
        self._critical_since: dict[str, float] = {}
        # Checks whose new status has not reached the catalog yet: (sync due, status the catalog still has).
        self._unsynced: dict[str, tuple[float, str]] = {}
        self._service_index: dict[str, int] = {}
        self._catalog_index = 0
        self._node_index = self._next_index()
        # Every node of the catalog, and the checks the catalog (not this agent) owns on them: each
        # node's serfHealth, set by the leader from gossip, plus checks registered via the catalog API.
        self._nodes: dict[str, CatalogNode] = {
            config.node: CatalogNode(config.node, config.node_address, self._node_index, self._node_index)
        }
        self._catalog_checks: dict[str, dict[str, Check]] = {
            config.node: {SERF_CHECK_ID: self._new_serf_check(config.node, self._node_index)}
        }
        consul_index = self._next_index()
        # The catalog of a real server lists its own "consul" service; agent/services does not.
        self._consul_service = Service(
            id="consul",
            name="consul",
            tags=(),
            address="",
            port=8300,
            meta=(),
            enable_tag_override=False,
            weight_passing=1,
            weight_warning=1,
            create_index=consul_index,
            modify_index=consul_index,
        )
        self._service_index["consul"] = consul_index
        self._catalog_index = consul_index

    @staticmethod
    def _new_serf_check(node: str, index: int) -> Check:
        return Check(
            id=SERF_CHECK_ID,
            name="Serf Health Status",
            status=PASSING,
            notes="",
            output="Agent alive and reachable",
            service_id="",
            service_name="",
            service_tags=(),
            ttl=None,
            ttl_text="",
            deregister_critical_after=None,
            create_index=index,
            modify_index=index,
            node=node,
        )

    @property
    def _serf_check(self) -> Check:
        return self._catalog_checks[self.config.node][SERF_CHECK_ID]

    # ------------------------------------------------------------------ plumbing

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _changed(self) -> None:
        self.cond.notify_all()

    def stop(self) -> None:
        """Wake every waiter so blocking queries return and the reaper exits."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def blocking(
        self, min_index: int, wait: float | None, view: Callable[[], tuple[int, T]]
    ) -> tuple[int, T]:
        """Run ``view`` like Consul's blockingQuery.

        With ``min_index`` 0 the view runs once. Otherwise it is re-run on every state change until the
        index it reports exceeds ``min_index`` or the wait (default 5 min, at most 10 min, plus up to
        1/16 jitter) runs out; then the current result is returned either way.
        """
        with self.cond:
            index, result = view()
            if min_index <= 0 or index > min_index:
                return index, result
            timeout = wait if wait is not None and wait > 0 else self.config.default_query_wait
            timeout = min(timeout, self.config.max_query_wait)
            if self.config.blocking_jitter:
                timeout += random.uniform(0, timeout / 16)
            deadline = self.clock() + timeout
            self._blocked_queries += 1
            try:
                while not self._stopping:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                    index, result = view()
                    if index > min_index:
                        break
            finally:
                self._blocked_queries -= 1
            return index, result

    @property
    def blocked_queries(self) -> int:
        """How many blocking queries are parked right now (lets tests know a watcher is in place)."""
        with self.cond:
            return self._blocked_queries

    # ------------------------------------------------------------------ KV

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

    # ------------------------------------------------------------------ sessions

    def session_create(self, request: SessionRequest) -> str:
        with self.cond:
            behavior = request.behavior or BEHAVIOR_RELEASE
            if behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
                raise StandinError(500, f"Invalid Behavior setting '{behavior}'")
            ttl = 0.0
            if request.ttl_text:
                try:
                    ttl = parse_duration(request.ttl_text)
                except DurationError as error:
                    raise StandinError(500, f"Session TTL '{request.ttl_text}' invalid: {error}") from None
                if ttl != 0 and not (self.config.session_ttl_min <= ttl <= self.config.session_ttl_max):
                    raise StandinError(
                        500,
                        f"Invalid Session TTL '{request.ttl_text}', must be between "
                        f"[{self.config.session_ttl_min:g}s={self.config.session_ttl_max:g}s]",
                    )
            node = request.node or self.config.node
            if node not in self._nodes:
                raise StandinError(500, "Missing node registration")
            for check_id in (*request.node_checks, *request.service_checks):
                check = self._check_by_id(node, check_id)
                if check is None:
                    raise StandinError(500, f"Missing check '{check_id}' registration")
                if check.status == CRITICAL:
                    raise StandinError(500, f"Check '{check_id}' is in critical state")
            session_id = str(uuid.uuid4())
            index = self._next_index()
            self._sessions[session_id] = Session(
                id=session_id,
                name=request.name,
                node=node,
                lock_delay=request.lock_delay,
                behavior=behavior,
                ttl_text=request.ttl_text,
                ttl=ttl,
                node_checks=tuple(dict.fromkeys(request.node_checks)),
                service_checks=tuple(dict.fromkeys(request.service_checks)),
                create_index=index,
                modify_index=index,
            )
            self._sessions_index = index
            if ttl > 0:
                self._session_deadline[session_id] = self.clock() + ttl * self.config.session_ttl_multiplier
            self._changed()
            return session_id

    def session_renew(self, session_id: str) -> Session | None:
        with self.cond:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.ttl > 0:
                self._session_deadline[session_id] = (
                    self.clock() + session.ttl * self.config.session_ttl_multiplier
                )
                self._changed()
            return session

    def session_destroy(self, session_id: str) -> None:
        with self.cond:
            if session_id in self._sessions:
                self._invalidate_session(session_id)

    def session_get(self, session_id: str) -> tuple[int, Session | None]:
        return max(self._sessions_index, 1), self._sessions.get(session_id)

    def session_list(self, node: str | None = None) -> tuple[int, list[Session]]:
        sessions = [s for s in self._sessions.values() if node is None or s.node == node]
        return max(self._sessions_index, 1), sorted(sessions, key=lambda s: s.create_index)

    def session_ttl_remaining(self, session_id: str) -> float | None:
        """Seconds until the stand-in will invalidate the session (None: no TTL or unknown). For tests."""
        with self.cond:
            deadline = self._session_deadline.get(session_id)
            return None if deadline is None else deadline - self.clock()

    def _invalidate_session(self, session_id: str) -> None:
        """Destroy a session (TTL expiry, destroy call, failed check): lock-delay, then release or delete."""
        session = self._sessions.pop(session_id)
        self._session_deadline.pop(session_id, None)
        index = self._next_index()
        self._sessions_index = index
        now = self.clock()
        delay = min(session.lock_delay, MAX_LOCK_DELAY)
        for key, entry in list(self._kv.items()):
            if entry.session != session_id:
                continue
            if delay > 0:
                self._lock_delay_until[key] = now + delay
            if session.behavior == BEHAVIOR_DELETE:
                self._kv_remove(key, index)
            else:
                self._kv_write(dataclasses.replace(entry, session="", modify_index=index), index)
        self._changed()

    # ------------------------------------------------------------------ agent services and checks

    def _check_by_id(self, node: str, check_id: str) -> Check | None:
        catalog_check = self._catalog_checks.get(node, {}).get(check_id)
        if catalog_check is not None or node != self.config.node:
            return catalog_check
        return self._checks.get(check_id)

    # ------------------------------------------------------------------ catalog nodes and their checks

    def catalog_register(
        self, node: str, address: str, checks: Iterable[tuple[str, str, str, str]]
    ) -> None:
        """PUT /v1/catalog/register of a node and node-level checks ``(id, name, status, output)``.

        A check going critical invalidates the sessions bound to it, as Consul's state store does;
        this is also how a test fails a node's serfHealth the way the leader would on a gossip failure.
        """
        with self.cond:
            self._catalog_register_locked(node, address, checks)

    def _catalog_register_locked(
        self, node: str, address: str, checks: Iterable[tuple[str, str, str, str]]
    ) -> None:
        index = self._next_index()
        previous = self._nodes.get(node)
        if previous is None:
            self._nodes[node] = CatalogNode(node, address, index, index)
            self._catalog_checks[node] = {}
        elif address and address != previous.address:
            self._nodes[node] = dataclasses.replace(previous, address=address, modify_index=index)
        for check_id, name, status, output in checks:
            self._set_catalog_check(node, check_id, name, status, output, index)
        self._touch_all_services(index)
        self._changed()

    def _set_catalog_check(
        self, node: str, check_id: str, name: str, status: str, output: str, index: int
    ) -> None:
        owned = self._catalog_checks[node]
        previous = owned.get(check_id)
        if previous is None:
            previous = dataclasses.replace(
                self._new_serf_check(node, index), id=check_id, name=name or check_id, output=""
            )
        owned[check_id] = dataclasses.replace(
            previous, name=name or previous.name, status=status, output=output, modify_index=index
        )
        if status == CRITICAL:
            self._invalidate_sessions_using(node, check_id)

    def set_serf_health(self, status: str, output: str, node: str | None = None) -> None:
        """Set a node's serfHealth, as Consul's leader does when gossip marks the node failed or alive."""
        node = node or self.config.node
        with self.cond:
            if node not in self._nodes:
                raise StandinError(404, f"Unknown node {node!r}")
            check = self._catalog_checks[node].get(SERF_CHECK_ID)
            if check is not None and check.status == status:
                return
            self._catalog_register_locked(node, "", [(SERF_CHECK_ID, "Serf Health Status", status, output)])

    def catalog_deregister(self, node: str, check_id: str = "") -> None:
        """PUT /v1/catalog/deregister: a node (and every session on it), or one of its checks.

        Deregistering the stand-in's own node ends its sessions; its agent re-registers it, its
        services and checks at once (Consul's anti-entropy does so within its next sync).
        """
        with self.cond:
            if node not in self._nodes:
                return  # Consul: deregistering an unknown node is a no-op
            index = self._next_index()
            if check_id:
                self._catalog_checks[node].pop(check_id, None)
                self._invalidate_sessions_using(node, check_id)
            else:
                for session_id, session in list(self._sessions.items()):
                    if session.node == node:
                        self._invalidate_session(session_id)
                if node == self.config.node:
                    self._nodes[node] = dataclasses.replace(self._nodes[node], modify_index=index)
                    self._catalog_checks[node] = {SERF_CHECK_ID: self._new_serf_check(node, index)}
                else:
                    del self._nodes[node]
                    del self._catalog_checks[node]
            self._touch_all_services(index)
            self._changed()

    def nodes(self) -> list[CatalogNode]:
        with self.cond:
            return sorted(self._nodes.values(), key=lambda n: n.name)

    def _touch_service(self, name: str, index: int) -> None:
        self._service_index[name] = index
        self._catalog_index = index

    def register_service(
        self, definition: ServiceDefinition, *, replace_existing_checks: bool = False
    ) -> None:
        with self.cond:
            now = self.clock()
            index = self._next_index()
            previous = self._services.get(definition.id)
            if previous is not None and previous.name != definition.name:
                self._touch_service(previous.name, index)
            self._services[definition.id] = Service(
                id=definition.id,
                name=definition.name,
                tags=definition.tags,
                address=definition.address,
                port=definition.port,
                meta=definition.meta,
                enable_tag_override=definition.enable_tag_override,
                weight_passing=definition.weight_passing,
                weight_warning=definition.weight_warning,
                create_index=previous.create_index if previous is not None else index,
                modify_index=index,
            )
            new_ids = {c.check_id for c in definition.checks}
            for check_id, check in list(self._checks.items()):
                if check.service_id != definition.id:
                    continue
                if check_id in new_ids:
                    continue
                if replace_existing_checks:
                    self._remove_check(check_id)
                else:
                    # Keep the check but refresh the service fields it carries.
                    self._checks[check_id] = dataclasses.replace(
                        check, service_name=definition.name, service_tags=definition.tags, modify_index=index
                    )
            for check_definition in definition.checks:
                self._install_check(
                    check_definition,
                    service_id=definition.id,
                    service_name=definition.name,
                    service_tags=definition.tags,
                    index=index,
                    now=now,
                )
            self._touch_service(definition.name, index)
            self._changed()

    def _install_check(
        self,
        definition: CheckDefinition,
        *,
        service_id: str,
        service_name: str,
        service_tags: tuple[str, ...],
        index: int,
        now: float,
    ) -> None:
        previous = self._checks.get(definition.check_id)
        # Like the agent, a re-registration keeps the status and output the check already had.
        status = previous.status if previous is not None else definition.status
        output = previous.output if previous is not None else ""
        self._checks[definition.check_id] = Check(
            id=definition.check_id,
            name=definition.name,
            status=status,
            notes=definition.notes,
            output=output,
            service_id=service_id,
            service_name=service_name,
            service_tags=service_tags,
            ttl=definition.ttl,
            ttl_text=definition.ttl_text,
            deregister_critical_after=definition.deregister_critical_after,
            create_index=previous.create_index if previous is not None else index,
            modify_index=index,
        )
        self._check_deadline[definition.check_id] = now + definition.ttl
        self._unsynced.pop(definition.check_id, None)
        if status == CRITICAL:
            self._critical_since.setdefault(definition.check_id, now)
            self._invalidate_sessions_using(self.config.node, definition.check_id)
        else:
            self._critical_since.pop(definition.check_id, None)

    def register_check(self, definition: CheckDefinition, service_id: str) -> None:
        with self.cond:
            service_name = ""
            service_tags: tuple[str, ...] = ()
            if service_id:
                service = self._services.get(service_id)
                if service is None:
                    raise StandinError(400, f'ServiceID "{service_id}" does not exist')
                service_name, service_tags = service.name, service.tags
            index = self._next_index()
            self._install_check(
                definition,
                service_id=service_id,
                service_name=service_name,
                service_tags=service_tags,
                index=index,
                now=self.clock(),
            )
            if service_name:
                self._touch_service(service_name, index)
            else:
                self._touch_all_services(index)
            self._changed()

    def _touch_all_services(self, index: int) -> None:
        """A node-level check changes the health of every service on the node."""
        for name in {s.name for s in self._services.values()} | {"consul"}:
            self._service_index[name] = index
        self._catalog_index = index

    def _remove_check(self, check_id: str) -> None:
        self._checks.pop(check_id, None)
        self._check_deadline.pop(check_id, None)
        self._critical_since.pop(check_id, None)
        self._unsynced.pop(check_id, None)
        self._invalidate_sessions_using(self.config.node, check_id)

    def deregister_check(self, check_id: str) -> None:
        with self.cond:
            check = self._checks.get(check_id)
            if check is None:
                raise StandinError(404, f'Unknown check ID "{check_id}"')
            index = self._next_index()
            self._remove_check(check_id)
            if check.service_name:
                self._touch_service(check.service_name, index)
            else:
                self._touch_all_services(index)
            self._changed()

    def deregister_service(self, service_id: str) -> None:
        with self.cond:
            if service_id not in self._services:
                raise StandinError(404, f'Unknown service ID "{service_id}"')
            self._deregister_service_locked(service_id)

    def _deregister_service_locked(self, service_id: str) -> None:
        service = self._services.pop(service_id)
        index = self._next_index()
        for check_id, check in list(self._checks.items()):
            if check.service_id == service_id:
                self._remove_check(check_id)
        self._touch_service(service.name, index)
        self._changed()

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """TTL check pass/warn/fail/update: set status and output and restart the TTL clock."""
        with self.cond:
            check = self._checks.get(check_id)
            if check is None:
                raise StandinError(
                    404,
                    f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.',
                )
            if check.ttl is None:
                raise StandinError(500, f'CheckID "{check_id}" does not have associated TTL')
            now = self.clock()
            self._check_deadline[check_id] = now + check.ttl
            self._set_check_status(check, status, output, now)
            self._changed()  # the reaper must see the new deadline

    def _set_check_status(self, check: Check, status: str, output: str, now: float) -> None:
        if status == check.status:
            # Consul syncs output-only changes lazily (check_update_interval); no index bump here either.
            self._checks[check.id] = dataclasses.replace(check, output=output)
            return
        if self.config.catalog_sync_delay > 0:
            # The agent knows at once; the servers learn it when the agent syncs.
            self._checks[check.id] = dataclasses.replace(check, status=status, output=output)
            self._unsynced.setdefault(check.id, (now + self.config.catalog_sync_delay, check.status))
            return
        self._checks[check.id] = dataclasses.replace(check, status=status, output=output)
        self._sync_check_status(check.id, now)

    def _sync_check_status(self, check_id: str, now: float) -> None:
        """The servers take the agent's status of the check: indexes move, bound sessions may end."""
        check = self._checks[check_id]
        index = self._next_index()
        self._checks[check_id] = dataclasses.replace(check, modify_index=index)
        if check.service_name:
            self._touch_service(check.service_name, index)
        else:
            self._touch_all_services(index)
        if check.status == CRITICAL:
            self._critical_since[check_id] = now
            self._invalidate_sessions_using(self.config.node, check_id)
        else:
            self._critical_since.pop(check_id, None)

    def _as_synced(self, check: Check) -> Check:
        """The check as the catalog (health, DNS) sees it: its last synced status."""
        pending = self._unsynced.get(check.id)
        return check if pending is None else dataclasses.replace(check, status=pending[1])

    def _sync_due_checks(self, now: float) -> None:
        for check_id, (due, synced_status) in list(self._unsynced.items()):
            if due > now:
                continue
            del self._unsynced[check_id]
            check = self._checks.get(check_id)
            if check is not None and check.status != synced_status:
                self._sync_check_status(check_id, now)
                self._changed()

    def _invalidate_sessions_using(self, node: str, check_id: str) -> None:
        for session_id, session in list(self._sessions.items()):
            if session.node == node and check_id in session.check_ids:
                self._invalidate_session(session_id)

    def agent_services(self) -> list[Service]:
        with self.cond:
            return sorted(self._services.values(), key=lambda s: s.id)

    def agent_checks(self) -> list[Check]:
        with self.cond:
            return sorted(self._checks.values(), key=lambda c: c.id)

    # ------------------------------------------------------------------ catalog / health views

    def _instances(self, service_name: str) -> list[ServiceInstance]:
        services = [s for s in self._services.values() if s.name == service_name]
        if service_name == "consul":
            services.append(self._consul_service)
        instances = []
        synced = [self._as_synced(c) for c in self._checks.values()]
        for service in sorted(services, key=lambda s: s.id):
            own = sorted((c for c in synced if c.service_id == service.id), key=lambda c: c.id)
            node_level = sorted(
                [*(c for c in synced if not c.service_id),
                 *self._catalog_checks[self.config.node].values()],
                key=lambda c: c.id,
            )
            instances.append(ServiceInstance(service, (*node_level, *own)))
        return instances

    def service_view(
        self, service_name: str, tags: tuple[str, ...], passing_only: bool
    ) -> tuple[int, list[ServiceInstance]]:
        """health/service and catalog/service rows; the index is the service's own (never slides back)."""
        index = self._service_index.get(service_name, self._catalog_index)
        rows = [
            i
            for i in self._instances(service_name)
            # Consul matches tag filters case-insensitively (strings.EqualFold).
            if all(t.lower() in (own.lower() for own in i.service.tags) for t in tags)
            and (not passing_only or i.aggregate_status == PASSING)
        ]
        return max(index, 1), rows

    def services_view(self) -> tuple[int, dict[str, list[str]]]:
        names: dict[str, list[str]] = {"consul": []}
        for service in self._services.values():
            tags = names.setdefault(service.name, [])
            tags.extend(t for t in service.tags if t not in tags)
        return max(self._catalog_index, 1), dict(sorted(names.items()))

    def checks_view(
        self, service_name: str | None = None, state: str | None = None
    ) -> tuple[int, list[Check]]:
        catalog_owned = (c for owned in self._catalog_checks.values() for c in owned.values())
        checks = [*catalog_owned, *(self._as_synced(c) for c in self._checks.values())]
        if service_name is not None:
            checks = [c for c in checks if c.service_name == service_name]
            index = self._service_index.get(service_name, self._catalog_index)
        else:
            index = self._catalog_index
        if state is not None and state != "any":
            checks = [c for c in checks if c.status == state]
        return max(index, 1), sorted(checks, key=lambda c: c.id)

    @property
    def serf_check(self) -> Check:
        return self._serf_check

    @property
    def node_index(self) -> int:
        return self._node_index

    def dns_instances(self, service_name: str, tag: str | None) -> list[ServiceInstance]:
        """Instances DNS answers: never critical; warning too unless dns_only_passing."""
        with self.cond:
            allowed = {PASSING} if self.config.dns_only_passing else {PASSING, WARNING}
            return [
                i
                for i in self._instances(service_name)
                if (tag is None or tag in (t.lower() for t in i.service.tags))
                and i.aggregate_status in allowed
            ]

    def known_service_names(self) -> set[str]:
        with self.cond:
            return {s.name for s in self._services.values()} | {"consul"}

    # ------------------------------------------------------------------ reaper

    def reap(self) -> float:
        """Apply every expired deadline; return seconds until the next one (capped at 1 s)."""
        with self.cond:
            return self._reap_locked()

    def _reap_locked(self) -> float:
        now = self.clock()
        for session_id, deadline in list(self._session_deadline.items()):
            if deadline <= now and session_id in self._sessions:
                self._invalidate_session(session_id)
        for check_id, deadline in list(self._check_deadline.items()):
            check = self._checks.get(check_id)
            if check is None or deadline > now:
                continue
            del self._check_deadline[check_id]  # re-armed by the next pass/warn/fail/update
            if check.status != CRITICAL:
                last = f"; last output: {check.output}" if check.output else ""
                self._set_check_status(check, CRITICAL, f"TTL expired{last}", now)
                self._changed()
        for check_id, since in list(self._critical_since.items()):
            check = self._checks.get(check_id)
            if check is None or check.deregister_critical_after is None:
                continue
            if now - since >= check.deregister_critical_after and check.service_id in self._services:
                self._deregister_service_locked(check.service_id)
        for key, until in list(self._lock_delay_until.items()):
            if until <= now:
                del self._lock_delay_until[key]
        self._reap_tombstones_locked(self.config.tombstone_ttl)
        self._sync_due_checks(now)
        deadlines = [
            *(due for due, _ in self._unsynced.values()),
            *self._session_deadline.values(),
            *self._check_deadline.values(),
            *(
                since + check.deregister_critical_after
                for check_id, since in self._critical_since.items()
                if (check := self._checks.get(check_id)) is not None
                and check.deregister_critical_after is not None
            ),
        ]
        next_deadline = min(deadlines, default=now + 1.0)
        return max(0.0, min(next_deadline - now, 1.0))

    def run_reaper(self) -> None:
        """Reaper thread body: sleep on the condition until the next deadline or any change."""
        with self.cond:
            while not self._stopping:
                # Reaping and waiting under one hold of the lock: no change can slip in between.
                self.cond.wait(self._reap_locked() + 0.001)
