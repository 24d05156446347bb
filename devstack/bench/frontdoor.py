"""Sections on ingest's front door: 4 (Submit latency) and 6 (1,000 WatchStatus watchers)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import grpc

from devstack.bench import procstat
from devstack.bench.config import Config
from devstack.bench.corpus import Source
from devstack.bench.figures import Section
from devstack.bench.harness import (
    CHANNEL_OPTIONS,
    TERMINAL,
    BenchError,
    GatedImageServer,
    Harness,
    ParkedProcessor,
    Running,
    bench_cpu_seconds,
    products_csv,
)
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc

# -- 4: Submit ------------------------------------------------------------------------------


def submit_csv(rows: int, tag: str) -> bytes:
    """rows products of 3 URLs each; the URLs are never fetched."""
    urls = [
        f"https://cdn.example.com/catalog/{tag}/{n // 3}/image-{n % 3}.jpg" for n in range(3 * rows)
    ]
    return products_csv(urls)


async def _submits(
    target: str, pid: int, plan: list[tuple[int, bytes]]
) -> list[tuple[int, float, float]]:
    """(rows, seconds, ingest CPU seconds) per Submit, one after another."""
    out = []
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for rows, csv in plan:
            cpu = procstat.cpu_seconds(pid)
            started = time.perf_counter()
            await stub.Submit(ingest_pb2.SubmitRequest(csv=csv), timeout=120)
            out.append((rows, time.perf_counter() - started, procstat.cpu_seconds(pid) - cpu))
    return out


def submit_section(config: Config, h: Harness, section: Section) -> None:
    section.notes.append(
        "ingest in front of a parked processor (takes calls, never answers) with "
        "IMGPIPE_MAX_IN_FLIGHT=1: the dispatcher claims one image and rests, so nothing "
        "but Submit runs; latency = the client's Submit call (CSV upload, parse, COPY, commit)"
    )
    env = {
        "IMGPIPE_MAX_IN_FLIGHT": "1",
        "IMGPIPE_LEASE_SECONDS": "3600",
        "IMGPIPE_CALL_TIMEOUT": "3000",
        "IMGPIPE_GRACE_SECONDS": "1",
    }
    with ParkedProcessor() as parked:
        env["IMGPIPE_PROCESSOR_TARGET"] = parked.target
        with h.stack("submit", 1, env) as run:
            warm = [(100, submit_csv(100, f"warm{i}")) for i in range(3)]
            plan = [
                (rows, submit_csv(rows, f"r{i}-{rows}"))
                for i in range(config.submit_runs)
                for rows in config.submit_rows
            ]
            asyncio.run(_submits(run.target, run.ingest_pid, warm))
            results = asyncio.run(_submits(run.target, run.ingest_pid, plan))
    for key, rows in zip(("smaller", "larger"), config.submit_rows, strict=True):
        size = len(submit_csv(rows, "x")) / 1024 / 1024
        mine = [r for r in results if r[0] == rows]
        section.add(
            f"{key}.seconds",
            f"Submit, {rows:,} rows x 3 URLs ({size:.1f} MiB)",
            "s",
            [r[1] for r in mine],
            goal="< 1 s" if rows == 10_000 else "",
        )
        section.add(
            f"{key}.ingest_cpu_s",
            f"  ingest CPU per Submit of {rows:,} rows",
            "s",
            [r[2] for r in mine],
            positive=False,  # 10 ms clock ticks: a small Submit can round to 0
        )


# -- 6: watchers ----------------------------------------------------------------------------


@dataclass
class Watcher:
    snapshot: int = -1
    received: list[tuple[int, float]] = field(default_factory=list)  # (sequence, time.time())
    terminal: bool = False
    error: str = ""


async def _watch(
    stub: ingest_pb2_grpc.IngestServiceAsyncStub,
    request_id: str,
    w: Watcher,
    ready: asyncio.Queue[None],
) -> None:
    request = ingest_pb2.WatchStatusRequest(request_id=request_id)
    try:
        async for message in stub.WatchStatus(request, timeout=600):
            if w.snapshot < 0:
                w.snapshot = message.sequence
                ready.put_nowait(None)
            else:
                w.received.append((message.sequence, time.time()))
            w.terminal = message.state in TERMINAL
        if w.snapshot < 0:
            raise BenchError("the stream ended before its snapshot")
    except (grpc.aio.AioRpcError, BenchError) as exc:
        w.error = str(exc)
        if w.snapshot < 0:
            ready.put_nowait(None)


async def _watch_run(
    run: Running, gated: GatedImageServer, images: int, watchers: int, channels: int
) -> dict[str, float]:
    urls = [gated.url(f"/w/{i}.jpg") for i in range(images)]
    pid = run.ingest_pid
    opened = [
        grpc.aio.insecure_channel(run.target, options=CHANNEL_OPTIONS) for _ in range(channels)
    ]
    try:
        stubs = [ingest_pb2_grpc.IngestServiceStub(c) for c in opened]
        reply = await stubs[0].Submit(ingest_pb2.SubmitRequest(csv=products_csv(urls)))
        await asyncio.sleep(0.5)
        rss_before = procstat.rss_mib(pid)
        ready: asyncio.Queue[None] = asyncio.Queue()
        state = [Watcher() for _ in range(watchers)]
        tasks = [
            asyncio.create_task(_watch(stubs[i % channels], reply.request_id, w, ready))
            for i, w in enumerate(state)
        ]
        connect_started = time.perf_counter()
        for _ in range(watchers):
            await asyncio.wait_for(ready.get(), timeout=300)
        connect_seconds = time.perf_counter() - connect_started
        await asyncio.sleep(0.5)
        rss_connected = procstat.rss_mib(pid)
        all_ready = time.time()
        ingest_cpu, client_cpu = procstat.cpu_seconds(pid), bench_cpu_seconds()
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
        ingest_cpu = procstat.cpu_seconds(pid) - ingest_cpu
        client_cpu = bench_cpu_seconds() - client_cpu
    finally:
        for channel in opened:
            await channel.close(None)
    conn = await asyncpg.connect(run.dsn)
    try:
        rows = await conn.fetch(
            "SELECT sequence, extract(epoch FROM created_at)::float8 AS at FROM events "
            "WHERE request_id = $1",
            uuid.UUID(reply.request_id),
        )
    finally:
        await conn.close()
    created = {r["sequence"]: r["at"] for r in rows}
    last = max(created)
    complete = 0
    lags: list[float] = []
    for w in state:
        sequences = [s for s, _ in w.received]
        if not w.error and w.terminal and sequences == list(range(w.snapshot + 1, last + 1)):
            complete += 1
        lags += [t - created[s] for s, t in w.received if s in created and created[s] >= all_ready]
    if not lags:
        raise BenchError("no event was committed after every watcher had connected")
    lags.sort()
    delivered = sum(len(w.received) for w in state)
    return {
        "complete": complete / watchers,
        "incomplete": watchers - complete,
        "events": float(len(created)),
        "messages": float(delivered),
        "ingest_us_per_message": 1e6 * ingest_cpu / delivered,
        "client_us_per_message": 1e6 * client_cpu / delivered,
        "lag_p50_ms": 1000 * statistics.median(lags),
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        "lag_max_ms": 1000 * lags[-1],
        "rss_per_watcher_kib": 1024 * (rss_connected - rss_before) / watchers,
        "connect_seconds": connect_seconds,
    }


def watchers_section(
    config: Config, corpus: dict[str, list[Source]], run: Running, section: Section
) -> None:
    """On the matched stack (no call refused, so no extra events from refusals)."""
    n, channels = config.watchers, config.watcher_channels
    section.notes.append(
        f"{n} WatchStatus streams (grpc.aio, one process, {channels} channels) on one request "
        f"of {config.watch_images} tiny images whose sources are held back until every "
        "watcher has its snapshot; lag = receipt (client clock) - events.created_at, for "
        "events committed after all had connected; stack with matched in-flight limits"
    )
    body = corpus["tiny"][0].path.read_bytes()
    results: list[dict[str, float]] = []
    for _ in range(config.watch_runs):
        with GatedImageServer(body) as gated:
            results.append(asyncio.run(_watch_run(run, gated, config.watch_images, n, channels)))
    section.extra["runs"] = results

    def add(key: str, label: str, unit: str, goal: str = "", positive: bool = True) -> None:
        section.add(key, label, unit, [r[key] for r in results], goal=goal, positive=positive)

    add("complete", "watchers that got every event, in order (fraction)", "ratio", goal="= 1")
    add(
        "incomplete",
        "watchers that missed or repeated an event",
        "count",
        goal="= 0",
        positive=False,
    )
    add("messages", "messages received, all watchers", "msgs")
    add("ingest_us_per_message", "  ingest CPU per message sent (after the gate)", "µs")
    add("client_us_per_message", "  client CPU per message received (one process)", "µs")
    add("lag_p50_ms", "lag p50, commit -> receipt", "ms")
    add("lag_p99_ms", "lag p99", "ms")
    add(
        "rss_per_watcher_kib",
        "ingest RSS per watcher (VmRSS delta / watchers)",
        "KiB",
        positive=False,
    )
    add("connect_seconds", f"time to open {n} streams and get their snapshots", "s")
