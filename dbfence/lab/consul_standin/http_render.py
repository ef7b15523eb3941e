"""How the stand-in renders its records as Consul's JSON: KV entries, sessions, the node, checks,
services (three shapes: health, agent, catalog) and the gossip member.

Why apart: several route modules render the same records (a check appears in agent, health and
catalog answers). Invariants: field names, order and nesting are Consul's (clients decode them by
name); a renderer reads the state's records it is given and the node's fixed identity, nothing else.
"""

from __future__ import annotations

import base64

from dbfence.lab.consul_standin.durations import to_nanoseconds
from dbfence.lab.consul_standin.http_wire import JSONValue
from dbfence.lab.consul_standin.model import (
    Check,
    KVEntry,
    Service,
    ServiceInstance,
    Session,
)
from dbfence.lab.consul_standin.state import StandinState

STANDIN_VERSION = "1.17.0-dbfence-standin"


class Renderer:
    """The JSON shapes Consul answers with, built from the state's records."""

    def __init__(self, state: StandinState) -> None:
        self.state = state
        self.config = state.config

    def kv(self, entry: KVEntry) -> dict[str, JSONValue]:
        rendered: dict[str, JSONValue] = {
            "LockIndex": entry.lock_index,
            "Key": entry.key,
            "Flags": entry.flags,
            "Value": base64.b64encode(entry.value).decode() if entry.value else None,
        }
        if entry.session:
            rendered["Session"] = entry.session
        rendered["CreateIndex"] = entry.create_index
        rendered["ModifyIndex"] = entry.modify_index
        return rendered

    def session(self, session: Session) -> dict[str, JSONValue]:
        return {
            "ID": session.id,
            "Name": session.name,
            "Node": session.node,
            "LockDelay": to_nanoseconds(session.lock_delay),
            "Behavior": session.behavior,
            "TTL": session.ttl_text,
            "NodeChecks": list(session.node_checks) or None,
            "ServiceChecks": [{"ID": c, "Namespace": ""} for c in session.service_checks] or None,
            "CreateIndex": session.create_index,
            "ModifyIndex": session.modify_index,
        }

    def tagged_addresses(self) -> dict[str, str]:
        address = self.config.node_address
        return {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address}

    def node(self) -> dict[str, JSONValue]:
        index = self.state.node_index
        return {
            "ID": self.state.node_id,
            "Node": self.config.node,
            "Address": self.config.node_address,
            "Datacenter": self.config.datacenter,
            "TaggedAddresses": self.tagged_addresses(),
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": index,
            "ModifyIndex": index,
        }

    def check(self, check: Check) -> dict[str, JSONValue]:
        return {
            "Node": check.node or self.config.node,
            "CheckID": check.id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": check.service_name,
            "ServiceTags": list(check.service_tags),
            "Type": "ttl" if check.ttl is not None else "",
            "Definition": {},
            "CreateIndex": check.create_index,
            "ModifyIndex": check.modify_index,
        }

    def health_service(self, service: Service) -> dict[str, JSONValue]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Address": service.address,
            "Meta": dict(service.meta),
            "Port": service.port,
            "Weights": {"Passing": service.weight_passing, "Warning": service.weight_warning},
            "EnableTagOverride": service.enable_tag_override,
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    def agent_service(self, service: Service) -> dict[str, JSONValue]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Port": service.port,
            "Address": service.address,
            "Weights": {"Passing": service.weight_passing, "Warning": service.weight_warning},
            "EnableTagOverride": service.enable_tag_override,
            "Datacenter": self.config.datacenter,
        }

    def catalog_row(self, instance: ServiceInstance) -> dict[str, JSONValue]:
        service = instance.service
        return {
            "ID": self.state.node_id,
            "Node": self.config.node,
            "Address": self.config.node_address,
            "Datacenter": self.config.datacenter,
            "TaggedAddresses": self.tagged_addresses(),
            "NodeMeta": {"consul-network-segment": ""},
            "ServiceKind": "",
            "ServiceID": service.id,
            "ServiceName": service.name,
            "ServiceTags": list(service.tags),
            "ServiceAddress": service.address,
            "ServiceMeta": dict(service.meta),
            "ServicePort": service.port,
            "ServiceWeights": {"Passing": service.weight_passing, "Warning": service.weight_warning},
            "ServiceEnableTagOverride": service.enable_tag_override,
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    def member(self) -> dict[str, JSONValue]:
        return {
            "Name": self.config.node,
            "Addr": self.config.node_address,
            "Port": 8301,
            "Tags": {"dc": self.config.datacenter, "role": "consul", "build": STANDIN_VERSION},
            "Status": 1,
        }
