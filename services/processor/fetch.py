"""Fetching source images over HTTP: SSRF-safe, size-capped, with manual redirects.

One aiohttp session (a keep-alive pool) serves every call. Unless private networks are
allowed, a source must be on a public address: IP-literal hosts are checked here, host
names on the very addresses the connector will connect to (a filtering resolver), so a DNS
answer cannot change between the check and the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from services.processor.errors import (
    BlockedAddress,
    SourceNotFound,
    SourceRejected,
    SourceTooLarge,
    SourceUnavailable,
    TooManyRedirects,
    UnsupportedUrl,
)
from services.processor.settings import FetchSettings

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
REQUEST_HEADERS = {
    "Accept": "image/*, */*;q=0.5",
    # The session does not decompress (no compression bombs); ask for none.
    "Accept-Encoding": "identity",
    "User-Agent": "imgpipe-processor",
}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(ip: IPAddress) -> bool:
    """False for loopback, private, link-local, multicast, unspecified and reserved
    addresses, and for IPv6 addresses that embed such an IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
    )


class PublicAddressResolver(AbstractResolver):
    """Resolves through another resolver and keeps only public addresses."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._inner.resolve(host, port, family)
        public = [r for r in resolved if is_public(ipaddress.ip_address(r["host"]))]
        if not public:
            addresses = ", ".join(sorted({r["host"] for r in resolved}))
            raise BlockedAddress(
                f"source host {host} resolves to non-public addresses only ({addresses})"
            )
        return public

    async def close(self) -> None:
        await self._inner.close()


def check_url(url: URL, allow_private_networks: bool) -> None:
    """Raises unless url is absolute http(s), without user info, and (unless private
    networks are allowed) not an IP literal of a non-public address."""
    if url.scheme not in {"http", "https"} or not url.raw_host:
        raise UnsupportedUrl(f"{url} is not an absolute http(s) URL")
    if url.raw_user is not None or url.raw_password is not None:
        raise UnsupportedUrl(f"{url.with_user(None)} must not carry user info")
    if allow_private_networks:
        return
    try:
        ip = ipaddress.ip_address(url.raw_host)
    except ValueError:
        return  # a host name: the resolver checks what it resolves to
    if not is_public(ip):
        raise BlockedAddress(f"{url} is on a non-public address")


def check_status(url: URL, status: int) -> None:
    """Raises the permanent or transient error a non-2xx status means."""
    if 200 <= status < 300:
        return
    if status in {404, 410}:
        raise SourceNotFound(f"{url} answered {status}")
    if status in {408, 429} or status >= 500:
        raise SourceUnavailable(f"{url} answered {status}")
    raise SourceRejected(f"{url} answered {status}")


class Fetcher:
    """Fetches source bytes. Create it inside the running event loop; close it once."""

    def __init__(self, settings: FetchSettings, max_connections: int) -> None:
        self._settings = settings
        resolver: AbstractResolver = DefaultResolver()
        if not settings.allow_private_networks:
            resolver = PublicAddressResolver(resolver)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=max_connections),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            auto_decompress=False,
            headers=REQUEST_HEADERS,
        )

    async def close(self) -> None:
        await self._session.close()

    async def fetch(self, source_url: str) -> bytes:
        """The body of source_url, following redirects; raises a processor error."""
        try:
            url = URL(source_url)
        except ValueError as exc:
            raise UnsupportedUrl(f"{source_url!r} is not a URL: {exc}") from None
        try:
            async with asyncio.timeout(self._settings.total_timeout):
                return await self._follow(url)
        except TimeoutError as exc:
            reason = str(exc) or f"no complete answer in {self._settings.total_timeout:g} s"
            raise SourceUnavailable(f"{url} timed out: {reason}") from None
        except aiohttp.InvalidURL as exc:
            raise UnsupportedUrl(f"{url} is not a valid URL: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SourceUnavailable(f"{url} failed: {type(exc).__name__}: {exc}") from exc

    async def _follow(self, source: URL) -> bytes:
        url = source
        for _ in range(self._settings.max_redirects + 1):
            check_url(url, self._settings.allow_private_networks)
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status not in REDIRECT_STATUSES:
                    check_status(url, response.status)
                    return await self._read(url, response)
                url = _redirect_target(url, response)
        raise TooManyRedirects(f"{source} redirects more than {self._settings.max_redirects} times")

    async def _read(self, url: URL, response: aiohttp.ClientResponse) -> bytes:
        limit = self._settings.max_source_bytes
        too_large = f"{url} is larger than {limit} bytes"
        if response.content_length is not None and response.content_length > limit:
            raise SourceTooLarge(too_large)
        body = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                raise SourceTooLarge(too_large)
        return bytes(body)


def _redirect_target(url: URL, response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise SourceRejected(f"{url} answered {response.status} without a Location")
    try:
        return url.join(URL(location))
    except ValueError:
        raise SourceRejected(f"{url} redirects to a malformed URL: {location!r}") from None
