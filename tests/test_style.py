"""The style score tells the demo cartoons from the base world and the held-out photos, and moves the right way
under small changes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from cartoonify.data.baseworld import make_base_dataset
from cartoonify.data.drawings import render_style_image
from cartoonify.style import (
    dark_edges,
    edge_content,
    flat_colours,
    mean_style_score,
    style_components,
    style_score,
    white_border,
)

N = 120


def _cartoon(index: int) -> np.ndarray:
    """A demo cartoon as the model sees it: drawn at 256 px, resized to 64 with LANCZOS."""
    image, _ = render_style_image(index, size=256)
    return np.asarray(image.resize((64, 64), Image.LANCZOS))


@pytest.fixture(scope="module")
def cartoons() -> list[np.ndarray]:
    return [_cartoon(i) for i in range(N)]


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return make_base_dataset(N, size=64, seed=1)[0]


@pytest.fixture(scope="module")
def held_out() -> list[np.ndarray]:
    import skimage.data

    photos = [skimage.data.astronaut(), np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)]
    return [np.asarray(Image.fromarray(p).resize((64, 64), Image.LANCZOS)) for p in photos]


def test_score_separates_cartoons_from_photos(cartoons, base, held_out):
    cartoon = np.array([style_score(a) for a in cartoons])
    photo = np.array([style_score(a) for a in list(base) + held_out])
    assert cartoon.min() > 0.65 and photo.max() < 0.3
    assert cartoon.min() - photo.max() > 0.4  # measured: 0.74 vs 0.20 over these images
    assert cartoon.mean() > 0.75 and photo.mean() < 0.1


def test_each_component_points_the_same_way(cartoons, base):
    c = [style_components(a) for a in cartoons]
    b = [style_components(a) for a in base]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    assert min(r["white_border"] for r in c) > 0.8 and max(r["white_border"] for r in b) < 0.1
    assert min(r["flat_colours"] for r in c) > 0.3 and mean(b, "flat_colours") < 0.1
    assert mean(c, "dark_edges") > 2 * mean(b, "dark_edges")
    assert min(r["edge_content"] for r in c) > 0.1
    for rows in (c, b):
        for r in rows:
            assert set(r) == {"white_border", "flat_colours", "dark_edges", "edge_content"}
            assert all(0.0 <= v <= 1.0 for v in r.values())


def test_blur_and_noise_lower_the_score(cartoons):
    rng = np.random.default_rng(0)
    for array in cartoons[:24]:
        score = style_score(array)
        blurred = Image.fromarray(array).filter(ImageFilter.GaussianBlur(1.0))
        assert style_score(blurred) < score - 0.03
        noisy = np.clip(array + rng.normal(0, 6, array.shape), 0, 255).astype(np.uint8)
        assert style_score(noisy) < score - 0.05
        assert flat_colours(noisy) < flat_colours(array)


def test_a_white_border_raises_a_photo_score(base, held_out):
    for array in list(base[:30]) + held_out:
        framed = array.copy()
        framed[:8], framed[-8:], framed[:, :8], framed[:, -8:] = 255, 255, 255, 255
        assert white_border(framed) > 0.95
        assert style_score(framed) > style_score(array) + 0.4


def test_outlines_raise_dark_edges():
    image = Image.new("RGB", (64, 64), (90, 160, 220))
    plain = np.asarray(image.copy())
    draw = ImageDraw.Draw(image)
    draw.rectangle([16, 16, 47, 47], fill=(240, 120, 40))  # a step edge ...
    stepped = dark_edges(image)
    draw.rectangle([16, 16, 47, 47], outline=(30, 25, 40), width=1)  # ... then an outline on it
    # the edge band is about five pixels wide around a one-pixel line, hence 0.2 at most here
    assert dark_edges(plain) == 0.0 and stepped < 0.05 and dark_edges(image) > 0.15


def test_blank_and_featureless_images_score_low():
    for value in (0, 128, 255):
        page = np.full((64, 64, 3), value, np.uint8)
        assert edge_content(page) == 0.0 and style_score(page) == 0.0
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert 0.0 <= style_score(noise) < 0.3


def test_inputs_pil_or_uint8_array_any_size():
    image, _ = render_style_image(3, size=128)
    array = np.asarray(image)
    assert style_score(image) == style_score(array)
    assert style_score(image.convert("RGBA")) == pytest.approx(style_score(image))
    grey = np.asarray(image.convert("L"))
    assert style_score(grey) == style_score(image.convert("L")) == style_score(np.repeat(grey[:, :, None], 3, 2))
    for size in (48, 512):  # measured at 64 px whatever the input size
        assert style_score(render_style_image(3, size=size)[0]) > 0.65
    assert 0.0 <= style_score(np.zeros((16, 40, 3), np.uint8)) <= 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        style_score(np.zeros((15, 64, 3), np.uint8))
    with pytest.raises(TypeError):
        style_score(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        style_score(np.zeros((64, 64, 2), np.uint8))
    with pytest.raises(TypeError):
        style_score([[0, 0, 0]])
    with pytest.raises(ValueError):
        mean_style_score([])


def test_mean_style_score(cartoons, base):
    images = cartoons[:3] + list(base[:3])
    assert mean_style_score(images) == pytest.approx(np.mean([style_score(a) for a in images]))
    assert mean_style_score(iter(cartoons[:4])) > 0.65
    assert mean_style_score(base[:4]) < 0.3
