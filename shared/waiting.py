"""Waiting on asyncio.Events with a timeout, without losing a cancellation.

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


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> bool:
    """True if any of events is set within the given seconds, False otherwise."""
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return any(event.is_set() for event in events)
