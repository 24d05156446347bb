"""IngestService: translates protobuf to domain calls and back. No SQL, no storage here."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf import timestamp_pb2

from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2
from services.ingest.csv_format import CsvLimits, parse_products
from services.ingest.errors import InvalidOption, InvalidRequestId
from services.ingest.model import Event, ImageStatus, Progress, RequestStatus
from services.ingest.notifications import Notifier
from services.ingest.store import Store
from services.ingest.watch import WatchSettings, watch

DEFAULT_QUALITY = 50
MAX_IDEMPOTENCY_KEY = 256
Context = grpc.aio.ServicerContext[Any, Any]


def parse_request_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestId(f"request_id must be a UUID, not {value[:80]!r}") from None


def quality_of(options: types_pb2.CompressionOptions) -> int:
    if options.quality == 0:
        return DEFAULT_QUALITY
    if not 1 <= options.quality <= 95:
        raise InvalidOption(
            f"options.quality must be 1-95 (0 for the default, {DEFAULT_QUALITY})",
            violations=[("options.quality", f"{options.quality} is not in 1-95")],
        )
    return options.quality


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if url and (parts.scheme not in {"http", "https"} or not parts.hostname):
        raise InvalidOption(
            "webhook_url must be an absolute http(s) URL",
            violations=[("webhook_url", "not an absolute http(s) URL")],
        )
    return url


def check_idempotency_key(key: str) -> str | None:
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidOption(
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters",
            violations=[("idempotency_key", "too long")],
        )
    return key or None


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def progress_pb(progress: Progress) -> types_pb2.Progress:
    return types_pb2.Progress(
        total_images=progress.total,
        succeeded_images=progress.succeeded,
        failed_images=progress.failed,
        cancelled_images=progress.cancelled,
    )


def status_pb(status: RequestStatus, images: list[ImageStatus]) -> ingest_pb2.GetStatusResponse:
    products: list[types_pb2.Product] = []
    for image in images:
        if not products or products[-1].serial_number != image.serial_number:
            products.append(
                types_pb2.Product(
                    serial_number=image.serial_number, product_name=image.product_name
                )
            )
        products[-1].images.append(
            types_pb2.Image(
                input_url=image.input_url,
                output_url=image.output_url,
                state=types_pb2.ImageState.Value(f"IMAGE_STATE_{image.state.value}"),
                error=image.error,
                input_bytes=image.input_bytes,
                output_bytes=image.output_bytes,
                attempts=image.attempts,
            )
        )
    return ingest_pb2.GetStatusResponse(
        request_id=str(status.request_id),
        state=types_pb2.RequestState.Value(f"REQUEST_STATE_{status.state.value}"),
        progress=progress_pb(status.progress),
        products=products,
        result_csv_url=status.result_csv_url if status.state.terminal else "",
        create_time=_timestamp(status.created_at),
        update_time=_timestamp(status.updated_at),
        complete_time=_timestamp(status.completed_at),
        sequence=status.sequence,
        options=types_pb2.CompressionOptions(quality=status.quality),
    )


def event_pb(
    request_id: uuid.UUID, event: Event, is_snapshot: bool
) -> ingest_pb2.WatchStatusResponse:
    message = ingest_pb2.WatchStatusResponse(
        request_id=str(request_id),
        sequence=event.sequence,
        state=types_pb2.RequestState.Value(f"REQUEST_STATE_{event.state.value}"),
        progress=progress_pb(event.progress),
        result_csv_url=event.result_csv_url if event.state.terminal else "",
        snapshot=is_snapshot,
    )
    if event.image is not None:
        message.image.CopyFrom(
            types_pb2.ImageUpdate(
                serial_number=event.image.serial_number,
                index=event.image.index,
                state=types_pb2.ImageState.Value(f"IMAGE_STATE_{event.image.state.value}"),
                output_url=event.image.output_url,
                error=event.image.error,
            )
        )
    return message


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, store: Store, notifier: Notifier, csv_limits: CsvLimits, watch_settings: WatchSettings
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._csv_limits = csv_limits
        self._watch_settings = watch_settings

    async def Submit(
        self, request: ingest_pb2.SubmitRequest, context: Context
    ) -> ingest_pb2.SubmitResponse:
        quality = quality_of(request.options)
        webhook_url = check_webhook_url(request.webhook_url)
        idempotency_key = check_idempotency_key(request.idempotency_key)
        products = await asyncio.to_thread(parse_products, request.csv, self._csv_limits)
        submission = await self._store.submit(
            products,
            quality=quality,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
            csv_sha256=hashlib.sha256(request.csv).digest(),
        )
        return ingest_pb2.SubmitResponse(
            request_id=str(submission.request_id),
            product_count=submission.product_count,
            image_count=submission.image_count,
        )

    async def GetStatus(
        self, request: ingest_pb2.GetStatusRequest, context: Context
    ) -> ingest_pb2.GetStatusResponse:
        request_id = parse_request_id(request.request_id)
        status = await self._store.status(request_id)
        return status_pb(status, await self._store.images(request_id))

    async def WatchStatus(
        self, request: ingest_pb2.WatchStatusRequest, context: Context
    ) -> AsyncIterator[ingest_pb2.WatchStatusResponse]:
        request_id = parse_request_id(request.request_id)
        if request.after_sequence < 0:
            raise InvalidOption(
                "after_sequence must not be negative",
                violations=[("after_sequence", "negative")],
            )
        async for event, is_snapshot in watch(
            self._store, self._notifier, request_id, request.after_sequence, self._watch_settings
        ):
            yield event_pb(request_id, event, is_snapshot)

    async def Cancel(
        self, request: ingest_pb2.CancelRequest, context: Context
    ) -> ingest_pb2.CancelResponse:
        status = await self._store.cancel(parse_request_id(request.request_id))
        return ingest_pb2.CancelResponse(
            request_id=str(status.request_id),
            state=types_pb2.RequestState.Value(f"REQUEST_STATE_{status.state.value}"),
            progress=progress_pb(status.progress),
        )
