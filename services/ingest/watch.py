"""WatchStatus: a snapshot (or a resume point), then every event in order from the events
table, woken by notifications and by a slow poll.

The watchers of one request in a process share its feed: one reader that reads each change
once and keeps the newest events, then wakes them all at once, so an event costs one query
and one wake-up per watcher. A watcher holds no buffer of its own: one that falls behind the
feed's window reads its own pages when it is ready for them, so a slow reader costs nothing
but its cursor. Watchers that ask for the same page, or open their streams, at once share one
query, and every event's message is encoded once and its bytes shared by all its watchers."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
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
    # Events a feed keeps for its watchers (the newest).
    window: int = 2000


T = TypeVar("T")


class EventReader:
    """Reads what watchers need: pages of events and the request's status, and holds the
    feed of each request watched here. Concurrent reads of the same page (watchers behind
    their feed at the same place) or of the same status (watchers opening their streams at
    once) become one query whose result they all get. A status read that started before a
    watcher asked is as good as its own: the events after the sequence it reports follow."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._reading: dict[Hashable, asyncio.Future[Any]] = {}
        self._feeds: dict[uuid.UUID, Feed] = {}

    @contextlib.contextmanager
    def follow(
        self,
        request_id: uuid.UUID,
        after: int,
        total: int,
        wake: asyncio.Event,
        settings: WatchSettings,
    ) -> Iterator[Feed]:
        """The request's feed, shared with its other watchers here (started at `after` by
        the first); wake is set when the request may have new events."""
        feed = self._feeds.get(request_id)
        if feed is None or feed.failed is not None:
            feed = Feed(self, request_id, after, total, wake, settings)
            self._feeds[request_id] = feed
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if not feed.watchers:
                feed.close()
                if self._feeds.get(request_id) is feed:
                    del self._feeds[request_id]

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


class Feed:
    """One request's events as this process reads them: a task reads each change once,
    keeps the newest settings.window events and wakes every watcher through one event."""

    def __init__(
        self,
        reader: EventReader,
        request_id: uuid.UUID,
        after: int,
        total: int,
        wake: asyncio.Event,
        settings: WatchSettings,
    ) -> None:
        self.watchers = 0
        # The events after `base`, in order; every one after it is here or not read yet.
        self.base = after
        self.events: list[Event] = []
        # Replaced by a new one, and set, whenever events arrive or the feed fails.
        self.changed = asyncio.Event()
        self.failed: Exception | None = None
        self._reader = reader
        self._request_id = request_id
        self._total = total
        self._wake = wake
        self._settings = settings
        self._task = asyncio.create_task(self._read())

    def after(self, sequence: int) -> list[Event]:
        """The events after sequence that the feed has (sequence >= base)."""
        return self.events[bisect.bisect_right(self.events, sequence, key=_sequence) :]

    def close(self) -> None:
        self._task.cancel()

    async def _read(self) -> None:
        settings = self._settings
        try:
            while True:
                self._wake.clear()
                last = self.events[-1].sequence if self.events else self.base
                events = await self._reader.events_after(
                    self._request_id, last, settings.page_size, self._total
                )
                if events:
                    self.events += events
                    if len(self.events) > settings.window:
                        cut = len(self.events) - settings.window
                        self.base = self.events[cut - 1].sequence
                        del self.events[:cut]
                    self._publish()
                    if events[-1].state.terminal:
                        return
                if len(events) < settings.page_size:
                    await wait_event(self._wake, settings.poll_interval)
        except Exception as exc:  # its watchers end with it (DatabaseUnavailable and such)
            self.failed = exc
            self._publish()

    def _publish(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


def _sequence(event: Event) -> int:
    return event.sequence


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
    with (
        notifier.subscribe(str(request_id)) as wake,
        reader.follow(request_id, after, total, wake, settings) as feed,
    ):
        while True:
            changed = feed.changed
            if after < feed.base:  # behind the feed's window
                events = await reader.events_after(request_id, after, settings.page_size, total)
            else:
                events = feed.after(after)
            for event in events:
                yield event, False
                after = event.sequence
                if event.state.terminal:
                    return
            if not events:
                if feed.failed is not None:
                    raise feed.failed
                await changed.wait()
