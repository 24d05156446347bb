"""`python -m devstack.bench --quick` runs every section and produces every figure.

Only that: each figure is present and finite, and positive where it must be. No timing is
asserted — the machine running the tests decides the numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SIZES = ("small", "medium", "large")
KINDS = (*SIZES, "png")
CPU = ("processors", "ingest", "postgres", "bench")

EXPECTED = [
    *[
        f"codec.{k}.{f}"
        for k in SIZES
        for f in (
            "simplejpeg.mp_per_s",
            "compress.mp_per_s",
            "compress.ratio",
            "compress_malloc.ratio",
            "pillow.ratio",
            "pillow_malloc.ratio",
            "optimize.cost",
            "optimize.size",
            "compress.faults",
            "compress_malloc.faults",
        )
    ],
    *[f"parallel.{v}.{m}" for v in ("compress", "simplejpeg") for m in ("threads", "processes")],
    *[
        f"parallel.threads_{env}.{m}"
        for env in ("as_is", "malloc", "arena1")
        for m in ("cpu_ms", "faults")
    ],
    *[
        f"e2e.{k}.{f}"
        for k in KINDS
        for f in (
            "images_per_s",
            "bare_images_per_s",
            "vs_bare",
            "cpu_efficiency",
            *[f"cpu_ms.{c}" for c in CPU],
            "bare_cpu_ms",
            "events_per_image",
        )
    ],
    *[
        f"e2e.{k}_malloc.{f}"
        for k in ("medium", "large")
        for f in (
            "images_per_s",
            "bare_images_per_s",
            "vs_bare",
            "cpu_efficiency",
            "cpu_ms.processors",
        )
    ],
    *[
        f"e2e.medium_matched.{f}"
        for f in (
            "images_per_s",
            "bare_images_per_s",
            "vs_bare",
            "cpu_efficiency",
            "events_per_image",
        )
    ],
    "e2e.floor.grpc_unary_us",
    "e2e.floor.fetch_us",
    "scaling.one.images_per_s",
    "scaling.n.images_per_s",
    "scaling.ratio",
    "scaling.others_cores.1",
    "scaling.others_cores.2",
    "scaling.ratio_processors_only",
    *[f"submit.{s}.{f}" for s in ("smaller", "larger") for f in ("seconds", "ingest_cpu_s")],
    *[
        f"dispatch.{f}"
        for f in (
            "ingest_cpu_ms",
            "max_images_per_s",
            "images_per_s",
            "postgres_cpu_ms",
            "processors_cpu_ms",
            "matched.ingest_cpu_ms",
            "matched.images_per_s",
            "matched.postgres_cpu_ms",
            "matched.processors_cpu_ms",
            *[
                f"{v}{f}"
                for v in ("", "matched.")
                for f in ("ingest_postgres_cpu_ms", "write_xacts_per_image", "wal_bytes_per_image")
            ],
        )
    ],
    *[
        f"watchers.{v}{f}"
        for v in ("", "replicas.")
        for f in (
            "complete",
            "incomplete",
            "messages",
            "ingest_us_per_message",
            "client_us_per_message",
            "lag_p50_ms",
            "lag_p99_ms",
            "rss_per_watcher_kib",
            "connect_seconds",
        )
    ],
    "watchers.grpc_floor_us_per_message",
    *[f"memory.{v}.processor_{m}" for v in ("as_is", "malloc") for m in ("hwm", "rss")],
    *[f"output.{k}.{f}" for k in KINDS for f in ("bytes_ratio", "psnr", "ssim")],
    *[
        f"politeness.{f}"
        for f in (
            "throttle.free_images_per_s",
            "throttle.throttled_images_per_s",
            "throttle.attempts_per_image",
            "resubmit.first_s",
            "resubmit.second_s",
            "resubmit.wall_ratio",
            "resubmit.cpu_ratio",
            "resubmit.processor_cpu_ratio",
        )
    ],
    *[
        f"hostile.{f}"
        for f in (
            "bomb.seconds",
            "small.alone.ms",
            "small.loaded.ms",
            "small.loaded.ratio",
            "peak_rss.mib",
            "peak_rss_hwm_sum.mib",
            "worst.ok",
            "worst.failed",
        )
    ],
]
# Figures that must be above zero whatever the machine: rates, ratios, sizes, quality.
MUST_BE_POSITIVE = (
    "mp_per_s",
    "images_per_s",
    ".ratio",
    "vs_bare",
    "cpu_efficiency",
    "psnr",
    "ssim",
    "hwm",
)


@pytest.mark.timeout(600)
def test_quick_bench_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "devstack.bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    document = json.loads(out.read_text())
    assert document["failed_sections"] == []
    assert document["problems"] == []
    assert document["machine"]["cores"] >= 1
    figures = {f["id"]: f for f in document["figures"]}
    missing = [i for i in EXPECTED if i not in figures]
    assert not missing, missing
    for figure_id in EXPECTED:
        figure = figures[figure_id]
        assert figure["n"] >= 1, figure_id
        for key in ("median", "min", "max"):
            value = figure[key]
            assert value is not None and math.isfinite(value), (figure_id, key, value)
        if figure["positive"] or any(part in figure_id for part in MUST_BE_POSITIVE):
            assert figure["min"] > 0, (figure_id, figure["min"])
    assert str(out) in run.stdout
