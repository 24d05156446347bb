"""WatchStatus: a snapshot (or a resume point), then every event in order from the events
table, woken by notifications and by a slow poll. A watcher holds no buffer: it reads
pages of events when it is ready for them, so a slow reader costs nothing but its cursor.
Watchers of one request that ask for the same page, or open their streams, at once share
one query, and every event's message is encoded once and its bytes shared by all its
watchers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from imgpipe.common.waiting import wait_event
from imgpipe.ingest.model import Event, RequestStatus
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.store import Store


@dataclass(frozen=True)
class WatchSettings:
    poll_interval: float = 2.0
    page_size: int = 500


T = TypeVar("T")


class EventReader:
    """Reads what watchers need: pages of events and the request's status. Concurrent
    reads of the same page (many watchers woken by the same NOTIFY) or of the same status
    (watchers opening their streams at once) become one query whose result they all get.
    A status read that started before a watcher asked is as good as its own: the events
    after the sequence it reports follow."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._reading: dict[Hashable, asyncio.Future[Any]] = {}

    async def events_after(
        self, request_id: uuid.UUID, after: int, limit: int, total: int
    ) -> list[Event]:
        return await self._shared(
            ("events", request_id, after, limit),
            lambda: self._store.events_after(request_id, after, limit, total),
        )

    async def status(self, request_id: uuid.UUID, caller: str) -> RequestStatus:
        return await self._shared(
            ("status", request_id, caller), lambda: self._store.status(request_id, caller)
        )

    async def _shared(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(read())
            self._reading[key] = reading
            reading.add_done_callback(partial(self._done, key))
        # Shielded: a watcher that goes away does not cancel the read for the others.
        result: T = await asyncio.shield(reading)
        return result

    def _done(self, key: Hashable, reading: asyncio.Future[Any]) -> None:
        self._reading.pop(key, None)
        if not reading.cancelled():
            reading.exception()  # retrieved here, so a read nobody awaited any more is quiet


class SharedEncoding:
    """Each event's message encoded once, its bytes handed to every watcher: an event is
    named for ever by its request and sequence (events are never changed), so the bytes
    can be kept; the newest `capacity` are, which covers every watcher that keeps up."""

    def __init__(self, encode: Callable[[str, Event], bytes], capacity: int = 8192) -> None:
        self._encode = encode
        self._capacity = capacity
        self._encoded: dict[tuple[str, int], bytes] = {}

    def __call__(self, request_id: str, event: Event) -> bytes:
        key = (request_id, event.sequence)
        data = self._encoded.get(key)
        if data is None:
            data = self._encode(request_id, event)
            if len(self._encoded) >= self._capacity:
                del self._encoded[next(iter(self._encoded))]  # the oldest
            self._encoded[key] = data
        return data


def snapshot(status: RequestStatus) -> Event:
    return Event(
        sequence=status.sequence,
        state=status.state,
        progress=status.progress,
        image=None,
        result_csv_key=status.result_csv_key,
    )


async def watch(
    reader: EventReader,
    notifier: Notifier,
    request_id: uuid.UUID,
    after_sequence: int,
    settings: WatchSettings,
    caller: str,
) -> AsyncIterator[tuple[Event, bool]]:
    """Yields (event, is_snapshot) until the event that carries a terminal state."""
    status = await reader.status(request_id, caller)
    if after_sequence == 0:
        yield snapshot(status), True
        if status.state.terminal:
            return
        after = status.sequence
    else:
        if status.state.terminal and after_sequence >= status.sequence:
            return
        after = after_sequence
    total = status.progress.total
    with notifier.subscribe(str(request_id)) as wake:
        while True:
            wake.clear()
            events = await reader.events_after(request_id, after, settings.page_size, total)
            for event in events:
                yield event, False
                after = event.sequence
                if event.state.terminal:
                    return
            if len(events) < settings.page_size:
                await wait_event(wake, settings.poll_interval)
