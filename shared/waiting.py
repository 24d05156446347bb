"""Waiting on an asyncio.Event with a timeout, without losing a cancellation.

Python 3.11's asyncio.wait_for can swallow a cancel that arrives as the awaited thing
completes, leaving a task that never stops; asyncio.timeout does not.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True if event is set within the given seconds, False otherwise."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
