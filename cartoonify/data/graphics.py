"""Generic graphics for the tiny VAE: random flat shapes, strokes and outlines on any background.

An image codec must reconstruct whatever a model may later draw, white pages and dark outlines included,
as SD's VAE does. The base world (:mod:`.baseworld`) has neither, on purpose: the UNet learns only that
world. So the VAE alone also trains on these images. They are not the demo's cartoons: no characters, no
captions, random layouts of primitives.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 2


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    kind = rng.uniform()
    if kind < 0.15:
        return (255, 255, 255)
    if kind < 0.25:
        return tuple(int(v) for v in rng.integers(0, 40, 3))
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.uniform()
    if kind < 0.4:
        return Image.new("RGB", (size, size), (255, 255, 255))
    if kind < 0.5:
        return Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 30, 3)))
    if kind < 0.8:
        return Image.new("RGB", (size, size), _colour(rng))
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = np.broadcast_to(a + (b - a) * t, (size, size, 3))
    return Image.fromarray(np.ascontiguousarray(grad if rng.uniform() < 0.5 else grad.transpose(1, 0, 2)).astype(np.uint8))


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    x0, y0 = rng.uniform(-0.1, 0.9, 2) * size
    w, h = rng.uniform(0.08, 0.6, 2) * size
    fill = _colour(rng) if rng.uniform() < 0.85 else None
    outline = tuple(int(v) for v in rng.integers(0, 50, 3)) if rng.uniform() < 0.6 else None
    width = int(rng.integers(1, max(2, size // 20)))
    kind = rng.integers(0, 4)
    box = [x0, y0, x0 + w, y0 + h]
    if kind == 0:
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif kind == 1:
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif kind == 2:
        pts = [tuple(p) for p in (rng.uniform(0, 1, (int(rng.integers(3, 7)), 2)) * [w, h] + [x0, y0])]
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    else:
        pts = [tuple(p) for p in rng.uniform(0, size, (int(rng.integers(2, 5)), 2))]
        draw.line(pts, fill=outline or _colour(rng), width=width, joint="curve")


def render_graphic(index: int, size: int = 64, seed: int = 0) -> Image.Image:
    """Random graphic ``index``: a background, 2-9 flat shapes or strokes (many outlined), sometimes blurred."""
    rng = np.random.default_rng([seed, index, 7])
    big = size * SUPERSAMPLE
    image = _background(rng, big)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 10))):
        _shape(draw, rng, big)
    image = image.resize((size, size), Image.LANCZOS)
    if rng.uniform() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return image


def make_graphics(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Graphics ``0 .. n-1`` as a uint8 array (n, size, size, 3)."""
    return np.stack([np.asarray(render_graphic(i, size, seed)) for i in range(n)]) if n else np.empty(
        (0, size, size, 3), np.uint8)
