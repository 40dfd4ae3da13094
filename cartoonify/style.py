"""A style score without learned weights: how much an image looks like this package's demo cartoons.

It measures three features of the demo cartoons drawn by :mod:`cartoonify.data.drawings` (flat colours, thin
dark outlines, a white page) that photographs, and the photo-like base world of
:mod:`cartoonify.data.baseworld`, lack.  It does **not** measure "Disney style" or cartoon style in general:
a cartoon painted with gradients on a coloured background scores low, and a flat graphic with outlines on a
white page scores high, whatever it shows.

Every image is first converted to RGB and resized to ``SIZE`` x ``SIZE`` (LANCZOS), the size the embedded
model works at, so scores of images of any size (at least ``MIN_SIZE``) are comparable.  The components are
shares of pixels in [0, 1] (:func:`style_components`); :func:`style_score` combines them with fixed weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

__all__ = [
    "MIN_SIZE",
    "SIZE",
    "WEIGHTS",
    "dark_edges",
    "edge_content",
    "flat_colours",
    "mean_style_score",
    "style_components",
    "style_score",
    "white_border",
]

ImageLike = Image.Image | np.ndarray

SIZE = 64  # images are measured at this size
MIN_SIZE = 16
BORDER = 1 / 8  # width of the border band, as a share of the side
WHITE_MIN = 205  # near-white: every channel at least this (a pale page, as a small model draws one) ...
WHITE_SPREAD = 45  # ... and channels within this of each other (off-white, not a pale colour)
FLAT_TOL = 2  # a pixel is flat if no channel varies by more than this over its 3x3 neighbourhood
EDGE_MIN = 30.0  # luma gradient (levels per pixel) of a strong edge
LINE_MIN = 30.0  # how much darker than its surroundings a pixel on a dark line is (luma levels)
OUTLINED = 0.3  # dark-edge share that counts as fully outlined (the demo cartoons average about 0.25)
CONTENT_FULL = 0.1  # share of pixels near strong edges above which an image counts as having content

#: Weights of the combined score: (white border, flat colours, outlines).
WEIGHTS = (0.5, 0.3, 0.2)

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _as_array(image: ImageLike) -> np.ndarray:
    """``image`` (PIL image or uint8 array (H, W[, 3|4])) as float32 RGB (SIZE, SIZE, 3) in 0..255."""
    if isinstance(image, np.ndarray):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise TypeError(f"expected a uint8 array, got {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ValueError(f"expected an (H, W, 3) image array, got shape {array.shape}")
        image = Image.fromarray(np.ascontiguousarray(array))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    if min(image.size) < MIN_SIZE:
        raise ValueError(f"image must be at least {MIN_SIZE} px on each side, got {image.size}")
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32)


def _filter3(a: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """3x3 max or min filter (``reduce`` is ``np.maximum`` or ``np.minimum``) of a 2-D array, edges repeated."""
    h, w = a.shape
    p = np.pad(a, 1, mode="edge")
    out = p[1:h + 1, 1:w + 1].copy()
    for dy in range(3):
        for dx in range(3):
            reduce(out, p[dy:dy + h, dx:dx + w], out=out)
    return out


def _edges(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luma, and the mask of pixels within one pixel of a strong luma edge."""
    luma = rgb @ _LUMA
    gx, gy = np.zeros_like(luma), np.zeros_like(luma)
    gx[:, 1:-1] = (luma[:, 2:] - luma[:, :-2]) / 2
    gy[1:-1] = (luma[2:] - luma[:-2]) / 2
    return luma, _filter3(np.hypot(gx, gy), np.maximum) > EDGE_MIN


def white_border(image: ImageLike) -> float:
    """Share of near-white pixels in the border band (the outer ``BORDER`` of each side).

    Near-white means every channel is at least ``WHITE_MIN`` and the channels differ by at most
    ``WHITE_SPREAD``.  The demo cartoons sit on a white page (about 0.97); photos rarely have a white border.
    """
    rgb = _as_array(image)
    b = max(1, round(SIZE * BORDER))
    band = np.ones((SIZE, SIZE), bool)
    band[b:-b, b:-b] = False
    white = (rgb.min(axis=2) >= WHITE_MIN) & (np.ptp(rgb, axis=2) <= WHITE_SPREAD)
    return float(white[band].mean())


def flat_colours(image: ImageLike) -> float:
    """Share of pixels in flat colour: no channel varies by more than ``FLAT_TOL`` over the 3x3 neighbourhood.

    Flat fills stay exactly flat after downsampling; texture, sensor noise, shading and blur do not.  Smooth
    photo skies can be flat too, so this alone does not tell the worlds apart.
    """
    rgb = _as_array(image)
    spread = np.max([_filter3(rgb[:, :, c], np.maximum) - _filter3(rgb[:, :, c], np.minimum)
                     for c in range(3)], axis=0)
    return float((spread <= FLAT_TOL).mean())


def dark_edges(image: ImageLike) -> float:
    """Share of strong-edge pixels that lie on a thin dark line (an outline) rather than on a step.

    A pixel lies on a thin dark line if its luma is more than ``LINE_MIN`` below the 3x3 morphological
    closing (a black top-hat); strong-edge pixels are those within one pixel of a luma gradient above
    ``EDGE_MIN``.  Returns 0 for an image without strong edges.
    """
    luma, strong = _edges(_as_array(image))
    closing = _filter3(_filter3(luma, np.maximum), np.minimum)
    line = closing - luma > LINE_MIN
    count = int(strong.sum())
    return float((line & strong).sum() / count) if count else 0.0


def edge_content(image: ImageLike) -> float:
    """Share of pixels within one pixel of a strong luma edge: near 0 for a blank or featureless image."""
    return float(_edges(_as_array(image))[1].mean())


def style_components(image: ImageLike) -> dict[str, float]:
    """The measured components of :func:`style_score`, each in [0, 1], keyed by function name."""
    rgb = np.asarray(_as_array(image), dtype=np.uint8)  # resize once; the components see SIZE x SIZE
    return {f.__name__: f(rgb) for f in (white_border, flat_colours, dark_edges, edge_content)}


def _combine(c: dict[str, float]) -> float:
    """The weighted mean of the components, scaled down for images with little content."""
    outlines = min(1.0, c["dark_edges"] / OUTLINED)
    mean = WEIGHTS[0] * c["white_border"] + WEIGHTS[1] * c["flat_colours"] + WEIGHTS[2] * outlines
    return float(np.clip(mean * min(1.0, c["edge_content"] / CONTENT_FULL), 0.0, 1.0))


def style_score(image: ImageLike) -> float:
    """How much ``image`` looks like this package's demo cartoons, in [0, 1] (higher = more cartoon).

    ``0.5 * white_border + 0.3 * flat_colours + 0.2 * min(1, dark_edges / 0.3)``, times
    ``min(1, edge_content / 0.1)`` so that a blank page does not pass for a drawing.  The white page gets
    the largest weight because it is the demo cartoons' most reliable trait (every one has it, no photo of
    the base world does); flat fills come next (smooth photo skies are flat too); outlines get the least
    (photo texture has thin dark lines as well).  Measured at 64 px: 400 demo cartoons (drawn at 256 px,
    resized with LANCZOS) score 0.74-0.91 (mean 0.83), 2,000 base-world images 0-0.20 (mean 0.04, gravel
    and grass crops highest), scikit-image's astronaut and camera photos 0.13.  Cartoons drawn at 32 px
    or less lose their outlines and score lower.  ``image``: a PIL image or a uint8 array (H, W), (H, W, 3)
    or (H, W, 4), each side at least ``MIN_SIZE`` px.
    """
    return _combine(style_components(image))


def mean_style_score(images: Iterable[ImageLike]) -> float:
    """Mean :func:`style_score` over ``images`` (PIL images or uint8 arrays); raises on an empty input."""
    scores = [style_score(image) for image in images]
    if not scores:
        raise ValueError("mean_style_score needs at least one image")
    return float(np.mean(scores))
