"""The SSRF guard: caller-supplied URLs may only reach public addresses (the cloud metadata server,
other pods and localhost are a way in from a caller's URL).

The check is on the connection itself: each new connection resolves the host once, refuses if *any*
address is not public, and connects to exactly the address it checked. So DNS rebinding has no
window, every spelling of an address is judged by what it resolves to, and redirects are judged
when they connect. ``TRUSTED_HOSTS`` (names, IPs, CIDRs) exempts hosts the operator trusts.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import NameResolutionError

from ..errors import BlockedAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Not public whatever this Python's ipaddress tables say (they change between patch releases; 3.11.7
# counts most of 192.0.0.0/24 and the RFC 9637 documentation prefix as global).
_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "2001::/23", "3fff::/20"))


def classify_address(address: str | IPAddress) -> str | None:
    """Why an address must not be fetched ("loopback", "private", ...), or None when it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return classify_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return classify_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            return classify_address(ip.sixtofour)
        if ip.teredo is not None:
            return classify_address(ip.teredo[1])
    for why in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved", "site_local"):
        if getattr(ip, f"is_{why}", False):
            return why.replace("_", "-")
    if not ip.is_global or any(ip in net for net in _NOT_PUBLIC):
        return "non-public"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a connection may reach: public ones, plus trusted hosts and networks."""

    trusted_names: frozenset[str] = frozenset()
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_trusted(cls, entries: Iterable[str]) -> AddressPolicy:
        names, networks = set(), []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def refusal(self, host: str, address: str) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None."""
        if host.lower().rstrip(".").strip("[]") in self.trusted_names:
            return None
        ip = ipaddress.ip_address(address.split("%")[0])
        return None if any(ip in net for net in self.trusted_networks) else classify_address(ip)

    def vet(self, host: str, port: int) -> str:
        """Resolve ``host`` and return the address to connect to; :class:`BlockedAddress` if any is refused."""
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            why = self.refusal(host, address)
            if why:
                refused = BlockedAddress(f"{host} resolves to {address}, a {why} address; only public addresses "
                                         "may be fetched")
                refused.why = why
                raise refused
        return addresses[0]


def _guarded(connection_cls: type[HTTPConnection], policy: AddressPolicy) -> type[HTTPConnection]:
    # A class built from a variable base: mypy cannot check it as a class definition.
    class GuardedConnection(connection_cls):  # type: ignore[misc, valid-type]
        host: str  # urllib3's, to mypy (the base is a variable)
        server_hostname: str | None  # HTTPS connections' only

        def __init__(self, host: str, *args: Any, **kwargs: Any):
            super().__init__(host, *args, **kwargs)
            self.requested_host = host  # as given: a trailing dot (a fully qualified name) still counts when resolving

        def connect(self) -> None:
            try:
                address = policy.vet(self.requested_host, self.port)
            except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a label too long for IDNA
                raise NameResolutionError(self.host, self, socket.gaierror(str(exc))) from exc
            if isinstance(self, HTTPSConnection) and self.server_hostname is None:
                self.server_hostname = self.requested_host  # TLS verifies the name, not the address connected to
            # Connect to exactly the address that was checked. The Host header is the name's: http.client
            # forms it before a lazy connect, and after an eager one (HTTPS), from the host put back below.
            self.host = address
            try:
                super().connect()
            finally:
                self.host = self.requested_host

    return GuardedConnection


def wrap_connections(session: requests.Session, wrap: Callable[[type[HTTPConnection]], type[HTTPConnection]]) -> None:
    """Make the connections of the session's pools ``wrap(ConnectionCls)`` from now on."""
    for adapter in set(session.adapters.values()):  # one adapter may serve both schemes: wrapped once
        manager = getattr(adapter, "poolmanager", None)
        if manager is not None:  # a new dict: the default one is urllib3's module-level table
            manager.pool_classes_by_scheme = {
                scheme: type(pool.__name__, (pool,), {"ConnectionCls": wrap(pool.ConnectionCls)})
                for scheme, pool in manager.pool_classes_by_scheme.items()}


def guard_session(session: requests.Session, policy: AddressPolicy) -> requests.Session:
    """Every new connection of ``session`` goes through ``policy``."""
    # An HTTP(S)_PROXY from the environment would make the proxy, not the photo host, the address
    # connected to (and proxy connections bypass the guarded pools): the guard would check nothing.
    session.trust_env = False
    wrap_connections(session, functools.partial(_guarded, policy=policy))
    return session
