"""What one decode may cost, known before it starts.

decode_bytes() estimates the memory a decode takes from the image's header alone (Pillow
has opened it, nothing is decoded): pixels x bytes per pixel of the decoded mode, the
coefficient buffer of a progressive JPEG, the copy an EXIF rotation makes, the RGB
conversion and the encoder's buffers, taking the largest phase. MemoryBudget admits
decodes against a budget for the whole process, so that the sum of what the decodes in
flight may cost never passes it (and its reserve for small decodes): the processor's peak
RSS is its baseline plus 1.25 x the budget.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from PIL import Image

from imgpipe.processor.errors import OverMemoryBudget

MIB = 1024 * 1024
# Bytes per pixel of Pillow's image memory, per mode; every mode not named takes 4.
STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
RGB_BYTES = 4  # Pillow keeps RGB as 4 bytes a pixel
# libjpeg's encoder with Huffman optimisation keeps every coefficient of the image (4:2:0,
# 2 bytes each: 3 bytes a pixel), and Pillow buffers the whole output (at most 1 a pixel).
ENCODE_BYTES = 4
COEFFICIENT_BYTES = 2 * 64  # one 8x8 block of 16-bit DCT coefficients
# libwebp decodes into buffers of its own (ARGB and the lossless transforms' rows) before
# Pillow copies the pixels out: a lossless 7400x7400 WebP peaked at 21 bytes a pixel.
WEBP_DECODER_BYTES = 18
PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}
TRANSPARENT_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# Admits a decode of this many bytes for as long as the context lasts.
Admit = Callable[[int], AbstractContextManager[None]]


def decode_bytes(image: Image.Image, rotated: bool) -> int:
    """The most memory, in bytes, that decoding image, rotating it upright (when rotated)
    and encoding it as a JPEG holds at once."""
    if image.format == "WEBP":
        return webp_decode_bytes(image.width, image.height)
    pixels = image.width * image.height
    stored = pixels * STORED_BYTES.get(image.mode, 4)
    decode = stored + _jpeg_coefficient_bytes(image)
    rotate = 2 * stored if rotated else 0
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        convert = stored + pixels * (2 * RGB_BYTES + 1)  # RGBA copy, alpha band, RGB
    elif image.mode != "RGB":
        convert = stored + pixels * RGB_BYTES
    else:
        convert = stored
    encode = pixels * (RGB_BYTES + ENCODE_BYTES)
    return max(decode, rotate, convert, encode)


def webp_decode_bytes(width: int, height: int) -> int:
    """decode_bytes of a WebP, from its size alone: libwebp's buffers and the pixels Pillow
    copies out of them (RGB or RGBA, 4 bytes a pixel either way) outweigh every later phase
    (an RGBA flattening takes 13 bytes a pixel, a rotation 8)."""
    return width * height * (RGB_BYTES + WEBP_DECODER_BYTES)


def _jpeg_coefficient_bytes(image: Image.Image) -> int:
    """A progressive JPEG is decoded into a buffer of every DCT coefficient first."""
    if image.format != "JPEG" or not image.info.get("progressive"):
        return 0
    layers: list[tuple[str, int, int, int]] = getattr(image, "layer", [])
    if not layers:
        return 0
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    blocks = sum(
        math.ceil(image.width * h / (8 * h_max)) * math.ceil(image.height * v / (8 * v_max))
        for _, h, v, _ in layers
    )
    return blocks * COEFFICIENT_BYTES


def check_fits(size: int, total: int) -> None:
    """Refuses (OverMemoryBudget) a decode of size bytes under a budget of total."""
    if size > total:
        raise OverMemoryBudget(
            f"decoding the image would take about {math.ceil(size / MIB)} MiB, more than "
            f"the codec memory budget of {total // MIB} MiB"
        )


def checked(total: int) -> Admit:
    """An admission that only refuses what could never fit (compress() run on its own)."""

    @contextmanager
    def admit(size: int) -> Iterator[None]:
        check_fits(size, total)
        yield

    return admit


class MemoryBudget:
    """Bytes the decodes in flight may hold together, used from one event loop. A decode
    waits until its estimate fits; one larger than total is refused (OverMemoryBudget,
    check_fits).

    Small decodes (at most a quarter of total) have a reserve of a quarter of total on top
    of it, which large ones never take: however much of the budget large decodes hold, a
    small one waits only for other small ones. Together the decodes hold at most
    1.25 x total."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.reserve = total // 4
        self._free = total + self.reserve
        # The most bytes admitted at once so far.
        self.peak = 0
        self._released = asyncio.Event()

    def large(self, size: int) -> bool:
        """Whether a decode of size bytes is a large one, kept out of the reserve."""
        return size > self.reserve

    def fits(self, size: int) -> bool:
        """Whether size bytes could be taken now."""
        return self._free >= size + (self.reserve if self.large(size) else 0)

    async def acquire(self, size: int) -> None:
        """Waits until size bytes are free and takes them; cancel the wait to give up."""
        while not self.fits(size):
            self._released.clear()
            await self._released.wait()
        self._free -= size
        self.peak = max(self.peak, self.total + self.reserve - self._free)

    def release(self, size: int) -> None:
        self._free += size
        self._released.set()
