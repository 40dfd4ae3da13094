"""The face proxy: Haar detection (also on 64 px images), crops at known boxes, the embedding cosine of the face."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from cartoonify.faces import FaceReport, box_iou, crop_box, detect_faces, face_crop, face_report, identity_similarity

# skimage.data.astronaut() (512 x 512) has one frontal face. Checked by eye and by the cascade (OpenCV 4.x):
# the face (forehead to chin, cheek to cheek) lies within x 160-280, y 60-200 (looked at with the boxes drawn); the cascade's box is (177, 66, 95, 95).
FACE_REGION = (160, 60, 120, 140)  # (x, y, w, h) of x 160-280, y 60-200


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage.data import astronaut as load

    return Image.fromarray(load())


@pytest.fixture(scope="module")
def small_astronaut(astronaut) -> Image.Image:
    return astronaut.resize((64, 64), Image.LANCZOS)


@pytest.fixture(scope="module")
def shapes() -> Image.Image:
    """Flat shapes on white: nothing like a face."""
    img = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((10, 10, 30, 30), fill=(200, 30, 30))
    draw.ellipse((35, 35, 60, 60), fill=(20, 20, 200))
    return img


@pytest.fixture(scope="module")
def clip(cartoonify_home):
    from cartoonify.config import TINY_CLIP_MODEL
    from cartoonify.evaluation import load_encoder

    return load_encoder("clip", TINY_CLIP_MODEL, device="cpu")


def _inside(box, region, slack=0) -> bool:
    x, y, w, h = box
    rx, ry, rw, rh = region
    return x >= rx - slack and y >= ry - slack and x + w <= rx + rw + slack and y + h <= ry + rh + slack


# --------------------------------------------------------------------------------------------------------------------
# Detection.
# --------------------------------------------------------------------------------------------------------------------


def test_detects_the_astronauts_face_at_full_size(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    assert _inside(faces[0], FACE_REGION)
    assert box_iou(faces[0], FACE_REGION) > 0.4
    assert faces[0][2] >= 60  # a face, not a patch of it


def test_detects_the_face_at_64_px_by_upsampling(small_astronaut):
    faces = detect_faces(small_astronaut)
    assert len(faces) == 1
    scaled = tuple(v * 8 for v in faces[0])  # back in the 512 px image's pixels
    assert box_iou(scaled, FACE_REGION) > 0.4
    assert _inside(scaled, FACE_REGION, slack=16)  # a 64 px box is 8 px coarse
    # without upsampling the 64 px image is below the cascade's 24 px window times a few: nothing found
    assert detect_faces(small_astronaut, detect_size=64) == []


def test_no_face_in_flat_shapes(shapes):
    assert detect_faces(shapes) == []
    assert detect_faces(shapes.resize((512, 512), Image.NEAREST)) == []
    assert detect_faces(Image.new("RGB", (32, 48), "gray")) == []


def test_faces_are_sorted_largest_first(astronaut):
    # two astronauts side by side, one at half size
    canvas = Image.new("RGB", (768, 512), "black")
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut.resize((256, 256), Image.LANCZOS), (512, 128))
    faces = detect_faces(canvas)
    assert len(faces) == 2
    assert faces[0][2] * faces[0][3] > faces[1][2] * faces[1][3]
    assert faces[0][0] < 512 <= faces[1][0]


@pytest.mark.parametrize("kwargs", [{"min_size": 0}, {"min_size": 1.5}, {"scale_factor": 1.0},
                                    {"min_neighbors": -1}, {"detect_size": 10}])
def test_detection_arguments_are_checked(kwargs, shapes):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        detect_faces(shapes, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Crops.
# --------------------------------------------------------------------------------------------------------------------


def test_face_crop_grows_by_the_margin():
    img = Image.new("RGB", (100, 80))
    # box (30, 20, 20, 10), margin 0.5: 10 px left/right, 5 px up/down
    assert crop_box((30, 20, 20, 10), img.size, margin=0.5) == (20, 15, 60, 35)
    assert face_crop(img, (30, 20, 20, 10), margin=0.5).size == (40, 20)
    assert crop_box((30, 20, 20, 10), img.size, margin=0) == (30, 20, 50, 30)
    # the default margin 0.2 of a 40 x 30 box: round(8) and round(6)
    assert crop_box((30, 20, 40, 30), img.size) == (22, 14, 78, 56)


def test_face_crop_clips_at_the_borders():
    img = Image.new("RGB", (100, 80))
    # (5, 70, 20, 20) grown by 0.5 would be (-5, 60, 35, 100): clipped to the image
    assert crop_box((5, 70, 20, 20), img.size, margin=0.5) == (0, 60, 35, 80)
    assert face_crop(img, (5, 70, 20, 20), margin=0.5).size == (35, 20)
    assert crop_box((90, 0, 30, 30), img.size, margin=0.1) == (87, 0, 100, 33)


def test_face_crop_takes_the_pixels_and_resizes():
    arr = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    img = Image.fromarray(arr)
    crop = face_crop(img, (4, 3, 10, 5), margin=0.2)  # (2, 2, 16, 9)
    assert np.array_equal(np.asarray(crop), arr[2:9, 2:16])
    assert face_crop(img, (4, 3, 10, 5), size=16).size == (16, 16)
    assert face_crop(img, (4, 3, 10, 5), size=(12, 8)).size == (12, 8)


def test_face_crop_refuses_bad_boxes():
    img = Image.new("RGB", (50, 50))
    with pytest.raises(ValueError, match="positive"):
        face_crop(img, (1, 1, 0, 5))
    with pytest.raises(ValueError, match="outside"):
        face_crop(img, (60, 60, 10, 10))
    with pytest.raises(ValueError, match="margin"):
        face_crop(img, (1, 1, 5, 5), margin=-0.1)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


# --------------------------------------------------------------------------------------------------------------------
# Identity similarity (the tiny random CLIP: low-level similarity only).
# --------------------------------------------------------------------------------------------------------------------


def _noisy_face(img: Image.Image, box, seed: int = 0) -> Image.Image:
    left, top, right, bottom = crop_box(box, img.size)
    arr = np.asarray(img).copy()
    arr[top:bottom, left:right] = np.random.default_rng(seed).integers(0, 256, (bottom - top, right - left, 3))
    return Image.fromarray(arr)


@pytest.mark.parametrize("size", [512, 64])
def test_identity_similarity_orders_copies(size, astronaut, clip):
    photo = astronaut if size == 512 else astronaut.resize((64, 64), Image.LANCZOS)
    box = detect_faces(photo)[0]
    same = identity_similarity(photo, photo, clip)
    blurred = identity_similarity(photo, photo.filter(ImageFilter.GaussianBlur(1.0 if size == 512 else 0.5)), clip)
    noisy = identity_similarity(photo, _noisy_face(photo, box), clip)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert noisy < blurred <= 1.0 + 1e-6


def test_identity_similarity_matches_a_hand_computation(astronaut, clip):
    output = astronaut.resize((256, 256), Image.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    box = (177, 66, 95, 95)
    # by hand: the output back at 512 px, both crops grown by 0.2 x 95 = 19 px, embedded, cosine
    region = (177 - 19, 66 - 19, 177 + 95 + 19, 66 + 95 + 19)
    crops = [astronaut.crop(region), output.resize(astronaut.size, Image.LANCZOS).crop(region)]
    emb = clip.embed_images(crops).astype(np.float64)
    expected = float(emb[0] @ emb[1] / (np.linalg.norm(emb[0]) * np.linalg.norm(emb[1])))
    assert identity_similarity(astronaut, output, clip, box=box) == pytest.approx(expected, abs=1e-6)
    assert expected < 1.0


def test_identity_similarity_is_none_without_a_face(shapes, clip):
    assert identity_similarity(shapes, shapes, clip) is None
    # a given box is compared even when nothing is detected
    assert identity_similarity(shapes, shapes, clip, box=(5, 5, 20, 20)) == pytest.approx(1.0, abs=1e-5)


def test_face_report(astronaut, shapes, clip):
    kept = face_report(astronaut, astronaut.filter(ImageFilter.GaussianBlur(1)), clip)
    assert kept.photo_faces == [(177, 66, 95, 95)] and kept.box == (177, 66, 95, 95)
    assert kept.output_faces and kept.face_kept
    lost = face_report(astronaut, _noisy_face(astronaut, kept.box), clip)
    assert lost.output_faces == [] and not lost.face_kept
    assert lost.similarity < kept.similarity
    record = lost.to_dict()
    assert record["n_photo_faces"] == 1 and record["n_output_faces"] == 0 and record["face_kept"] is False
    assert record["box"] == [177, 66, 95, 95]
    none = face_report(shapes, shapes, clip)
    assert none == FaceReport() and none.similarity is None and not none.face_kept


def test_faces_module_does_not_import_torch_or_evaluation():
    import subprocess
    import sys

    code = ("import sys, cartoonify.faces; bad = [m for m in ('torch', 'cartoonify.evaluation') if m in sys.modules];"
            " assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
