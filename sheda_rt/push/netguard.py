"""The server must not become a request forwarder: push endpoints are client input, and the
server POSTs to them. So an endpoint must be `https` on a public address.

Two checks, both needed: `check_endpoint_url` refuses, at registration, what can be told from
the URL (not https, credentials in it, an IP literal that is loopback, private, link-local,
reserved..., and names that only resolve inside a network: localhost, *.local, *.internal,
single-label names); `GuardedResolver` refuses, when sending, every resolved address that is
not global, so a public name that resolves (or later re-resolves: DNS rebinding) to 127.0.0.1 or
169.254.169.254 is never connected to. Redirects are not followed. PUSH_ALLOW_LOCAL_ENDPOINTS
lifts both for tests and development.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from tornado.netutil import DefaultExecutorResolver, Resolver

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".intranet", ".corp", ".localdomain")


def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_public_ip(addr) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def check_endpoint_url(url: str, *, allow_local: bool) -> None:
    """Raise ValueError (a client-readable reason) unless `url` may be pushed to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme != "https" and not (allow_local and parts.scheme == "http"):
        raise ValueError("must be an https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("must not carry credentials")
    if port == 0:
        raise ValueError("has no valid port")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("has no host")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    addr = _ip(host)
    if addr is not None:
        if not allow_local and not is_public_ip(addr):
            raise ValueError("must be on a public address (not loopback, private or link-local)")
        return
    name = host.rstrip(".")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError("has an invalid host name")
    if allow_local:
        return
    if len(labels) < 2 or name == "localhost" or name.endswith(_LOCAL_SUFFIXES) or labels[-1].isdigit():
        raise ValueError("must be on a public address (not a local name)")


class GuardedResolver(Resolver):
    """Tornado's resolver, keeping only public addresses (unless local ones are allowed)."""

    def initialize(self, allow_local: bool = False) -> None:  # tornado's Configurable init
        self.allow_local = allow_local
        self.inner = DefaultExecutorResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC):
        addresses = await self.inner.resolve(host, port, family)
        if self.allow_local:
            return addresses
        public = [(fam, addr) for fam, addr in addresses if is_public_ip(ipaddress.ip_address(addr[0]))]
        if not public:
            raise OSError(f"{host} does not resolve to a public address")
        return public

    def close(self) -> None:
        self.inner.close()
