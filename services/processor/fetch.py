"""Fetching source images over HTTP: SSRF-safe, size-capped, with manual redirects.

One aiohttp session (a keep-alive pool) serves every call. The URL of every hop, and the
address every connection goes to, pass imgpipe.common.address_policy (public addresses on allowed
ports only, unless private networks are allowed). Bodies are read as sent: no automatic
decompression, at most max_source_bytes, all within the total timeout.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from imgpipe.common.errors import AddressNotAllowed, UrlNotAllowed
from imgpipe.processor.errors import (
    BlockedAddress,
    SourceNotFound,
    SourceRejected,
    SourceTooLarge,
    SourceUnavailable,
    TooManyRedirects,
    UnsupportedUrl,
)
from imgpipe.processor.settings import FetchSettings

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
REQUEST_HEADERS = {
    "Accept": "image/*, */*;q=0.5",
    # The session does not decompress (no compression bombs); ask for none.
    "Accept-Encoding": "identity",
    "User-Agent": "imgpipe-processor",
}


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
        self._policy = settings.policy
        self._session = aiohttp.ClientSession(
            connector=self._policy.connector(limit=max_connections),
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
        except UrlNotAllowed as exc:
            raise UnsupportedUrl(str(exc)) from None
        except AddressNotAllowed as exc:
            raise BlockedAddress(str(exc)) from None
        except TimeoutError as exc:
            reason = str(exc) or f"no complete answer in {self._settings.total_timeout:g} s"
            raise SourceUnavailable(f"{url} timed out: {reason}") from None
        except aiohttp.InvalidURL as exc:
            raise UnsupportedUrl(f"{url} is not a valid URL: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SourceUnavailable(f"{url} failed: {_failure(exc)}") from exc

    async def _follow(self, source: URL) -> bytes:
        url = source
        for _ in range(self._settings.max_redirects + 1):
            self._policy.check_url(url)
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status not in REDIRECT_STATUSES:
                    check_status(url, response.status)
                    return await self._read(url, response)
                url = _redirect_target(url, response)
        raise TooManyRedirects(f"{source} redirects more than {self._settings.max_redirects} times")

    async def _read(self, url: URL, response: aiohttp.ClientResponse) -> bytes:
        """The body as sent (a Content-Encoding is not undone), at most the byte limit."""
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


def _failure(exc: aiohttp.ClientError | OSError) -> str:
    """What went wrong, in words: the exceptions' own texts carry reprs and the addresses
    a name resolved to, which are nobody's business outside."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "the connection was closed"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the body was cut short or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"malformed answer (HTTP {exc.status})"
    return type(exc).__name__


def _redirect_target(url: URL, response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise SourceRejected(f"{url} answered {response.status} without a Location")
    try:
        return url.join(URL(location))
    except ValueError:
        raise SourceRejected(f"{url} redirects to a malformed URL: {location!r}") from None
