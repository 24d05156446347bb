"""The dispatcher: claims queued images under a lease in batches, a batch ahead of the
calls it makes; calls a processor for each; records the outcomes in batches behind the
lease fence (row by row); and returns expired leases to the queue.

A result waits in memory until its batch is written: a crash loses it, and the image comes
back when its lease runs out (the next attempt overwrites the same key), so nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.context import Context

from imgpipe.common import tracing
from imgpipe.common.backoff import Backoff
from imgpipe.common.waiting import wait_any, wait_event
from imgpipe.ingest import metrics
from imgpipe.ingest.call_limit import CallLimit
from imgpipe.ingest.errors import DatabaseUnavailable
from imgpipe.ingest.model import Claim, ImageState, Outcome
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.processor_calls import ProcessorCalls
from imgpipe.ingest.processor_tls import ProcessorTls
from imgpipe.ingest.retry_policy import BUSY, RetryPolicy
from imgpipe.ingest.sources import memory_of, throttled_for
from imgpipe.ingest.store import Store, lease_of
from imgpipe.ingest.tenants import Shares
from imgpipe.v1 import processor_pb2, processor_pb2_grpc, requests_pb2

log = logging.getLogger(__name__)

# Waits between asking a full processor again.
BUSY_RETRY = Backoff(first=0.05, cap=1.0, jitter=0.5)
# How long a result waits for others to share its statement (seconds), and how many one
# statement records at most (its NOTIFY names their requests within PostgreSQL's 8000
# bytes).
RECORD_LINGER = 0.02
RECORD_BATCH = 128
# After a claim that found nothing, the first pause before finished images elsewhere are
# worth another claim (seconds; doubling with each such claim in a row, up to the poll).
EMPTY_CLAIM_PAUSE = 0.02
# A claimed image whose lease ran out while it waited for a call (or cut its call short)
# goes back to the queue, its attempt not counted.
LEASE_RAN_OUT = Outcome(
    ImageState.QUEUED, error="lease ran out waiting for a call", refund_attempt=True
)


@dataclass(frozen=True)
class DispatchSettings:
    max_in_flight: int = 32
    claim_batch: int = 16
    # Images one call to a processor carries at most (ProcessImages); 1: a call per image.
    call_batch: int = 8
    lease_seconds: float = 60.0
    call_timeout: float = 45.0
    # Images of one source host in flight at once, fleet-wide; 0: no cap.
    host_max_in_flight: int = 16
    poll_interval: float = 1.0
    sweep_interval: float = 2.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def processor_channel(target: str, tls: ProcessorTls) -> grpc.aio.Channel:
    """One channel to every processor, balanced per call with round_robin; over TLS when
    tls says so; traced when tracing is on."""
    options = [
        ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}'),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        *tls.channel_options(),
    ]
    interceptors = tracing.client_interceptors()
    credentials = tls.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


class Recorder:
    """Writes outcomes in batches: one statement for every result that arrives within
    RECORD_LINGER of the first, or while the previous batch is being written."""

    def __init__(self, store: Store, retry_interval: float) -> None:
        self._store = store
        self._retry_interval = retry_interval
        self._pending: list[tuple[Claim, Outcome]] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, claim: Claim, outcome: Outcome) -> None:
        self._pending.append((claim, outcome))
        self._idle.clear()
        self._arrived.set()

    async def idle(self, seconds: float) -> bool:
        """True once every result added so far is written (or dropped), within seconds."""
        return await wait_event(self._idle, seconds)

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            await asyncio.sleep(RECORD_LINGER)
            self._arrived.clear()
            while self._pending:
                batch = self._pending[:RECORD_BATCH]
                del self._pending[:RECORD_BATCH]
                await self._write(batch)
            self._idle.set()

    async def _write(self, batch: list[tuple[Claim, Outcome]]) -> None:
        results = [(lease_of(claim), outcome) for claim, outcome in batch]
        while True:
            try:
                applied = await self._store.finish_many(results)
                break
            except DatabaseUnavailable:
                # Keep the results while the leases last; once they expire the sweeper
                # re-queues the images and these results are fenced off anyway.
                await asyncio.sleep(self._retry_interval)
            except Exception:
                # Never let recording die; these images come back when their leases expire.
                log.exception("recording outcomes failed unexpectedly; their leases will expire")
                return
        for (claim, outcome), ok in zip(batch, applied, strict=True):
            _count(claim, outcome, ok)


def _count(claim: Claim, outcome: Outcome, applied: bool) -> None:
    extra = {"request_id": str(claim.request_id), "image": f"{claim.serial_number}-{claim.index}"}
    if not applied:
        metrics.FENCED_RESULTS.inc()
        log.info("stale result dropped (lease no longer current)", extra=extra)
        return
    metrics.OUTCOMES.labels(_outcome_label(outcome)).inc()
    if outcome.state is ImageState.FAILED:
        log.info("image failed", extra={**extra, "error": outcome.error})


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channel: grpc.aio.Channel,
        notifier: Notifier,
        owner: str,
        settings: DispatchSettings,
        shares: Shares,
    ) -> None:
        """shares: the tenants' weights and caps on images in flight, and the host cap."""
        self._shares = shares
        self._store = store
        self._channel = channel
        # With tracing on, every image is a call of its own, so that its trace holds it.
        batch = 1 if tracing.enabled() else settings.call_batch
        self._calls = CallLimit(settings.max_in_flight, batch)
        self._processor = ProcessorCalls(
            processor_pb2_grpc.ProcessorServiceStub(channel), batch=lambda: self._calls.group
        )
        self._notifier = notifier
        self._owner = owner
        self._settings = settings
        self._recorder = Recorder(store, settings.poll_interval)
        # Every claimed image not recorded yet: calling, or waiting for one of the calls.
        self._in_flight: dict[asyncio.Task[None], Claim] = {}
        self._slot_freed = asyncio.Event()
        self._claiming = True
        # Set while processors answer RESOURCE_EXHAUSTED: claiming pauses until then.
        self._busy_until = 0.0
        metrics.IN_FLIGHT.set_function(lambda: self._calls.calling)
        metrics.CALL_LIMIT.set_function(lambda: self._calls.limit)

    async def run(self) -> None:
        """Claims and dispatches until stop_claiming(); records and sweeps beside it until
        cancelled (after drain())."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._recorder.run())
            group.create_task(self._sweep_forever())
            group.create_task(self._claim_forever())

    def stop_claiming(self) -> None:
        self._claiming = False
        self._notifier.work.set()
        self._slot_freed.set()

    async def drain(self, grace: float) -> None:
        """Waits for calls in flight up to grace and writes their results, then hands back
        what is left at once."""
        self.stop_claiming()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        tasks = list(self._in_flight)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        leftover = [claim for task, claim in self._in_flight.items() if not task.done()]
        for task in list(self._in_flight):
            task.cancel()
        await self._recorder.idle(max(0.0, deadline - loop.time()))
        handed_back = Outcome(
            ImageState.QUEUED, error="handed back at shutdown", refund_attempt=True
        )
        with contextlib.suppress(DatabaseUnavailable):
            await self._store.finish_many([(lease_of(claim), handed_back) for claim in leftover])
        if leftover:
            log.info("handed back unfinished leases", extra={"count": len(leftover)})

    async def _claim_forever(self) -> None:
        settings = self._settings
        empty = 0  # claims in a row that found nothing
        while self._claiming:
            # The dispatcher holds a batch more than it calls at once, so a claim takes a
            # whole batch while the calls go on: each claim waits for a batch to be free
            # (unless nothing is held at all).
            calls = int(self._calls.limit)
            enough = min(settings.claim_batch, calls)
            free = calls + enough - len(self._in_flight)
            if free <= 0 or (free < enough and self._in_flight):
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            pause = self._busy_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            self._notifier.work.clear()
            self._notifier.room.clear()
            want = min(free, settings.claim_batch)
            claim_started = time.time_ns()
            try:
                claims = await self._store.claim(
                    self._owner, want, settings.lease_seconds, self._shares
                )
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
            metrics.CLAIMS.labels("some" if claims else "none").inc()
            claimed = (claim_started, time.time_ns())
            # Calls end before the lease does (on this replica's clock), leaving time to
            # record their outcomes.
            lease_end = time.monotonic() + settings.lease_seconds * 0.9
            for claim in claims:
                task = asyncio.create_task(self._process(claim, claimed, lease_end))
                self._in_flight[task] = claim
                task.add_done_callback(self._done)
            if len(claims) < want and self._claiming:
                empty = 0 if claims else empty + 1
                await self._until_more(empty)

    async def _until_more(self, empty: int) -> None:
        """Waits for new work (a Submit), or for images to finish anywhere in the fleet (a
        claim held back by a cap may find room), or poll_interval. Every replica hears of
        every batch recorded, so after `empty` claims in a row that found nothing, finished
        images wake it only after a pause that doubles with each (new work does not wait)."""
        notifier, poll = self._notifier, self._settings.poll_interval
        pause = min(poll, EMPTY_CLAIM_PAUSE * 2 ** (empty - 1)) if empty else 0.0
        if pause and await wait_event(notifier.work, pause):
            return
        await wait_any((notifier.work, notifier.room), poll - pause)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._slot_freed.set()

    async def _call(
        self, request: processor_pb2.ProcessImageRequest, lease_end: float
    ) -> Any | None:
        """ProcessImage (one call with other images handed over at the same time:
        ProcessorCalls), once one of the calls is free, within what is left of the lease
        (lease_end, on the monotonic clock); None if no call was free before its end, or if
        the call, cut short by it, ran out of time. While processors answer
        RESOURCE_EXHAUSTED (full), waits and asks again here, in memory, as long as a whole
        call still fits in the lease: a full processor costs no database write and no
        event."""
        settings = self._settings
        retry = 0
        while True:
            async with self._calls.call(within=lease_end - time.monotonic()) as free:
                left = lease_end - time.monotonic()
                if not free or left <= 0:
                    return None
                timeout = min(settings.call_timeout, left)
                try:
                    response = await self._processor.process(request, within=timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != BUSY:
                        self._calls.taken()
                        cut_short = timeout < settings.call_timeout
                        if cut_short and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                            return None  # the lease's fault, not the image's
                        raise
                    self._calls.refused()
                    retry += 1
                    wait = BUSY_RETRY.delay(retry)
                    if time.monotonic() + wait > lease_end - settings.call_timeout:
                        raise
                else:
                    self._calls.taken()
                    return response
            metrics.OUTCOMES.labels("busy").inc()
            await asyncio.sleep(wait)

    async def _process(self, claim: Claim, claimed: tuple[int, int], lease_end: float) -> None:
        """One attempt at one image, as one trace (when tracing): its claim (the batch's
        claim statement, timed), the ProcessImage call, and the hand-over of its outcome to
        the recorder."""
        attributes: dict[str, str | int] = {
            tracing.REQUEST_ID_ATTRIBUTE: str(claim.request_id),
            "imgpipe.serial_number": claim.serial_number,
            "imgpipe.index": claim.index,
            "imgpipe.attempt": claim.attempt,
        }
        with tracing.TRACER.start_as_current_span(
            "image attempt", context=Context(), attributes=attributes, start_time=claimed[0]
        ):
            tracing.TRACER.start_span("claim", start_time=claimed[0]).end(end_time=claimed[1])
            outcome = await self._attempt(claim, lease_end)
            # The recorder writes outcomes many to a statement, later: this span marks the
            # hand-over, not the write.
            with tracing.TRACER.start_as_current_span(
                "record outcome", attributes={"imgpipe.image_state": outcome.state.value}
            ):
                self._recorder.add(claim, outcome)

    async def _attempt(self, claim: Claim, lease_end: float) -> Outcome:
        request = processor_pb2.ProcessImageRequest(
            source_url=claim.input_url,
            output_key=claim.output_key,
            options=requests_pb2.CompressionOptions(quality=claim.quality),
            previous=claim.previous,
        )
        try:
            response = await self._call(request, lease_end)
        except grpc.aio.AioRpcError as exc:
            throttled = throttled_for(exc)
            outcome = self._settings.retry.after_error(
                exc.code(),
                exc.details() or "",
                claim.attempt,
                reached=not self._no_processor_reachable(exc),
                throttled_for=throttled,
            )
            if throttled is not None:
                metrics.HOST_THROTTLES.inc()
                with contextlib.suppress(DatabaseUnavailable):
                    await self._store.throttle_host(claim.image_id, throttled)
            elif outcome.refund_attempt:
                self._busy_until = time.monotonic() + outcome.retry_after
        else:
            if response is None:
                return LEASE_RAN_OUT
            if response.reused:
                metrics.SOURCES_REUSED.inc()
            outcome = Outcome(
                ImageState.SUCCEEDED,
                output_key=response.output_key,
                input_bytes=response.input_bytes,
                output_bytes=response.output_bytes,
                source=memory_of(response),
            )
        return outcome

    def _no_processor_reachable(self, exc: grpc.aio.AioRpcError) -> bool:
        """UNAVAILABLE because the channel has no processor to call (all down), not
        because a processor answered so."""
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        state = self._channel.get_state(try_to_connect=False)
        return state is not grpc.ChannelConnectivity.READY

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep()
                stats = await self._store.queue_stats()
                metrics.QUEUE_DEPTH.set(stats.queued)
                metrics.OLDEST_QUEUED_SECONDS.set(stats.oldest_queued_seconds)
                metrics.WEBHOOK_BACKLOG.set(stats.webhook_backlog)
            except DatabaseUnavailable as exc:
                log.warning("sweep failed", extra={"error": str(exc)})
            except Exception:
                log.exception("sweep failed unexpectedly")

    async def sweep(self) -> int:
        """Returns expired leases to the queue (or fails them at the last attempt)."""
        expired = await self._store.expired_leases(limit=500)
        retry = self._settings.retry
        applied = await self._store.finish_many(
            [(lease, retry.after_lost_lease(lease.attempt)) for lease in expired]
        )
        count = sum(applied)
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
