"""The dispatcher: claims queued images under a lease, calls a processor for each, records
the outcome behind the lease fence, and returns expired leases to the queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from imgpipe.common.backoff import Backoff
from imgpipe.common.waiting import wait_event
from imgpipe.ingest import metrics
from imgpipe.ingest.errors import DatabaseUnavailable
from imgpipe.ingest.model import Claim, ImageState, Outcome
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.retry_policy import BUSY, RetryPolicy
from imgpipe.ingest.store import Lease, Store, lease_of
from imgpipe.v1 import processor_pb2, processor_pb2_grpc, requests_pb2

log = logging.getLogger(__name__)

# Waits between asking a full processor again.
BUSY_RETRY = Backoff(first=0.05, cap=1.0, jitter=0.5)


@dataclass(frozen=True)
class DispatchSettings:
    max_in_flight: int = 32
    claim_batch: int = 16
    lease_seconds: float = 60.0
    call_timeout: float = 45.0
    poll_interval: float = 1.0
    sweep_interval: float = 2.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def processor_channel(target: str) -> grpc.aio.Channel:
    """One channel to every processor, balanced per call with round_robin."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}'),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
    )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channel: grpc.aio.Channel,
        notifier: Notifier,
        owner: str,
        settings: DispatchSettings,
    ) -> None:
        self._store = store
        self._channel = channel
        self._stub = processor_pb2_grpc.ProcessorServiceStub(channel)
        self._notifier = notifier
        self._owner = owner
        self._settings = settings
        self._in_flight: dict[asyncio.Task[None], Claim] = {}
        self._slot_freed = asyncio.Event()
        self._claiming = True
        # Set while processors answer RESOURCE_EXHAUSTED: claiming pauses until then.
        self._busy_until = 0.0
        metrics.IN_FLIGHT.set_function(lambda: len(self._in_flight))

    async def run(self) -> None:
        """Claims and dispatches until stop_claiming(); runs the sweeper beside it."""
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await self._claim_forever()
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    def stop_claiming(self) -> None:
        self._claiming = False
        self._notifier.work.set()
        self._slot_freed.set()

    async def drain(self, grace: float) -> None:
        """Waits for calls in flight up to grace, then hands back what is left at once."""
        self.stop_claiming()
        tasks = list(self._in_flight)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        leftover = [claim for task, claim in self._in_flight.items() if not task.done()]
        for task in list(self._in_flight):
            task.cancel()
        handed_back = Outcome(
            ImageState.QUEUED, error="handed back at shutdown", refund_attempt=True
        )
        for claim in leftover:
            with contextlib.suppress(DatabaseUnavailable):
                await self._store.finish(lease_of(claim), handed_back)
        if leftover:
            log.info("handed back unfinished leases", extra={"count": len(leftover)})

    async def _claim_forever(self) -> None:
        settings = self._settings
        while self._claiming:
            free = settings.max_in_flight - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            pause = self._busy_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            self._notifier.work.clear()
            want = min(free, settings.claim_batch)
            try:
                claims = await self._store.claim(self._owner, want, settings.lease_seconds)
            except DatabaseUnavailable as exc:
                log.warning("claim failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(settings.poll_interval)
                continue
            except Exception:
                # Never let the claim loop die: work would stop without a word.
                log.exception("claim failed unexpectedly; retrying")
                await asyncio.sleep(settings.poll_interval)
                continue
            metrics.ATTEMPTS.inc(len(claims))
            for claim in claims:
                task = asyncio.create_task(self._process(claim))
                self._in_flight[task] = claim
                task.add_done_callback(self._done)
            if len(claims) < want and self._claiming:
                await wait_event(self._notifier.work, settings.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._slot_freed.set()

    async def _call(self, request: processor_pb2.ProcessImageRequest) -> Any:
        """ProcessImage; while processors answer RESOURCE_EXHAUSTED (full), waits and asks
        again here, in memory, as long as a whole call still fits in the lease: a full
        processor costs no database write and no event."""
        settings = self._settings
        last_start = time.monotonic() + settings.lease_seconds - settings.call_timeout - 1.0
        retry = 0
        while True:
            try:
                return await self._stub.ProcessImage(request, timeout=settings.call_timeout)
            except grpc.aio.AioRpcError as exc:
                retry += 1
                wait = BUSY_RETRY.delay(retry)
                if exc.code() != BUSY or time.monotonic() + wait > last_start:
                    raise
            metrics.OUTCOMES.labels("busy").inc()
            await asyncio.sleep(wait)

    async def _process(self, claim: Claim) -> None:
        request = processor_pb2.ProcessImageRequest(
            source_url=claim.input_url,
            output_key=claim.output_key,
            options=requests_pb2.CompressionOptions(quality=claim.quality),
        )
        try:
            response = await self._call(request)
        except grpc.aio.AioRpcError as exc:
            outcome = self._settings.retry.after_error(
                exc.code(),
                exc.details() or "",
                claim.attempt,
                reached=not self._no_processor_reachable(exc),
            )
            if outcome.refund_attempt:
                self._busy_until = time.monotonic() + outcome.retry_after
        else:
            outcome = Outcome(
                ImageState.SUCCEEDED,
                output_url=response.output_url,
                input_bytes=response.input_bytes,
                output_bytes=response.output_bytes,
            )
        await self._record(lease_of(claim), outcome, claim)

    def _no_processor_reachable(self, exc: grpc.aio.AioRpcError) -> bool:
        """UNAVAILABLE because the channel has no processor to call (all down), not
        because a processor answered so."""
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        state = self._channel.get_state(try_to_connect=False)
        return state is not grpc.ChannelConnectivity.READY

    async def _record(self, lease: Lease, outcome: Outcome, claim: Claim) -> None:
        extra = {
            "request_id": str(claim.request_id),
            "image": f"{claim.serial_number}-{claim.index}",
        }
        while True:
            try:
                applied = await self._store.finish(lease, outcome)
                break
            except DatabaseUnavailable:
                # Keep the result while the lease lasts; once it expires the sweeper
                # re-queues the image and this result is fenced off anyway.
                await asyncio.sleep(self._settings.poll_interval)
        if not applied:
            metrics.FENCED_RESULTS.inc()
            log.info("stale result dropped (lease no longer current)", extra=extra)
            return
        metrics.OUTCOMES.labels(_outcome_label(outcome)).inc()
        if outcome.state is ImageState.FAILED:
            log.info("image failed", extra={**extra, "error": outcome.error})

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep()
                metrics.QUEUE_DEPTH.set(await self._store.queue_depth())
            except DatabaseUnavailable as exc:
                log.warning("sweep failed", extra={"error": str(exc)})
            except Exception:
                log.exception("sweep failed unexpectedly")

    async def sweep(self) -> int:
        """Returns expired leases to the queue (or fails them at the last attempt)."""
        expired = await self._store.expired_leases(limit=500)
        count = 0
        for lease in expired:
            if await self._store.finish(
                lease, self._settings.retry.after_lost_lease(lease.attempt)
            ):
                count += 1
        if count:
            metrics.LEASE_EXPIRIES.inc(count)
            log.info("expired leases returned", extra={"count": count})
        return count


def _outcome_label(outcome: Outcome) -> str:
    if outcome.refund_attempt:
        return "busy"
    if outcome.state is ImageState.QUEUED:
        return "retried"
    return outcome.state.value.lower()
