"""The weight-free control images on hand-made shapes whose edges are known: Canny, lineart, edge F1."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation, binary_erosion

from cartoonify.edgemaps import (
    PREPROCESSORS,
    CannySettings,
    LineartSettings,
    canny_edges,
    canny_map,
    control_image,
    edge_f1,
    lineart_map,
    settings_record,
    structure_f1,
)

SIZE = 64
SQUARE = (20, 43)  # first and last row/column of the filled square (PIL's rectangle includes both)
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
BOX = np.ones((3, 3), bool)


def _blank(value: int = 255, size: int = SIZE) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value, value))


def _square() -> Image.Image:
    """A dark filled square on white."""
    img = _blank()
    ImageDraw.Draw(img).rectangle((SQUARE[0], SQUARE[0], SQUARE[1], SQUARE[1]), fill=(30, 30, 30))
    return img


def _square_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[SQUARE[0] : SQUARE[1] + 1, SQUARE[0] : SQUARE[1] + 1] = True
    return mask


def _step_pixels() -> np.ndarray:
    """The two pixel rings on either side of the square's border: where the intensity step is."""
    inside = _square_mask()
    inner = inside & ~binary_erosion(inside, CROSS)
    outer = binary_dilation(inside, CROSS) & ~inside
    return inner | outer


def _vertical_line(width: int = 1, gray: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A dark vertical line on white, and the columns it was drawn on (read back from the pixels)."""
    img = _blank()
    ImageDraw.Draw(img).line((32, 8, 32, 55), fill=(gray, gray, gray), width=width)
    columns = np.nonzero((np.asarray(img.convert("L")) < 255).any(axis=0))[0]
    return img, columns


# --------------------------------------------------------------------------------------------------------------------
# Canny.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_canny_edges_of_a_square_lie_on_its_border(sigma):
    edges = canny_edges(_square(), CannySettings(sigma=sigma))
    assert edges.shape == (SIZE, SIZE) and edges.dtype == bool
    step = _step_pixels()
    # every edge pixel is within 1 px of the step (so within 2 px of the border line itself)
    near = binary_dilation(step, BOX)
    assert edges.any() and not (edges & ~near).any()
    # the border's ring inside the square is covered: each of its pixels has an edge within 1 px
    ring = _square_mask() & ~binary_erosion(_square_mask(), CROSS)
    covered = (ring & binary_dilation(edges, BOX)).sum() / ring.sum()
    assert covered >= 0.95
    # nothing in the interior (3 px in from the border) or far outside
    interior = binary_erosion(_square_mask(), BOX, iterations=3)
    far = ~binary_dilation(_square_mask(), BOX, iterations=3)
    assert not (edges & interior).any() and not (edges & far).any()


def test_canny_edges_of_a_blank_image_are_empty():
    for value in (0, 128, 255):
        assert not canny_edges(_blank(value)).any()


def test_canny_edges_of_a_line_are_its_two_sides():
    img, columns = _vertical_line()
    edges = canny_edges(img)
    cols = np.nonzero(edges.any(axis=0))[0]
    assert cols.min() >= columns.min() - 1 and cols.max() <= columns.max() + 1
    rows = np.nonzero(edges.any(axis=1))[0]
    assert rows.min() >= 7 and rows.max() <= 56


@pytest.mark.parametrize("low, high", [(0.9, 0.7), (0.8, 0.8), (0.0, 0.5), (0.5, 1.0)])
def test_canny_thresholds_are_checked(low, high):
    with pytest.raises(ValueError, match="low") as err:
        CannySettings(low=low, high=high)
    assert "high" in str(err.value) and f"{low}" in str(err.value)


def test_canny_sigma_is_checked():
    with pytest.raises(ValueError, match="sigma"):
        CannySettings(sigma=-1)


def test_canny_map_is_white_edges_on_black():
    img = _square()
    edges = canny_edges(img)
    control = canny_map(img)
    assert control.mode == "RGB" and control.size == img.size
    arr = np.asarray(control)
    assert set(np.unique(arr)) <= {0, 255}
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert np.array_equal(arr[..., 0] == 255, edges)
    assert np.asarray(canny_map(_blank())).max() == 0


# --------------------------------------------------------------------------------------------------------------------
# Lineart.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 3])
def test_lineart_lights_the_line(width):
    img, columns = _vertical_line(width)
    control = lineart_map(img)
    assert control.mode == "RGB" and control.size == img.size
    lit = np.asarray(control)[..., 0]
    on_line = np.zeros_like(lit, bool)
    on_line[8:56, columns.min() : columns.max() + 1] = True
    assert lit[on_line].min() > 200  # every line pixel bright (gain 4 saturates)
    far = np.ones_like(lit, bool)
    far[:, columns.min() - 3 : columns.max() + 4] = False
    assert lit[far].max() == 0


def test_lineart_is_brightest_on_the_line_columns():
    img, columns = _vertical_line(width=5)
    lit = np.asarray(lineart_map(img, LineartSettings(gain=1.0, threshold=0.0)))[..., 0].astype(int)
    profile = lit.max(axis=0)
    assert profile.argmax() in columns
    assert profile[columns].min() > profile[np.setdiff1d(np.arange(SIZE), columns)].max()


@pytest.mark.parametrize("value", [0, 128, 255])
def test_lineart_of_a_blank_image_is_black(value):
    control = lineart_map(_blank(value))
    assert control.mode == "RGB" and control.size == (SIZE, SIZE)
    assert np.asarray(control).max() == 0


def test_lineart_threshold_keeps_fewer_pixels():
    # four lines, darkest first: a higher threshold drops the fainter ones
    img = Image.new("RGB", (96, SIZE), "white")
    draw = ImageDraw.Draw(img)
    for i, gray in enumerate((0, 80, 160, 220)):
        draw.line((12 + 22 * i, 8, 12 + 22 * i, 55), fill=(gray, gray, gray), width=2)
    counts = [int((np.asarray(lineart_map(img, LineartSettings(threshold=t)))[..., 0] > 0).sum())
              for t in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1] > 0
    lines_kept = [len(np.nonzero(np.asarray(lineart_map(img, LineartSettings(threshold=t)))[..., 0].any(axis=0))[0])
                  // 2 for t in (0.0, 0.5, 0.9)]
    assert lines_kept == [4, 2, 1]  # responses scale with darkness: 255, 175, 95, 35 of 255


@pytest.mark.parametrize("kwargs", [{"sigma": 0}, {"sigma": -1}, {"threshold": -0.1}, {"threshold": 1.0},
                                    {"gain": 0}])
def test_lineart_settings_are_checked(kwargs):
    with pytest.raises(ValueError, match="lineart"):
        LineartSettings(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Edge F1.
# --------------------------------------------------------------------------------------------------------------------


def _map(shape, *pixels) -> np.ndarray:
    out = np.zeros(shape, bool)
    for r, c in pixels:
        out[r, c] = True
    return out


def _outline(top, left, n, shape=(10, 12)) -> np.ndarray:
    """The outline of an n x n square."""
    out = np.zeros(shape, bool)
    out[top : top + n, left : left + n] = True
    out[top + 1 : top + n - 1, left + 1 : left + n - 1] = False
    return out


def test_edge_f1_of_identical_maps_is_one():
    edges = canny_edges(_square())
    assert edge_f1(edges, edges) == 1.0
    assert edge_f1(edges, edges, tolerance=0) == 1.0


def test_edge_f1_of_far_apart_maps_is_zero():
    a = _map((20, 20), (2, 2), (2, 3), (3, 2))
    b = _map((20, 20), (15, 15), (16, 16))
    assert edge_f1(a, b, tolerance=2) == 0.0


def test_edge_f1_of_a_one_pixel_shift():
    # a 5 x 5 outline (16 px) and the same outline one column to the right: at tolerance 0 they share
    # 4 px of the top row and 4 px of the bottom row, so precision = recall = 8/16 and F1 = 0.5
    reference, shifted = _outline(2, 2, 5), _outline(2, 3, 5)
    assert reference.sum() == shifted.sum() == 16 and (reference & shifted).sum() == 8
    assert edge_f1(reference, shifted, tolerance=1) == 1.0
    assert edge_f1(reference, shifted, tolerance=0) == pytest.approx(0.5)


def test_edge_f1_precision_and_recall_by_hand():
    # reference: column 3 rows 2-7 (6 px) and column 10 rows 2-9 (8 px), 14 px
    # candidate: column 3 rows 2-7 (6 px) and column 11 rows 2-5 (4 px), 10 px
    reference = _map((12, 14), *[(r, 3) for r in range(2, 8)], *[(r, 10) for r in range(2, 10)])
    candidate = _map((12, 14), *[(r, 3) for r in range(2, 8)], *[(r, 11) for r in range(2, 6)])
    # tolerance 0: precision 6/10, recall 6/14 = 3/7, F1 = 2 * 0.6 * 3/7 / (0.6 + 3/7) = 0.5
    assert edge_f1(reference, candidate, tolerance=0) == pytest.approx(0.5)
    # tolerance 1 (a disk): every candidate pixel is 1 px from a reference pixel, precision 1; reference
    # column 10 rows 2-5 are 1 px from the candidate, rows 6-9 are not (row 6 is sqrt(2) away): recall 10/14,
    # F1 = 2 * 1 * 5/7 / (1 + 5/7) = 5/6
    assert edge_f1(reference, candidate, tolerance=1) == pytest.approx(5 / 6)
    # tolerance 2: row 6 and row 7 (2 px down, sqrt(5) > 2 for row 7 -> only row 6 joins): recall 11/14
    assert edge_f1(reference, candidate, tolerance=2) == pytest.approx(2 * (11 / 14) / (1 + 11 / 14))


def test_edge_f1_of_empty_maps():
    empty, one = np.zeros((5, 5), bool), _map((5, 5), (2, 2))
    assert edge_f1(empty, empty) == 1.0
    assert edge_f1(empty, one) == 0.0 and edge_f1(one, empty) == 0.0


def test_edge_f1_needs_one_shape():
    with pytest.raises(ValueError, match="shape"):
        edge_f1(np.zeros((5, 5), bool), np.zeros((5, 6), bool))


def test_structure_f1_of_a_photo_and_its_mirror():
    from skimage.data import astronaut

    photo = Image.fromarray(astronaut()).resize((128, 128), Image.LANCZOS)
    assert structure_f1(photo, photo) == 1.0
    mirrored = photo.transpose(Image.FLIP_LEFT_RIGHT)
    assert structure_f1(photo, mirrored) < 0.6
    # the output is resized to the photo's size: a 2x copy keeps most of the structure
    assert structure_f1(photo, photo.resize((256, 256), Image.LANCZOS)) > structure_f1(photo, mirrored)
    # a square off to one side and its mirror share no edge
    wide = Image.new("RGB", (2 * SIZE, SIZE), "white")
    wide.paste(_square(), (0, 0))  # the square in columns 20-43, its mirror in 84-107
    assert structure_f1(wide, wide.transpose(Image.FLIP_LEFT_RIGHT)) == 0.0


# --------------------------------------------------------------------------------------------------------------------
# Dispatch and records.
# --------------------------------------------------------------------------------------------------------------------


def test_control_image_dispatches_and_refuses_unknown_kinds():
    img = _square()
    assert np.array_equal(np.asarray(control_image(img, "canny")), np.asarray(canny_map(img)))
    settings = LineartSettings(threshold=0.3)
    assert np.array_equal(np.asarray(control_image(img, "lineart", settings)),
                          np.asarray(lineart_map(img, settings)))
    with pytest.raises(ValueError, match="sketch") as err:
        control_image(img, "sketch")
    assert all(kind in str(err.value) for kind in PREPROCESSORS)


@pytest.mark.parametrize("kind, settings", [("canny", CannySettings(sigma=2.0, low=0.5, high=0.8)),
                                            ("lineart", LineartSettings(sigma=3.0, threshold=0.2, gain=2.0)),
                                            ("canny", None), ("lineart", None)])
def test_settings_record_round_trips(kind, settings):
    import json

    cls = CannySettings if kind == "canny" else LineartSettings
    record = json.loads(json.dumps(settings_record(kind, settings)))
    assert record.pop("preprocessor") == kind
    assert cls(**record) == (settings or cls())
    assert record == asdict(settings or cls())


def test_settings_record_refuses_unknown_kinds():
    with pytest.raises(ValueError):
        settings_record("sketch")


def test_wrong_settings_type_and_negative_tolerance_are_refused():
    from cartoonify.edgemaps import LineartSettings, control_image, edge_f1

    img = Image.new("RGB", (16, 16), "white")
    with pytest.raises(TypeError, match="canny needs CannySettings"):
        control_image(img, "canny", LineartSettings())
    with pytest.raises(ValueError, match="tolerance"):
        edge_f1(np.zeros((4, 4), bool), np.zeros((4, 4), bool), tolerance=-2)
