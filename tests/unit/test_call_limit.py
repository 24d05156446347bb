import asyncio
from collections.abc import Callable

from imgpipe.ingest.call_limit import GROWTH, SPREAD, CallLimit


async def _hold(limit: CallLimit, started: list[int], n: int, release: asyncio.Event) -> None:
    async with limit.call(within=60) as free:
        assert free
        started.append(n)
        await release.wait()


async def _until(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run until condition holds (they need a few turns at most)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_refusals_lower_the_limit_and_calls_taken_raise_it_back_to_the_ceiling() -> None:
    limit = CallLimit(8)
    for _ in range(5):
        limit.refused()
    assert limit.limit == 3.0
    for _ in range(10):
        limit.refused()
    assert limit.limit == 1.0  # never below one call
    taken = 0
    while limit.limit < 2.0:
        limit.taken()
        taken += 1
    # One more call for every limit / GROWTH calls taken (the limit being 1, then 2).
    assert 1 / GROWTH <= taken <= 2 / GROWTH
    for _ in range(10_000):
        limit.taken()
    assert limit.limit == 8.0  # never above the setting


async def test_callers_beyond_the_limit_wait_their_turn_in_order() -> None:
    limit = CallLimit(2)
    started: list[int] = []
    release = [asyncio.Event() for _ in range(5)]
    tasks = [asyncio.create_task(_hold(limit, started, n, release[n])) for n in range(5)]
    await _until(lambda: len(started) == 2)
    assert started == [0, 1] and limit.calling == 2
    limit.refused()  # the processors are full at one call
    release[0].set()
    await _until(tasks[0].done)
    assert started == [0, 1] and limit.calling == 1  # no room yet: one call at a time
    release[1].set()
    await _until(lambda: len(started) == 3)
    assert started == [0, 1, 2]
    for _ in range(int(2 / GROWTH) + 1):
        limit.taken()  # room for two again: the next waiter goes at once
    await _until(lambda: len(started) == 4)
    assert started == [0, 1, 2, 3] and limit.calling == 2
    for event in release:
        event.set()
    await asyncio.gather(*tasks)
    assert started == [0, 1, 2, 3, 4] and limit.calling == 0


async def test_a_waiter_cancelled_gives_its_turn_to_the_next() -> None:
    limit = CallLimit(1)
    started: list[int] = []
    release = [asyncio.Event() for _ in range(3)]
    first = asyncio.create_task(_hold(limit, started, 0, release[0]))
    await _until(lambda: started == [0])
    waiting = [asyncio.create_task(_hold(limit, started, n, release[n])) for n in (1, 2)]
    await _until(lambda: len(limit._waiting) == 2)
    waiting[0].cancel()
    release[0].set()
    await _until(lambda: started == [0, 2])
    assert waiting[0].cancelled() and limit.calling == 1
    release[2].set()
    await asyncio.gather(first, waiting[1])
    assert limit.calling == 0


async def test_a_caller_gives_up_when_no_call_is_free_within_its_time() -> None:
    limit = CallLimit(1)
    started: list[int] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(limit, started, 0, release))
    await _until(lambda: started == [0])
    async with limit.call(within=0.01) as free:
        assert not free
        assert limit.calling == 1  # the holder's only
    release.set()
    await holder
    async with limit.call(within=0.01) as free:
        assert free and limit.calling == 1
    assert limit.calling == 0


async def test_room_is_handed_to_waiters_a_group_at_a_time() -> None:
    limit = CallLimit(12, batch=3)
    started: list[int] = []
    release = [asyncio.Event() for _ in range(17)]
    tasks = [asyncio.create_task(_hold(limit, started, n, release[n])) for n in range(17)]
    await _until(lambda: len(started) == 12)
    release[0].set()
    release[1].set()
    await _until(lambda: tasks[0].done() and tasks[1].done())
    assert len(started) == 12 and limit.calling == 10  # two free: held for a third
    release[2].set()
    await _until(lambda: len(started) == 15)
    assert started[12:] == [12, 13, 14]  # three at once
    release[3].set()
    release[4].set()
    # Two wait: two free calls are enough for them.
    await _until(lambda: len(started) == 17)
    assert started == list(range(17))
    for event in release:
        event.set()
    await asyncio.gather(*tasks)


def test_a_group_is_at_most_a_spread_th_of_the_limit() -> None:
    assert CallLimit(32, batch=8).group == 8
    spread = CallLimit(8, batch=8)
    assert spread.group == 8 // SPREAD < 8  # the images in flight go out in SPREAD calls
    for _ in range(7):
        spread.refused()
    assert spread.group == 1
    assert CallLimit(32, batch=1).group == 1
