"""Which URLs a service may fetch (image sources; webhook targets): the SSRF guard.

One policy, checked at three points, so that the address finally connected to is judged
whatever way it was reached:
- `AddressPolicy.check_url`, before every request and every redirect hop: http(s) only, no
  user info, a well-formed host, an allowed port and, unless private networks are allowed,
  no local or metadata host name and no IP literal of a non-public address, in any spelling
  the C library accepts (`2130706433`, `0x7f.1`, `017700000001`, `127.1` are 127.0.0.1).
- `PublicAddressResolver`, the connector's resolver: a host name is judged on the very
  addresses the connector is handed, so a DNS answer cannot change between check and
  connection (DNS rebinding).
- `public_socket`, the connector's socket factory: judges the socket address about to be
  connected, IP literals included (the connector does not resolve those).

Violations raise `UrlNotAllowed` or `AddressNotAllowed`; each service maps them to its own
errors. `allow_private_networks` (local runs and tests) turns off the address and host
name checks only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from imgpipe.common.config import env_bool, env_ports
from imgpipe.common.errors import AddressNotAllowed, UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = frozenset({80, 443})
# Names that mean this machine or a cloud metadata service, refused before any lookup.
BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal"})
BLOCKED_SUFFIXES = (".localhost",)

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# Special-purpose IPv4 ranges (IANA registry) no public source lives on.
NON_PUBLIC_V4 = (
    _V4("0.0.0.0/8"),  # "this network", incl. the unspecified address
    _V4("10.0.0.0/8"),  # RFC 1918
    _V4("100.64.0.0/10"),  # carrier-grade NAT
    _V4("127.0.0.0/8"),  # loopback
    _V4("169.254.0.0/16"),  # link-local, incl. the metadata service 169.254.169.254
    _V4("172.16.0.0/12"),  # RFC 1918
    _V4("192.0.0.0/24"),  # IETF protocol assignments
    _V4("192.0.2.0/24"),  # TEST-NET-1
    _V4("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
    _V4("192.168.0.0/16"),  # RFC 1918
    _V4("198.18.0.0/15"),  # benchmarking
    _V4("198.51.100.0/24"),  # TEST-NET-2
    _V4("203.0.113.0/24"),  # TEST-NET-3
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, incl. broadcast
)
# IPv6 is judged by allow-list: global unicast only, less its special-purpose parts. That
# leaves out ::/128, ::1, the IPv4-compatible ::/96, 64:ff9b:1::/48 (local-use NAT64),
# 100::/64, ULA fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8.
GLOBAL_UNICAST_V6 = _V6("2000::/3")
NON_PUBLIC_V6 = (
    _V6("2001::/23"),  # IETF protocol assignments, incl. Teredo 2001::/32 (IPv4 obfuscated)
    _V6("2001:db8::/32"),  # documentation
    _V6("3fff::/20"),  # documentation
)
# IPv6 forms that carry an IPv4 address, judged by that address.
NAT64 = _V6("64:ff9b::/96")

_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")
_HOST_NAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)


def is_public(ip: IPAddress) -> bool:
    """False for every address a public web server cannot be on, and for IPv6 addresses
    that embed such an IPv4 address (mapped, NAT64, 6to4)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in network for network in NON_PUBLIC_V4)
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_public(embedded)
    return ip in GLOBAL_UNICAST_V6 and not any(ip in network for network in NON_PUBLIC_V6)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip.sixtofour


def parse_ip(host: str) -> IPAddress | None:
    """The address an IP-literal host stands for, or None for a host name.

    IPv4 in any form inet_aton() (hence getaddrinfo) takes: dotted quad, and the legacy
    decimal, octal, hex and shortened forms. An IPv6 zone (`fe80::1%lo`) is not a literal.
    """
    host = host.lower()
    if "%" in host:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_blocked_name(host: str) -> bool:
    """localhost, *.localhost and the metadata service names, in any case, with or
    without the trailing dot."""
    name = host.lower().rstrip(".")
    return name in BLOCKED_NAMES or name.endswith(BLOCKED_SUFFIXES)


@dataclass(frozen=True)
class AddressPolicy:
    """What may be fetched: by default public addresses on ports 80 and 443."""

    allow_private_networks: bool = False
    # Ports URLs may name (explicitly or by their scheme's default); None allows any.
    allowed_ports: frozenset[int] | None = DEFAULT_PORTS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AddressPolicy:
        """IMGPIPE_ALLOW_PRIVATE_NETWORKS and IMGPIPE_ALLOWED_PORTS (by default 80 and 443,
        or any port where private networks are allowed: local runs)."""
        allow_private_networks = env_bool(env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS")
        allowed_ports = env_ports(env, "IMGPIPE_ALLOWED_PORTS")
        if allowed_ports is None and not allow_private_networks:
            allowed_ports = DEFAULT_PORTS
        return cls(allow_private_networks, allowed_ports)

    def check_url(self, url: URL) -> None:
        """Raises UrlNotAllowed or AddressNotAllowed unless url may be fetched."""
        if url.scheme not in {"http", "https"} or not url.raw_host:
            raise UrlNotAllowed(f"{url} is not an absolute http(s) URL")
        if url.raw_user is not None or url.raw_password is not None:
            raise UrlNotAllowed(f"{url.with_user(None)} must not carry user info")
        host = url.raw_host.rstrip(".").lower()
        ip = parse_ip(host)
        if ip is None and not _HOST_NAME.fullmatch(host):
            raise UrlNotAllowed(f"{url} has a malformed host: {url.raw_host!r}")
        if not self.allow_private_networks:
            if ip is not None and not is_public(ip):
                raise AddressNotAllowed(f"{url} is on the non-public address {ip}")
            if ip is None and is_blocked_name(host):
                raise AddressNotAllowed(f"{url} names a non-public host ({host})")
        if self.allowed_ports is not None and url.port not in self.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(self.allowed_ports))
            raise UrlNotAllowed(f"{url} is on port {url.port}; allowed ports: {allowed}")

    def connector(self, *, limit: int) -> aiohttp.TCPConnector:
        """A connector that, unless private networks are allowed, connects to public
        addresses only. Create it inside the running event loop."""
        if self.allow_private_networks:
            return aiohttp.TCPConnector(limit=limit)
        return aiohttp.TCPConnector(
            limit=limit,
            resolver=PublicAddressResolver(DefaultResolver()),
            socket_factory=public_socket,
        )


class PublicAddressResolver(AbstractResolver):
    """Resolves through another resolver and keeps only public addresses."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._inner.resolve(host, port, family)
        public = [r for r in resolved if _is_public_host(r["host"])]
        if not public:
            # Which addresses is not said: that would answer DNS queries into the network.
            raise AddressNotAllowed(f"{host} resolves to non-public addresses only")
        return public

    async def close(self) -> None:
        await self._inner.close()


def public_socket(addr_info: AddrInfoType) -> socket.socket:
    """The connector's socket factory: a socket for a public address, or AddressNotAllowed.

    Host names reach it already filtered by PublicAddressResolver; IP literals bypass the
    resolver and are judged here, on the address the socket is about to connect to. The
    refusal is not an OSError, so the connector does not take it for a connection failure.
    """
    family, kind, proto, _, address = addr_info
    if not _is_public_host(str(address[0])):
        raise AddressNotAllowed("refusing to connect to a non-public address")
    return socket.socket(family, kind, proto)


def _is_public_host(host: str) -> bool:
    ip = parse_ip(host)
    return ip is not None and is_public(ip)
