"""Every read and write of ingest's state. SQL lives in sql/queries.sql; this module runs it
and turns rows into domain values and driver errors into domain errors."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg

from imgpipe.ingest.csv_format import Product
from imgpipe.ingest.errors import (
    DatabaseUnavailable,
    IdempotencyKeyReused,
    QueuedQuotaExceeded,
    RequestAlreadyTerminal,
    RequestNotFound,
)
from imgpipe.ingest.model import (
    Claim,
    Event,
    ImageState,
    ImageStatus,
    ImageUpdate,
    Outcome,
    Progress,
    RequestState,
    RequestStatus,
    Submission,
    WebhookSecret,
    WebhookStatus,
)
from imgpipe.ingest.postgres import Connection, Q
from imgpipe.ingest.tenants import EQUAL_SHARES, Shares
from imgpipe.v1.processor_pb2 import PreviousOutput

P = ParamSpec("P")
# What a tenant over its queued quota is told to wait: time for a share of its work to end.
QUOTA_RETRY_SECONDS = 60.0
T = TypeVar("T")

# Raised when the database cannot be reached or went away mid-statement.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # A connection left mid-operation when the server went away.
    asyncpg.InternalClientError,
)


def _translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    return wrapper


@dataclass(frozen=True)
class Lease:
    image_id: int
    attempt: int
    owner: str


@dataclass(frozen=True)
class QueueStats:
    queued: int
    oldest_queued_seconds: float
    webhook_backlog: int


@dataclass(frozen=True)
class OutboxItem:
    id: int
    request_id: uuid.UUID
    attempts: int
    delivery_id: uuid.UUID
    created_at: datetime
    last_error: str


def _progress(row: Any, total: int) -> Progress:
    return Progress(
        total=total,
        succeeded=row["succeeded_count"],
        failed=row["failed_count"],
        cancelled=row["cancelled_count"],
    )


def _webhook(row: Any) -> WebhookStatus | None:
    if not row["webhook_url"]:
        return None
    state = row["webhook_state"] or "PENDING"
    return WebhookStatus(
        url=row["webhook_url"],
        state=state,
        delivery_id=str(row["webhook_delivery_id"] or ""),
        attempts=row["webhook_attempts"] or 0,
        last_error=row["webhook_last_error"] or "",
        next_attempt_at=row["webhook_next_attempt_at"] if state == "PENDING" else None,
        delivered_at=row["webhook_done_at"] if state == "DELIVERED" else None,
    )


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_translated
    async def submit(
        self,
        products: Sequence[Product],
        *,
        quality: int,
        webhook_url: str,
        idempotency_key: str | None,
        csv_sha256: bytes,
        owner: str = "",
        max_queued: int = 0,
    ) -> Submission:
        """Stores a request with all its products and images, or the owner's one with the
        same idempotency key; one round trip per table. With max_queued, refuses a request
        that would leave the owner with more unfinished images (QueuedQuotaExceeded)."""
        request_id = uuid.uuid4()
        image_count = sum(len(p.urls) for p in products)
        async with self._pool.acquire() as conn, conn.transaction():
            if max_queued:
                await conn.execute(Q("lock_submits"), owner)
            inserted = await conn.fetchval(
                Q("insert_request"),
                request_id,
                idempotency_key,
                csv_sha256,
                webhook_url,
                quality,
                len(products),
                image_count,
                owner,
            )
            if inserted is None:
                return await self._existing(
                    conn, owner, idempotency_key, csv_sha256, quality, webhook_url
                )
            if max_queued:
                # This request's images included; over the quota, the transaction is undone.
                queued = await conn.fetchval(Q("queued_images"), owner)
                if queued > max_queued:
                    raise QueuedQuotaExceeded(
                        f"this request's {image_count} images would leave {queued} of this "
                        f"tenant's images unfinished; the quota is {max_queued}",
                        retry_after=QUOTA_RETRY_SECONDS,
                    )
            await conn.copy_records_to_table(
                "products",
                columns=["request_id", "position", "serial_number", "product_name"],
                records=[
                    (request_id, pos, p.serial_number, p.product_name)
                    for pos, p in enumerate(products)
                ],
            )
            await conn.copy_records_to_table(
                "images",
                columns=["request_id", "product_position", "serial_number", "idx", "input_url"],
                records=[
                    (request_id, pos, p.serial_number, idx, url)
                    for pos, p in enumerate(products)
                    for idx, url in enumerate(p.urls)
                ],
            )
            await conn.execute(Q("insert_created_event"), request_id)
            await conn.execute(Q("notify_work"))
        return Submission(request_id, len(products), image_count)

    async def _existing(
        self,
        conn: Connection,
        owner: str,
        idempotency_key: str | None,
        csv_sha256: bytes,
        quality: int,
        webhook_url: str,
    ) -> Submission:
        row = await conn.fetchrow(Q("request_by_idempotency_key"), owner, idempotency_key)
        if row is None or (bytes(row["csv_sha256"]), row["quality"], row["webhook_url"]) != (
            csv_sha256,
            quality,
            webhook_url,
        ):
            raise IdempotencyKeyReused()
        return Submission(row["id"], row["product_count"], row["image_count"])

    @_translated
    async def status(self, request_id: uuid.UUID, owner: str | None = None) -> RequestStatus:
        """The request, if owner (None: anyone) may see it; RequestNotFound otherwise."""
        row = await self._pool.fetchrow(Q("request_status"), request_id, owner)
        if row is None:
            raise RequestNotFound()
        return self._status(row)

    @staticmethod
    def _status(row: Any) -> RequestStatus:
        return RequestStatus(
            request_id=row["id"],
            state=RequestState(row["state"]),
            quality=row["quality"],
            product_count=row["product_count"],
            progress=_progress(row, row["image_count"]),
            sequence=row["last_sequence"],
            result_csv_key=row["result_csv_url"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            completed_at=row["completed_at"],
            webhook=_webhook(row),
            result_csv_error=row["result_csv_error"],
        )

    @_translated
    async def images(
        self, request_id: uuid.UUID, start: tuple[int, int], limit: int
    ) -> list[ImageStatus]:
        """At most limit images in input order from (product position, index) start on."""
        rows = await self._pool.fetch(Q("request_images_page"), request_id, *start, limit)
        return [
            ImageStatus(
                position=r["product_position"],
                serial_number=r["serial_number"],
                product_name=r["product_name"],
                index=r["idx"],
                input_url=r["input_url"],
                output_key=r["output_url"],
                state=ImageState(r["state"]),
                error=r["error"],
                input_bytes=r["input_bytes"],
                output_bytes=r["output_bytes"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    @_translated
    async def events_after(
        self, request_id: uuid.UUID, after: int, limit: int, total: int
    ) -> list[Event]:
        rows = await self._pool.fetch(Q("events_after"), request_id, after, limit)
        return [
            Event(
                sequence=r["sequence"],
                state=RequestState(r["request_state"]),
                progress=_progress(r, total),
                image=None
                if r["image_state"] is None
                else ImageUpdate(
                    serial_number=r["serial_number"],
                    index=r["idx"],
                    state=ImageState(r["image_state"]),
                    output_key=r["output_url"],
                    error=r["error"],
                ),
                result_csv_key=r["result_csv_url"],
            )
            for r in rows
        ]

    @_translated
    async def cancel(self, request_id: uuid.UUID, owner: str = "") -> RequestStatus:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q("cancel_request"), request_id, owner)
            if row is None:
                current = await conn.fetchrow(Q("request_status"), request_id, owner)
                if current is None:
                    raise RequestNotFound()
                raise RequestAlreadyTerminal(
                    f"the request is already {current['state']}; it cannot be cancelled"
                )
            return self._status(await conn.fetchrow(Q("request_status"), request_id, owner))

    @_translated
    async def throttle_host(self, image_id: int, seconds: float) -> None:
        await self._pool.execute(Q("throttle_host"), image_id, seconds)

    @_translated
    async def forget_old(self, retention: float, limit: int) -> int:
        """Remembered sources unused for retention seconds (up to limit), and backoffs of
        hosts that have run out; returns how many sources were forgotten."""
        async with self._pool.acquire() as conn:
            await conn.execute(Q("forget_host_backoffs"))
            status = await conn.execute(Q("forget_old_sources"), retention, limit)
        return int(status.split()[-1])

    @_translated
    async def take_submit_token(
        self, principal: str, per_second: float, burst: int
    ) -> tuple[float, bool]:
        """(tokens left, denied) after taking one from principal's bucket."""
        row = await self._pool.fetchrow(Q("take_submit_token"), principal, per_second, burst)
        assert row is not None  # an upsert always returns its row
        return float(row["tokens"]), bool(row["denied"])

    @_translated
    async def webhook_secrets(self, principal: str) -> list[WebhookSecret]:
        """The principal's secrets that sign, the current one first; none before the first
        add_webhook_secret."""
        rows = await self._pool.fetch(Q("webhook_secrets"), principal)
        return [WebhookSecret(r["secret"], r["created_at"], r["expires_at"]) for r in rows]

    @_translated
    async def add_webhook_secret(self, principal: str, secret: str, overlap: float) -> None:
        """Makes secret the current one; the one it replaces signs for overlap seconds."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(Q("retire_webhook_secret"), principal, overlap)
            await conn.execute(Q("add_webhook_secret"), principal, secret)

    @_translated
    async def delete(self, request_id: uuid.UUID, owner: str, final_purge_after: float) -> bool:
        """Deletes the request's rows; False when owner has no such request."""
        deleted = await self._pool.fetchval(
            Q("delete_request"), request_id, owner, final_purge_after
        )
        return bool(deleted)

    @_translated
    async def delete_expired(self, retention: float, limit: int, final_purge_after: float) -> int:
        """Deletes up to limit requests that ended more than retention seconds ago."""
        return int(
            await self._pool.fetchval(
                Q("delete_expired_requests"), retention, limit, final_purge_after
            )
        )

    @_translated
    async def claim_purge(self, lease_seconds: float) -> uuid.UUID | None:
        purged: uuid.UUID | None = await self._pool.fetchval(Q("claim_purge"), lease_seconds)
        return purged

    @_translated
    async def purge_done(self, request_id: uuid.UUID) -> None:
        await self._pool.execute(Q("purge_done"), request_id)

    @_translated
    async def purge_failed(self, request_id: uuid.UUID, delay: float, error: str) -> None:
        await self._pool.execute(Q("purge_failed"), request_id, delay, error)

    @_translated
    async def claim(
        self, owner: str, limit: int, lease_seconds: float, shares: Shares = EQUAL_SHARES
    ) -> list[Claim]:
        """Up to limit images leased to owner, shared as claim_images says. With caps, claims
        take turns across the fleet, so each sees the ones before it."""
        args = (
            owner,
            limit,
            lease_seconds,
            list(shares.owners),
            list(shares.weights),
            list(shares.caps),
            shares.default_weight,
            shares.default_cap,
            shares.host_cap,
        )
        if shares.capped:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(Q("lock_claims"))
                rows = await conn.fetch(Q("claim_images"), *args)
        else:
            rows = await self._pool.fetch(Q("claim_images"), *args)
        return [
            Claim(
                image_id=r["id"],
                request_id=r["request_id"],
                serial_number=r["serial_number"],
                index=r["idx"],
                input_url=r["input_url"],
                attempt=r["attempts"],
                quality=r["quality"],
                owner=owner,
                previous=_previous_output(r),
            )
            for r in rows
        ]

    async def finish(self, lease: Lease, outcome: Outcome) -> bool:
        """Records an attempt's outcome; False when the lease was no longer current."""
        return (await self.finish_many([(lease, outcome)]))[0]

    @_translated
    async def finish_many(self, results: Sequence[tuple[Lease, Outcome]]) -> list[bool]:
        """Records many outcomes in one statement, each behind its own lease fence, and
        what the applied ones taught about their sources; for each, whether it applied
        (False: that lease was no longer current)."""
        if not results:
            return []
        leases = [lease for lease, _ in results]
        outcomes = [outcome for _, outcome in results]
        sources = [o.source for o in outcomes]
        rows = await self._pool.fetch(
            Q("finish_attempts"),
            [lease.image_id for lease in leases],
            [lease.attempt for lease in leases],
            [lease.owner for lease in leases],
            [o.state.value for o in outcomes],
            [o.output_key for o in outcomes],
            [o.error for o in outcomes],
            [o.input_bytes for o in outcomes],
            [o.output_bytes for o in outcomes],
            [o.retry_after for o in outcomes],
            [o.refund_attempt for o in outcomes],
            [s.content_sha256 if s else None for s in sources],
            [s.etag if s else "" for s in sources],
            [s.last_modified if s else "" for s in sources],
            [s.width if s else 0 for s in sources],
            [s.height if s else 0 for s in sources],
        )
        applied = {Lease(r["id"], r["attempt"], r["owner"]) for r in rows}
        return [lease in applied for lease in leases]

    @_translated
    async def expired_leases(self, limit: int) -> list[Lease]:
        rows = await self._pool.fetch(Q("expired_leases"), limit)
        return [Lease(r["id"], r["attempts"], r["lease_owner"]) for r in rows]

    @_translated
    async def queue_stats(self) -> QueueStats:
        [row] = await self._pool.fetch(Q("queue_stats"))  # aggregates: always one row
        return QueueStats(row["queued"], row["oldest_queued_seconds"], row["webhook_backlog"])

    @_translated
    async def claim_outbox(self, kind: str, lease_seconds: float) -> OutboxItem | None:
        row = await self._pool.fetchrow(Q("claim_outbox"), kind, lease_seconds)
        if row is None:
            return None
        return OutboxItem(
            row["id"],
            row["request_id"],
            row["attempts"],
            row["delivery_id"],
            row["created_at"],
            row["last_error"],
        )

    @_translated
    async def retry_outbox(self, item: OutboxItem, delay: float, error: str) -> None:
        await self._pool.execute(Q("retry_outbox"), item.id, delay, error)

    @_translated
    async def release_outbox(self, item: OutboxItem, delay: float) -> None:
        """Puts the item back, due in delay seconds, without counting the attempt."""
        await self._pool.execute(Q("release_outbox"), item.id, delay)

    @_translated
    async def end_outbox(self, item: OutboxItem, state: str, error: str = "") -> None:
        await self._pool.execute(Q("end_outbox"), item.id, state, error)

    @_translated
    async def webhook_payload(self, request_id: uuid.UUID) -> asyncpg.Record:
        row = await self._pool.fetchrow(Q("webhook_payload"), request_id)
        if row is None:
            raise RequestNotFound()
        return row

    @_translated
    async def finish_request(
        self, item: OutboxItem, result_csv_key: str, *, gave_up: str = ""
    ) -> None:
        """The result CSV is stored at result_csv_key; or, with gave_up (the last error), it
        could not be: the request becomes terminal either way."""
        state = "FAILED" if gave_up else "DELIVERED"
        await self._pool.execute(
            Q("finish_request"), item.request_id, item.id, result_csv_key, state, gave_up
        )


def lease_of(claim: Claim) -> Lease:
    return Lease(claim.image_id, claim.attempt, claim.owner)


def _previous_output(row: asyncpg.Record) -> PreviousOutput | None:
    """The remembered output of a claimed image's source, if its claim found one."""
    if row["output_key"] is None:
        return None
    return PreviousOutput(
        etag=row["etag"],
        last_modified=row["last_modified"],
        content_sha256=row["content_sha256"],
        output_key=row["output_key"],
        input_bytes=row["input_bytes"],
        output_bytes=row["output_bytes"],
        width=row["width"],
        height=row["height"],
    )
