"""Control images without learned weights, and how much structure an output keeps.

* :func:`canny_map`: scikit-image's Canny edge detector on the grayscale image (``sigma``, and the low/high
  hysteresis thresholds as quantiles of the gradient magnitude, so that they mean the same at any contrast);
  the control image of ``lllyasviel/control_v11p_sd15_canny``: white edges on black.
* :func:`lineart_map`: the "lineart standard" difference of Gaussians, as ControlNet's annotators compute it:
  a blurred copy minus the image, per channel, the darkest lines kept above ``threshold`` and scaled by
  ``gain``; white lines on black, the control image of ``control_v11p_sd15_lineart``.
* :func:`edge_f1`: the F1 score of two edge maps with a pixel tolerance (an edge counts as found when the
  other map has one within ``tolerance`` pixels): how much of a photo's outline an output keeps.

Every function takes and returns PIL images (or boolean arrays for the maps' pixels) and is deterministic.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from PIL import Image

from .config.control import PREPROCESSORS, CannySettings, LineartSettings

__all__ = ["PREPROCESSORS", "CannySettings", "LineartSettings", "canny_edges", "canny_map", "control_image",
           "edge_f1", "lineart_map", "settings_record", "structure_f1"]


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def canny_edges(image: Image.Image, settings: CannySettings = CannySettings()) -> np.ndarray:
    """Canny's edge pixels of ``image`` (boolean, H x W)."""
    from skimage.feature import canny

    return canny(_gray(image), sigma=settings.sigma, low_threshold=settings.low, high_threshold=settings.high,
                 use_quantiles=True)


def canny_map(image: Image.Image, settings: CannySettings = CannySettings()) -> Image.Image:
    """The Canny control image: white (255) edges on black, RGB, the size of ``image``."""
    edges = canny_edges(image, settings)
    return Image.fromarray((edges * 255).astype(np.uint8)).convert("RGB")


def lineart_map(image: Image.Image, settings: LineartSettings = LineartSettings()) -> Image.Image:
    """The "lineart standard" control image: a Gaussian blur minus the image (dark lines respond), the
    channels' maximum, scaled to the strongest response, cut below ``threshold`` and brightened by ``gain``."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(image.convert("RGB"), dtype=np.float64)
    blurred = np.stack([gaussian_filter(x[..., c], settings.sigma) for c in range(3)], axis=-1)
    response = np.clip(blurred - x, 0, None).max(axis=-1)
    peak = response.max()
    if peak <= 0:
        return Image.new("RGB", image.size, (0, 0, 0))
    line = response / peak
    line = np.where(line > settings.threshold, line, 0.0)
    out = np.clip(line * settings.gain, 0, 1)
    return Image.fromarray((out * 255).round().astype(np.uint8)).convert("RGB")


def control_image(image: Image.Image, kind: str, settings=None) -> Image.Image:
    """The control image of preprocessor ``kind`` ("canny" or "lineart") with its settings (defaults if None)."""
    expected = {"canny": CannySettings, "lineart": LineartSettings}.get(kind)
    if expected is not None and settings is not None and not isinstance(settings, expected):
        raise TypeError(f"{kind} needs {expected.__name__}, got {type(settings).__name__}")
    if kind == "canny":
        return canny_map(image, settings or CannySettings())
    if kind == "lineart":
        return lineart_map(image, settings or LineartSettings())
    raise ValueError(f"unknown preprocessor {kind!r}; choose one of {', '.join(PREPROCESSORS)}")


def settings_record(kind: str, settings=None) -> dict:
    """The preprocessor and its settings as a JSON-able dict (saved beside every output)."""
    if kind not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {kind!r}; choose one of {', '.join(PREPROCESSORS)}")
    default = CannySettings() if kind == "canny" else LineartSettings()
    return {"preprocessor": kind, **asdict(settings or default)}


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    if radius <= 0:
        return mask
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return binary_dilation(mask, structure=(x * x + y * y) <= radius * radius)


def edge_f1(reference: np.ndarray, candidate: np.ndarray, tolerance: int = 1) -> float:
    """F1 of the edge pixels of ``candidate`` against ``reference`` (boolean maps of one shape): precision is
    the share of candidate edges within ``tolerance`` pixels of a reference edge, recall the share of
    reference edges within ``tolerance`` of a candidate edge. 1 when both are empty, 0 when only one is."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    reference, candidate = np.asarray(reference, bool), np.asarray(candidate, bool)
    if reference.shape != candidate.shape:
        raise ValueError(f"edge maps differ in shape: {reference.shape} and {candidate.shape}")
    if not reference.any() and not candidate.any():
        return 1.0
    if not reference.any() or not candidate.any():
        return 0.0
    precision = float((candidate & _dilate(reference, tolerance)).sum() / candidate.sum())
    recall = float((reference & _dilate(candidate, tolerance)).sum() / reference.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def structure_f1(photo: Image.Image, output: Image.Image, settings: CannySettings = CannySettings(),
                 tolerance: int = 1) -> float:
    """Edge F1 between the Canny edges of ``photo`` and of ``output`` (resized to the photo's size)."""
    out = output.convert("RGB").resize(photo.size, Image.LANCZOS) if output.size != photo.size else output
    return edge_f1(canny_edges(photo, settings), canny_edges(out, settings), tolerance)
