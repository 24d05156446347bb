"""imgpipe.processor.compress and formats: every supported source to a valid JPEG with no
metadata but its colour profile; other formats, bad bytes, bombs and overlong animations to
a permanent error."""

from __future__ import annotations

import io
import random

import pytest
from PIL import ExifTags, Image, ImageCms

from devstack.hostile_payloads import eps, gif_with_frames, gzip_of_zeros, png_header_only, psd
from devstack.sample_images import encode, photo_like, sample
from imgpipe.common.errors import FailedPrecondition
from imgpipe.processor.compress import Compressed, check_header, compress
from imgpipe.processor.errors import NotAnImage, TooManyFrames, TooManyPixels
from imgpipe.processor.formats import gif_frame_count
from imgpipe.processor.settings import DecodeSettings

MAX_PIXELS = 100_000_000
LIMITS = DecodeSettings(MAX_PIXELS)
ORIENTATION = 0x0112


def decoded(result: Compressed) -> Image.Image:
    image = Image.open(io.BytesIO(result.jpeg))
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (result.width, result.height)
    image.load()
    return image


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_every_source_format_becomes_a_jpeg_of_the_same_size(fmt: str) -> None:
    result = compress(sample(320, 200, fmt), quality=0, limits=LIMITS)
    assert (result.width, result.height) == (320, 200)
    assert result.source_format == fmt
    decoded(result)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(photo_like(120, 80, mode="CMYK"), "JPEG")
    result = compress(data, quality=50, limits=LIMITS)
    assert (result.width, result.height) == (120, 80)
    decoded(result)


def test_alpha_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG")
    pixel = decoded(compress(data, quality=90, limits=LIMITS)).getpixel((16, 16))
    assert isinstance(pixel, tuple)
    assert all(channel > 245 for channel in pixel)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    grey = Image.new("I;16", (16, 16), 0x8000)
    pixel = decoded(compress(encode(grey, "PNG"), quality=90, limits=LIMITS)).getpixel((8, 8))
    assert isinstance(pixel, tuple)
    assert all(120 <= channel <= 136 for channel in pixel)


def test_only_the_first_frame_of_an_animation_is_kept() -> None:
    frames = [Image.new("RGB", (24, 24), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    pixel = decoded(compress(out.getvalue(), quality=90, limits=LIMITS)).getpixel((12, 12))
    assert isinstance(pixel, tuple)
    red, _, blue = pixel
    assert red > 200
    assert blue < 50


def test_output_is_smaller_than_a_quality_92_jpeg() -> None:
    data = sample(800, 600, "JPEG")
    result = compress(data, quality=0, limits=LIMITS)
    assert len(result.jpeg) < len(data)


def test_quality_zero_means_fifty() -> None:
    data = sample(200, 150, "PNG")
    default = compress(data, quality=0, limits=LIMITS)
    assert default.jpeg == compress(data, quality=50, limits=LIMITS).jpeg
    assert len(compress(data, quality=1, limits=LIMITS).jpeg) < len(default.jpeg)
    assert len(compress(data, quality=95, limits=LIMITS).jpeg) > len(default.jpeg)


def test_exif_orientation_is_applied() -> None:
    # Stored 60x40, dark on the left; orientation 6 means "rotate 90 degrees clockwise to
    # display", so the displayed image is 40x60, dark at the top.
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 30, 40))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    result = compress(encode(image, "JPEG", exif=exif), quality=90, limits=LIMITS)
    assert (result.width, result.height) == (40, 60)
    upright = decoded(result).convert("L")
    top, bottom = upright.getpixel((20, 5)), upright.getpixel((20, 55))
    assert isinstance(top, int)
    assert isinstance(bottom, int)
    assert top < 50
    assert bottom > 200


def test_a_pngs_header_is_checked_without_decoding_it() -> None:
    """check_header runs in the processor itself, outside the codec workers' budgets: a
    PNG with no pixel data passes it (decoding would fail), and is refused in compress."""
    empty = png_header_only(3000, 2000)
    check_header(empty, LIMITS)
    with pytest.raises(NotAnImage):
        compress(empty, quality=50, limits=LIMITS)


def test_a_pngs_exif_orientation_is_read_from_its_header() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    rotated = encode(Image.new("RGB", (60, 40), (9, 9, 9)), "PNG", exif=exif)
    result = compress(rotated, quality=50, limits=LIMITS)
    assert (result.width, result.height) == (40, 60)


def test_exif_and_comments_are_stripped_and_an_rgb_icc_profile_kept() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # Make
    exif[ORIENTATION] = 1
    icc = srgb_profile()
    data = encode(photo_like(64, 48), "JPEG", exif=exif, icc_profile=icc, comment=b"secret")
    out = decoded(compress(data, quality=50, limits=LIMITS))
    assert "exif" not in out.info
    assert "comment" not in out.info
    assert len(out.getexif()) == 0
    assert out.info.get("icc_profile") == icc


def test_a_cmyk_icc_profile_is_not_carried_onto_rgb_output() -> None:
    srgb = srgb_profile()
    cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]  # only the colour space field matters
    data = encode(photo_like(64, 48, mode="CMYK"), "JPEG", icc_profile=cmyk_profile)
    out = decoded(compress(data, quality=50, limits=LIMITS))
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
        compress(data, quality=50, limits=LIMITS)
    assert isinstance(caught.value, FailedPrecondition)
    assert caught.value.message


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(TooManyPixels):
        compress(png_header_only(100_000, 100_000), quality=50, limits=LIMITS)


def test_the_pixel_limit_is_the_one_given() -> None:
    data = sample(200, 100, "PNG")
    assert compress(data, quality=50, limits=DecodeSettings(20_000)).width == 200
    with pytest.raises(TooManyPixels, match="200x100"):
        compress(data, quality=50, limits=DecodeSettings(19_999))


def test_an_image_too_wide_for_jpeg_is_refused() -> None:
    with pytest.raises(TooManyPixels, match="a side"):
        compress(png_header_only(70_000, 10), quality=50, limits=LIMITS)


def encoded_frames(fmt: str, count: int, **params: object) -> bytes:
    frames = [Image.new("RGB", (8, 8), (i * 40 % 256, 0, 0)) for i in range(count)]
    out = io.BytesIO()
    frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], **params)
    return out.getvalue()


def jpeg2000() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="JPEG2000")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        pytest.param(psd(), "a Photoshop document (PSD)", id="psd"),
        pytest.param(eps(), "PostScript (EPS)", id="eps"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document", id="pdf"),
        pytest.param(jpeg2000(), "a JPEG 2000 image", id="jpeg2000"),
        pytest.param(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "an AVIF image", id="avif"),
        pytest.param(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "a HEIC image", id="heic"),
        pytest.param(b"\xef\xbb\xbf\n  <!DOCTYPE html><html>", "an HTML page", id="html"),
        pytest.param(b'<?xml version="1.0"?>\n<svg xmlns="', "an SVG image", id="svg"),
        pytest.param(gzip_of_zeros(1), "gzip-compressed data", id="gzip"),
        pytest.param(b"PK\x03\x04\x14\x00", "a ZIP archive", id="zip"),
        pytest.param(b"", "the source is empty", id="empty"),
        pytest.param(
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x09", "01 02 03 04 05 06 07 08)", id="unknown"
        ),
    ],
)
def test_formats_are_told_by_their_bytes_and_refused_by_name(data: bytes, named: str) -> None:
    with pytest.raises(NotAnImage) as caught:
        compress(data, quality=50, limits=LIMITS)
    assert named in caught.value.message
    assert "not a JPEG, PNG, WebP, GIF, BMP or TIFF image" in caught.value.message


def test_big_tiff_is_a_tiff() -> None:
    data = encode(photo_like(40, 30), "TIFF", big_tiff=True)
    assert data.startswith(b"II+\x00")
    assert compress(data, quality=50, limits=LIMITS).source_format == "TIFF"


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {"duration": 40, "loop": 0}), ("PNG", {}), ("WEBP", {"lossless": True})],
)
def test_an_animation_over_the_frame_limit_is_refused(fmt: str, params: dict[str, object]) -> None:
    data = encoded_frames(fmt, 6, **params)
    assert (
        compress(data, quality=50, limits=DecodeSettings(MAX_PIXELS, max_frames=6)).source_format
        == fmt
    )
    with pytest.raises(TooManyFrames, match="more than 5 frames"):
        compress(data, quality=50, limits=DecodeSettings(MAX_PIXELS, max_frames=5))


def test_tiff_pages_are_not_counted_as_frames() -> None:
    data = encoded_frames("TIFF", 3)
    assert compress(data, quality=50, limits=DecodeSettings(MAX_PIXELS, max_frames=1)).width == 8


def test_gif_frames_are_counted_as_pillow_counts_them() -> None:
    # Extensions (graphic control, application, comment) and local colour tables included.
    frames = [Image.new("RGB", (16, 16), (i * 30, 255 - i * 30, 0)) for i in range(7)]
    out = io.BytesIO()
    frames[0].save(
        out, "GIF", save_all=True, append_images=frames[1:], duration=30, loop=0, comment=b"hi"
    )
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as image:
        assert gif_frame_count(data, stop_after=100) == getattr(image, "n_frames", 1) == 7


def test_counting_gif_frames_stops_past_the_limit() -> None:
    assert gif_frame_count(gif_with_frames(10_000), stop_after=1000) == 1001
    assert gif_frame_count(gif_with_frames(1000), stop_after=1000) == 1000
    with pytest.raises(TooManyFrames, match="more than 1000 frames"):
        compress(gif_with_frames(10_000), quality=50, limits=LIMITS)


def test_a_gif_built_to_make_counting_slow_is_refused() -> None:
    # One frame whose data comes in a million and one 1-byte sub-blocks.
    data = bytearray(gif_with_frames(1))
    assert data[-5:] == b"\x02\x44\x01\x00\x3b"  # a 2-byte sub-block, 0, the trailer
    data[-5:-1] = b"\x01\x00" * 1_000_001 + b"\x00"
    with pytest.raises(NotAnImage, match="more than 1000000 sub-blocks"):
        compress(bytes(data), quality=50, limits=LIMITS)


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Camera maker"
    exif[ExifTags.Base.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
    }
    return exif


GPS_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
    b'22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
    b'exif:GPSLatitude="52,31.2N" exif:GPSLongitude="13,24.6E"/></rdf:RDF></x:xmpmeta>'
)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gps_and_all_other_exif_are_stripped(fmt: str) -> None:
    data = encode(photo_like(64, 48), fmt, exif=gps_exif(), xmp=GPS_XMP)
    with Image.open(io.BytesIO(data)) as source:
        assert source.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the test is not vacuous

    result = compress(data, quality=50, limits=LIMITS)

    out = decoded(result)
    assert len(out.getexif()) == 0
    assert not out.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert not {"exif", "xmp"} & set(out.info)
    assert b"Exif" not in result.jpeg
    assert b"GPS" not in result.jpeg
