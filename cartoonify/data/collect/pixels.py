"""Pixels: colours, the square (pad or crop), the background score, whitening, the perceptual hash (numpy and PIL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageColor

from ...imaging import crop_square, resize_shorter_side

WHITEN_MIN_SHARE = 0.5  # the border's dominant colour must cover this share for a background to be "uniform"


# ------------------------------------------------------------------------------------------------
# colours
# ------------------------------------------------------------------------------------------------


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """An RGB triple from ``(r, g, b)``, ``"r,g,b"``, a colour name or ``#rrggbb``; ValueError otherwise."""
    if isinstance(color, str):
        if "," in color:
            color = [int(c) for c in color.split(",")]
        else:
            color = ImageColor.getrgb(color)[:3]
    rgb = tuple(int(c) for c in color)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"not an RGB colour: {color!r}")
    return rgb  # type: ignore[return-value]


def color_name(color: tuple[int, int, int]) -> str:
    """``white``, ``black`` or ``rgb(r, g, b)``."""
    return {(255, 255, 255): "white", (0, 0, 0): "black"}.get(tuple(color), "rgb" + str(tuple(color)))


# ------------------------------------------------------------------------------------------------
# the square
# ------------------------------------------------------------------------------------------------


def scale_to_fit(img: Image.Image, size: int) -> Image.Image:
    """Resize (LANCZOS) so that the longer side is ``size``."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if new == img.size else img.resize(new, Image.LANCZOS, reducing_gap=3.0)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The centered square of side ``min(w, h)``, resized (LANCZOS) to ``size`` x ``size``."""
    return resize_shorter_side(crop_square(img, min(img.size)), size, Image.LANCZOS)


def pad_square(img: Image.Image, size: int, color: tuple[int, int, int]) -> Image.Image:
    """``img`` (at most ``size`` on each side) centered on a ``size`` x ``size`` canvas of ``color``."""
    if img.size == (size, size):
        return img
    canvas = Image.new("RGB", (size, size), color)
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


# ------------------------------------------------------------------------------------------------
# the border: background score and whitening
# ------------------------------------------------------------------------------------------------


def border_mask(shape: tuple[int, int], band: float) -> np.ndarray:
    """A boolean (H, W) mask of the band of ``band`` x the shorter side (at least 1 px) around the edge."""
    h, w = shape
    b = max(1, round(band * min(h, w)))
    mask = np.zeros((h, w), dtype=bool)
    mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = True, True, True, True
    return mask


def border_shares(img: Image.Image, band: float = 0.02, white: int = 235, black: int = 20) -> tuple[float, float]:
    """The shares of the border band whose pixels are near white (all channels >= ``white``) and near
    black (all channels <= ``black``)."""
    arr = np.asarray(img.convert("RGB"))
    px = arr[border_mask(arr.shape[:2], band)]
    return float(np.all(px >= white, axis=1).mean()), float(np.all(px <= black, axis=1).mean())


def background_score(img: Image.Image, band: float = 0.02, white: int = 235, black: int = 20) -> float:
    """The share of the image's border band that is near white or near black (0..1)."""
    w_share, b_share = border_shares(img, band, white, black)
    return w_share + b_share


def dominant_border_color(arr: np.ndarray, band: float) -> tuple[np.ndarray, float]:
    """The border band's most common colour (mean of its 16-level bin) and the share of that bin."""
    px = arr[border_mask(arr.shape[:2], band)].astype(np.int64)
    bins = (px // 16) @ np.array([256, 16, 1])
    values, counts = np.unique(bins, return_counts=True)
    top = values[np.argmax(counts)]
    members = px[bins == top]
    return members.mean(axis=0), float(len(members) / len(px))


def _spread_along_rows(flood: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Grow ``flood`` to whole horizontal runs of ``allowed`` pixels that it touches."""
    h, w = allowed.shape
    starts = allowed.copy()
    starts[:, 1:] &= ~allowed[:, :-1]
    run_id = np.cumsum(starts.ravel()).reshape(h, w) * allowed
    touched = np.zeros(int(run_id.max()) + 1, dtype=bool)
    touched[run_id[flood & allowed]] = True
    touched[0] = False
    return touched[run_id] | flood


def flood_from_border(allowed: np.ndarray) -> np.ndarray:
    """The ``allowed`` pixels connected (4-neighbourhood) to the image's outermost ring."""
    flood = np.zeros_like(allowed)
    flood[0], flood[-1], flood[:, 0], flood[:, -1] = allowed[0], allowed[-1], allowed[:, 0], allowed[:, -1]
    while True:
        grown = _spread_along_rows(flood, allowed)
        grown = _spread_along_rows(grown.T, allowed.T).T
        if np.array_equal(grown, flood):
            return flood
        flood = grown


def whiten_background(
    img: Image.Image, tolerance: int = 32, band: float = 0.02, min_share: float = WHITEN_MIN_SHARE
) -> tuple[Image.Image, float]:
    """Set a near-uniform background to pure white; returns the image and the share of pixels changed.

    The background colour is the dominant colour of the border band; if it covers less than
    ``min_share`` of the band the image is returned unchanged. Pixels within ``tolerance`` (per channel)
    of that colour and connected to the edge are flood-filled white. Pure numpy; no model.
    """
    arr = np.asarray(img.convert("RGB"))
    color, share = dominant_border_color(arr, band)
    if share < min_share:
        return img, 0.0
    close = np.all(np.abs(arr.astype(np.int16) - color.astype(np.int16)) <= tolerance, axis=2)
    flood = flood_from_border(close)
    out = arr.copy()
    out[flood] = 255
    return Image.fromarray(out), float(flood.mean())


# ------------------------------------------------------------------------------------------------
# likeness: perceptual hash and colour signature
# ------------------------------------------------------------------------------------------------


def perceptual_hash(img: Image.Image) -> int:
    """A 64-bit difference hash (dHash): the image in grayscale at 9x8 (LANCZOS), one bit per pair of
    horizontal neighbours, set where the left one is brighter. Robust to re-encoding, resizing and
    small colour shifts, and stable on the flat backgrounds of drawings (equal neighbours give 0)."""
    gray = np.asarray(img.convert("L").resize((9, 8), Image.LANCZOS), dtype=np.int16)
    bits = (gray[:, :-1] > gray[:, 1:]).ravel()
    return int(np.packbits(bits, bitorder="little").view("<u8")[0])


def hamming(a: int, b: int) -> int:
    """The number of differing bits."""
    return (a ^ b).bit_count()


def colour_signature(img: Image.Image) -> np.ndarray:
    """The image's mean colours on a 4x4 grid (int16, for differences)."""
    return np.asarray(img.convert("RGB").resize((4, 4), Image.BOX), dtype=np.int16)
