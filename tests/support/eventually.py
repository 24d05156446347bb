"""Waiting on a condition: the one way tests wait for something another task, thread or
process makes happen. A probe is called until what it returns satisfies the condition;
that value is returned. Past `within` seconds the test fails, naming what it waited for and
the last value seen. The pause between probes only paces the polling: the probe decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 30.0
INTERVAL = 0.05


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool] = bool,
    *,
    what: str,
    within: float = TIMEOUT,
    ignoring: tuple[type[BaseException], ...] = (),
    every: float = INTERVAL,
) -> T:
    """The first result of `await probe()` for which `until` holds, probing every `every`
    seconds. Exceptions of the `ignoring` types count as a miss (a server restarting)."""
    end = time.monotonic() + within
    last: object = None
    while True:
        try:
            value = await probe()
        except ignoring as exc:
            last = exc
        else:
            if until(value):
                return value
            last = value
        if time.monotonic() > end:
            raise AssertionError(f"not within {within} s: {what} (last: {last!r})")
        await asyncio.sleep(every)


def eventually_blocking(
    probe: Callable[[], T],
    until: Callable[[T], bool] = bool,
    *,
    what: str,
    within: float = TIMEOUT,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for tests without an event loop (the e2e tests' blocking clients)."""

    async def in_a_thread() -> T:
        return await asyncio.to_thread(probe)

    return asyncio.run(eventually(in_a_thread, until, what=what, within=within, ignoring=ignoring))
