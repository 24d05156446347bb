"""WatchStatus: a snapshot (or a resume point), then every event in order from the events
table, woken by notifications and by a slow poll. A watcher holds no buffer: it reads
pages of events when it is ready for them, so a slow reader costs nothing but its cursor."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.ingest.model import Event, RequestStatus
from services.ingest.notifications import Notifier
from services.ingest.store import Store
from shared.waiting import wait_event


@dataclass(frozen=True)
class WatchSettings:
    poll_interval: float = 2.0
    page_size: int = 500


def snapshot(status: RequestStatus) -> Event:
    return Event(
        sequence=status.sequence,
        state=status.state,
        progress=status.progress,
        image=None,
        result_csv_url=status.result_csv_url,
    )


async def watch(
    store: Store,
    notifier: Notifier,
    request_id: uuid.UUID,
    after_sequence: int,
    settings: WatchSettings,
    caller: str,
) -> AsyncIterator[tuple[Event, bool]]:
    """Yields (event, is_snapshot) until the event that carries a terminal state."""
    status = await store.status(request_id, caller)
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
            events = await store.events_after(request_id, after, settings.page_size, total)
            for event in events:
                yield event, False
                after = event.sequence
                if event.state.terminal:
                    return
            if len(events) < settings.page_size:
                await wait_event(wake, settings.poll_interval)
