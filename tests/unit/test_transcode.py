"""The transcoder (imgpipe.processor._jpeg.transcode): the pixel path for YCbCr JPEGs the
requantiser does not take (4:4:4, 4:2:2, 4:4:0), without RGB: decoded to its planes,
chroma halved to 4:2:0, encoded at q50 with Huffman optimisation.

Against the pixel path (Pillow decode to RGB, encode at q50, optimize=True): the output is
the same form (4:2:0, same size), decodes as close to the source (within PSNR_SLACK), and is
at most SIZE_SLACK of its size. It keeps the source's chroma samples where Pillow's round trip
through RGB smooths them: +0.00 to +0.05 dB, 0.999-1.008x the bytes on photographs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageCms, ImageOps
from PIL.JpegImagePlugin import JpegImageFile, get_sampling

from devstack.bench.photos import pillow_q50, psnr
from devstack.sample_images import encode, photo_like
from imgpipe.processor._jpeg import requantize, transcode
from imgpipe.processor.compress import compress
from imgpipe.processor.settings import DecodeSettings

SIZE_SLACK = 1.01
# Synthetic sources land within a thousandth of a dB either side of the pixel path.
PSNR_SLACK = 0.01
LIMITS = DecodeSettings(max_pixels=100_000_000)
SUBSAMPLING_420 = 2  # Pillow's get_sampling


@pytest.mark.parametrize("subsampling", [0, 1], ids=["444", "422"])
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize(("width", "height"), [(640, 480), (637, 477), (17, 9), (1, 1)])
def test_transcoded_output_is_420_as_good_and_no_larger_than_the_pixel_paths(
    subsampling: int, progressive: bool, width: int, height: int
) -> None:
    source = encode(
        photo_like(width, height),
        "JPEG",
        quality=90,
        subsampling=subsampling,
        progressive=progressive,
    )
    assert requantize(source, 50) is None
    transcoded = transcode(source, 50)
    assert transcoded is not None
    expected = pillow_q50(source)
    assert psnr(source, transcoded) >= psnr(source, expected) - PSNR_SLACK
    assert len(transcoded) <= SIZE_SLACK * len(expected)
    with Image.open(io.BytesIO(transcoded)) as image:
        assert (image.size, image.mode) == ((width, height), "RGB")
        assert get_sampling(image) == SUBSAMPLING_420
    # Strictly valid: the requantiser reads it back without a warning, same coefficients.
    assert requantize(transcoded, 50) == transcoded


def test_a_440_source_is_transcoded() -> None:
    """Chroma halved vertically only: the transcoder halves it horizontally."""
    pixels = np.asarray(photo_like(96, 64))
    source = bytes(simplejpeg.encode_jpeg(pixels, quality=90, colorsubsampling="440"))
    with Image.open(io.BytesIO(source)) as image:
        assert isinstance(image, JpegImageFile)
        assert image.layer[0][1:3] == (1, 2)  # luma 1x2: chroma at half height
    transcoded = transcode(source, 50)
    assert transcoded is not None
    with Image.open(io.BytesIO(transcoded)) as image:
        assert (image.size, get_sampling(image)) == ((96, 64), SUBSAMPLING_420)
    assert psnr(source, transcoded) >= psnr(source, pillow_q50(source)) - PSNR_SLACK


def test_compress_transcodes_444_jpegs_and_leaves_the_rest() -> None:
    source = encode(photo_like(64, 48), "JPEG", subsampling=0)
    assert [stage for stage, _, _ in compress(source, 50, LIMITS).stages] == ["transcode"]
    turned = encode(photo_like(64, 48), "JPEG", subsampling=1, exif=_orientation(6))
    result = compress(turned, 50, LIMITS)
    assert [stage for stage, _, _ in result.stages] == ["transcode"]
    assert (result.width, result.height) == (48, 64)
    # A turned 4:4:4 source: Pillow turns it faster than three full planes are turned.
    turned_444 = encode(photo_like(64, 48), "JPEG", subsampling=0, exif=_orientation(6))
    assert transcode(turned_444, 50, None, 6) is None
    assert [stage for stage, _, _ in compress(turned_444, 50, LIMITS).stages] == [
        "decode",
        "encode",
    ]
    cmyk = encode(photo_like(64, 48).convert("CMYK"), "JPEG")
    assert transcode(cmyk, 50) is None
    grey = encode(photo_like(64, 48).convert("L"), "JPEG")
    assert transcode(grey, 50) is None  # the requantiser's


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def _upright_pixels(source: bytes) -> bytes:
    with Image.open(io.BytesIO(source)) as image:
        out = io.BytesIO()
        ImageOps.exif_transpose(image).save(out, "PNG")
    return out.getvalue()


def _pixel_path(source: bytes) -> bytes:
    with Image.open(io.BytesIO(source)) as image:
        out = io.BytesIO()
        ImageOps.exif_transpose(image).save(out, "JPEG", quality=50, optimize=True)
    return out.getvalue()


@pytest.mark.parametrize("subsampling", [1, 2], ids=["422", "420"])
@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_turned_source_is_turned_as_well_as_the_pixel_path_turns_it(
    subsampling: int, orientation: int
) -> None:
    """Whole planes turned upright: a wrong turn would be tens of dB off. 4:2:0 sources here
    are not whole MCUs (477 rows), which the requantiser does not turn."""
    source = encode(
        photo_like(640, 477), "JPEG", quality=90, subsampling=subsampling,
        exif=_orientation(orientation),
    )  # fmt: skip
    assert requantize(source, 50, None, orientation) is None
    transcoded = transcode(source, 50, None, orientation)
    if subsampling == SUBSAMPLING_420 and orientation in (3, 4, 6, 7):
        # These mirror the 477 rows, whose chroma is halved: left to the pixel path.
        assert transcoded is None
        return
    assert transcoded is not None
    expected = _pixel_path(source)
    reference = _upright_pixels(source)
    assert psnr(reference, transcoded) >= psnr(reference, expected) - PSNR_SLACK
    assert len(transcoded) <= SIZE_SLACK * len(expected)
    with Image.open(io.BytesIO(transcoded)) as image:
        assert image.size == ((477, 640) if orientation >= 5 else (640, 477))
        assert get_sampling(image) == SUBSAMPLING_420


def test_corrupt_sources_are_left_to_the_pixel_path() -> None:
    source = encode(photo_like(320, 240), "JPEG", subsampling=0)
    assert transcode(source[: len(source) // 2], 50) is None
    assert transcode(b"\xff\xd8\xff\xe0 not a jpeg", 50) is None


def test_the_icc_profile_given_is_written_and_nothing_else() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(photo_like(64, 48), "JPEG", subsampling=0, icc_profile=profile)
    with Image.open(io.BytesIO(compress(source, 50, LIMITS).jpeg)) as image:
        assert image.info.get("icc_profile") == profile
    bare = transcode(source, 50)
    assert bare is not None
    with Image.open(io.BytesIO(bare)) as image:
        assert "icc_profile" not in image.info
        assert "exif" not in image.info
