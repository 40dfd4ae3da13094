"""Images with PIL and numpy only: open as RGB, resize, crop, grid, PNG bytes.

The transforms follow torchvision's rounding (``Resize(size)``, ``CenterCrop``) because there is no CPU
build of torchvision; the training data, collect, sampling and the benchmark's reference all use these.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .utils import atomic_write_bytes

GRID_FILE = "grid.png"  # the contact grid beside a folder of generated images
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image file cannot be read or decoded; the message names the file."""


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image, apply its EXIF orientation and convert it to RGB; errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err


def check_readable(paths: Sequence[Path]) -> None:
    """Decode every image; raise one :class:`ImageLoadError` listing all files that cannot be read."""
    bad = []
    for path in paths:
        try:
            open_rgb(path)
        except ImageLoadError as err:
            bad.append(str(err))
    if bad:
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ImageLoadError(f"{len(bad)} unreadable image(s): " + "; ".join(bad[:10]) + more)


def resize_shorter_side(img: Image.Image, size: int, resample=Image.BILINEAR) -> Image.Image:
    """Resize so that the shorter side is ``size`` (torchvision's ``Resize(size)`` rounding)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), resample=resample)


def crop_square(img: Image.Image, size: int, center: bool = True, rng: np.random.Generator | None = None):
    """Crop a ``size`` x ``size`` square: centered (torchvision's rounding) or at a random offset."""
    w, h = img.size
    if center or rng is None:
        left = int(round((w - size) / 2.0))
        top = int(round((h - size) / 2.0))
    else:
        left = int(rng.integers(0, w - size + 1))
        top = int(rng.integers(0, h - size + 1))
    return img.crop((left, top, left + size, top + size))


def fit_square(img: Image.Image, size: int, resample=Image.LANCZOS) -> Image.Image:
    """Resize the shorter side to ``size`` and center-crop a square: how photos enter img2img."""
    return crop_square(resize_shorter_side(img, size, resample), size)


def image_grid(
    images: Sequence[Image.Image], rows: int | None = None, cols: int | None = None, pad: int = 2, fill="white"
) -> Image.Image:
    """Paste images (resized to the first one's size) into a ``rows`` x ``cols`` grid with ``pad`` px gaps."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    n = len(images)
    if cols is None and rows is None:
        cols = math.ceil(math.sqrt(n))
    if cols is None:
        cols = math.ceil(n / rows)
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {n} images")
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), fill)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        if img.size != (w, h):
            img = img.resize((w, h), Image.LANCZOS)
        grid.paste(img.convert("RGB"), (c * (w + pad), r * (h + pad)))
    return grid


def png_bytes(img: Image.Image, **save_options) -> bytes:
    """The PNG encoding of ``img`` (for atomic writes and checksums)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save_options)
    return buf.getvalue()


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` as PNG atomically (a reader never sees half a file)."""
    return atomic_write_bytes(path, png_bytes(img))


def gray_ssim(a: Image.Image, b: Image.Image) -> float:
    """Structural similarity (scikit-image's SSIM) of two images in grayscale, at ``a``'s size: 1 is the same
    structure; how much of a photo's layout an output keeps."""
    from skimage.metrics import structural_similarity

    x = np.asarray(a.convert("L"), dtype=np.float64)
    y = np.asarray(b.convert("L").resize(a.size, Image.LANCZOS), dtype=np.float64)
    return float(structural_similarity(x, y, data_range=255.0))
