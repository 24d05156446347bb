"""Sections without a stack: 1 (codec vs the limit, one core), the codec on two cores
(threads vs processes), 8 (output size and quality), and the bare loop on a pool that
section 2 divides by."""

from __future__ import annotations

from devstack.bench import codec
from devstack.bench.config import Config
from devstack.bench.corpus import Source
from devstack.bench.figures import Section, ratios


def _rates(results: list[dict[str, float]]) -> list[float]:
    """Megapixels per CPU-second of the worker: on an idle core the same as per second of
    wall time, and unaffected by other work sharing the core (this machine may be shared)."""
    return [r["megapixels"] / r["cpu"] for r in results]


def codec_section(config: Config, corpus: dict[str, list[Source]], section: Section) -> None:
    section.notes.append(
        "one worker process each, one thread; files in memory; q50, same size; runs "
        "interleaved (variant by variant, size by size); MP/s = megapixels per CPU-second of "
        "the worker (= per second on an idle core; page faults count, other load does not); "
        "malloc env = MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824"
    )
    plain_variants = ("simplejpeg", "compress", "pillow", "pillow_opt")
    kinds = config.jpeg_kinds
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with (
        codec.worker_pool(corpus, 1) as plain,
        codec.worker_pool(corpus, 1, codec.MALLOC_ENV) as malloc,
    ):
        for kind in kinds:  # warm-up: imports, first allocations, caches
            for variant in plain_variants:
                codec.once(plain, variant, kind.name, 0.0)
            for variant in ("compress", "pillow"):
                codec.once(malloc, variant, kind.name, 0.0)
        for _ in range(config.codec_runs):
            for kind in kinds:
                for variant in plain_variants:
                    r = codec.once(plain, variant, kind.name, config.codec_seconds)
                    results.setdefault((variant, kind.name), []).append(r)
                for variant in ("compress", "pillow"):
                    r = codec.once(malloc, variant, kind.name, config.codec_seconds)
                    results.setdefault((variant + "+malloc", kind.name), []).append(r)
    for kind in kinds:
        k, t = kind.name, kind.title

        def get(variant: str, kind: str = k) -> list[dict[str, float]]:
            return results[(variant, kind)]

        limit = _rates(get("simplejpeg"))
        section.add(f"{k}.simplejpeg.mp_per_s", f"{t}: simplejpeg (the limit)", "MP/s", limit)
        section.add(f"{k}.compress.mp_per_s", f"{t}: compress()", "MP/s", _rates(get("compress")))
        section.add(
            f"{k}.compress.ratio",
            f"{t}: compress() / limit",
            "ratio",
            ratios(_rates(get("compress")), limit),
            goal=">= 0.95",
        )
        section.add(
            f"{k}.compress_malloc.ratio",
            f"{t}: compress() + malloc env / limit",
            "ratio",
            ratios(_rates(get("compress+malloc")), limit),
        )
        section.add(
            f"{k}.pillow.ratio",
            f"{t}: Pillow optimize=False / limit",
            "ratio",
            ratios(_rates(get("pillow")), limit),
        )
        section.add(
            f"{k}.pillow_malloc.ratio",
            f"{t}: Pillow optimize=False + malloc env / limit",
            "ratio",
            ratios(_rates(get("pillow+malloc")), limit),
        )
        section.add(
            f"{k}.optimize.cost",
            f"{t}: Pillow optimize=True / optimize=False",
            "ratio",
            ratios(_rates(get("pillow_opt")), _rates(get("pillow"))),
        )
        section.add(
            f"{k}.optimize.size",
            f"{t}: compress() bytes / simplejpeg bytes",
            "ratio",
            ratios(
                [r["out_bytes_per_image"] for r in get("compress")],
                [r["out_bytes_per_image"] for r in get("simplejpeg")],
            ),
        )
        section.add(
            f"{k}.compress.faults",
            f"{t}: page faults / image, compress()",
            "faults",
            [r["minflt_per_image"] for r in get("compress")],
            positive=False,
        )
        section.add(
            f"{k}.compress_malloc.faults",
            f"{t}: page faults / image, + malloc env",
            "faults",
            [r["minflt_per_image"] for r in get("compress+malloc")],
            positive=False,
        )
    section.extra["runs"] = {f"{variant}/{kind}": runs for (variant, kind), runs in results.items()}


def parallel_section(config: Config, corpus: dict[str, list[Source]], section: Section) -> None:
    """The codec on every core of the machine: threads in one process vs processes."""
    kind = config.kind(config.scaling_kind)
    n = config.processors
    section.notes.append(
        f"{kind.title}, {n} threads in one process vs {n} processes, each vs 1 thread"
    )
    single: dict[str, list[float]] = {}
    threads: dict[str, list[float]] = {}
    processes: dict[str, list[float]] = {}
    with codec.worker_pool(corpus, 1) as one, codec.worker_pool(corpus, n) as many:
        for _ in range(config.bare_runs):
            for variant in ("compress", "simplejpeg"):
                r = codec.once(one, variant, kind.name, config.codec_seconds * 2)
                single.setdefault(variant, []).append(r["images"] / r["wall"])
                r = codec.once(one, variant, kind.name, config.codec_seconds * 2, threads=n)
                threads.setdefault(variant, []).append(r["images"] / r["wall"])
                rate, _ = codec.concurrently(many, n, variant, kind.name, config.codec_seconds * 2)
                processes.setdefault(variant, []).append(rate)
    for variant in ("compress", "simplejpeg"):
        name = "compress()" if variant == "compress" else variant
        section.add(
            f"{variant}.threads",
            f"{name}: {n} threads / 1 thread",
            "x",
            ratios(threads[variant], single[variant]),
        )
        section.add(
            f"{variant}.processes",
            f"{name}: {n} processes / 1 process",
            "x",
            ratios(processes[variant], single[variant]),
        )
    allocator_in_threads(config, corpus, section)


def allocator_in_threads(config: Config, corpus: dict[str, list[Source]], section: Section) -> None:
    """compress() on the largest images in a pool of threads, as the processor runs it,
    under each allocator setting: CPU per image and page faults per image."""
    kind = config.kind(config.memory_kind)
    n = config.processors
    section.notes.append(
        f"{kind.title} in {n} codec threads (as in the processor): CPU ms and page faults "
        "per image, as is / malloc env / malloc env + MALLOC_ARENA_MAX=1"
    )
    envs = {"as_is": {}, "malloc": codec.MALLOC_ENV, "arena1": codec.ARENA_ENV}
    titles = {"as_is": "as is", "malloc": "malloc env", "arena1": "malloc env + 1 arena"}
    for key, env in envs.items():
        with codec.worker_pool(corpus, 1, env) as pool:
            codec.once(pool, "compress", kind.name, 0.0, threads=n)
            runs = [
                codec.once(pool, "compress", kind.name, config.codec_seconds * 2, threads=n)
                for _ in range(config.bare_runs)
            ]
        section.add(
            f"threads_{key}.cpu_ms",
            f"{kind.title}, {n} threads, {titles[key]}: CPU ms/image",
            "ms",
            [1000 * r["cpu"] / r["images"] for r in runs],
        )
        section.add(
            f"threads_{key}.faults",
            f"{kind.title}, {n} threads, {titles[key]}: page faults/image",
            "faults",
            [r["minflt_per_image"] for r in runs],
            positive=False,
        )


def bare_pool_rates(
    config: Config, corpus: dict[str, list[Source]], processes: int
) -> dict[str, tuple[list[float], list[float]]]:
    """The bare simplejpeg loop on `processes` processes at once, per kind: images per
    second together, and CPU milliseconds per image, one sample per run."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    with codec.worker_pool(corpus, processes) as pool:
        for _ in range(config.bare_runs):
            for kind in config.e2e_kinds:
                rate, cpu = codec.concurrently(
                    pool, processes, "simplejpeg", kind.name, config.bare_seconds
                )
                rates, cpus = found.setdefault(kind.name, ([], []))
                rates.append(rate)
                cpus.append(1000 * cpu)
    return found


def quality_section(config: Config, corpus: dict[str, list[Source]], section: Section) -> None:
    section.notes.append(
        "compress() at q50 on every corpus file; PSNR and SSIM (11x11 Gaussian, numpy) on "
        "luma against the decoded input (PNG: flattened onto white); spread = across files"
    )
    kinds = [*config.jpeg_kinds, config.kind("png")]
    with codec.worker_pool(corpus, config.processors) as pool:
        for kind in kinds:
            found = codec.quality(pool, kind.name, len(corpus[kind.name]))
            section.add(
                f"{kind.name}.bytes_ratio",
                f"{kind.title}: bytes out / bytes in",
                "ratio",
                [q["ratio"] for q in found],
            )
            section.add(
                f"{kind.name}.psnr", f"{kind.title}: PSNR", "dB", [q["psnr"] for q in found]
            )
            section.add(f"{kind.name}.ssim", f"{kind.title}: SSIM", "", [q["ssim"] for q in found])
