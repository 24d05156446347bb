"""Section 9: polite fetching and work not done twice.

- throttle: one request over three source hosts (127.0.0.1-3, loopback addresses all),
  one of which allows a fixed number of requests a second and answers 429 with Retry-After
  past it. Figures: images a second from each host; the free ones should go at full speed,
  the throttled one at about the pace it allows, and no image should fail or spend an
  attempt on a 429.
- resubmit: the same CSV submitted twice; the second run finds every source unchanged (the
  same bytes) and copies the earlier outputs instead of encoding. Figures: CPU and wall time
  of the second run against the first's.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import asyncpg

from devstack.bench.config import Config
from devstack.bench.corpus import Source
from devstack.bench.figures import Section
from devstack.bench.harness import Harness
from devstack.bench.pipeline import IMGPIPE
from devstack.image_server import SourceHandler

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")  # the last one throttles


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up are not worth a traceback."""


@contextmanager
def source_server(host: str, body: bytes, per_second: float) -> Iterator[str]:
    """Serves body at every path; past per_second requests a second (0: no limit), 429 with
    `Retry-After: 1`. Yields the base URL."""
    lock = threading.Lock()
    window = {"start": time.monotonic(), "count": 0}

    def allowed() -> bool:
        if per_second <= 0:
            return True
        with lock:
            now = time.monotonic()
            if now - window["start"] >= 1.0:
                window["start"], window["count"] = now, 0
            window["count"] += 1
            return window["count"] <= per_second

    class Handler(SourceHandler):
        def do_GET(self) -> None:
            if allowed():
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

    server = _Quiet((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def _per_host(dsn: str, request_id: str) -> list[tuple[str, int, float, int]]:
    """(host, images, seconds from the request's creation to its last image, attempts)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT i.host, count(*) AS n, sum(i.attempts) AS attempts,"
            " extract(epoch FROM max(i.updated_at) - r.created_at) AS seconds"
            " FROM images i JOIN requests r ON r.id = i.request_id"
            " WHERE i.request_id = $1 AND i.state = 'SUCCEEDED'"
            " GROUP BY i.host, r.created_at ORDER BY i.host",
            uuid.UUID(request_id),
        )
    finally:
        await conn.close()
    return [(r["host"], r["n"], float(r["seconds"]), int(r["attempts"])) for r in rows]


def throttle_section(
    config: Config, h: Harness, corpus: dict[str, list[Source]], section: Section
) -> None:
    body = corpus["tiny"][0].path.read_bytes()
    images, pace = config.throttle_images, config.throttle_per_second
    with (
        source_server(HOSTS[0], body, 0) as free_a,
        source_server(HOSTS[1], body, 0) as free_b,
        source_server(HOSTS[2], body, pace) as throttled,
        h.stack("throttle", config.processors) as run,
    ):
        bases = (free_a, free_b, throttled)
        urls = [f"{bases[n % 3]}/img/{n}.jpg" for n in range(images)]
        batch = run.batch(urls, watch=False)
        hosts = asyncio.run(_per_host(run.dsn, batch.request_id))
    rates = {host: n / seconds for host, n, seconds, _ in hosts}
    section.add(
        "throttle.free_images_per_s",
        "free hosts (each)",
        "img/s",
        [rates[HOSTS[0]], rates[HOSTS[1]]],
    )
    section.add(
        "throttle.throttled_images_per_s",
        "throttled host",
        "img/s",
        [rates[HOSTS[2]]],
        note=f"allows {pace:g}/s",
    )
    section.add(
        "throttle.attempts_per_image",
        "attempts per image",
        "ratio",
        [sum(a for *_, a in hosts) / images],
        goal="1: a 429 spends none",
    )
    section.notes.append(f"{images} images over 3 hosts, one allowing {pace:g} requests/s")


def _cpu(run_cpu: dict[str, float]) -> float:
    return sum(run_cpu[c] for c in IMGPIPE)


def resubmit_section(
    config: Config, h: Harness, corpus: dict[str, list[Source]], section: Section
) -> None:
    images = config.resubmit_images
    with h.stack("resubmit", config.processors) as run:
        urls = h.urls(corpus["small"], images, "resubmit")
        first = run.batch(urls, watch=False)
        second = run.batch(urls, watch=False)
    section.add("resubmit.first_s", "first run", "s", [first.seconds], positive=True)
    section.add("resubmit.second_s", "second run (same CSV)", "s", [second.seconds])
    section.add(
        "resubmit.wall_ratio", "second / first, wall", "ratio", [second.seconds / first.seconds]
    )
    section.add(
        "resubmit.cpu_ratio",
        "second / first, CPU (imgpipe + PostgreSQL)",
        "ratio",
        [_cpu(second.cpu) / _cpu(first.cpu)],
    )
    section.add(
        "resubmit.processor_cpu_ratio",
        "second / first, processor CPU",
        "ratio",
        [second.cpu["processors"] / first.cpu["processors"]],
    )
    section.notes.append(f"{images} small JPEGs, then the same CSV again")


def run_sections(
    config: Config, h: Harness, corpus: dict[str, list[Source]], section: Section
) -> None:
    throttle_section(config, h, corpus, section)
    resubmit_section(config, h, corpus, section)
