"""Source bytes to JPEG with Pillow. Pure and CPU-bound: run it in the codec executor.

Any input it cannot turn into an image is a permanent error (NotAnImage or TooManyPixels),
whatever Pillow raised; the pixel limit is checked from the header, before decoding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from services.processor.errors import NotAnImage, TooManyPixels

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_QUALITY = 50
MAX_QUALITY = 95
MAX_JPEG_SIDE = 65_500  # libjpeg's JPEG_MAX_DIMENSION
WHITE = (255, 255, 255)
TRANSPARENT_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True)
class Compressed:
    jpeg: bytes
    width: int
    height: int
    # The format the source was decoded as: JPEG, PNG, WEBP, GIF, BMP, TIFF (or MPO).
    source_format: str


def limit_pillow(max_pixels: int) -> None:
    """Makes Pillow's own decompression-bomb check use max_pixels and raise, not warn.

    Process-wide; the console script calls it once at start.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def compress(data: bytes, quality: int, max_pixels: int) -> Compressed:
    """Decodes data (first frame, upright per EXIF, flattened onto white) and encodes it
    as a JPEG at quality (1-95; 0 means 50), keeping the ICC profile of an RGB source and
    no other metadata."""
    if not 0 <= quality <= MAX_QUALITY:
        raise ValueError(f"quality must be 0-{MAX_QUALITY}, not {quality}")
    try:
        source = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception as exc:
        raise _decode_error(exc, "not a JPEG, PNG, WebP, GIF, BMP or TIFF image") from None
    with source:
        source_format = source.format or "unknown"
        width, height = source.size
        if width * height > max_pixels:
            raise TooManyPixels(
                f"the image is {width}x{height}, more than the limit of {max_pixels} pixels"
            )
        if max(width, height) > MAX_JPEG_SIDE:
            raise TooManyPixels(
                f"the image is {width}x{height}; a JPEG is at most {MAX_JPEG_SIDE} pixels a side"
            )
        icc = source.info.get("icc_profile")
        try:
            image = _to_rgb(ImageOps.exif_transpose(source))
        except Exception as exc:
            raise _decode_error(exc, f"corrupt or truncated {source_format} image") from None
    # Drop every piece of source metadata (EXIF, XMP, comments) but an RGB colour profile.
    image.info.clear()
    out = io.BytesIO()
    image.save(
        out,
        format="JPEG",
        quality=quality or DEFAULT_QUALITY,
        optimize=True,
        icc_profile=icc if _is_rgb_profile(icc) else None,
    )
    return Compressed(out.getvalue(), image.width, image.height, source_format)


def _decode_error(exc: Exception, what: str) -> NotAnImage | TooManyPixels:
    """Pillow raises many kinds of exception on hostile bytes; all are permanent."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return TooManyPixels(f"the image has too many pixels: {exc}")
    return NotAnImage(f"{what}: {exc}" if str(exc) else what)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode.startswith("I;16"):
        # 16-bit greyscale: scale to 8 bits (a plain convert would clip to white).
        return image.point(lambda v: v / 256, "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _is_rgb_profile(icc: object) -> bool:
    """An ICC profile whose data colour space (header bytes 16-19) is RGB; a CMYK or grey
    profile would misdescribe the RGB output."""
    return isinstance(icc, bytes) and icc[16:20] == b"RGB "
