"""What the stack sections share: the private PostgreSQL (a fresh database per stack), the
image servers, imgpipe stacks with per-process CPU accounting, and gRPC clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

from devstack.bench import procstat
from devstack.bench.corpus import Source
from devstack.image_server import ImageServer, QuietServer, SourceHandler
from devstack.postgres import PostgresServer, PrivateCluster
from devstack.stack import INGEST, Stack
from imgpipe.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    requests_pb2,
)

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
HEADER = "S. No.,Product Name,Input Image Urls\n"
TERMINAL = {
    requests_pb2.REQUEST_STATE_COMPLETED,
    requests_pb2.REQUEST_STATE_PARTIALLY_COMPLETED,
    requests_pb2.REQUEST_STATE_FAILED,
    requests_pb2.REQUEST_STATE_CANCELLED,
}


class BenchError(RuntimeError):
    """A measurement could not be taken (a request did not complete, a stack failed)."""


def products_csv(urls: list[str], per_row: int = 3) -> bytes:
    """One product per `per_row` URLs, in a quoted cell."""
    lines = [HEADER]
    for n, start in enumerate(range(0, len(urls), per_row), start=1):
        cell = ",".join(urls[start : start + per_row])
        lines.append(f'{n},Product {n},"{cell}"\n')
    return "".join(lines).encode()


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


# -- servers the bench itself runs ----------------------------------------------------------


class GatedImageServer:
    """Serves one body at every path, but only once the gate is open: requests wait. With an
    interval, an origin that answers one request per interval once the gate is open."""

    def __init__(self, body: bytes, interval: float = 0.0) -> None:
        self.gate = threading.Event()
        gate = self.gate
        turns = threading.Lock()
        next_turn = [0.0]

        def wait_turn() -> None:
            with turns:
                now = time.monotonic()
                turn = max(now, next_turn[0])
                next_turn[0] = turn + interval
            time.sleep(turn - now)

        class Handler(SourceHandler):
            def do_GET(self) -> None:
                gate.wait(timeout=600)
                if interval:
                    wait_turn()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> GatedImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Parked(processor_pb2_grpc.ProcessorServiceServicer):
    def __init__(self, release: threading.Event) -> None:
        self._release = release

    def ProcessImage(
        self, request: processor_pb2.ProcessImageRequest, context: grpc.ServicerContext
    ) -> processor_pb2.ProcessImageResponse:
        self._release.wait()
        context.abort(grpc.StatusCode.UNAVAILABLE, "parked processor released")
        raise AssertionError("unreachable")

    def ProcessImages(
        self, request: processor_pb2.ProcessImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[processor_pb2.ProcessImagesResponse]:
        self._release.wait()
        context.abort(grpc.StatusCode.UNAVAILABLE, "parked processor released")
        raise AssertionError("unreachable")


class ParkedProcessor:
    """A ProcessorService that takes calls and never answers them (until closed): behind
    it, an ingest's dispatcher claims what fits in its in-flight limit and then rests."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        processor_pb2_grpc.add_ProcessorServiceServicer_to_server(
            _Parked(self._release), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ParkedProcessor:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.stop(0).wait(5)


# -- stacks ---------------------------------------------------------------------------------


def bench_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Batch:
    request_id: str
    images: int
    seconds: float  # Submit sent -> terminal message received
    submit_seconds: float
    messages: int
    state: str  # the RequestState name, without its prefix
    succeeded: int
    cpu: dict[str, float]  # seconds per component over the batch
    # PostgreSQL over the batch (whole cluster: it is the bench's own): write transactions
    # (transaction ids taken) and WAL bytes.
    write_xacts: int = 0
    wal_bytes: int = 0

    @property
    def per_second(self) -> float:
        return self.images / self.seconds

    def cpu_ms_per_image(self, component: str) -> float:
        return 1000 * self.cpu[component] / self.images


class Running:
    """A started stack with its database, object directory and CPU accounting."""

    def __init__(self, stack: Stack, dsn: str, postmaster: int | None) -> None:
        self.stack = stack
        self.dsn = dsn
        self._postmaster = postmaster

    @property
    def target(self) -> str:
        return self.stack.ingest_target

    @property
    def processor_pids(self) -> list[int]:
        return [self.stack.pid(n) for n in self.stack.names if not n.startswith(INGEST)]

    @property
    def ingest_pid(self) -> int:
        return self.stack.pid(INGEST)

    @property
    def ingest_names(self) -> list[str]:
        return [n for n in self.stack.names if n.startswith(INGEST)]

    @property
    def ingest_pids(self) -> list[int]:
        return [self.stack.pid(n) for n in self.ingest_names]

    @property
    def ingest_targets(self) -> list[str]:
        return [self.stack.services[n].grpc_target for n in self.ingest_names]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: ingest, processors (together, codec workers included),
        PostgreSQL, and this bench process (image server threads, gRPC clients)."""
        return {
            "ingest": sum(procstat.cpu_seconds(p) for p in self.ingest_pids),
            "processors": sum(procstat.tree_cpu_seconds(p) for p in self.processor_pids),
            "postgres": procstat.tree_cpu_seconds(self._postmaster) if self._postmaster else 0.0,
            "bench": bench_cpu_seconds(),
        }

    def batch(self, urls: list[str], *, watch: bool = True) -> Batch:
        """Submits one request of these URLs and waits for its terminal state: through
        WatchStatus (watch=True), or by reading requests.state from PostgreSQL every 20 ms
        (watch=False: no cost to ingest beyond the work itself)."""
        csv = products_csv(urls)
        xid, wal = asyncio.run(_database_position(self.dsn))
        before = self.cpu()
        batch = asyncio.run(_submit_and_wait(self.target, self.dsn, csv, len(urls), watch))
        after = self.cpu()
        batch.cpu = {k: after[k] - before[k] for k in after}
        xid_after, wal_after = asyncio.run(_database_position(self.dsn))
        batch.write_xacts = xid_after - xid - 1  # the first reading took one id itself
        batch.wal_bytes = wal_after - wal
        if batch.state != "COMPLETED" or batch.succeeded != len(urls):
            raise BenchError(
                f"request {batch.request_id} ended {batch.state} "
                f"with {batch.succeeded}/{len(urls)} images\n{self.stack.tails(10)}"
            )
        return batch


async def _database_position(dsn: str) -> tuple[int, int]:
    """The next transaction id (taking one) and the WAL insert position, in bytes."""
    conn = await asyncpg.connect(dsn)
    try:
        xid = await conn.fetchval("SELECT txid_current()")
        wal = await conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
        )
    finally:
        await conn.close()
    return int(xid), int(wal)


async def _submit_and_wait(target: str, dsn: str, csv: bytes, images: int, watch: bool) -> Batch:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        started = time.perf_counter()
        reply = await stub.Submit(ingest_pb2.SubmitRequest(csv=csv), timeout=120)
        submitted = time.perf_counter()
        messages, state, succeeded = 0, "UNSPECIFIED", 0
        if watch:
            request = ingest_pb2.WatchStatusRequest(request_id=reply.request_id)
            async for message in stub.WatchStatus(request, timeout=1800):
                messages += 1
                state = requests_pb2.RequestState.Name(message.state).removeprefix("REQUEST_STATE_")
                succeeded = message.progress.succeeded_images
        else:
            conn = await asyncpg.connect(dsn)
            try:
                while True:
                    row = await conn.fetchrow(
                        "SELECT state, succeeded_count FROM requests WHERE id = $1",
                        uuid.UUID(reply.request_id),
                    )
                    if row is not None and row["state"] not in {"QUEUED", "PROCESSING"}:
                        state = row["state"]
                        succeeded = row["succeeded_count"]
                        break
                    await asyncio.sleep(0.02)
            finally:
                await conn.close()
        finished = time.perf_counter()
    return Batch(
        reply.request_id,
        images,
        finished - started,
        submitted - started,
        messages,
        state,
        succeeded,
        {},
    )


class Harness:
    def __init__(
        self, workdir: Path, database: PostgresServer, images: ImageServer, grace: float = 10.0
    ) -> None:
        self.workdir = workdir
        self.database = database
        self.images = images
        self.grace = grace
        self._count = 0

    @property
    def postmaster(self) -> int | None:
        if isinstance(self.database, PrivateCluster):
            return self.database.postmaster_pid()
        return None

    def urls(self, sources: list[Source], count: int, tag: str) -> list[str]:
        """count URLs over the sources, round-robin; each URL distinct (a query string)."""
        return [
            self.images.url(f"{sources[i % len(sources)].url_path}?{tag}-{i}") for i in range(count)
        ]

    @contextlib.contextmanager
    def stack(
        self,
        name: str,
        processors: int,
        extra_env: Mapping[str, str] | None = None,
        ingests: int = 1,
    ) -> Iterator[Running]:
        """A stack on a fresh database and a fresh object directory (file:// storage, in
        memory where the machine has a tmpfs: a store's disk is not the stack's CPU, and an
        ext4 create, write and rename took about 0.2 ms of kernel CPU per object)."""
        self._count += 1
        db_name = f"bench_{self._count}_{name}"
        asyncio.run(_admin(self.database.dsn, f"CREATE DATABASE {db_name}"))
        dsn = with_database(self.database.dsn, db_name)
        objects = Path(tempfile.mkdtemp(prefix=f"imgpipe-bench-{name}-", dir=_objects_dir()))
        stack = Stack(
            dsn,
            {"IMGPIPE_STORAGE_URL": objects.as_uri()},
            processors=processors,
            ingests=ingests,
            log_dir=self.workdir / "logs" / name,
            extra_env={**UNCAPPED_HOST_ENV, **(extra_env or {})},
        )
        try:
            stack.start()
            yield Running(stack, dsn, self.postmaster)
        finally:
            stack.stop(self.grace)
            drop = f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
            asyncio.run(_admin(self.database.dsn, drop))
            shutil.rmtree(objects, ignore_errors=True)


# Every source of the bench is on one loopback server: the per-host cap on images in flight
# (16 by default, fleet-wide) would be what every stack measures, so it is off.
UNCAPPED_HOST_ENV = {"IMGPIPE_HOST_MAX_IN_FLIGHT": "0"}
SHARED_MEMORY = Path("/dev/shm")


def _objects_dir() -> Path | None:
    """tmpfs when the machine has one; else the system's temporary directory."""
    return SHARED_MEMORY if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK) else None
