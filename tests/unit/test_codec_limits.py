"""The codec's limits, each checked from the header before any decode: JPEG scans, the
memory estimate and its admission, the codecs a BMP or TIFF may use, the ICC profile."""

from __future__ import annotations

import asyncio
import io
import struct

import pytest
from PIL import Image, ImageCms

from devstack.hostile_payloads import progressive_cmyk, rle_bmp, scan_bomb
from devstack.sample_images import encode, photo_like
from imgpipe.processor._jpeg import scan_count
from imgpipe.processor.budget import MIB, MemoryBudget, check_fits, decode_bytes
from imgpipe.processor.compress import check_header, compress
from imgpipe.processor.errors import (
    NotAnImage,
    OverMemoryBudget,
    TooManyPixels,
    TooManyScans,
    UnsafeCodec,
)
from imgpipe.processor.formats import MAX_ICC_BYTES, usable_icc, webp_size
from imgpipe.processor.settings import DecodeSettings

LIMITS = DecodeSettings(max_pixels=100_000_000)


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_scans_are_counted_from_the_headers_without_decoding() -> None:
    image = photo_like(64, 48)
    assert scan_count(encode(image, "JPEG")) == 1
    progressive = encode(image, "JPEG", progressive=True)
    assert scan_count(progressive) == 10  # libjpeg's default progression
    # An EXIF thumbnail (a JPEG in an APP1 segment, scan included) is not counted.
    exif = Image.Exif()
    exif[0x010F] = "maker"
    thumbnail = encode(photo_like(16, 12), "JPEG")
    with_app1 = progressive[:2] + b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    assert scan_count(with_app1 + progressive[2:]) == 10
    assert scan_count(scan_bomb(4000, 4000, 5000)) > 5000


@pytest.mark.parametrize(
    ("data", "scans"),
    [
        (b"", 0),
        (b"\xff\xd8", 0),
        (b"\xff\xd8\xff\xe0\xff\xff", 0),  # a segment running past the end
        (b"\xff\xd8\xff\xda\x00\x08", 1),
        (b"\xff\xd8\xff\xda\x00\x08\x01\xff", 1),  # an 0xFF as the last byte
        (b"\xff\xd8\xff\xff\xda\x00\x08\xff\xda\xff\x00\xff\xda", 3),  # a fill byte
    ],
)
def test_scan_counting_stops_at_the_end_of_the_bytes(data: bytes, scans: int) -> None:
    assert scan_count(data) == scans


def test_a_scan_bomb_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(TooManyScans, match="more than the limit of 100"):
        compress(scan_bomb(8000, 8000, 5000), quality=50, limits=LIMITS)
    progressive = encode(photo_like(64, 48), "JPEG", progressive=True)
    assert compress(progressive, quality=50, limits=LIMITS).width == 64
    with pytest.raises(TooManyScans):
        compress(
            progressive, quality=50, limits=DecodeSettings(LIMITS.max_pixels, max_jpeg_scans=9)
        )


def test_the_memory_estimate_counts_what_the_decode_holds() -> None:
    pixels = 4000 * 3000
    baseline = decode_bytes(opened(_resized_jpeg(4000, 3000)), rotated=False)
    # Decoded RGB (4 bytes a pixel in Pillow) beside the encoder's coefficients and output.
    assert baseline == pixels * 8
    # Progressive CMYK: 4 bytes a pixel of pixels, 8 of coefficients, then the RGB copy.
    cmyk = decode_bytes(opened(progressive_cmyk(4000, 3000)), rotated=False)
    assert cmyk >= pixels * 12
    # RGBA flattened: the source, its RGBA copy, the alpha band and the RGB result.
    rgba = opened(encode(Image.new("RGBA", (4000, 3000)), "PNG"))
    assert decode_bytes(rgba, rotated=True) == pixels * 13
    # A rotation copies the decoded frame: the larger of that and the encoder's buffers.
    cmyk_baseline = opened(encode(Image.new("CMYK", (4000, 3000)), "JPEG"))
    assert decode_bytes(cmyk_baseline, rotated=True) == pixels * 8


def _resized_jpeg(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height)), "JPEG")


def test_a_decode_over_the_memory_budget_is_refused() -> None:
    limits = DecodeSettings(LIMITS.max_pixels, memory_bytes=256 * MIB)
    with pytest.raises(OverMemoryBudget, match="more than the codec memory budget of 256 MiB"):
        compress(progressive_cmyk(6000, 4000), quality=50, limits=limits)


async def test_admission_holds_each_estimate_until_it_is_released() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(OverMemoryBudget):
        check_fits(101, budget.total)
    await budget.acquire(60)
    await budget.acquire(40)
    assert budget.peak == 100
    # Large decodes (over a quarter) hold the whole budget: a small one still fits, in the
    # reserve that large ones never take.
    assert budget.fits(25)
    await budget.acquire(25)
    assert budget.peak == 125
    assert not budget.fits(1)
    budget.release(25)
    assert budget.fits(25)
    assert not budget.fits(26)
    # A decode that does not fit waits until enough is released.
    waiting = asyncio.create_task(budget.acquire(100))
    budget.release(60)
    assert not budget.fits(100)
    budget.release(40)
    await asyncio.wait_for(waiting, 10)
    assert (budget.fits(25), budget.fits(26)) == (True, False)  # the reserve is left


def test_rle_bmp_is_refused_and_uncompressed_bmp_taken() -> None:
    with pytest.raises(UnsafeCodec, match="RLE8-compressed; only uncompressed BMP"):
        compress(rle_bmp(2000, 2000), quality=50, limits=LIMITS)
    assert compress(encode(photo_like(40, 30), "BMP"), quality=50, limits=LIMITS).width == 40


@pytest.mark.parametrize("codec", ["raw", "packbits", "tiff_lzw", "tiff_adobe_deflate"])
def test_tiff_with_a_listed_codec_is_taken(codec: str) -> None:
    data = encode(photo_like(40, 30), "TIFF", compression=codec)
    assert compress(data, quality=50, limits=LIMITS).source_format == "TIFF"


@pytest.mark.parametrize("codec", ["jpeg", "group4"])
def test_tiff_with_another_codec_is_refused(codec: str) -> None:
    image = photo_like(40, 32)
    data = encode(image.convert("1") if codec == "group4" else image, "TIFF", compression=codec)
    with pytest.raises(UnsafeCodec, match=f"the TIFF is {codec}-compressed"):
        compress(data, quality=50, limits=LIMITS)


def srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_an_rgb_profile_of_a_sane_size_is_kept() -> None:
    assert usable_icc(srgb()) == srgb()


def test_an_oversized_or_malformed_or_non_rgb_profile_is_dropped() -> None:
    profile = srgb()
    padded = bytearray(profile + bytes(MAX_ICC_BYTES))
    struct.pack_into(">I", padded, 0, len(padded))
    assert usable_icc(bytes(padded)) is None
    assert usable_icc(profile[:-1]) is None  # its header says otherwise
    assert usable_icc(profile[:16] + b"CMYK" + profile[20:]) is None
    assert usable_icc(profile[:36] + b"xxxx" + profile[40:]) is None
    too_many_tags = bytearray(profile)
    struct.pack_into(">I", too_many_tags, 128, 100_000)
    assert usable_icc(bytes(too_many_tags)) is None
    assert usable_icc(None) is None


def test_a_half_megabyte_profile_in_a_small_png_is_not_copied() -> None:
    profile = bytearray(srgb() + bytes(512 * 1024))
    struct.pack_into(">I", profile, 0, len(profile))
    data = encode(photo_like(32, 32), "PNG", icc_profile=bytes(profile))
    result = compress(data, quality=50, limits=LIMITS)
    assert len(result.jpeg) < 64 * 1024
    assert "icc_profile" not in opened(result.jpeg).info


def test_the_header_checks_refuse_without_decoding() -> None:
    small_budget = DecodeSettings(LIMITS.max_pixels, memory_bytes=256 * MIB)
    with pytest.raises(TooManyScans):
        check_header(scan_bomb(8000, 8000, 5000), LIMITS)
    with pytest.raises(OverMemoryBudget):
        check_header(progressive_cmyk(6000, 4000), small_budget)
    with pytest.raises(UnsafeCodec):
        check_header(rle_bmp(100, 100), LIMITS)
    check_header(encode(photo_like(40, 30), "PNG"), LIMITS)


@pytest.mark.parametrize(
    ("mode", "options", "chunk"),
    [
        ("RGB", {"quality": 80}, b"VP8 "),
        ("RGB", {"lossless": True}, b"VP8L"),
        ("RGBA", {"quality": 80}, b"VP8X"),  # alpha: the extended format
    ],
)
def test_a_webps_size_and_estimate_come_from_its_first_chunk(
    mode: str, options: dict[str, object], chunk: bytes
) -> None:
    """Read without libwebp (native, and so left to the codec workers): the estimate is
    known before a worker is taken, so a large WebP goes to the large decodes' lane."""
    image = photo_like(301, 199)
    if mode == "RGBA":
        image.putalpha(image.convert("L"))
    data = encode(image, "WEBP", **options)
    assert data[12:16] == chunk
    assert webp_size(data) == (301, 199) == opened(data).size
    assert check_header(data, LIMITS) == decode_bytes(opened(data), rotated=False)
    with pytest.raises(OverMemoryBudget):
        check_header(data, DecodeSettings(LIMITS.max_pixels, memory_bytes=301 * 199 * 21))
    with pytest.raises(TooManyPixels):
        check_header(data, DecodeSettings(max_pixels=301 * 198))
    with pytest.raises(NotAnImage, match="corrupt WEBP image"):
        check_header(data[:12] + b"ALPH" + data[16:], LIMITS)
