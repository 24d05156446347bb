"""How many images one ingest replica has in processor calls at once: at most
IMGPIPE_MAX_IN_FLIGHT, and fewer while the processors answer RESOURCE_EXHAUSTED (full), so
that a fleet smaller than the setting is not asked again and again.

The limit adapts as TCP's congestion window does: each refused image takes one off it,
and each image taken adds GROWTH / limit, so that it grows by one every limit / GROWTH
images. It settles near what the processors take together (about one image in
limit / GROWTH is refused, as it probes for more), and follows them when they are scaled
up or down.

Calls carry images (ProcessorCalls gathers the images handed over at once into one call),
and the limit counts images. So that freed room makes calls of several images, not one
image each, waiters are handed free room a group at a time: while more than one waits,
room freed by one finished image is held until a group's worth is free (or as many as
wait). A group is `batch` images, but at most a SPREAD-th of the limit, so that the
images in flight go out in SPREAD calls or more, which round_robin spreads over the
processors."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

GROWTH = 0.25
SPREAD = 2


class CallLimit:
    def __init__(self, ceiling: int, batch: int = 1) -> None:
        self.ceiling = ceiling
        self.batch = batch
        self.limit = float(ceiling)
        self.calling = 0
        # Images waiting for room, first come first served.
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def call(self, within: float) -> AsyncIterator[bool]:
        """Holds room for one image for the block (True), waiting for it first if there is
        none; False, holding none, if none was free within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._acquire()
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            self.calling -= 1
            self._hand_over()

    @property
    def group(self) -> int:
        """Images handed over at once, and so carried by one call, at most."""
        return max(1, min(self.batch, int(self.limit) // SPREAD))

    def refused(self) -> None:
        """An image was refused because the processors were full."""
        self.limit = max(1.0, self.limit - 1.0)

    def taken(self) -> None:
        """An image was taken (whatever its outcome)."""
        self.limit = min(float(self.ceiling), self.limit + GROWTH / self.limit)
        self._hand_over()

    async def _acquire(self) -> None:
        if not self._waiting and self.calling < int(self.limit):
            self.calling += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Handed room just as it was cancelled: pass it on.
                self.calling -= 1
                self._hand_over()
            else:
                with contextlib.suppress(ValueError):  # already passed over
                    self._waiting.remove(turn)
            raise

    def _hand_over(self) -> None:
        free = int(self.limit) - self.calling
        if free < min(self.group, len(self._waiting)):
            return
        while self._waiting and self.calling < int(self.limit):
            turn = self._waiting.popleft()
            if not turn.done():
                self.calling += 1
                turn.set_result(None)
