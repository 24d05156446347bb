"""Sections on a running stack: 2 (end to end vs the bare loop), 3 (scaling), 5 (dispatch
cost) and 7 (processor memory)."""

from __future__ import annotations

import os
import statistics

from devstack.bench import grpc_floor, procstat
from devstack.bench.config import Config, Kind
from devstack.bench.corpus import Source
from devstack.bench.figures import Section, ratios
from devstack.bench.harness import Batch, Harness, Running

COMPONENTS = ("processors", "ingest", "postgres", "bench")
IMGPIPE = ("processors", "ingest", "postgres")
# Ingest's calls in flight and each processor's slots in the scaling runs (one setting).
SCALING_IN_FLIGHT = 8
# The watcher rounds hold their sources until every stream is open: fetches, calls and
# leases that outlast the hold, so that no image is retried meanwhile (a retry is an event,
# sent to every stream open so far, which slows the opening of the rest).
HELD_SOURCES_ENV = {
    "IMGPIPE_FETCH_READ_TIMEOUT": "600",
    "IMGPIPE_FETCH_TOTAL_TIMEOUT": "600",
    "IMGPIPE_CALL_TIMEOUT": "660",
    "IMGPIPE_LEASE_SECONDS": "720",
}


def warm_up(h: Harness, corpus: dict[str, list[Source]], run: Running, config: Config) -> None:
    """One small request of every kind: connections open, code paths and pools warm."""
    urls: list[str] = []
    for kind in (*config.e2e_kinds, config.kind("tiny")):
        urls += h.urls(corpus[kind.name], 2 * config.processors, f"warm-{kind.name}")
    run.batch(urls)


def timed_batches(
    h: Harness, corpus: dict[str, list[Source]], run: Running, kind: Kind, images: int, runs: int
) -> list[Batch]:
    return [run.batch(h.urls(corpus[kind.name], images, f"{kind.name}-{i}")) for i in range(runs)]


def add_throughput(
    section: Section,
    prefix: str,
    title: str,
    batches: list[Batch],
    bare: tuple[list[float], list[float]],
    goal: str = "",
) -> None:
    rates = [b.per_second for b in batches]
    bare_rates, bare_cpu = bare
    section.add(f"{prefix}.images_per_s", f"{title}: images/s", "img/s", rates)
    section.add(f"{prefix}.bare_images_per_s", f"{title}: bare loop images/s", "img/s", bare_rates)
    section.add(
        f"{prefix}.vs_bare",
        f"{title}: end to end / bare loop",
        "ratio",
        ratios(rates, bare_rates),
        goal=goal,
    )
    # The same question asked of CPU time, which other load on the machine does not bend:
    # the bare loop's CPU per image over imgpipe's (processors, ingest, PostgreSQL; not the
    # bench's image server and client, which stand for the sources and the caller).
    stack_cpu = [sum(b.cpu_ms_per_image(c) for c in IMGPIPE) for b in batches]
    section.add(
        f"{prefix}.cpu_efficiency",
        f"{title}: bare CPU/img / imgpipe CPU/img",
        "ratio",
        ratios([statistics.median(bare_cpu)] * len(stack_cpu), stack_cpu),
    )


def add_cpu(section: Section, prefix: str, title: str, batches: list[Batch]) -> None:
    for component in COMPONENTS:
        section.add(
            f"{prefix}.cpu_ms.{component}",
            f"{title}: CPU ms/image, {component}",
            "ms",
            [b.cpu_ms_per_image(component) for b in batches],
            # A few clock ticks (10 ms) over a small batch can round to 0.
            positive=component == "processors",
        )


def e2e_section(
    config: Config,
    h: Harness,
    corpus: dict[str, list[Source]],
    run: Running,
    bare: dict[str, tuple[list[float], list[float]]],
    section: Section,
    memory: Section,
) -> None:
    n = config.processors
    section.notes += [
        f"{n} processors (IMGPIPE_WORKERS = cores), 1 ingest, private PostgreSQL, file:// "
        "storage in tmpfs, sources from the loopback image server (one host: every stack of "
        "the bench runs with IMGPIPE_HOST_MAX_IN_FLIGHT=0); one WatchStatus watcher per request",
        f"bare loop: simplejpeg on {n} processes (multiprocessing), files in memory; "
        "bare CPU/image / stack CPU/image = the bare loop's CPU ms per image over imgpipe's "
        "(processors + ingest + PostgreSQL; the bench's image server and client excluded)",
        f"batches: {', '.join(f'{k}={v}' for k, v in config.e2e_images.items())} images; "
        "CPU = utime+stime from /proc per component over the batch",
    ]
    warm_up(h, corpus, run, config)
    for kind in config.e2e_kinds:
        batches = timed_batches(h, corpus, run, kind, config.e2e_images[kind.name], config.e2e_runs)
        goal = ">= 0.85" if kind.name == "medium" else ""
        add_throughput(section, kind.name, kind.title, batches, bare[kind.name], goal)
        add_cpu(section, kind.name, kind.title, batches)
        section.add(
            f"{kind.name}.bare_cpu_ms",
            f"{kind.title}: CPU ms/image, bare loop",
            "ms",
            bare[kind.name][1],
        )
        section.add(
            f"{kind.name}.events_per_image",
            f"{kind.title}: WatchStatus messages / image",
            "msgs",
            [b.messages / b.images for b in batches],
        )
        if kind.name == config.memory_kind:
            record_memory(config, run, memory, "as_is", "as is")
    # What a processor's call and fetch cost before any of imgpipe's own work (the codec,
    # storage, the worker pipe, logs, metrics, tracing).
    calls = config.e2e_images["small"] * 10
    small = next(kind for kind in config.e2e_kinds if kind.name == "small")
    url = h.urls(corpus[small.name], 1, "floor")[0]
    section.add(
        "floor.grpc_unary_us",
        "the floor: bare grpc.aio unary call, server CPU",
        "µs",
        [grpc_floor.unary_server_us_per_call(calls) for _ in range(config.e2e_runs)],
    )
    section.add(
        "floor.fetch_us",
        f"the floor: aiohttp GET of a {small.title} source, client CPU",
        "µs",
        [grpc_floor.fetch_client_us(url, calls) for _ in range(config.e2e_runs)],
    )


def record_memory(config: Config, run: Running, memory: Section, key: str, title: str) -> None:
    kind = config.kind(config.memory_kind)
    memory.add(
        f"{key}.processor_hwm",
        f"processor VmHWM, {title}, after {kind.title}",
        "MiB",
        [procstat.hwm_mib(pid) for pid in run.processor_pids],
        goal="< 400 MB",
    )
    memory.add(
        f"{key}.processor_rss",
        f"processor VmRSS after the batches, {title}",
        "MiB",
        [procstat.rss_mib(pid) for pid in run.processor_pids],
    )


def malloc_variant(
    config: Config,
    h: Harness,
    corpus: dict[str, list[Source]],
    run: Running,
    bare: dict[str, tuple[list[float], list[float]]],
    section: Section,
    memory: Section,
) -> None:
    """The e2e figures again with the glibc allocator settings (codec.ARENA_ENV: the
    issue's two, and one arena so that they reach the codec threads) in every process."""
    warm_up(h, corpus, run, config)
    for name in (config.scaling_kind, config.memory_kind):
        kind = config.kind(name)
        batches = timed_batches(h, corpus, run, kind, config.e2e_images[name], config.e2e_runs)
        title = f"{kind.title} + malloc env, 1 arena"
        add_throughput(section, f"{name}_malloc", title, batches, bare[name])
        section.add(
            f"{name}_malloc.cpu_ms.processors",
            f"{title}: CPU ms/image, processors",
            "ms",
            [b.cpu_ms_per_image("processors") for b in batches],
        )
    record_memory(config, run, memory, "malloc", "malloc env, 1 arena")


def scaling_section(
    config: Config, h: Harness, corpus: dict[str, list[Source]], section: Section
) -> None:
    kind = config.kind(config.scaling_kind)
    n = config.processors
    section.notes.append(
        f"{kind.title}, {config.scaling_images} images per batch; IMGPIPE_WORKERS=1 (a "
        "processor sized for one core, as a pod with a 1-CPU limit) and IMGPIPE_MAX_IN_FLIGHT"
        f"={SCALING_IN_FLIGHT} (ingest never calls more than 1 processor takes, so no call is "
        "refused); ingest, PostgreSQL and the image server share the same cores"
    )
    runs: dict[int, list[Batch]] = {}
    for count in (1, n):
        env = {"IMGPIPE_WORKERS": "1", "IMGPIPE_MAX_IN_FLIGHT": str(SCALING_IN_FLIGHT)}
        with h.stack(f"scale{count}", count, env) as run:
            warm_up(h, corpus, run, config)
            runs[count] = timed_batches(
                h, corpus, run, kind, config.scaling_images, config.e2e_runs
            )
    rates = {count: [b.per_second for b in batches] for count, batches in runs.items()}
    section.add("one.images_per_s", f"{kind.title}: 1 processor, images/s", "img/s", rates[1])
    section.add("n.images_per_s", f"{kind.title}: {n} processors, images/s", "img/s", rates[n])
    section.add(
        "ratio",
        f"{n} processors / 1 processor",
        "x",
        ratios(rates[n], rates[1]),
        goal=f">= {0.9 * n:.1f}",
    )
    # What the cores left the processors: the rest (ingest, PostgreSQL, the bench's image
    # server and client) ran on the same cores.
    for count, batches in runs.items():
        others = [
            sum(b.cpu[c] for c in ("ingest", "postgres", "bench")) / b.seconds for b in batches
        ]
        section.add(
            f"others_cores.{count}",
            f"{count} processor(s): cores taken by ingest + PostgreSQL + bench",
            "cores",
            others,
        )
    # The same ratio with their CPU taken out: images per processor-CPU-second, times the
    # processors (each with a core of its own), over the same for one.
    per_cpu = {
        count: [b.images / b.cpu["processors"] for b in batches] for count, batches in runs.items()
    }
    section.add(
        "ratio_processors_only",
        f"{n} / 1, ingest, PostgreSQL and bench CPU subtracted (processor CPU per image)",
        "x",
        [n * r for r in ratios(per_cpu[n], per_cpu[1])],
    )


def dispatch_section(
    config: Config,
    h: Harness,
    corpus: dict[str, list[Source]],
    run: Running,
    section: Section,
    variant: str = "",
) -> None:
    """Tiny images, so that dispatch is all there is; variant "matched": on the stack whose
    ingest never calls more than the processors take."""
    tiny = config.kind("tiny")
    prefix, title = (f"{variant}.", f"{variant}: ") if variant else ("", "")
    if not variant:
        section.notes.append(
            f"{config.dispatch_images} images of {tiny.width}x{tiny.height} per request; done "
            "= requests.state read from PostgreSQL every 20 ms (no watcher: ingest CPU is "
            "claim + call + record + Submit + result CSV only)"
        )
    batches = [
        run.batch(h.urls(corpus["tiny"], config.dispatch_images, f"tiny{variant}-{i}"), watch=False)
        for i in range(config.dispatch_runs)
    ]
    section.add(
        f"{prefix}ingest_cpu_ms",
        f"{title}ingest CPU per image",
        "ms",
        [b.cpu_ms_per_image("ingest") for b in batches],
        goal="< 2 ms",
    )
    if not variant:
        section.add(
            "max_images_per_s",
            "one ingest replica's ceiling (1 core / CPU per image)",
            "img/s",
            [1000 / b.cpu_ms_per_image("ingest") for b in batches],
        )
    section.add(
        f"{prefix}images_per_s",
        f"{title}tiny images/s through the stack",
        "img/s",
        [b.per_second for b in batches],
    )
    for component in ("postgres", "processors"):
        section.add(
            f"{prefix}{component}_cpu_ms",
            f"{title}{component} CPU per image",
            "ms",
            [b.cpu_ms_per_image(component) for b in batches],
            positive=component == "processors",
        )
    section.add(
        f"{prefix}ingest_postgres_cpu_ms",
        f"{title}ingest + PostgreSQL CPU per image",
        "ms",
        [b.cpu_ms_per_image("ingest") + b.cpu_ms_per_image("postgres") for b in batches],
        goal="<= 0.8 ms",
        positive=False,  # 10 ms clock ticks over a small batch can round to 0
    )
    section.add(
        f"{prefix}write_xacts_per_image",
        f"{title}PostgreSQL write transactions per image (Submit, claims, records, outbox)",
        "xacts",
        [b.write_xacts / b.images for b in batches],
    )
    section.add(
        f"{prefix}wal_bytes_per_image",
        f"{title}PostgreSQL WAL per image",
        "bytes",
        [b.wal_bytes / b.images for b in batches],
    )


def matched_env(config: Config) -> dict[str, str]:
    """Ingest's calls in flight = what the processors take together (each takes
    4 x IMGPIPE_WORKERS, workers = cores); one variable sets both sides, so the processors
    get the same number each: twice what they need, and no call is ever refused."""
    slots = config.processors * 4 * (os.cpu_count() or 1)
    return {"IMGPIPE_MAX_IN_FLIGHT": str(slots), **HELD_SOURCES_ENV}


def matched_variant(
    config: Config,
    h: Harness,
    corpus: dict[str, list[Source]],
    run: Running,
    bare: dict[str, tuple[list[float], list[float]]],
    section: Section,
) -> None:
    """The e2e figures on the stack whose ingest never calls more than processors take."""
    warm_up(h, corpus, run, config)
    kind = config.kind(config.scaling_kind)
    batches = timed_batches(h, corpus, run, kind, config.e2e_images[kind.name], config.e2e_runs)
    title = f"{kind.title}, in-flight matched"
    add_throughput(section, f"{kind.name}_matched", title, batches, bare[kind.name])
    section.add(
        f"{kind.name}_matched.events_per_image",
        f"{title}: WatchStatus messages / image",
        "msgs",
        [b.messages / b.images for b in batches],
    )
