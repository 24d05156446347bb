"""The DCT-domain requantiser (imgpipe.processor._jpeg): JPEG -> JPEG without pixels.

Against the pixel path (decode, encode at q50 with Huffman optimisation, as Pillow does):
the output decodes to within REQUANT_PSNR_SLACK dB of the pixel path's PSNR against the
source, and is at most SIZE_SLACK of its size (in practice 0.92-1.003x on these sources,
0.97-1.00x on photographs: `make bench`)."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image, ImageCms, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from devstack.bench.photos import pillow_q50, psnr
from devstack.sample_images import encode, photo_like
from imgpipe.processor._jpeg import requantize
from imgpipe.processor.compress import ORIENTATION, compress
from imgpipe.processor.settings import DecodeSettings

REQUANT_PSNR_SLACK = 0.2
# A q75 greyscale source comes out 0.23 dB below the pixel path; the others within 0.01.
GREY_PSNR_SLACK = 0.25
SIZE_SLACK = 1.01
# Turning a JPEG upright in the DCT domain loses nothing; its decoder's rounding, 50 dB.
LOSSLESS_TURN_PSNR = 45
# A turned 160x96 synthetic image: its optimal Huffman tables and Pillow's differ by a byte
# or so either way at this size (photographs: 0.97-1.00x, README).
TURNED_SIZE_SLACK = 1.01
LIMITS = DecodeSettings(max_pixels=100_000_000)


@pytest.mark.parametrize("source_quality", [95, 90, 85, 60, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_requantised_output_is_as_good_and_no_larger_than_the_pixel_paths(
    source_quality: int, seed: int
) -> None:
    source = encode(photo_like(640, 480, seed), "JPEG", quality=source_quality)
    requantised = requantize(source, 50)
    assert requantised is not None
    expected = pillow_q50(source)
    assert len(requantised) <= SIZE_SLACK * len(expected)
    assert psnr(source, requantised) >= psnr(source, expected) - REQUANT_PSNR_SLACK
    with Image.open(io.BytesIO(requantised)) as image:
        assert (image.size, image.mode) == ((640, 480), "RGB")
        assert image.info.get("progressive") is None
    # Its Huffman tables code every symbol written: read back strictly (a warning would
    # give None), the same coefficients come out and are coded the same way again.
    assert requantize(requantised, 50) == requantised


@pytest.mark.parametrize(
    ("width", "height"),
    [(1, 1), (2, 2), (17, 9), (9, 17), (15, 15), (33, 31), (100, 1), (1, 100), (127, 65)],
)
def test_sizes_that_leave_partial_mcus_are_coded_exactly(width: int, height: int) -> None:
    """The encoder pads the right and bottom MCUs with blocks of its own; their symbols
    are in the Huffman tables too. (Against the pixel path an image of a few blocks is
    noise: one block's rounding moves its PSNR by dBs and its size by bytes.)"""
    source = encode(photo_like(width, height, 0), "JPEG", quality=90)
    requantised = requantize(source, 50)
    assert requantised is not None
    assert requantize(requantised, 50) == requantised
    assert psnr(source, requantised) > 25
    with Image.open(io.BytesIO(requantised)) as image:
        assert image.size == (width, height)


def test_a_source_coarser_than_the_target_keeps_its_own_tables() -> None:
    source = encode(photo_like(320, 240), "JPEG", quality=20)
    requantised = requantize(source, 50)
    assert requantised is not None
    with Image.open(io.BytesIO(source)) as before, Image.open(io.BytesIO(requantised)) as after:
        assert isinstance(before, JpegImageFile)
        assert isinstance(after, JpegImageFile)
        assert list(after.quantization[0]) == list(before.quantization[0])
    assert psnr(source, requantised) == math.inf  # the same coefficients
    assert len(requantised) <= len(source)


def test_a_progressive_source_is_requantised_to_a_baseline_jpeg() -> None:
    source = encode(photo_like(320, 240), "JPEG", quality=90, progressive=True)
    requantised = requantize(source, 50)
    assert requantised is not None
    assert psnr(source, requantised) > 30


@pytest.mark.parametrize("source_quality", [95, 90, 75, 50])
def test_a_greyscale_source_stays_greyscale_smaller_than_the_pixel_paths(
    source_quality: int,
) -> None:
    source = encode(photo_like(641, 481).convert("L"), "JPEG", quality=source_quality)
    requantised = requantize(source, 50)
    assert requantised is not None
    assert requantize(requantised, 50) == requantised
    assert len(requantised) <= len(pillow_q50(source))
    assert psnr(source, requantised) >= psnr(source, pillow_q50(source)) - GREY_PSNR_SLACK
    with Image.open(io.BytesIO(requantised)) as image:
        assert (image.size, image.mode) == ((641, 481), "L")


def _grey_block_with_an_ac_of(magnitude_bits: int) -> bytes:
    """An 8x8 greyscale baseline JPEG, written by hand, whose one AC coefficient takes
    magnitude_bits bits (a baseline JPEG codes at most 10); its tables are coarser than
    q50's, so the requantiser keeps the coefficient as it is."""
    coded = "0" + "0" + "1" * magnitude_bits + "10"  # DC diff 0, AC (run 0, size), EOB
    coded += "1" * (-len(coded) % 8)
    scan = int(coded, 2).to_bytes(len(coded) // 8, "big").replace(b"\xff", b"\xff\x00")
    ac_symbol = magnitude_bits.to_bytes(1, "big")
    return b"".join(
        [
            b"\xff\xd8",
            b"\xff\xdb\x00\x43\x00" + b"\xff" * 64,
            b"\xff\xc0\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00",
            b"\xff\xc4\x00\x14\x00\x01" + b"\x00" * 15 + b"\x00",
            b"\xff\xc4\x00\x15\x10\x01\x01" + b"\x00" * 14 + ac_symbol + b"\x00",
            b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00",
            scan,
            b"\xff\xd9",
        ]
    )


def test_a_coefficient_too_large_for_a_baseline_jpeg_leaves_it_to_the_pixel_path() -> None:
    assert requantize(_grey_block_with_an_ac_of(10), 50) is not None
    assert requantize(_grey_block_with_an_ac_of(11), 50) is None


@pytest.mark.parametrize(
    ("image", "params"),
    [
        (photo_like(64, 48), {"subsampling": 0}),  # 4:4:4: the pixel path writes 4:2:0
        (photo_like(64, 48), {"subsampling": 1}),  # 4:2:2
        (photo_like(64, 48).convert("CMYK"), {}),
    ],
    ids=["444", "422", "cmyk"],
)
def test_other_sources_are_left_to_the_pixel_path(
    image: Image.Image, params: dict[str, object]
) -> None:
    assert requantize(encode(image, "JPEG", **params), 50) is None


def _with_orientation(image: Image.Image, orientation: int, quality: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(image, "JPEG", quality=quality, exif=exif)


def _upright_pixels(source: bytes) -> bytes:
    with Image.open(io.BytesIO(source)) as image:
        out = io.BytesIO()
        ImageOps.exif_transpose(image).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(2, 9))
def test_an_exif_orientation_is_applied_losslessly_to_whole_mcus(orientation: int) -> None:
    """Turned in the DCT domain: with the coefficients kept (a q50 source), the output is
    the source's pixels turned upright, but for the decoder's rounding."""
    source = _with_orientation(photo_like(160, 96), orientation, 50)
    turned = requantize(source, 50, None, orientation)
    assert turned is not None
    assert requantize(turned, 50) == turned
    assert psnr(_upright_pixels(source), turned) >= LOSSLESS_TURN_PSNR
    with Image.open(io.BytesIO(turned)) as image:
        assert image.size == ((96, 160) if orientation >= 5 else (160, 96))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_turned_source_is_as_good_and_no_larger_than_the_pixel_paths(orientation: int) -> None:
    source = _with_orientation(photo_like(160, 96), orientation, 90)
    result = compress(source, 50, LIMITS)
    assert [stage for stage, _, _ in result.stages] == ["requantize"]
    assert (result.width, result.height) == ((96, 160) if orientation >= 5 else (160, 96))
    with Image.open(io.BytesIO(source)) as image:
        upright = ImageOps.exif_transpose(image)
        out = io.BytesIO()
        upright.save(out, "JPEG", quality=50, optimize=True)
    expected = out.getvalue()
    assert len(result.jpeg) <= len(expected) * TURNED_SIZE_SLACK
    reference = _upright_pixels(source)
    assert psnr(reference, result.jpeg) >= psnr(reference, expected) - REQUANT_PSNR_SLACK


@pytest.mark.parametrize(("width", "height"), [(161, 96), (160, 97), (8, 8)])
def test_a_turn_with_partial_mcus_is_left_to_the_pixel_path(width: int, height: int) -> None:
    source = _with_orientation(photo_like(width, height), 6, 90)
    assert requantize(source, 50, None, 6) is None
    assert requantize(source, 50) is not None


def test_corrupt_sources_are_left_to_the_pixel_path_and_its_errors() -> None:
    source = encode(photo_like(320, 240), "JPEG")
    assert requantize(source[: len(source) // 2], 50) is None
    assert requantize(b"\xff\xd8\xff\xe0 not a jpeg", 50) is None


def test_the_icc_profile_given_is_written() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(photo_like(64, 48), "JPEG", icc_profile=profile)
    result = compress(source, 50, LIMITS)
    with Image.open(io.BytesIO(result.jpeg)) as image:
        assert image.info.get("icc_profile") == profile
    bare = requantize(source, 50)
    assert bare is not None
    with Image.open(io.BytesIO(bare)) as image:
        assert "icc_profile" not in image.info
