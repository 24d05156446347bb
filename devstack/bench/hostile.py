"""Section 10: the codec's defences against hostile images, through one real processor
(the console script, default budgets and workers) fetching them from a loopback server.

Scan bombs must fail fast; a small image must not wait behind bombs and worst-case
decodes in flight; and the processor's peak RSS after worst-case decodes of every allowed
format must stay bounded. The image server runs in a process of its own: serving hundreds
of MB of worst cases from this one would hold up the client's calls here, not the
processor's.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc

from devstack import hostile_payloads as payloads
from devstack.bench import procstat
from devstack.bench.config import Config
from devstack.bench.figures import Section
from devstack.image_server import ImageServer
from devstack.ports import free_port
from devstack.sample_images import sample
from devstack.stack import Service
from imgpipe.v1 import processor_pb2, processor_pb2_grpc

CALL_TIMEOUT = 120.0
# A processor at its in-flight limit refuses a call at once; the small image is asked
# again after this long, as ingest would ask it (or another replica) again.
FULL_RETRY_SECONDS = 0.01
START_TIMEOUT = 30.0
SCAN_BOMB_SCANS = 5000
SMALL = (816, 612)  # 0.5 MP
# Worst cases by name: a generator and the side (before Config.hostile_scale) that keeps
# the decode's estimate under the default 768 MiB codec memory budget.
WORST: dict[str, tuple[Callable[[int, int], bytes], int, str]] = {
    "cmyk.jpg": (payloads.progressive_cmyk, 7800, "progressive CMYK JPEG, 12 B/px"),
    "rotated.png": (payloads.rotated_rgba_png, 7400, "RGBA PNG rotated by EXIF, 13 B/px"),
    "large.gif": (payloads.large_gif, 9500, "GIF, 8 B/px"),
    "lossless.webp": (payloads.lossless_webp, 5900, "lossless RGBA WebP, 22 B/px"),
    "deflate.tiff": (payloads.deflate_tiff, 9500, "Deflate RGB TIFF, 8 B/px"),
    "palette.bmp": (payloads.palette_bmp, 7000, "uncompressed 8-bit BMP, 1 byte of source a pixel"),
    "rle.bmp": (payloads.rle_bmp, 9500, "RLE8 BMP (refused)"),
}


def _side(config: Config, side: int) -> int:
    return max(16, round(side * config.hostile_scale))


@contextmanager
def _processor(workdir: Path) -> Iterator[Service]:
    """imgpipe-processor with its defaults: no inherited IMGPIPE_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPIPE_")}
    env |= {
        "IMGPIPE_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "IMGPIPE_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "IMGPIPE_STORAGE_URL": (workdir / "hostile-out").as_uri(),
        "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "IMGPIPE_LOG_LEVEL": "WARNING",
    }
    service = Service("processor-hostile", "imgpipe-processor", env, workdir / "hostile.log")
    service.spawn()
    assert service.process is not None
    try:
        service.wait_healthy(time.monotonic() + START_TIMEOUT)
        yield service
    finally:
        service.process.kill()
        service.process.wait()


def _serve(routes: dict[str, bytes], port: multiprocessing.connection.Connection) -> None:
    with ImageServer() as images:
        for path, body in routes.items():
            images.add(path, body)
        port.send(images.port)
        with suppress(EOFError):
            port.recv()  # until the bench closes its end


@contextmanager
def _image_server(routes: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """routes served by a forked process; yields each path's URL."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    server = multiprocessing.get_context("fork").Process(
        target=_serve, args=(routes, theirs), daemon=True
    )
    server.start()
    theirs.close()
    try:
        port = ours.recv()
        yield {path: f"http://127.0.0.1:{port}{path}" for path in routes}
    finally:
        ours.close()
        server.join(timeout=5)
        server.kill()


def _request(url: str) -> processor_pb2.ProcessImageRequest:
    return processor_pb2.ProcessImageRequest(source_url=url, output_key=f"{uuid.uuid4()}/1-0.jpg")


def _call(stub: processor_pb2_grpc.ProcessorServiceStub, url: str) -> tuple[float, str]:
    """Seconds and status code name of one ProcessImage call."""
    started = time.monotonic()
    try:
        stub.ProcessImage(_request(url), timeout=CALL_TIMEOUT)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    return time.monotonic() - started, code.name


def _call_until_taken(
    stub: processor_pb2_grpc.ProcessorServiceStub, url: str
) -> tuple[float, str, int]:
    """Seconds until url's call is taken and answered, its status code name, and how many
    times the processor refused it first as full (RESOURCE_EXHAUSTED)."""
    started = time.monotonic()
    refused = 0
    while True:
        _, code = _call(stub, url)
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED.name:
            return time.monotonic() - started, code, refused
        refused += 1
        time.sleep(FULL_RETRY_SECONDS)


def _code(error: BaseException | None) -> str:
    if error is None:
        return "OK"
    return error.code().name if isinstance(error, grpc.RpcError) else type(error).__name__


def _peaks_mib(root: int) -> list[float]:
    """VmHWM of root, then of every live process below it (fork server, codec workers);
    their sum is at least the peak of the whole, since their peaks need not coincide."""
    peaks = []
    for pid in [root, *procstat.descendants(root)]:
        try:
            peaks.append(procstat.hwm_mib(pid))
        except (OSError, KeyError):
            continue  # gone meanwhile
    return peaks


@contextmanager
def _family_rss_peak(root: int, every: float = 0.01) -> Iterator[list[float]]:
    """The most VmRSS root and every process below it held together at one moment,
    sampled every `every` seconds while the block runs (the list's one item, after)."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            total = 0.0
            for pid in [root, *procstat.descendants(root)]:
                with suppress(OSError, KeyError):
                    total += procstat.rss_mib(pid)
            peak[0] = max(peak[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def hostile_section(config: Config, workdir: Path, section: Section) -> None:
    runs = config.hostile_runs
    bomb_side = _side(config, 8000)
    routes = {
        "/scan-bomb.jpg": payloads.scan_bomb(bomb_side, bomb_side, SCAN_BOMB_SCANS),
        "/small.jpg": sample(*SMALL, "JPEG"),
    }
    routes |= {
        f"/{name}": make(_side(config, side), _side(config, side))
        for name, (make, side, _) in WORST.items()
    }
    with _image_server(routes) as urls, _processor(workdir) as processor:
        assert processor.process is not None
        bomb, small = urls["/scan-bomb.jpg"], urls["/small.jpg"]
        worst = {name: urls[f"/{name}"] for name in WORST}
        with grpc.insecure_channel(processor.grpc_target) as channel:
            stub = processor_pb2_grpc.ProcessorServiceStub(channel)
            _call(stub, small)  # warm-up: codec workers, imports
            bombs = [_call(stub, bomb) for _ in range(runs)]
            alone = [_call(stub, small)[0] for _ in range(runs)]
            loaded, codes, small_codes, refused = [], Counter[tuple[str, str]](), Counter[str](), 0
            with _family_rss_peak(processor.process.pid) as together:
                for _ in range(runs):
                    attack = [bomb, bomb, *worst.values()]
                    futures = [
                        stub.ProcessImage.future(_request(u), timeout=CALL_TIMEOUT) for u in attack
                    ]
                    seconds, code, full = _call_until_taken(stub, small)
                    loaded.append(seconds)
                    small_codes[code] += 1
                    refused += full
                    for name, future in zip(
                        ["scan-bomb.jpg"] * 2 + list(worst), futures, strict=True
                    ):
                        codes[name, _code(future.exception())] += 1
        peaks = _peaks_mib(processor.process.pid)
    megapixels = bomb_side * bomb_side / 1e6
    section.notes.append(
        f"one processor, default settings (codec memory budget, CPU limit, workers); scan "
        f"bomb: progressive greyscale JPEG {bomb_side}x{bomb_side} ({megapixels:.0f} MP), "
        f"{SCAN_BOMB_SCANS} empty scans; under attack = 2 scan bombs and every worst case "
        f"below sent at once, then the small image (asked again after "
        f"{FULL_RETRY_SECONDS * 1000:.0f} ms while the processor refuses it as full: "
        f"{refused} times in {runs} rounds); its answers under attack: "
        + ", ".join(f"{n} {code}" for code, n in sorted(small_codes.items()))
    )
    bomb_codes = sorted({code for _, code in bombs})
    section.add(
        "bomb.seconds",
        f"scan bomb {megapixels:.0f} MP: call to {'/'.join(bomb_codes)}",
        "s",
        [seconds for seconds, _ in bombs],
        goal="< 2, FAILED_PRECONDITION",
    )
    section.add("small.alone.ms", "0.5 MP JPEG alone", "ms", [s * 1000 for s in alone])
    section.add("small.loaded.ms", "0.5 MP JPEG under attack", "ms", [s * 1000 for s in loaded])
    section.add(
        "small.loaded.ratio",
        "0.5 MP JPEG under attack / alone (median)",
        "ratio",
        [s / statistics.median(alone) for s in loaded],
        goal="≈ 1 (no wait)",
    )
    section.add(
        "peak_rss.mib",
        "processor + codec workers peak RSS, together (sampled / 10 ms)",
        "MiB",
        together,
        goal="< 1536",
    )
    section.add(
        "peak_rss_hwm_sum.mib",
        "  upper bound: each process's own peak (VmHWM), summed",
        "MiB",
        [sum(peaks)],
    )
    below = ", ".join(f"{p:.0f}" for p in peaks[1:])
    section.notes.append(f"VmHWM: processor {peaks[0]:.0f} MiB; processes below it: {below} MiB")
    cases = {"scan-bomb.jpg": (bomb_side, "scan bomb, 2 a round")}
    cases |= {name: (_side(config, side), what) for name, (_, side, what) in WORST.items()}
    for name, (s, what) in cases.items():
        outcome = ", ".join(
            f"{n} {code}" for (case, code), n in sorted(codes.items()) if case == name
        )
        section.notes.append(f"{name} {s}x{s} ({what}): {outcome}")
    ok = sum(n for (_, code), n in codes.items() if code == "OK")
    section.add(
        "worst.ok",
        "worst cases + bombs under attack: OK",
        "calls",
        [float(ok)],
        positive=False,
    )
    section.add(
        "worst.failed",
        "worst cases + bombs under attack: failed",
        "calls",
        [float(sum(codes.values()) - ok)],
        positive=False,
    )
