"""Sections on ingest's front door: 4 (Submit latency) and 6 (1,000 WatchStatus watchers)."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import uvloop

from devstack.bench import grpc_floor, procstat
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
        "IMGPIPE_MAX_IN_FLIGHT=1: the dispatcher claims two images (one call, one held) and "
        "rests, so nothing but Submit runs; latency = the client's Submit call (CSV upload, "
        "parse, COPY, commit)"
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
# The watchers run in client processes of their own (spawned), so that receiving is not
# the bottleneck: each opens its share of the streams over its own channels, says when
# every one has its snapshot, waits for the word, and sends back what each stream got.


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
        if isinstance(exc, grpc.aio.AioRpcError):
            w.error = f"{exc.code().name}: {exc.details()}"
        else:
            w.error = str(exc)
        if w.snapshot < 0:
            ready.put_nowait(None)


async def _client(target: str, request_id: str, count: int, channels: int, pipe: Any) -> None:
    loop = asyncio.get_running_loop()
    opened = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    try:
        stubs = [ingest_pb2_grpc.IngestServiceStub(c) for c in opened]
        ready: asyncio.Queue[None] = asyncio.Queue()
        state = [Watcher() for _ in range(count)]
        tasks = [
            asyncio.create_task(_watch(stubs[i % channels], request_id, w, ready))
            for i, w in enumerate(state)
        ]
        for _ in range(count):
            await asyncio.wait_for(ready.get(), timeout=300)
        pipe.send("ready")
        await loop.run_in_executor(None, pipe.recv)  # the gate is open
        cpu = bench_cpu_seconds()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
        cpu = bench_cpu_seconds() - cpu
    finally:
        for channel in opened:
            await channel.close(None)
    pipe.send((cpu, [(w.snapshot, w.received, w.terminal, w.error) for w in state]))


def watch_client(target: str, request_id: str, count: int, channels: int, pipe: Any) -> None:
    """A client process's body (spawned): count streams over `channels` channels, on
    uvloop's event loop (it receives with less CPU than asyncio's own)."""
    uvloop.run(_client(target, request_id, count, channels, pipe))


@dataclass(frozen=True)
class WatchPlan:
    watchers: int
    processes: int
    channels_per_process: int
    images: int
    # Seconds between the sources' answers once the gate opens; 0: all at once.
    interval: float = 0.0


def _start_clients(run: Running, request_id: str, plan: WatchPlan) -> list[tuple[Any, Any]]:
    """The client processes, client n on ingest replica n mod replicas, and their pipes."""
    spawn = multiprocessing.get_context("spawn")
    targets = run.ingest_targets
    shares = [plan.watchers // plan.processes] * plan.processes
    shares[0] += plan.watchers - sum(shares)
    clients = []
    for n, share in enumerate(shares):
        mine, theirs = spawn.Pipe()
        client = spawn.Process(
            target=watch_client,
            args=(targets[n % len(targets)], request_id, share, plan.channels_per_process, theirs),
            daemon=True,
        )
        client.start()
        clients.append((client, mine))
    return clients


def _watch_run(run: Running, gated: GatedImageServer, plan: WatchPlan) -> dict[str, float]:
    urls = [gated.url(f"/w/{i}.jpg") for i in range(plan.images)]
    pids = run.ingest_pids
    with grpc.insecure_channel(run.target, options=CHANNEL_OPTIONS) as channel:
        submit = ingest_pb2_grpc.IngestServiceStub(channel).Submit
        reply = submit(ingest_pb2.SubmitRequest(csv=products_csv(urls)), timeout=60)
    time.sleep(0.5)  # the dispatcher has claimed what it can; the sources hold it there
    rss_before = sum(procstat.rss_mib(pid) for pid in pids)
    clients = _start_clients(run, reply.request_id, plan)
    try:
        connect_started = time.perf_counter()
        for _, pipe in clients:
            if not pipe.poll(300) or pipe.recv() != "ready":
                raise BenchError("a watcher client did not get its snapshots")
        connect_seconds = time.perf_counter() - connect_started
        time.sleep(0.5)
        rss_connected = sum(procstat.rss_mib(pid) for pid in pids)
        all_ready = time.time()
        ingest_cpu = sum(procstat.cpu_seconds(pid) for pid in pids)
        gated.gate.set()
        for _, pipe in clients:
            pipe.send("go")
        results = []
        for _, pipe in clients:
            if not pipe.poll(600):
                raise BenchError("a watcher client did not finish")
            results.append(pipe.recv())
        ingest_cpu = sum(procstat.cpu_seconds(pid) for pid in pids) - ingest_cpu
    finally:
        for client, _ in clients:
            client.join(30)
            if client.is_alive():
                client.kill()
    figures = _received(results, asyncio.run(_event_times(run.dsn, reply.request_id)), all_ready)
    return figures | {
        "complete": figures["complete"] / plan.watchers,
        "ingest_us_per_message": 1e6 * ingest_cpu / figures["messages"],
        "rss_per_watcher_kib": 1024 * (rss_connected - rss_before) / plan.watchers,
        "connect_seconds": connect_seconds,
    }


def _received(results: list[Any], created: dict[int, float], all_ready: float) -> dict[str, float]:
    """What the clients got: streams complete and in order, messages, lags, client CPU."""
    last = max(created)
    complete = 0
    lags: list[float] = []
    errors: Counter[str] = Counter()
    for _, streams in results:
        for snap, received, terminal, error in streams:
            sequences = [s for s, _ in received]
            if not error and terminal and sequences == list(range(snap + 1, last + 1)):
                complete += 1
            elif error:
                errors[error.splitlines()[0][:120]] += 1
            lags += [t - created[s] for s, t in received if created.get(s, 0) >= all_ready]
    if errors:
        failed = dict(errors.most_common(5))
        print(f"[bench] watch streams that failed, by error: {failed}", file=sys.stderr)
    if not lags:
        raise BenchError("no event was committed after every watcher had connected")
    lags.sort()
    streams = sum(len(streams) for _, streams in results)
    delivered = sum(len(received) for _, streams in results for _, received, _, _ in streams)
    return {
        "complete": float(complete),
        "incomplete": float(streams - complete),
        "events": float(len(created)),
        "messages": float(delivered),
        "client_us_per_message": 1e6 * sum(cpu for cpu, _ in results) / delivered,
        "lag_p50_ms": 1000 * statistics.median(lags),
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        "lag_max_ms": 1000 * lags[-1],
    }


async def _event_times(dsn: str, request_id: str) -> dict[int, float]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT sequence, extract(epoch FROM created_at)::float8 AS at FROM events "
            "WHERE request_id = $1",
            uuid.UUID(request_id),
        )
    finally:
        await conn.close()
    return {r["sequence"]: r["at"] for r in rows}


def watchers_section(
    config: Config,
    corpus: dict[str, list[Source]],
    run: Running,
    section: Section,
    prefix: str = "",
    per_second: float = 0.0,
) -> None:
    """On the matched stack (no call refused, so no extra events from refusals); prefix
    names a run on a stack of several ingest replicas ("replicas") or a run whose images
    finish per_second ("paced") instead of all at once."""
    replicas = len(run.ingest_targets)
    watchers = config.watchers * (10 if replicas > 1 else 1)
    plan = WatchPlan(
        watchers,
        config.watcher_processes,
        config.watcher_channels,
        config.watch_images,
        1 / per_second if per_second else 0.0,
    )
    released = (
        f"answered at {per_second:g} a second ({per_second * watchers:,.0f} messages a second "
        "to send)"
        if per_second
        else "answered all at once"
    )
    section.notes.append(
        f"{prefix or 'one ingest'}: {watchers} WatchStatus streams from {plan.processes} "
        f"client processes ({plan.channels_per_process} channels each) over {replicas} "
        f"ingest replica(s), on one request of {plan.images} tiny images whose sources are "
        f"held back until every watcher has its snapshot, then {released}; lag = receipt "
        "(client clock) - events.created_at, for events committed after all had connected"
    )
    body = corpus["tiny"][0].path.read_bytes()
    results: list[dict[str, float]] = []
    for _ in range(config.watch_runs):
        with GatedImageServer(body, plan.interval) as gated:
            results.append(_watch_run(run, gated, plan))
    section.extra[f"{prefix or 'one'}_runs"] = results
    key = f"{prefix}." if prefix else ""
    label = {
        "": "",
        "replicas": f"{watchers:,} over {replicas} replicas: ",
        "paced": f"{per_second:g} images/s: ",
    }[prefix]

    def add(name: str, title: str, unit: str, goal: str = "", positive: bool = True) -> None:
        values = [r[name] for r in results]
        section.add(f"{key}{name}", f"{label}{title}", unit, values, goal=goal, positive=positive)

    add("complete", "watchers that got every event, in order (fraction)", "ratio", goal="= 1")
    add(
        "incomplete",
        "watchers that missed or repeated an event",
        "count",
        goal="= 0",
        positive=False,
    )
    add("messages", "messages received, all watchers", "msgs")
    add("ingest_us_per_message", "  ingest CPU per message sent (after the gate)", "µs", "<= 5")
    if not prefix:
        floor = [
            grpc_floor.server_us_per_message(plan.watchers, plan.images)
            for _ in range(config.watch_runs)
        ]
        section.add(
            "grpc_floor_us_per_message",
            "  the floor: bare grpc.aio server, same bytes to as many streams",
            "µs",
            floor,
        )
    add("client_us_per_message", "  client CPU per message received", "µs")
    add("lag_p50_ms", "lag p50, commit -> receipt", "ms")
    add("lag_p99_ms", "lag p99", "ms", goal="" if prefix == "replicas" else "< 250")
    add(
        "rss_per_watcher_kib",
        "ingest RSS per watcher (VmRSS delta / watchers)",
        "KiB",
        positive=False,
    )
    add("connect_seconds", f"time to open {watchers:,} streams and get their snapshots", "s")
