"""The codec worker pool with real worker processes: a worker killed mid-image (kill -9),
a call cancelled mid-decode, a decode over its CPU budget, admission of concurrent
decodes against the memory budget, and large decodes kept out of small ones' way."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import random
import signal
from collections.abc import AsyncIterator, Callable

import pytest
from PIL import Image

from devstack.hostile_payloads import scan_bomb
from devstack.sample_images import encode, sample
from imgpipe.processor.codec_pool import TRIM_AFTER_BYTES, CodecPool, CodecWorker
from imgpipe.processor.compress import check_header
from imgpipe.processor.errors import NotAnImage, OverCpuBudget
from imgpipe.processor.settings import DecodeSettings
from support.eventually import eventually

LIMITS = DecodeSettings(max_pixels=100_000_000)
WAIT = 60.0  # seconds a condition may take on a loaded machine before the test fails


def noisy_png(width: int, height: int) -> bytes:
    """A PNG that takes a while to decode and encode (random pixels do not compress)."""
    return encode(
        Image.frombytes("RGB", (width, height), random.randbytes(width * height * 3)), "PNG"
    )


SLOW = noisy_png(3000, 2000)


@pytest.fixture
async def pool() -> AsyncIterator[CodecPool]:
    codec = CodecPool(1, LIMITS)
    try:
        yield codec
    finally:
        await codec.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls often: a worker's decoding state can be short."""

    async def check() -> bool:
        return condition()

    await eventually(check, what=what, within=WAIT, every=0.005)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not); it may be reaped while we look."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def decoding(worker: CodecWorker) -> int:
    """Waits until worker has been admitted to decode its image; its pid."""
    await until(lambda: worker.decoding, "the worker to start decoding")
    return worker.pid


async def test_a_worker_killed_mid_image_is_replaced_and_the_image_retried(
    pool: CodecPool,
) -> None:
    worker = pool.workers[0]
    call = asyncio.create_task(pool.compress(SLOW, 50))
    killed = await decoding(worker)
    os.kill(killed, signal.SIGKILL)

    result = await call
    assert (result.width, result.height) == (3000, 2000)
    with Image.open(io.BytesIO(result.jpeg)) as image:
        image.load()
    assert worker.pid != killed
    assert not alive(killed)
    assert (await pool.compress(sample(64, 48, "JPEG"), 50)).width == 64


async def test_a_cancelled_call_kills_its_decode_and_frees_the_worker(pool: CodecPool) -> None:
    worker = pool.workers[0]
    call = asyncio.create_task(pool.compress(SLOW, 50))
    busy = await decoding(worker)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await until(lambda: not alive(busy), "the cancelled decode's worker to be gone")
    # The next image gets a fresh worker at once, not after the cancelled decode.
    assert (await pool.compress(sample(64, 48, "PNG"), 50)).width == 64
    assert worker.pid != busy
    assert pool.budget.total == LIMITS.memory_bytes


async def test_a_decode_over_its_cpu_budget_fails_permanently() -> None:
    limits = DecodeSettings(LIMITS.max_pixels, max_jpeg_scans=1_000_000, cpu_seconds=1)
    codec = CodecPool(1, limits)
    try:
        with pytest.raises(OverCpuBudget, match="the codec CPU budget of 1 s"):
            await codec.compress(scan_bomb(8000, 8000, 20_000), 50)
        assert (await codec.compress(sample(64, 48, "JPEG"), 50)).width == 64
    finally:
        await codec.close()


async def test_errors_come_back_from_the_worker_as_they_were_raised(pool: CodecPool) -> None:
    with pytest.raises(NotAnImage, match="an HTML page"):
        await pool.compress(b"<!doctype html><html></html>", 50)
    assert (await pool.compress(sample(64, 48, "GIF"), 50)).width == 64


@pytest.mark.parametrize("known", [False, True], ids=["asked-by-worker", "estimated-before"])
async def test_concurrent_decodes_are_admitted_within_the_memory_budget(known: bool) -> None:
    """Each 2000 x 1500 JPEG is estimated at 24 MB; a 40 MB budget admits one at a time,
    whether the worker asks for its decode's memory or the caller estimated it before."""
    limits = DecodeSettings(LIMITS.max_pixels, memory_bytes=40 * 1024 * 1024)
    codec = CodecPool(3, limits)
    try:
        images = [sample(2000, 1500, "JPEG", seed) for seed in range(6)]
        results = await asyncio.gather(
            *(
                codec.compress(image, 50, check_header(image, limits) if known else None)
                for image in images
            )
        )
        assert [r.width for r in results] == [2000] * 6
        assert codec.budget.peak == 2000 * 1500 * 8
    finally:
        await codec.close()


async def test_a_small_image_does_not_wait_behind_large_decodes() -> None:
    """Two decodes as large as the budget, each for minutes: the second waits for the first
    without taking the last worker, so a small image gets it at once."""
    limits = DecodeSettings(LIMITS.max_pixels, max_jpeg_scans=1_000_000, cpu_seconds=600)
    codec = CodecPool(2, limits)
    bomb = scan_bomb(8000, 8000, 200_000)
    large = [
        asyncio.create_task(codec.compress(bomb, 50, estimate=limits.memory_bytes))
        for _ in range(2)
    ]
    try:
        await until(lambda: any(w.decoding for w in codec.workers), "a large decode")
        small = await asyncio.wait_for(codec.compress(sample(64, 48, "JPEG"), 50), WAIT / 2)
        assert small.width == 64
        assert not any(task.done() for task in large)
    finally:
        for task in large:
            task.cancel()
        await asyncio.gather(*large, return_exceptions=True)
        await codec.close()


async def test_a_large_decode_holding_the_whole_budget_leaves_room_for_small_ones() -> None:
    """A scan bomb decoding for minutes, admitted for all of the codec memory budget: a
    small image is admitted beside it at once, from the reserve large decodes never take."""
    bomb = scan_bomb(8000, 8000, 200_000)
    unbounded = DecodeSettings(LIMITS.max_pixels, max_jpeg_scans=1_000_000, cpu_seconds=600)
    estimate = check_header(bomb, unbounded)
    codec = CodecPool(2, dataclasses.replace(unbounded, memory_bytes=estimate))
    large = asyncio.create_task(codec.compress(bomb, 50, estimate))
    try:
        await until(lambda: any(w.decoding for w in codec.workers), "the large decode")
        small = await asyncio.wait_for(codec.compress(sample(64, 48, "JPEG"), 50), WAIT / 2)
        assert small.width == 64
        assert not large.done()
    finally:
        large.cancel()
        await asyncio.gather(large, return_exceptions=True)
        await codec.close()


def page_faults(pid: int) -> int:
    """Minor page faults of pid so far (field 10 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[7])


def resident(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_worker_keeps_the_memory_of_a_12_mp_requantise_for_the_next_one(
    pool: CodecPool,
) -> None:
    # Estimated at 96 MB (8 bytes a pixel); the requantiser's buffers are about 40 MB.
    jpeg = encode(Image.new("RGB", (4000, 3000), (120, 30, 200)), "JPEG")
    worker = pool.workers[0]
    await pool.compress(jpeg, 50)
    before = page_faults(worker.pid)
    await pool.compress(jpeg, 50)
    # Trimmed, the next image faults its ~40 MB in again: about 9,000 pages.
    assert page_faults(worker.pid) - before < 1_000


async def test_a_worker_gives_back_the_memory_of_a_larger_decode(pool: CodecPool) -> None:
    worker = pool.workers[0]
    await pool.compress(sample(64, 48, "PNG"), 50)
    started = resident(worker.pid)
    # A 6000 x 4000 PNG decodes to 72 MB of RGB before it is encoded.
    result = await pool.compress(encode(Image.new("RGB", (6000, 4000), (9, 99, 199)), "PNG"), 50)
    assert result.width == 6000
    await until(
        lambda: resident(worker.pid) < started + TRIM_AFTER_BYTES,
        "the worker to be resident for less than TRIM_AFTER_BYTES more than before",
    )
