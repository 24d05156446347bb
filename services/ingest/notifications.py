"""One LISTEN connection per process, fanned out to the dispatcher, the outbox and watchers.

NOTIFY only wakes listeners up; the tables are the truth. A lost notification costs
latency (everyone also polls), never data. When the connection drops it is opened again
and everyone is woken to re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg

from imgpipe.common.backoff import Backoff
from imgpipe.ingest import metrics

log = logging.getLogger(__name__)

WORK = "imgpipe_work"
EVENTS = "imgpipe_events"
OUTBOX = "imgpipe_outbox"
# How the LISTEN connection shows in pg_stat_activity.
LISTENER_APPLICATION_NAME = "imgpipe-ingest-listen"
# Waits between attempts to open the LISTEN connection again.
RECONNECT = Backoff(first=0.2, cap=5.0, jitter=0.0)


@dataclass
class _Watched:
    """A request's watchers in this process: how many, and the one event their feed waits
    on."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


def _resolve(future: asyncio.Future[None], _conn: Any) -> None:
    if not future.done():
        future.set_result(None)


class Notifier:
    def __init__(self, dsn: str, *, health_check_interval: float = 5.0) -> None:
        self._dsn = dsn
        self._interval = health_check_interval
        # Set by new work (a Submit).
        self.work = asyncio.Event()
        # Set when images finish anywhere in the fleet: a claim held back by a host's or a
        # tenant's cap on images in flight may find room now.
        self.room = asyncio.Event()
        # One event per outbox kind (the NOTIFY payload names the kind).
        self.outbox: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._watched: dict[str, _Watched] = {}
        metrics.WATCHERS.set_function(lambda: self.watcher_count)

    @contextlib.contextmanager
    def subscribe(self, request_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever request_id may have new events. The watchers of a request
        share it, so one reader clears it and reads for all of them (its feed)."""
        watched = self._watched.get(request_id)
        if watched is None:
            watched = self._watched[request_id] = _Watched()
        watched.count += 1
        try:
            yield watched.wake
        finally:
            watched.count -= 1
            if not watched.count:
                del self._watched[request_id]

    @property
    def watcher_count(self) -> int:
        return sum(w.count for w in self._watched.values())

    def wake_all(self) -> None:
        self.work.set()
        self.room.set()
        for wake in self.outbox.values():
            wake.set()
        for watched in self._watched.values():
            watched.wake.set()

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        payload = str(payload)
        if channel == WORK:
            self.work.set()
        elif channel == OUTBOX:
            self.outbox[payload].set()
        elif channel == EVENTS:
            self.room.set()
            watched = self._watched.get(payload)
            if watched is not None:
                watched.wake.set()

    async def run(self) -> None:
        """Keeps the LISTEN connection open until cancelled."""
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=10,
                    server_settings={"application_name": LISTENER_APPLICATION_NAME},
                )
                lost = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(partial(_resolve, lost))
                for channel in (WORK, EVENTS, OUTBOX):
                    await conn.add_listener(channel, self._on_notify)
                failures = 0
                self.wake_all()
                while not lost.done():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._interval):
                            await asyncio.shield(lost)
                    if not lost.done():
                        await conn.fetchval("SELECT 1", timeout=self._interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost; reconnecting", extra={"error": str(exc)})
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            self.wake_all()
            failures += 1
            await asyncio.sleep(RECONNECT.delay(failures))
