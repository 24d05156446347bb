"""Section 1c: the codec on real photographs (the handful scikit-image ships in
`skimage/data`), each saved as a q90 4:2:0 JPEG, the usual form of a product photo online.

Per photo and in total: CPU time per image of the requantiser alone, `compress()` as the
processor calls it, Pillow's pixel path (`optimize=True`) and bare simplejpeg decode
+ encode (the limit, no Huffman optimisation); output bytes and PSNR against the source
of `compress()` vs Pillow's; which photos the requantiser took. Then the same photos as
q90 4:4:4 and 4:2:2 JPEGs, which the requantiser does not take and `compress()`
transcodes: in total, CPU against the limit and against Pillow, bytes and PSNR against
Pillow's.
"""

from __future__ import annotations

import io
import math
import resource
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from devstack.bench.figures import Section
from imgpipe.processor._jpeg import requantize
from imgpipe.processor.compress import compress
from imgpipe.processor.settings import DecodeSettings

PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
)
SOURCE_QUALITY = 90
LIMITS = DecodeSettings(max_pixels=1_000_000_000, memory_bytes=1 << 40)


def _sources(subsampling: int = 2) -> dict[str, bytes]:
    """The photos as JPEGs; subsampling as Pillow numbers it (2 = 4:2:0, 0 = 4:4:4)."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    sources = {}
    for name in PHOTOS:
        with Image.open(folder / name) as photo:
            out = io.BytesIO()
            photo.convert("RGB").save(out, "JPEG", quality=SOURCE_QUALITY, subsampling=subsampling)
        sources[name] = out.getvalue()
    return sources


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_ms(fn: Callable[[bytes], object], data: bytes, seconds: float) -> float:
    """CPU milliseconds per call of fn(data), over at least `seconds` of CPU and 3 calls."""
    started, calls = _cpu(), 0
    while calls < 3 or _cpu() - started < seconds:
        fn(data)
        calls += 1
    return (_cpu() - started) / calls * 1000


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def psnr(a: bytes, b: bytes) -> float:
    """PSNR of two encoded images' RGB pixels."""
    mse = float(np.mean((_pixels(a) - _pixels(b)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def pillow_q50(data: bytes) -> bytes:
    """The pixel path: Pillow decode, q50 encode with Huffman optimisation."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=50, optimize=True)
    return out.getvalue()


def _simplejpeg(data: bytes) -> bytes:
    pixels = simplejpeg.decode_jpeg(data)
    return bytes(simplejpeg.encode_jpeg(pixels, quality=50, colorsubsampling="420"))


# Interleaved rounds: in each, every variant takes its turn on every photo, so a slow spell of
# the machine falls on all of them; each CPU ratio is the median of the rounds'.
ROUNDS = 5


def _timed(
    sources: list[bytes], variants: dict[str, Callable[[bytes], object]], seconds: float
) -> list[dict[tuple[int, str], float]]:
    """Per round: CPU ms per call of each variant on each photo (by index)."""
    rounds = []
    for _ in range(ROUNDS):
        ms = {}
        for index, data in enumerate(sources):
            for variant, fn in variants.items():
                ms[index, variant] = _cpu_ms(fn, data, seconds / ROUNDS)
        rounds.append(ms)
    return rounds


def _total_ratios(
    rounds: list[dict[tuple[int, str], float]], over: str, under: str, photos: int
) -> list[float]:
    """Per round: the CPU of variant `over` on every photo over that of `under`."""
    return [
        sum(ms[i, over] for i in range(photos)) / sum(ms[i, under] for i in range(photos))
        for ms in rounds
    ]


def photos_section(seconds: float, section: Section) -> None:
    section.notes.append(
        f"scikit-image's photographs as q{SOURCE_QUALITY} 4:2:0 JPEGs; CPU ms per image in "
        f"this process, {ROUNDS} interleaved rounds (CPU ratios: median, min, max of the "
        "rounds'); PSNR of the q50 output against the source's pixels; then the same "
        "photos as q90 4:4:4 and 4:2:2 JPEGs (the requantiser does not take them; compress()"
        " transcodes)"
    )
    sources = _sources()
    data_list = list(sources.values())
    variants: dict[str, Callable[[bytes], object]] = {
        "requantize": lambda source: requantize(source, 50),
        "compress": lambda source: compress(source, 50, LIMITS),
        "pillow_opt": pillow_q50,
        "simplejpeg": _simplejpeg,
    }
    rounds = _timed(data_list, variants, seconds)
    out_bytes = {"compress": 0, "pillow_opt": 0}
    taken = 0
    for index, (name, data) in enumerate(sources.items()):
        ours, theirs = compress(data, 50, LIMITS).jpeg, pillow_q50(data)
        out_bytes["compress"] += len(ours)
        out_bytes["pillow_opt"] += len(theirs)
        taken += requantize(data, 50) is not None
        stem = name.split(".")[0]
        section.add(
            f"{stem}.limit_over_compress",
            f"{stem}: simplejpeg CPU / compress() CPU",
            "ratio",
            [ms[index, "simplejpeg"] / ms[index, "compress"] for ms in rounds],
        )
        section.add(
            f"{stem}.bytes",
            f"{stem}: compress() bytes / Pillow optimize bytes",
            "ratio",
            [len(ours) / len(theirs)],
            goal="<= 1.00",
            positive=False,
        )
        section.add(
            f"{stem}.psnr_gain",
            f"{stem}: compress() PSNR - Pillow optimize PSNR",
            "dB",
            [psnr(data, ours) - psnr(data, theirs)],
            goal=">= 0",
        )
    section.add("requantized_share", "photos the requantiser took", "share", [taken / len(sources)])
    for variant in ("requantize", "compress", "pillow_opt"):
        section.add(
            f"{variant}.vs_limit",
            f"all photos: simplejpeg CPU / {variant} CPU",
            "ratio",
            _total_ratios(rounds, "simplejpeg", variant, len(sources)),
            goal=">= 1.2" if variant == "requantize" else "",
        )
    section.add(
        "bytes",
        "all photos: compress() bytes / Pillow optimize bytes",
        "ratio",
        [out_bytes["compress"] / out_bytes["pillow_opt"]],
        goal="<= 1.00",
        positive=False,
    )
    _finer_chroma(seconds, section, 0, "4:4:4", "full_chroma")
    _finer_chroma(seconds, section, 1, "4:2:2", "half_chroma")


def _finer_chroma(
    seconds: float, section: Section, subsampling: int, sampling: str, key: str
) -> None:
    """The photos as JPEGs with finer chroma than 4:2:0 (subsampling as Pillow numbers it):
    the pixel path for JPEG sources (compress() transcodes them)."""
    sources = list(_sources(subsampling).values())
    variants: dict[str, Callable[[bytes], object]] = {
        "compress": lambda source: compress(source, 50, LIMITS),
        "pillow_opt": pillow_q50,
        "simplejpeg": _simplejpeg,
    }
    rounds = _timed(sources, variants, seconds)
    out_bytes = {"compress": 0, "pillow_opt": 0}
    gains = []
    for data in sources:
        ours, theirs = compress(data, 50, LIMITS).jpeg, pillow_q50(data)
        out_bytes["compress"] += len(ours)
        out_bytes["pillow_opt"] += len(theirs)
        gains.append(psnr(data, ours) - psnr(data, theirs))
    for variant in ("compress", "pillow_opt"):
        section.add(
            f"{key}.{variant}.vs_limit",
            f"photos as {sampling}: simplejpeg CPU / {variant} CPU",
            "ratio",
            _total_ratios(rounds, "simplejpeg", variant, len(sources)),
            goal=">= 0.95" if variant == "compress" else "",
        )
    section.add(
        f"{key}.bytes",
        f"photos as {sampling}: compress() bytes / Pillow optimize bytes",
        "ratio",
        [out_bytes["compress"] / out_bytes["pillow_opt"]],
        goal="<= 1.00",
        positive=False,
    )
    section.add(
        f"{key}.psnr_gain",
        f"photos as {sampling}: compress() PSNR - Pillow optimize PSNR",
        "dB",
        gains,
        goal=">= 0",
        positive=False,
    )
