"""dbfence.discovery: how applications find the primary (Consul DNS, etcd) and the HTTP API."""

from dbfence.discovery.client import NoPrimary, primary_address

__all__ = ["NoPrimary", "primary_address"]
