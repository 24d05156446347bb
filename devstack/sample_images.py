"""Deterministic photo-like test images (smooth gradients, shapes and grain)."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """An image with the statistics of a photo: smooth areas, edges, fine noise."""
    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize((width, height))
    r = base
    g = base.rotate(90).resize((width, height))
    b = Image.radial_gradient("L").resize((width, height))
    img = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(1, max(2, width // 3))
        y1 = y0 + rng.randrange(1, max(2, height // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1, min(width, height) // 200)))
    # Seeded here: Pillow's effect_noise draws from C's rand(), whose state is whatever the
    # process's earlier calls left, so one size gave other pixels in another test order.
    grain = np.random.default_rng(seed).normal(128, 24, (height, width))
    noise = Image.fromarray(grain.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    img = Image.blend(img, noise, 0.12)
    if mode == "RGBA":
        alpha = Image.radial_gradient("L").resize((width, height))
        img.putalpha(alpha)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG" and "quality" not in params:
        params["quality"] = 92
    img.save(out, format=fmt, **params)
    return out.getvalue()


def sample(width: int, height: int, fmt: str, seed: int = 0) -> bytes:
    """Bytes of a photo-like image in fmt (JPEG, PNG with alpha, GIF, WEBP, ...)."""
    mode = "RGBA" if fmt in {"PNG", "WEBP"} else "RGB"
    img = photo_like(width, height, seed, mode)
    if fmt == "GIF":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    return encode(img, fmt)
