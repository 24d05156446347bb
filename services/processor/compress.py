"""Source bytes to JPEG. Pure and CPU-bound: the codec workers run it.

A 4:2:0 YCbCr or greyscale JPEG is requantised in the DCT domain (_jpeg.requantize: its
coefficients rescaled to the target tables, no pixels decoded; a greyscale one stays
greyscale), turned upright there too when its EXIF orientation says so and it is whole
MCUs. Another YCbCr JPEG (4:4:4, 4:2:2, 4:4:0, or one turned that is not whole MCUs) is
transcoded (_jpeg.transcode: decoded to its Y, Cb and Cr planes, turned upright, chroma
halved to 4:2:0, encoded; no RGB), unless it is turned 4:4:4 or a turn would mirror its
subsampled chroma along an odd length. Every other source is decoded and encoded again
with Pillow (the pixel path).

The format comes from the first bytes (formats.detect) and only that format's Pillow plugin
opens them. Any input it cannot turn into an image is a permanent error (NotAnImage,
TooManyPixels, TooManyFrames, TooManyScans, UnsafeCodec or OverMemoryBudget), whatever
Pillow raised. Every limit is checked from the header, before decoding: pixels, frames,
JPEG scans, the codec (formats.check_codec), and the memory the decode will take, which
is admitted against the process's codec memory budget for as long as the decode lasts.
"""

from __future__ import annotations

import io
import time
import traceback
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from imgpipe.processor._jpeg import requantize, transcode
from imgpipe.processor.budget import (
    Admit,
    check_fits,
    checked,
    decode_bytes,
    webp_decode_bytes,
)
from imgpipe.processor.errors import NotAnImage, TooManyFrames, TooManyPixels
from imgpipe.processor.formats import (
    check_codec,
    check_scans,
    detect,
    gif_frame_count,
    usable_icc,
    webp_size,
)
from imgpipe.processor.settings import DecodeSettings

DEFAULT_QUALITY = 50
MAX_QUALITY = 95
MAX_JPEG_SIDE = 65_500  # libjpeg's JPEG_MAX_DIMENSION
WHITE = (255, 255, 255)
TRANSPARENT_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
ORIENTATION = 0x0112
UPRIGHT = 1
ORIENTATIONS = range(1, 9)  # the EXIF orientations; Pillow's exif_transpose ignores others
TRANSPOSING = range(5, 9)  # the orientations that swap width and height


@dataclass(frozen=True)
class Compressed:
    jpeg: bytes
    width: int
    height: int
    # The format the source was decoded as: JPEG, PNG, WEBP, GIF, BMP, TIFF (or MPO).
    source_format: str
    # The stages it went through, (name, start, end) by time.time_ns(): "requantize" or
    # "transcode", or "decode" then "encode"; for the traces of the process that asked, as
    # compress may run in another process (codec_pool).
    stages: tuple[tuple[str, int, int], ...] = ()
    # SHA-256 of the source bytes, when the codec worker was asked for it (codec_pool).
    source_sha256: bytes = b""


def limit_pillow(max_pixels: int) -> None:
    """Makes Pillow's own decompression-bomb check use max_pixels and raise, not warn.

    Process-wide; the console script calls it once at start.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def compress(
    data: bytes, quality: int, limits: DecodeSettings, admit: Admit | None = None
) -> Compressed:
    """Decodes data (first frame, upright per EXIF, flattened onto white) and encodes it
    as a JPEG at quality (1-95; 0 means 50), keeping a sane RGB ICC profile and no other
    metadata. admit holds the decode's memory estimate for as long as it runs; without one,
    the estimate is only checked against limits.memory_bytes."""
    if not 0 <= quality <= MAX_QUALITY:
        raise ValueError(f"quality must be 0-{MAX_QUALITY}, not {quality}")
    decode_started = time.time_ns()
    detected, source = _open(data, limits)
    image: Image.Image | None = None
    try:
        source_format = source.format or detected
        icc = usable_icc(source.info.get("icc_profile"))
        orientation = _orientation(source)
        rotated = orientation != UPRIGHT
        with (admit or checked(limits.memory_bytes))(decode_bytes(source, rotated)):
            if detected == "JPEG":
                done = _jpeg_to_jpeg(data, quality or DEFAULT_QUALITY, icc, orientation)
                if done is not None:
                    jpeg, stage_name = done
                    stage = (stage_name, decode_started, time.time_ns())
                    width, height = source.size
                    if orientation in TRANSPOSING:
                        width, height = height, width
                    return Compressed(jpeg, width, height, source_format, stages=(stage,))
            try:
                # In place: an upright image is not copied (a full frame saved per image).
                ImageOps.exif_transpose(source, in_place=True)
                image = _to_rgb(source)
            except Exception as exc:
                raise _decode_error(exc, f"corrupt or truncated {source_format} image") from None
            finally:
                # Frees the source's pixels now, even while an error from here is being
                # handled (its traceback holds this frame); `with source` would only close
                # the file.
                if image is not source:
                    source.close()
            # Drop every piece of source metadata (EXIF with GPS, XMP, comments) but an RGB
            # colour profile: the JPEG encoder writes only what it is given and what is left
            # in info.
            image.info.clear()
            out = io.BytesIO()
            encode_started = time.time_ns()
            image.save(
                out,
                format="JPEG",
                quality=quality or DEFAULT_QUALITY,
                optimize=True,
                icc_profile=icc,
            )
    finally:
        if image is not source:
            source.close()
    return Compressed(
        out.getvalue(),
        image.width,
        image.height,
        source_format,
        stages=(
            ("decode", decode_started, encode_started),
            ("encode", encode_started, time.time_ns()),
        ),
    )


def _jpeg_to_jpeg(
    data: bytes, quality: int, icc: bytes | None, orientation: int
) -> tuple[bytes, str] | None:
    """The JPEG and the stage that made it, without RGB pixels: requantised, or else
    transcoded; None when neither takes the source."""
    if orientation in ORIENTATIONS:
        jpeg = requantize(data, quality, icc, orientation)
        if jpeg is not None:
            return jpeg, "requantize"
    jpeg = transcode(data, quality, icc, orientation)
    if jpeg is not None:
        return jpeg, "transcode"
    return None


def check_header(data: bytes, limits: DecodeSettings) -> int:
    """Every check compress() makes before decoding but a WebP's frame count, for a refusal
    without waiting for a codec worker; the decode's memory estimate. Pillow's header
    parsers for these formats are Python; WebP's is native (libwebp), so a WebP's size is
    read here from its first chunk instead (formats.webp_size)."""
    if detect(data) == "WEBP":
        width, height = webp_size(data)
        _check_size(width, height, limits.max_pixels)
        estimate = webp_decode_bytes(width, height)
    else:
        _, source = _open(data, limits)
        with source:
            estimate = decode_bytes(source, _orientation(source) != UPRIGHT)
    check_fits(estimate, limits.memory_bytes)
    return estimate


def _open(data: bytes, limits: DecodeSettings) -> tuple[str, Image.Image]:
    """The detected format and the source opened (header only) once it passes every
    limit but memory; the caller closes it."""
    detected = detect(data)
    if detected == "JPEG":
        check_scans(data, limits.max_jpeg_scans)
    try:
        source = Image.open(io.BytesIO(data), formats=[detected])
    except Exception as exc:
        raise _decode_error(exc, f"corrupt {detected} image") from None
    try:
        _check_size(*source.size, limits.max_pixels)
        _check_frames(source, data, limits.max_frames)
        check_codec(source)
    except BaseException:
        source.close()
        raise
    return detected, source


def _orientation(source: Image.Image) -> int:
    """The EXIF orientation, from the header; 0 for a value that is not an integer (the
    pixel path's exif_transpose makes of it what it does).

    A PNG's EXIF is the eXIf chunk before the image data (where the PNG specification puts
    it): Pillow's getexif() would decode the whole image to look for one after it, before
    any budget is checked."""
    try:
        if source.format == "PNG":
            exif = Image.Exif()
            if "exif" in source.info:
                exif.load(source.info["exif"])
        else:
            exif = source.getexif()
        orientation = exif.get(ORIENTATION, UPRIGHT)
    except Exception as exc:
        raise _decode_error(exc, f"corrupt EXIF in a {source.format} image") from None
    return orientation if isinstance(orientation, int) else 0


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooManyPixels(
            f"the image is {width}x{height}, more than the limit of {max_pixels} pixels"
        )
    if max(width, height) > MAX_JPEG_SIDE:
        raise TooManyPixels(
            f"the image is {width}x{height}; a JPEG is at most {MAX_JPEG_SIDE} pixels a side"
        )


def _check_frames(source: Image.Image, data: bytes, max_frames: int) -> None:
    """Refuses an animation of more than max_frames frames, without decoding any.

    PNG (APNG), WebP and MPO declare their frame count in a header; a GIF's frames are
    counted by walking its blocks, up to the limit (Pillow's n_frames would walk them all).
    TIFF pages are not frames of an animation and only the first is read.
    """
    if source.format == "TIFF":
        return
    if source.format == "GIF":
        frames = gif_frame_count(data, stop_after=max_frames)
    else:
        frames = int(getattr(source, "n_frames", 1))
    if frames > max_frames:
        raise TooManyFrames(
            f"the {source.format} image has more than {max_frames} frames, the limit"
        )


def _decode_error(exc: Exception, what: str) -> NotAnImage | TooManyPixels:
    """Pillow raises many kinds of exception on hostile bytes; all are permanent.

    The frames of the failed decode are cleared: their locals (a decoder, say) hold the
    partly decoded pixels, which the error, through its context, would otherwise keep
    alive for as long as it is handled.
    """
    traceback.clear_frames(exc.__traceback__)
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
