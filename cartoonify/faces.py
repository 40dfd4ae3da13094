"""Faces in photos and a proxy for how much of a face survives stylization.

* :func:`detect_faces`: OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, shipped
  with ``opencv-python-headless`` 4.x); boxes ``(x, y, w, h)`` in the image's pixels, largest first. Images
  whose shorter side is under ``detect_size`` (256 px) are upsampled before detecting and the boxes mapped back,
  since the cascade's smallest window is 24 px (the demo's images are 64 px).
* :func:`face_crop`: the face box grown by a margin, clipped to the image.
* :func:`identity_similarity` and :func:`face_report`: the photo's face region and the same region of the output
  (resized to the photo's size: img2img and ControlNet keep the layout) embedded by an evaluation encoder and
  compared by cosine, with the faces detected in the photo and in the output.

What the proxy measures, and what it does not:

* It compares *general-purpose image embeddings* (CLIP or DINO, whichever encoder the caller passes) of one
  region before and after stylization. It reacts to the colour, layout and texture of the face region, and the
  report says whether a face is still detected in the output (a face the cascade still finds after
  stylization is a signal of its own).
* It is NOT face recognition: there is no identity embedding (ArcFace, FaceNet), so it cannot tell apart two
  people with a similar pose and colouring, and a score near 1 does not mean "the same person". With the
  random-weight tiny encoders of the tests and the demo it measures only low-level similarity.
* A real face-embedding model is not offered: facenet-pytorch cannot be loaded by hub id through
  transformers or diffusers (the loaders every model here goes through) and is not installed.

This module is at the imaging layer: no torch and no evaluation import; callers pass the encoder in (anything
with ``embed_images(images) -> (N, D)`` array, e.g. :class:`cartoonify.evaluation.Encoder`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
from PIL import Image

FACE_CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIZE = 256  # images with a shorter side below this are upsampled before detecting
KEPT_IOU = 0.3  # an output face overlapping the compared box this much counts as the face kept

Box = tuple[int, int, int, int]  # (x, y, w, h) in pixels


class ImageEncoder(Protocol):
    """What :func:`identity_similarity` needs of an encoder: L2-normalised image embeddings, shape (N, D)."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@lru_cache(maxsize=1)
def _cascade():
    """The frontal-face Haar cascade, loaded once."""
    import cv2

    path = cv2.data.haarcascades + FACE_CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's face cascade {path} (is opencv-python-headless 4.x installed?)")
    return cascade


def _check_detect_args(min_size: float, scale_factor: float, min_neighbors: int, detect_size: int) -> None:
    if not 0 < min_size <= 1:
        raise ValueError(f"min_size is a fraction of the shorter side in (0, 1], got {min_size}")
    if scale_factor <= 1:
        raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
    if min_neighbors < 0:
        raise ValueError(f"min_neighbors must be >= 0, got {min_neighbors}")
    if detect_size < 24:
        raise ValueError(f"detect_size must be at least the cascade's 24 px window, got {detect_size}")


def detect_faces(
    image: Image.Image,
    min_size: float = 0.08,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    detect_size: int = DETECT_SIZE,
) -> list[Box]:
    """Frontal faces in ``image`` as ``(x, y, w, h)`` boxes in its pixels, largest first; [] when none.

    Args:
        min_size: the smallest face side, as a fraction of the image's shorter side (0.08: 5 px in a 64 px
            image, 41 px in a 512 px one), so a photo and its downsized copy are searched alike.
        scale_factor, min_neighbors: the cascade's pyramid step and how many overlapping hits a face needs.
        detect_size: images with a shorter side below this are upsampled (bicubic) to it before detecting.
    """
    import cv2

    _check_detect_args(min_size, scale_factor, min_neighbors, detect_size)
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = max(1.0, detect_size / min(width, height))
    if scale > 1:
        rgb = rgb.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
    gray = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2GRAY)
    side = max(24, math.ceil(min_size * min(gray.shape)))
    found = _cascade().detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                        minSize=(side, side))
    boxes = []
    for x, y, w, h in np.asarray(found, dtype=np.int64).reshape(-1, 4):
        left, top = max(0, math.floor(x / scale)), max(0, math.floor(y / scale))
        right, bottom = min(width, math.ceil((x + w) / scale)), min(height, math.ceil((y + h) / scale))
        if right > left and bottom > top:
            boxes.append((left, top, right - left, bottom - top))
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


def crop_box(box: Box, image_size: tuple[int, int], margin: float = 0.2) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` x its width (height) on each side, rounded, clipped to ``image_size``
    (width, height): the ``(left, top, right, bottom)`` that :func:`face_crop` cuts."""
    x, y, w, h = (int(v) for v in box)
    width, height = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"a face box needs a positive width and height, got {box}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    dx, dy = round(margin * w), round(margin * h)
    left, top = max(0, x - dx), max(0, y - dy)
    right, bottom = min(width, x + w + dx), min(height, y + h + dy)
    if right <= left or bottom <= top:
        raise ValueError(f"the face box {box} lies outside the {width}x{height} image")
    return left, top, right, bottom


def face_crop(image: Image.Image, box: Box, margin: float = 0.2,
              size: int | tuple[int, int] | None = None) -> Image.Image:
    """The region of ``box`` grown by ``margin`` and clipped to ``image`` (RGB); resized to ``size`` (an int
    for a square, or (width, height)) when given."""
    crop = image.convert("RGB").crop(crop_box(box, image.size, margin))
    if size is not None:
        crop = crop.resize((size, size) if isinstance(size, int) else tuple(size), Image.LANCZOS)
    return crop


def _aligned(photo: Image.Image, output: Image.Image) -> Image.Image:
    """``output`` in RGB at the photo's size (the stylizers keep the layout, so regions correspond)."""
    out = output.convert("RGB")
    return out if out.size == photo.size else out.resize(photo.size, Image.LANCZOS)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
    return float(np.clip(np.dot(a, b) / denom, -1.0, 1.0))


def identity_similarity(photo: Image.Image, output: Image.Image, encoder: ImageEncoder,
                        box: Box | None = None, margin: float = 0.2) -> float | None:
    """Cosine of the encoder's embeddings of the photo's face region and the same region of ``output``
    (resized to the photo's size). ``box`` is the largest face detected in the photo unless given; None when
    the photo has no face. A proxy of colour, layout and texture, not face recognition (see the module doc)."""
    if box is None:
        faces = detect_faces(photo)
        if not faces:
            return None
        box = faces[0]
    crops = [face_crop(photo, box, margin), face_crop(_aligned(photo, output), box, margin)]
    emb = np.asarray(encoder.embed_images(crops))
    return _cosine(emb[0], emb[1])


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class FaceReport:
    """One photo and its stylized output: the faces detected in each (output boxes in the photo's pixels),
    the box compared, and the embedding cosine of that region (None when the photo has no face)."""

    photo_faces: list[Box] = field(default_factory=list)
    output_faces: list[Box] = field(default_factory=list)
    box: Box | None = None
    similarity: float | None = None

    @property
    def face_kept(self) -> bool:
        """Whether the output still has a detected face overlapping the compared box (IoU >= KEPT_IOU)."""
        return self.box is not None and any(box_iou(self.box, f) >= KEPT_IOU for f in self.output_faces)

    def to_dict(self) -> dict:
        """A JSON-able record (boxes as lists), with ``face_kept`` and the face counts."""
        record = asdict(self)
        record["photo_faces"] = [list(b) for b in self.photo_faces]
        record["output_faces"] = [list(b) for b in self.output_faces]
        record["box"] = list(self.box) if self.box is not None else None
        record.update(n_photo_faces=len(self.photo_faces), n_output_faces=len(self.output_faces),
                      face_kept=self.face_kept)
        return record


def face_report(photo: Image.Image, output: Image.Image, encoder: ImageEncoder, box: Box | None = None,
                margin: float = 0.2) -> FaceReport:
    """Faces detected in ``photo`` and in ``output`` (at the photo's size), and :func:`identity_similarity`
    on ``box`` (the photo's largest face unless given)."""
    aligned = _aligned(photo, output)
    photo_faces, output_faces = detect_faces(photo), detect_faces(aligned)
    if box is None and photo_faces:
        box = photo_faces[0]
    similarity = None if box is None else identity_similarity(photo, aligned, encoder, box=box, margin=margin)
    return FaceReport(photo_faces=photo_faces, output_faces=output_faces,
                      box=tuple(int(v) for v in box) if box is not None else None, similarity=similarity)
