"""Fetching source images over HTTP: SSRF-safe, size-capped, with manual redirects.

One aiohttp session (a keep-alive pool) serves every call. The URL of every hop, and the
address every connection goes to, pass imgpipe.common.address_policy (public addresses on allowed
ports only, unless private networks are allowed). Bodies are read as sent: no automatic
decompression, at most max_source_bytes, all within the total timeout.

Polite to other people's hosts: a User-Agent that names imgpipe (IMGPIPE_USER_AGENT adds a
contact), 429 and 503 answered as SourceThrottled with the host's Retry-After (ingest then
holds back that host's images without spending their attempts), and conditional requests
(If-None-Match, If-Modified-Since) when the validators of an earlier fetch are known.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from imgpipe.common.errors import AddressNotAllowed, UrlNotAllowed
from imgpipe.processor.errors import (
    BlockedAddress,
    SourceNotFound,
    SourceRejected,
    SourceThrottled,
    SourceTooLarge,
    SourceUnavailable,
    TooManyRedirects,
    UnsupportedUrl,
)
from imgpipe.processor.settings import FetchSettings

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
THROTTLE_STATUSES = frozenset({429, 503})
NOT_MODIFIED = 304
CHUNK_BYTES = 64 * 1024
# The wait when a throttling host gives no (or no readable) Retry-After, and the longest
# one honoured.
DEFAULT_RETRY_AFTER = 30.0
MAX_RETRY_AFTER = 3600.0
REQUEST_HEADERS = {
    "Accept": "image/*, */*;q=0.5",
    # The session does not decompress (no compression bombs); ask for none.
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class Validators:
    """What a source answered with, to ask next time whether it changed."""

    etag: str = ""
    last_modified: str = ""

    def request_headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True)
class Fetched:
    body: bytes | None  # None: 304 Not Modified, the source did not change
    validators: Validators


def retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds to wait by a Retry-After header (seconds or an HTTP date), within bounds."""
    text = (value or "").strip()
    seconds = DEFAULT_RETRY_AFTER
    if text.isdigit():
        seconds = float(text)
    elif text:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(MAX_RETRY_AFTER, max(1.0, seconds))


def check_status(url: URL, response: aiohttp.ClientResponse) -> None:
    """Raises the permanent or transient error a non-2xx status means."""
    status = response.status
    if 200 <= status < 300:
        return
    if status in {404, 410}:
        raise SourceNotFound(f"{url} answered {status}")
    if status in THROTTLE_STATUSES:
        wait = retry_after(response.headers.get("Retry-After"))
        raise SourceThrottled(f"{url} answered {status}; retry after {wait:g} s", wait)
    if status == 408 or status >= 500:
        raise SourceUnavailable(f"{url} answered {status}")
    raise SourceRejected(f"{url} answered {status}")


class Fetcher:
    """Fetches source bytes. Create it inside the running event loop; close it once."""

    def __init__(self, settings: FetchSettings, max_connections: int) -> None:
        """max_connections: at once, to all hosts (ingest bounds those to one host)."""
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
            headers={**REQUEST_HEADERS, "User-Agent": settings.user_agent},
        )

    async def close(self) -> None:
        await self._session.close()

    async def fetch(self, source_url: str, known: Validators = Validators()) -> Fetched:
        """The body of source_url, following redirects, or None when it has not changed
        since the fetch that answered `known`; raises a processor error."""
        try:
            url = URL(source_url)
        except ValueError as exc:
            raise UnsupportedUrl(f"{source_url!r} is not a URL: {exc}") from None
        try:
            async with asyncio.timeout(self._settings.total_timeout):
                return await self._follow(url, known.request_headers())
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

    async def _follow(self, source: URL, conditional: dict[str, str]) -> Fetched:
        url = source
        for _ in range(self._settings.max_redirects + 1):
            self._policy.check_url(url)
            async with self._session.get(
                url, allow_redirects=False, headers=conditional
            ) as response:
                validators = Validators(
                    response.headers.get("ETag", ""), response.headers.get("Last-Modified", "")
                )
                if response.status == NOT_MODIFIED and conditional:
                    return Fetched(None, validators)
                if response.status not in REDIRECT_STATUSES:
                    check_status(url, response)
                    return Fetched(await self._read(url, response), validators)
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
