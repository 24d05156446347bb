"""A source's format, from its first bytes: never from its Content-Type or its name.

Only the allowed formats go on to Pillow, and each only to its own plugin, so no other
decoder (PSD, EPS, PDF, JPEG 2000, ... where Pillow's CVEs keep turning up) ever sees
hostile bytes. Other formats we can name are named in the error. Within a format, only the
codecs listed here decode: BMP uncompressed (RLE BMP goes through a pure-Python decoder
that holds the GIL for seconds), TIFF uncompressed, PackBits, LZW or Deflate (libtiff's
JPEG, CCITT, LZMA, ZSTD, WebP, LogLuv, ... codecs never see hostile bytes).
"""

from __future__ import annotations

import struct

from PIL import Image

from imgpipe.processor._jpeg import scan_count
from imgpipe.processor.errors import NotAnImage, TooManyScans, UnsafeCodec

ALLOWED_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# Leading bytes -> the Pillow format that may decode them.
ALLOWED: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)

# The modules of the Pillow plugins for the allowed formats (Pillow imports them, and a few
# others, on the first Image.open of a process).
PILLOW_PLUGINS = tuple(
    f"PIL.{name}ImagePlugin" for name in ("Jpeg", "Png", "Gif", "Bmp", "Tiff", "WebP", "Ppm")
)

# Leading bytes -> what the source is, for formats we refuse.
REFUSED: tuple[tuple[bytes, str], ...] = (
    (b"8BPS", "a Photoshop document (PSD)"),
    (b"%!PS", "PostScript (EPS)"),
    (b"\xc5\xd0\xd3\xc6", "PostScript (EPS, DOS binary)"),
    (b"%PDF", "a PDF document"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
    (b"\xff\n", "a JPEG XL codestream"),
    (b"DDS ", "a DirectDraw Surface (DDS)"),
    (b"SIMPLE  =", "a FITS file"),
    (b"\x00\x00\x01\x00", "a Windows icon (ICO)"),
    (b"icns", "an Apple icon (ICNS)"),
    (b"qoif", "a QOI image"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"(\xb5/\xfd", "zstd-compressed data"),
    (b"PK\x03\x04", "a ZIP archive"),
)

# ISO base media files (HEIF, AVIF, MP4, ...) say what they are in their ftyp box.
ISO_BRANDS = {
    b"avif": "an AVIF image",
    b"avis": "an AVIF image sequence",
    b"heic": "a HEIC image",
    b"heix": "a HEIC image",
    b"mif1": "a HEIF image",
    b"msf1": "a HEIF image sequence",
}

# Text formats, recognised from the start of their lower-cased text.
MARKUP: tuple[tuple[bytes, str], ...] = (
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"<head", "an HTML page"),
    (b"<body", "an HTML page"),
    (b"<?xml", "an XML document"),
)
SNIFF_TEXT_BYTES = 512
# BMP compressions (biCompression) decoded: BI_RGB and BI_BITFIELDS.
BMP_CODECS = {0: "uncompressed", 3: "bitfields"}
BMP_NAMES = {1: "RLE8", 2: "RLE4", 4: "JPEG", 5: "PNG"}
# TIFF compressions decoded, by Pillow's names for them.
TIFF_CODECS = frozenset({"raw", "packbits", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate"})
# An ICC profile is kept when it is at most this size (sRGB is 3 KB, Display P3 and Adobe
# RGB under 1 KB; RGB profiles with lookup tables reach tens of KB) and parses as RGB.
MAX_ICC_BYTES = 128 * 1024
ICC_HEADER_BYTES = 128
ICC_TAG_BYTES = 12
# Encoders write GIF data in sub-blocks of 255 bytes, so 1,000,000 of them is 255 MB. A GIF
# in far more, far smaller ones is built to make counting its frames slow, and refused.
MAX_GIF_SUB_BLOCKS = 1_000_000
# The first bytes of a lossless (VP8L) and of a lossy (VP8, after the frame tag) bitstream.
VP8L_SIGNATURE = 0x2F
VP8_START_CODE = b"\x9d\x01\x2a"


def detect(data: bytes) -> str:
    """The Pillow format (JPEG, PNG, WEBP, GIF, BMP or TIFF) data starts as; raises
    NotAnImage, naming what it is when known, for anything else."""
    for magic, pillow_format in ALLOWED:
        if data.startswith(magic):
            return pillow_format
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    what = _describe(data)
    raise NotAnImage(f"the source is {what}, not a {ALLOWED_NAMES} image")


def _describe(data: bytes) -> str:
    """What a source that is not an allowed image is, as far as its first bytes say."""
    if not data:
        return "empty"
    for magic, what in REFUSED:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        return ISO_BRANDS.get(data[8:12], "an ISO media file (MP4, MOV, ...)")
    text = data[:SNIFF_TEXT_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in text:
        return "an SVG image"
    for start, what in MARKUP:
        if text.startswith(start):
            return what
    return f"unrecognised data (starting {data[:8].hex(' ')})"


def gif_frame_count(data: bytes, stop_after: int) -> int:
    """The frames (image descriptors) of a GIF, counted by walking its blocks without
    decoding any; the walk stops once the count passes stop_after."""
    size = len(data)
    position = 13  # header (6 bytes) and logical screen descriptor (7)
    if size > 10 and data[10] & 0x80:  # a global colour table follows
        position += 3 << ((data[10] & 0x07) + 1)
    frames = 0
    sub_blocks = 0
    while position < size and frames <= stop_after:
        introducer = data[position]
        if introducer == 0x2C:  # image descriptor: 9 bytes, a colour table, LZW data
            frames += 1
            flags = data[position + 9] if position + 9 < size else 0
            position += 10
            if flags & 0x80:
                position += 3 << ((flags & 0x07) + 1)
            position += 1  # the LZW minimum code size
        elif introducer == 0x21:  # extension: a label, then sub-blocks
            position += 2
        else:  # the trailer, or garbage
            break
        # Sub-blocks: a length byte and that many bytes each, up to a 0 length.
        while position < size and data[position]:
            position += data[position] + 1
            sub_blocks += 1
            if sub_blocks > MAX_GIF_SUB_BLOCKS:
                raise NotAnImage(
                    f"the GIF splits its data into more than {MAX_GIF_SUB_BLOCKS} sub-blocks"
                )
        position += 1
    return frames


def webp_size(data: bytes) -> tuple[int, int]:
    """A WebP's width and height (the canvas, for an extended one), read from its first
    chunk without libwebp: the processor reads it before a codec worker decodes anything.
    Raises NotAnImage when the first chunk is not one of the three WebP bitstreams."""
    chunk, body = data[12:16], data[20:30]
    if chunk == b"VP8X" and len(body) >= 10:
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
    elif chunk == b"VP8L" and len(body) >= 5 and body[0] == VP8L_SIGNATURE:
        bits = int.from_bytes(body[1:5], "little")
        width, height = (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    elif chunk == b"VP8 " and len(body) >= 10 and body[3:6] == VP8_START_CODE:
        width = int.from_bytes(body[6:8], "little") & 0x3FFF
        height = int.from_bytes(body[8:10], "little") & 0x3FFF
    else:
        raise NotAnImage("corrupt WEBP image: its first chunk is not VP8X, VP8L or VP8")
    return width, height


def check_codec(image: Image.Image) -> None:
    """Refuses (UnsafeCodec) a BMP or TIFF whose compression is not on the list above."""
    if image.format == "BMP":
        compression = int(image.info.get("compression", 0))
        if compression not in BMP_CODECS:
            name = BMP_NAMES.get(compression, str(compression))
            raise UnsafeCodec(f"the BMP is {name}-compressed; only uncompressed BMP is taken")
    elif image.format == "TIFF":
        codec = str(image.info.get("compression", "raw"))
        if codec not in TIFF_CODECS:
            raise UnsafeCodec(
                f"the TIFF is {codec}-compressed; only uncompressed, PackBits, LZW or "
                "Deflate TIFF is taken"
            )


def check_scans(data: bytes, max_scans: int) -> None:
    """Refuses (TooManyScans) a JPEG of more than max_scans scans (counted by
    _jpeg.scan_count, without decoding): each scan of a progressive JPEG is a pass over
    every coefficient, so thousands of (empty) scans in a few KB cost tens of CPU-seconds.
    Encoders write 10 or so."""
    scans = scan_count(data)
    if scans > max_scans:
        raise TooManyScans(f"the JPEG has {scans} scans, more than the limit of {max_scans}")


def usable_icc(icc: object) -> bytes | None:
    """icc when it is an RGB ICC profile of at most MAX_ICC_BYTES whose header and tag
    table agree with its length; None otherwise (the output then carries no profile)."""
    if not isinstance(icc, bytes) or not ICC_HEADER_BYTES + 4 <= len(icc) <= MAX_ICC_BYTES:
        return None
    declared, tags = struct.unpack_from(">I", icc, 0)[0], struct.unpack_from(">I", icc, 128)[0]
    if declared != len(icc) or icc[36:40] != b"acsp" or icc[16:20] != b"RGB ":
        return None
    if ICC_HEADER_BYTES + 4 + tags * ICC_TAG_BYTES > len(icc):
        return None
    return icc
