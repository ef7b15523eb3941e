"""The local agent's services and TTL checks, and how their changes reach the catalog.

Why apart: checks drive discovery (health, DNS) and can end sessions. Invariants: a TTL check
not updated within its TTL turns critical; a status change reaches the catalog (indexes, health,
DNS, bound sessions) after ``catalog_sync_delay`` (the agent's anti-entropy), an output-only change
moves no index; a check critical for DeregisterCriticalServiceAfter removes its service; a
re-registration keeps the status and output the check had.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from dbfence.lab.consul_standin.model import (
    CRITICAL,
    Check,
    CheckDefinition,
    Service,
    ServiceDefinition,
    StandinConfig,
    StandinError,
)
from dbfence.lab.consul_standin.state_sessions import SessionState


class AgentState(SessionState):
    """The local agent's services and TTL checks, and the catalog indexes they move."""

    def __init__(self, config: StandinConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock)
        self._services: dict[str, Service] = {}
        self._checks: dict[str, Check] = {}
        self._check_deadline: dict[str, float] = {}
        self._critical_since: dict[str, float] = {}
        # Checks whose new status has not reached the catalog yet: (sync due, status the catalog still has).
        self._unsynced: dict[str, tuple[float, str]] = {}
        self._service_index: dict[str, int] = {}
        self._catalog_index = 0

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

    def agent_services(self) -> list[Service]:
        with self.cond:
            return sorted(self._services.values(), key=lambda s: s.id)

    def agent_checks(self) -> list[Check]:
        with self.cond:
            return sorted(self._checks.values(), key=lambda c: c.id)
