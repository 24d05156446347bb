"""IngestService over HTTP: /v1/requests and below. Like the gRPC servicer, thin: HTTP in,
domain calls (request_service.RequestService), the very protobuf messages gRPC answers out, as JSON
(protobuf's JSON mapping). Errors are domain errors; imgpipe.common.http_errors answers them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format
from google.protobuf.message import Message

from imgpipe.common.auth import CALLER
from imgpipe.common.errors import InvalidArgument
from imgpipe.ingest import to_proto
from imgpipe.ingest.errors import BodyTooLarge
from imgpipe.ingest.model import Event
from imgpipe.ingest.request_service import RequestService
from imgpipe.ingest.sse import ServerEvent, aclose_quietly, stream_events
from imgpipe.ingest.watch import SharedEncoding
from imgpipe.ingest.webhook_secrets import DEFAULT_OVERLAP_SECONDS

# Room for the multipart framing and the option fields around the CSV.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FIELD_BYTES = 4096
CHUNK = 64 * 1024
RAW_CSV_TYPES = {"text/csv", "application/csv", "text/plain", "application/octet-stream"}
OPTIONS = ("webhook_url", "quality", "idempotency_key")
SSE_EVENT = "status"
MAX_SEQUENCE = 2**63 - 1  # sequences are int64, as in the .proto


def message_json(message: Message) -> dict[str, Any]:
    """Protobuf's JSON mapping: names as in the .proto, enums by name, every field without
    presence written (zeros and empty strings too), message fields only when set."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _bad(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {description}", violations=[(field, description)])


class RequestRoutes:
    def __init__(
        self,
        requests: RequestService,
        *,
        max_csv_bytes: int,
        keepalive: float,
    ) -> None:
        self._requests = requests
        self._max_csv_bytes = max_csv_bytes
        self._keepalive = keepalive
        self._closing = asyncio.Event()  # set on shutdown: event streams end
        # URLs in an event's frame are signed when it is first encoded, never stored.
        self._frames = SharedEncoding(partial(_frame, requests.url_of))

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/requests", self.submit)
        app.router.add_get("/v1/requests/{request_id}", self.status)
        app.router.add_delete("/v1/requests/{request_id}", self.delete)
        app.router.add_post("/v1/requests/{request_id}/cancel", self.cancel)
        # No HEAD: it would hold a stream open with nothing to send.
        app.router.add_get("/v1/requests/{request_id}/events", self.events, allow_head=False)
        app.router.add_get("/v1/requests/{request_id}/result.csv", self.result_csv)
        app.router.add_get("/v1/webhook-secrets", self.webhook_secrets)
        app.router.add_post("/v1/webhook-secrets/rotate", self.rotate_webhook_secret)
        # The routes of the Express services this one replaces, as aliases of the above.
        app.router.add_post("/upload", self.submit)
        app.router.add_get("/status", self.status_by_query)
        app.router.add_get("/status/{request_id}", self.status)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing.set()

    # -- the operations --------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        limit = self._max_csv_bytes + MULTIPART_OVERHEAD
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
        options = _options(request.query, "query parameter")
        async with self._requests.submit_budget.reserve(request.content_length or limit):
            return await self._submit(request, options)

    async def _submit(self, request: web.Request, options: dict[str, str]) -> web.Response:
        if request.content_type == "multipart/form-data":
            csv, form = await self._read_form(request)
            twice = sorted(set(form) & set(options))
            if twice:
                raise _bad(twice[0], "given both as a query parameter and as a form field")
            options |= form
        elif request.content_type in RAW_CSV_TYPES:
            csv = await _read_capped(request.content, self._max_csv_bytes, "the CSV")
        else:
            raise _bad(
                "Content-Type",
                f"{request.content_type!r}: send the CSV as the multipart/form-data field "
                "`file`, or as the body with Content-Type: text/csv",
            )
        submission = await self._requests.submit(
            csv,
            quality=_whole_number("options.quality", options.get("quality", "")),
            webhook_url=options.get("webhook_url", ""),
            idempotency_key=options.get("idempotency_key", ""),
            caller=CALLER.get(),
        )
        response = to_proto.submit_response(submission)
        return web.json_response(
            message_json(response),
            status=202,
            headers={"Location": f"/v1/requests/{response.request_id}"},
        )

    async def status(self, request: web.Request) -> web.Response:
        return await self._status_of(request, request.match_info["request_id"])

    async def status_by_query(self, request: web.Request) -> web.Response:
        request_id = request.query.get("request_id", "")
        if not request_id:
            raise _bad("request_id", "missing: give it as the query parameter `request_id`")
        return await self._status_of(request, request_id)

    async def _status_of(self, request: web.Request, request_id: str) -> web.Response:
        page = await self._requests.status(
            request_id,
            page_size=_whole_number("page_size", request.query.get("page_size", "")),
            page_token=request.query.get("page_token", ""),
            caller=CALLER.get(),
        )
        return web.json_response(
            message_json(to_proto.status_response(page, self._requests.url_of))
        )

    async def cancel(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        status = await self._requests.cancel(request_id, caller=CALLER.get())
        return web.json_response(message_json(to_proto.cancel_response(status)))

    async def delete(self, request: web.Request) -> web.Response:
        await self._requests.delete(request.match_info["request_id"], caller=CALLER.get())
        return web.Response(status=204)

    async def webhook_secrets(self, request: web.Request) -> web.Response:
        secrets = await self._requests.webhook_secrets(caller=CALLER.get())
        return web.json_response(message_json(to_proto.webhook_secrets_response(secrets)))

    async def rotate_webhook_secret(self, request: web.Request) -> web.Response:
        overlap = _overlap_seconds(request.query.get("overlap_seconds", ""))
        secrets = await self._requests.rotate_webhook_secret(overlap, caller=CALLER.get())
        return web.json_response(message_json(to_proto.rotate_webhook_secret_response(secrets)))

    async def events(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        watched = self._requests.watch(request_id, _after_sequence(request), caller=CALLER.get())
        return await stream_events(
            request,
            _server_events(request_id, watched, self._frames, self._requests.url_of),
            keepalive=self._keepalive,
            closing=self._closing,
        )

    async def result_csv(self, request: web.Request) -> web.StreamResponse:
        """Made when asked for, a product at a time, with output URLs signed now."""
        request_id = request.match_info["request_id"]
        lines = await self._requests.result_csv(request_id, caller=CALLER.get())
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{request_id}-result.csv"',
            }
        )
        await response.prepare(request)
        async for line in lines:
            await response.write(line)
        await response.write_eof()
        return response

    async def _read_form(self, request: web.Request) -> tuple[bytes, dict[str, str]]:
        """The CSV (field `file`) and the options of a multipart/form-data body."""
        csv: bytes | None = None
        fields: dict[str, str] = {}
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise _bad("file", "a nested multipart body is not a CSV")
                name = part.name or ""
                if name == "file" and csv is None:
                    csv = await _read_capped(part, self._max_csv_bytes, "the CSV")
                elif name in OPTIONS and name not in fields:
                    fields[name] = _text(name, await _read_capped(part, MAX_FIELD_BYTES, name))
                else:
                    raise _bad(
                        name or "(unnamed)",
                        "an unknown or repeated field: the form takes one `file` (the CSV) "
                        "and, optionally, one each of " + ", ".join(OPTIONS),
                    )
        except (ValueError, AssertionError, HttpProcessingError) as exc:  # bad framing
            raise _bad("file", f"malformed multipart/form-data body: {exc}") from None
        if csv is None:
            raise _bad("file", "missing: the form needs the CSV in a field named `file`")
        return csv, fields


async def _read_capped(source: Any, limit: int, what: str) -> bytes:
    """Everything a request body (or one part of it) holds, refused past limit bytes.

    source is aiohttp's StreamReader or BodyPartReader; both return b"" at the end."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if isinstance(source, BodyPartReader):
            chunk = await source.read_chunk(CHUNK)
        else:
            chunk = await source.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"{what} is larger than the limit of {limit} bytes")
        chunks.append(chunk)


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(name, "not UTF-8 text") from None


def _options(query: Mapping[str, str], where: str) -> dict[str, str]:
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise _bad(unknown[0], f"an unknown {where}: the options are " + ", ".join(OPTIONS))
    return {name: query[name] for name in OPTIONS if name in query}


def _whole_number(field: str, value: str) -> int:
    """A whole number given as text; 0 when none is given (the default)."""
    text = value.strip()
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise _bad(field, f"{text[:20]!r} is not a whole number") from None


def _overlap_seconds(value: str) -> float:
    text = value.strip()
    if not text:
        return DEFAULT_OVERLAP_SECONDS
    try:
        return float(text)
    except ValueError:
        raise _bad("overlap_seconds", f"{text[:20]!r} is not a number of seconds") from None


def _after_sequence(request: web.Request) -> int:
    """Last-Event-ID (set by EventSource when it reconnects, so it wins) or ?after_sequence=;
    0 if neither. Each must be a sequence number when given; the domain refuses negatives."""
    given = [
        _sequence(field, raw.strip())
        for field, raw in (
            ("Last-Event-ID", request.headers.get("Last-Event-ID", "")),
            ("after_sequence", request.query.get("after_sequence", "")),
        )
        if raw.strip()
    ]
    return given[0] if given else 0


def _sequence(field: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(field, f"{text[:20]!r} is not a sequence number") from None
    if value > MAX_SEQUENCE:
        raise _bad(field, f"{text[:20]!r} is larger than any sequence (int64)")
    return value


async def _server_events(
    request_id: str,
    watched: AsyncIterator[tuple[Event, bool]],
    frames: SharedEncoding,
    url_of: to_proto.UrlOf,
) -> AsyncIterator[bytes]:
    """One event per WatchStatus message: id the sequence, data the message as JSON; each
    event's frame is encoded once for all its streams (the snapshot is each one's own)."""
    try:
        async for event, is_snapshot in watched:
            if is_snapshot:
                yield _frame(url_of, request_id, event, True)
            else:
                yield frames(request_id, event)
    finally:
        await aclose_quietly(watched)


def _frame(
    url_of: to_proto.UrlOf, request_id: str, event: Event, is_snapshot: bool = False
) -> bytes:
    message = to_proto.watch_response(request_id, event, is_snapshot, url_of)
    data = json.dumps(message_json(message), separators=(",", ":"))
    return ServerEvent(str(message.sequence), SSE_EVENT, data).encode()
