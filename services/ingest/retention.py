"""Data that does not grow forever: requests are deleted a retention period after they end
(the sweep), or at once by DeleteRequest; with their rows go their stored objects.

Rows go in one statement (requests, products, images, events, outbox rows by cascade), and
the same statement queues a purge of the objects under `{request_id}/`. A purge runs once
right away and once more after `final_purge_after`, when no processor call begun before the
deletion can still write an object. Every step is a row claimed under a lease (SKIP
LOCKED), so any number of ingest replicas sweep together and a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from imgpipe.common.errors import StorageError
from imgpipe.common.storage import Storage
from imgpipe.ingest.errors import DatabaseUnavailable
from imgpipe.ingest.store import Store

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(frozen=True)
class RetentionSettings:
    # Seconds after a request ends (terminal state) until it is deleted; 0 keeps everything.
    retention_seconds: float = 30 * DAY
    batch: int = 100
    interval_seconds: float = 60.0
    # Seconds until the final pass over a deleted request's objects: past any processor
    # call still running at deletion (the lease bounds it).
    final_purge_after: float = 120.0
    lease_seconds: float = 300.0


class ObjectPurger:
    """Deletes a request's objects from storage (blocking calls in the executor)."""

    def __init__(self, storage: Storage, executor: Executor) -> None:
        self._storage = storage
        self._executor = executor

    async def purge(self, request_id: uuid.UUID) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._storage.delete_prefix, str(request_id)
        )


class RetentionSweeper:
    def __init__(self, store: Store, purger: ObjectPurger, settings: RetentionSettings) -> None:
        self._store = store
        self._purger = purger
        self._settings = settings

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except DatabaseUnavailable as exc:
                log.warning("retention sweep failed", extra={"error": str(exc)})
            except Exception:
                log.exception("retention sweep failed unexpectedly")
            await asyncio.sleep(self._settings.interval_seconds)

    async def sweep(self) -> tuple[int, int]:
        """One round: expired requests deleted in batches (and remembered sources unused as
        long), then due purges run. Returns (requests deleted, purge passes done)."""
        settings = self._settings
        deleted = 0
        if settings.retention_seconds > 0:
            deleted = await self._in_batches(
                lambda: self._store.delete_expired(
                    settings.retention_seconds, settings.batch, settings.final_purge_after
                )
            )
            await self._in_batches(
                lambda: self._store.forget_old(settings.retention_seconds, settings.batch)
            )
        if deleted:
            log.info("expired requests deleted", extra={"count": deleted})
        passes = 0
        while (request_id := await self._store.claim_purge(settings.lease_seconds)) is not None:
            await self._purge(request_id)
            passes += 1
        return deleted, passes

    async def _in_batches(self, batch: Callable[[], Awaitable[int]]) -> int:
        """Runs batch until one does less than a full batch; the total done."""
        total = 0
        while True:
            done = await batch()
            total += done
            if done < self._settings.batch:
                return total

    async def _purge(self, request_id: uuid.UUID) -> None:
        try:
            count = await self._purger.purge(request_id)
        except StorageError as exc:
            log.warning(
                "object purge failed; will retry",
                extra={"request_id": str(request_id), "error": str(exc)},
            )
            await self._store.purge_failed(request_id, self._settings.interval_seconds, str(exc))
            return
        await self._store.purge_done(request_id)
        if count:
            log.info("objects purged", extra={"request_id": str(request_id), "count": count})
