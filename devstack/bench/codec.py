"""The codec, alone: imgpipe's `compress()` against bare decode+encode loops, in fresh
worker processes (spawned, so the allocator settings of their environment apply).

Variants (each: bytes in memory -> JPEG q50 at the same size):
- `simplejpeg`: the limit. JPEG: `decode_jpeg` + `encode_jpeg(colorsubsampling="420")`
  (the chroma subsampling Pillow uses, so the output has the same form); PNG: Pillow
  decode, flattened onto white, then `encode_jpeg`. simplejpeg has no Huffman
  optimisation.
- `compress`: `imgpipe.processor.compress.compress` as the processor calls it
  (EXIF transpose, flattening, `optimize=True`).
- `pillow`: a bare Pillow loop, `optimize=False` (the same work as simplejpeg).
- `pillow_opt`: the same with `optimize=True` (what optimisation costs).
"""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from devstack.bench.corpus import Source
from imgpipe.processor.compress import compress
from imgpipe.processor.settings import DecodeSettings

QUALITY = 50
LIMITS = DecodeSettings(max_pixels=1_000_000_000, memory_bytes=1 << 40)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
# The same in a codec thread pool: glibc gives each thread an arena of its own, whose heaps
# are unmapped once empty whatever the trim threshold; one arena for all keeps the pages.
ARENA_ENV = {**MALLOC_ENV, "MALLOC_ARENA_MAX": "1"}
# One thread per worker process unless asked: no library may start threads of its own.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

Floats = np.ndarray[Any, np.dtype[np.float32]]

# -- inside the worker processes ------------------------------------------------------------

_FILES: dict[str, list[tuple[bytes, int]]] = {}  # kind -> [(data, pixels)]


def _load(listing: dict[str, list[str]]) -> None:
    for kind, paths in listing.items():
        files = []
        for path in paths:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                files.append((data, img.width * img.height))
        _FILES[kind] = files


def _flatten(img: Image.Image) -> Image.Image:
    if img.mode in {"RGBA", "LA", "PA"} or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")


def _simplejpeg(data: bytes) -> bytes:
    import simplejpeg

    if data[:2] == b"\xff\xd8":
        pixels = simplejpeg.decode_jpeg(data)
    else:
        with Image.open(io.BytesIO(data)) as img:
            pixels = np.asarray(_flatten(img))
    return bytes(simplejpeg.encode_jpeg(pixels, quality=QUALITY, colorsubsampling="420"))


def _pillow(data: bytes, optimize: bool) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        _flatten(img).save(out, format="JPEG", quality=QUALITY, optimize=optimize)
    return out.getvalue()


VARIANTS: dict[str, Callable[[bytes], bytes]] = {
    "simplejpeg": _simplejpeg,
    "compress": lambda data: compress(data, QUALITY, LIMITS).jpeg,
    "pillow": lambda data: _pillow(data, False),
    "pillow_opt": lambda data: _pillow(data, True),
}


def run_variant(
    variant: str, kind: str, seconds: float, threads: int = 1, start_at: float = 0.0
) -> dict[str, float]:
    """Runs variant over the kind's files, round-robin, for at least `seconds` (and at least
    two images) on each of `threads` threads; from `start_at` (time.monotonic) if given."""
    fn = VARIANTS[variant]
    files = _FILES[kind]
    counts = [0] * threads
    pixels = [0] * threads
    out_bytes = [0] * threads
    in_bytes = [0] * threads
    if start_at:
        time.sleep(max(0.0, start_at - time.monotonic()))
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + seconds

    def loop(slot: int) -> None:
        i = slot
        while counts[slot] < 2 or time.perf_counter() < deadline:
            data, n = files[i % len(files)]
            out_bytes[slot] += len(fn(data))
            in_bytes[slot] += len(data)
            pixels[slot] += n
            counts[slot] += 1
            i += 1

    if threads == 1:
        loop(0)
    else:
        workers = [threading.Thread(target=loop, args=(s,)) for s in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    images = sum(counts)
    return {
        "images": images,
        "megapixels": sum(pixels) / 1e6,
        "wall": wall,
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "minflt_per_image": (after.ru_minflt - before.ru_minflt) / images,
        "out_bytes_per_image": sum(out_bytes) / images,
        "in_bytes_per_image": sum(in_bytes) / images,
    }


def _run_variant_star(args: tuple[str, str, float, int, float]) -> dict[str, float]:
    return run_variant(*args)


def _warm(_: int) -> int:
    return os.getpid()


# -- quality (section 8), also inside workers -----------------------------------------------


def _luma(img: Image.Image) -> Floats:
    rgb = np.asarray(_flatten(img), dtype=np.float32)
    luma: Floats = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return luma


def _gaussian_valid(a: Floats, taps: Floats) -> Floats:
    """Separable Gaussian filter, 'valid' region only."""
    k = len(taps)
    h, w = a.shape
    rows = sum(taps[i] * a[:, i : w - k + 1 + i] for i in range(k))
    out: Floats = sum(taps[i] * rows[i : h - k + 1 + i, :] for i in range(k))
    return out


def ssim(x: Floats, y: Floats) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03."""
    offsets = np.arange(11, dtype=np.float32) - 5
    taps = np.exp(-(offsets**2) / (2 * 1.5**2)).astype(np.float32)
    taps /= taps.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_valid(x, taps), _gaussian_valid(y, taps)
    sxx = _gaussian_valid(x * x, taps) - mx * mx
    syy = _gaussian_valid(y * y, taps) - my * my
    sxy = _gaussian_valid(x * y, taps) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def psnr(x: Floats, y: Floats) -> float:
    mse = float(np.mean((x.astype(np.float64) - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def quality_of(kind: str, index: int) -> dict[str, float]:
    """compress() at q50 on one file: bytes out / in, PSNR and SSIM of luma vs the input."""
    data, _ = _FILES[kind][index]
    out = compress(data, QUALITY, LIMITS).jpeg
    with Image.open(io.BytesIO(data)) as source, Image.open(io.BytesIO(out)) as result:
        x, y = _luma(source), _luma(result)
    return {"ratio": len(out) / len(data), "psnr": psnr(x, y), "ssim": ssim(x, y)}


def _quality_star(args: tuple[str, int]) -> dict[str, float]:
    return quality_of(*args)


# -- in the bench process -------------------------------------------------------------------


@contextlib.contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    """os.environ with extra set, for processes spawned meanwhile (they copy it)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def worker_pool(
    corpus: dict[str, list[Source]], processes: int, env: Mapping[str, str] | None = None
) -> Iterator[Pool]:
    """`processes` spawned workers holding every corpus file in memory, all started."""
    listing = {kind: [str(s.path) for s in sources] for kind, sources in corpus.items()}
    context = multiprocessing.get_context("spawn")
    with _environ({**SINGLE_THREAD_ENV, **(env or {})}):
        pool = context.Pool(processes, initializer=_load, initargs=(listing,))
    try:
        # Every worker has started and loaded the files before anything is timed.
        pids: set[int] = set()
        while len(pids) < processes:
            pids |= set(pool.map(_warm, range(processes * 4), chunksize=1))
        yield pool
    finally:
        pool.terminate()
        pool.join()


def once(pool: Pool, variant: str, kind: str, seconds: float, threads: int = 1) -> dict[str, float]:
    result: dict[str, float] = pool.apply(run_variant, (variant, kind, seconds, threads))
    return result


def concurrently(
    pool: Pool, processes: int, variant: str, kind: str, seconds: float
) -> tuple[float, float]:
    """`processes` workers running variant at the same time: (images per second together,
    CPU seconds per image)."""
    start_at = time.monotonic() + 0.3
    tasks = [(variant, kind, seconds, 1, start_at)] * processes
    results = pool.map(_run_variant_star, tasks, chunksize=1)
    rate = sum(r["images"] / r["wall"] for r in results)
    cpu = sum(r["cpu"] for r in results) / sum(r["images"] for r in results)
    return rate, cpu


def quality(pool: Pool, kind: str, files: int) -> list[dict[str, float]]:
    results: list[dict[str, float]] = pool.map(
        _quality_star, [(kind, i) for i in range(files)], chunksize=1
    )
    return results
