"""services.processor.compress: every supported source to a valid JPEG; bad bytes to a
permanent error."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageCms

from devstack.sample_images import encode, photo_like, sample
from services.processor.compress import Compressed, compress
from services.processor.errors import NotAnImage, TooManyPixels
from shared.grpc_errors import FailedPrecondition

MAX_PIXELS = 100_000_000
ORIENTATION = 0x0112


def decoded(result: Compressed) -> Image.Image:
    image = Image.open(io.BytesIO(result.jpeg))
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (result.width, result.height)
    image.load()
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_every_source_format_becomes_a_jpeg_of_the_same_size(fmt: str) -> None:
    result = compress(sample(320, 200, fmt), quality=0, max_pixels=MAX_PIXELS)
    assert (result.width, result.height) == (320, 200)
    assert result.source_format == fmt
    decoded(result)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(photo_like(120, 80, mode="CMYK"), "JPEG")
    result = compress(data, quality=50, max_pixels=MAX_PIXELS)
    assert (result.width, result.height) == (120, 80)
    decoded(result)


def test_alpha_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG")
    pixel = decoded(compress(data, quality=90, max_pixels=MAX_PIXELS)).getpixel((16, 16))
    assert isinstance(pixel, tuple)
    assert all(channel > 245 for channel in pixel)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    grey = Image.new("I;16", (16, 16), 0x8000)
    pixel = decoded(compress(encode(grey, "PNG"), quality=90, max_pixels=MAX_PIXELS)).getpixel(
        (8, 8)
    )
    assert isinstance(pixel, tuple)
    assert all(120 <= channel <= 136 for channel in pixel)


def test_only_the_first_frame_of_an_animation_is_kept() -> None:
    frames = [Image.new("RGB", (24, 24), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    pixel = decoded(compress(out.getvalue(), quality=90, max_pixels=MAX_PIXELS)).getpixel((12, 12))
    assert isinstance(pixel, tuple)
    red, _, blue = pixel
    assert red > 200
    assert blue < 50


def test_output_is_smaller_than_a_quality_92_jpeg() -> None:
    data = sample(800, 600, "JPEG")
    result = compress(data, quality=0, max_pixels=MAX_PIXELS)
    assert len(result.jpeg) < len(data)


def test_quality_zero_means_fifty() -> None:
    data = sample(200, 150, "PNG")
    default = compress(data, quality=0, max_pixels=MAX_PIXELS)
    assert default.jpeg == compress(data, quality=50, max_pixels=MAX_PIXELS).jpeg
    assert len(compress(data, quality=1, max_pixels=MAX_PIXELS).jpeg) < len(default.jpeg)
    assert len(compress(data, quality=95, max_pixels=MAX_PIXELS).jpeg) > len(default.jpeg)


def test_exif_orientation_is_applied() -> None:
    # Stored 60x40, dark on the left; orientation 6 means "rotate 90 degrees clockwise to
    # display", so the displayed image is 40x60, dark at the top.
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 30, 40))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    result = compress(encode(image, "JPEG", exif=exif), quality=90, max_pixels=MAX_PIXELS)
    assert (result.width, result.height) == (40, 60)
    upright = decoded(result).convert("L")
    top, bottom = upright.getpixel((20, 5)), upright.getpixel((20, 55))
    assert isinstance(top, int)
    assert isinstance(bottom, int)
    assert top < 50
    assert bottom > 200


def test_exif_and_comments_are_stripped_and_an_rgb_icc_profile_kept() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # Make
    exif[ORIENTATION] = 1
    icc = srgb_profile()
    data = encode(photo_like(64, 48), "JPEG", exif=exif, icc_profile=icc, comment=b"secret")
    out = decoded(compress(data, quality=50, max_pixels=MAX_PIXELS))
    assert "exif" not in out.info
    assert "comment" not in out.info
    assert len(out.getexif()) == 0
    assert out.info.get("icc_profile") == icc


def test_a_cmyk_icc_profile_is_not_carried_onto_rgb_output() -> None:
    srgb = srgb_profile()
    cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]  # only the colour space field matters
    data = encode(photo_like(64, 48, mode="CMYK"), "JPEG", icc_profile=cmyk_profile)
    out = decoded(compress(data, quality=50, max_pixels=MAX_PIXELS))
    assert "icc_profile" not in out.info


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(sample(400, 300, "JPEG")[:3000], id="truncated-jpeg"),
        pytest.param(sample(400, 300, "PNG")[:3000], id="truncated-png"),
        pytest.param(random.Random(7).randbytes(20_000), id="random-bytes"),
        pytest.param(b"<!doctype html><html><body>Not found</body></html>", id="html"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xd8\xff\xe0" + b"\x00" * 64, id="jpeg-magic-then-garbage"),
    ],
)
def test_bad_bytes_are_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage) as caught:
        compress(data, quality=50, max_pixels=MAX_PIXELS)
    assert isinstance(caught.value, FailedPrecondition)
    assert caught.value.message


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(TooManyPixels):
        compress(png_header_only(100_000, 100_000), quality=50, max_pixels=MAX_PIXELS)


def test_the_pixel_limit_is_the_one_given() -> None:
    data = sample(200, 100, "PNG")
    assert compress(data, quality=50, max_pixels=20_000).width == 200
    with pytest.raises(TooManyPixels, match="200x100"):
        compress(data, quality=50, max_pixels=19_999)


def test_an_image_too_wide_for_jpeg_is_refused() -> None:
    with pytest.raises(TooManyPixels, match="a side"):
        compress(png_header_only(70_000, 10), quality=50, max_pixels=MAX_PIXELS)
