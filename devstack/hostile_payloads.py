"""Hostile image files, built byte by byte: bombs, tricks and formats we refuse."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

MIB = 1024 * 1024


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


def gif_with_frames(count: int) -> bytes:
    """A 1x1 GIF of count frames, each the classic one-pixel image (15 bytes a frame)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame * count + b"\x3b"


def psd(width: int = 2, height: int = 2) -> bytes:
    """A minimal valid Photoshop document: RGB, 8 bits, raw pixel data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    empty_sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers
    return header + empty_sections + struct.pack(">H", 0) + b"\x80" * (3 * width * height)


def eps() -> bytes:
    """A minimal Encapsulated PostScript file."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    )


def truncated_jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG of width x height cut off half way through its scan."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(out, "JPEG")
    data = out.getvalue()
    return data[: len(data) // 2]


def gzip_of_zeros(mebibytes: int) -> bytes:
    """gzip data that inflates to mebibytes MiB of zeros (about 4.5 KiB a MiB)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    return b"".join(compressor.compress(zeros) for _ in range(mebibytes)) + compressor.flush()


def _jpeg_with_size(image: Image.Image, width: int, height: int, **params: object) -> bytes:
    """image encoded as a JPEG whose frame header then declares width x height."""
    out = io.BytesIO()
    image.save(out, "JPEG", **params)
    data = bytearray(out.getvalue())
    for sof in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(sof)
        if at > 0:
            struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def scan_bomb(width: int, height: int, scans: int) -> bytes:
    """A progressive greyscale JPEG of width x height (no real pixel data) followed by
    `scans` empty DC refinement scans: a few bytes each, a pass over every block each."""
    data = _jpeg_with_size(Image.new("L", (8, 8), 128), width, height, progressive=True)
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x10"  # 1 component, Ss 0, Se 0, Ah 1
    return data[:-2] + empty_scan * scans + b"\xff\xd9"


def progressive_cmyk(width: int, height: int) -> bytes:
    """A few hundred bytes: a progressive CMYK JPEG header declaring width x height, whose
    decode needs 4 bytes a pixel of coefficients and 4 of pixels before any conversion."""
    return _jpeg_with_size(Image.new("CMYK", (8, 8)), width, height, progressive=True)


def rle_bmp(width: int, height: int) -> bytes:
    """An RLE8 BMP of width x height: one 'end of bitmap' code, no pixels."""
    palette = b"\x00\x00\x00\x00" * 256
    bits = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(bits), 0, 0, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(bits), 0, 0, offset) + info + palette + bits


def _blank(mode: str, width: int, height: int, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, fmt, **params)
    return out.getvalue()


def rotated_rgba_png(width: int, height: int) -> bytes:
    """A blank RGBA PNG of width x height whose EXIF says 'rotate 90°': decoded, rotated
    upright and flattened onto RGB, the most memory a pixel of PNG takes."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    return _blank("RGBA", width, height, "PNG", compress_level=1, exif=exif.tobytes())


def large_gif(width: int, height: int) -> bytes:
    """A blank single-frame GIF of width x height."""
    return _blank("P", width, height, "GIF")


def lossless_webp(width: int, height: int) -> bytes:
    """A blank lossless RGBA WebP of width x height (at most 16383 a side)."""
    return _blank("RGBA", width, height, "WEBP", lossless=True, quality=0, method=0)


def deflate_tiff(width: int, height: int) -> bytes:
    """A blank Deflate-compressed RGB TIFF of width x height."""
    return _blank("RGB", width, height, "TIFF", compression="tiff_adobe_deflate")


def palette_bmp(width: int, height: int) -> bytes:
    """An uncompressed 8-bit BMP of width x height: width x height bytes of pixels."""
    return _blank("P", width, height, "BMP")
