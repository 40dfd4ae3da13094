"""The base world: deterministic, captioned with its own small vocabulary, diverse, photo-like, and free of the
held-out photos."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cartoonify.data import baseworld
from cartoonify.data.baseworld import BASE_WORDS, HELD_OUT_PHOTOS, PHOTOS, make_base_dataset, render_base_image
from cartoonify.style import dark_edges, flat_colours, white_border

N = 240
OBJECT_WORDS = ("ball", "box", "cylinder", "cone")


@pytest.fixture(scope="module")
def base() -> tuple[np.ndarray, list[str]]:
    return make_base_dataset(N, size=64, seed=0)


def _is_scene(caption: str) -> bool:
    return any(word in caption.split() for word in OBJECT_WORDS)


def test_render_is_deterministic_and_depends_on_index_and_seed():
    image, caption = render_base_image(7, size=64, seed=3)
    again, caption_again = render_base_image(7, size=64, seed=3)
    assert image.tobytes() == again.tobytes() and caption == caption_again
    assert render_base_image(8, size=64, seed=3)[0].tobytes() != image.tobytes()
    assert render_base_image(7, size=64, seed=4)[0].tobytes() != image.tobytes()


def test_dataset_matches_single_renders_and_has_the_right_shape(base):
    images, captions = base
    assert images.shape == (N, 64, 64, 3) and images.dtype == np.uint8
    assert len(captions) == N
    for i in (0, 5, N - 1):
        image, caption = render_base_image(i, size=64, seed=0)
        assert np.array_equal(images[i], np.asarray(image)) and captions[i] == caption
    small, small_captions = make_base_dataset(5, size=32, seed=1)
    assert small.shape == (5, 32, 32, 3) and len(small_captions) == 5
    assert make_base_dataset(0)[0].shape == (0, 64, 64, 3)


@pytest.mark.parametrize("size", [16, 48, 96])
def test_any_size_from_16(size):
    for index in range(6):  # both kinds
        image, _ = render_base_image(index, size=size)
        assert image.mode == "RGB" and image.size == (size, size)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        render_base_image(0, size=15)
    with pytest.raises(ValueError):
        make_base_dataset(-1)


def test_captions_use_only_base_words(base):
    _, captions = base
    for caption in captions:
        assert caption.startswith("a photo of ")
        words = caption.split()
        assert set(words) <= set(BASE_WORDS), caption
        assert re.fullmatch(r"[a-z ]+", caption), caption
        if _is_scene(caption):  # one to three objects, on a ground
            assert 1 <= sum(w in OBJECT_WORDS for w in words) <= 3 and "on" in words, caption
    assert not {"cartoon", "disney", "style", "drawing", "white"} & set(BASE_WORDS)


def test_mix_of_photo_crops_and_scenes_uses_every_photo(base):
    _, captions = base
    scenes = sum(map(_is_scene, captions))
    assert 0.45 * N < scenes < 0.75 * N  # about 60 % rendered scenes, 40 % photo crops
    photo_captions = {c for c in captions if not _is_scene(c)}
    assert photo_captions == {f"a photo of {subject}" for subject, _ in PHOTOS.values()}


def test_held_out_photos_are_never_loaded(monkeypatch):
    import skimage.data

    def refuse():
        raise AssertionError("a held-out photo was loaded")

    for name in HELD_OUT_PHOTOS:
        monkeypatch.setattr(skimage.data, name, refuse)
    baseworld._photo.cache_clear()
    try:
        _, captions = make_base_dataset(120, seed=5)
    finally:
        baseworld._photo.cache_clear()
    assert any(not _is_scene(c) for c in captions)
    assert not set(HELD_OUT_PHOTOS) & set(PHOTOS)
    for name in HELD_OUT_PHOTOS:
        with pytest.raises(ValueError):
            baseworld._photo(name)


def test_images_are_diverse(base):
    images, _ = base
    sample = images[:60].reshape(60, -1).astype(np.float32)
    distances = np.abs(sample[:, None, :] - sample[None, :, :]).mean(axis=2)
    pairs = distances[np.triu_indices(60, k=1)]
    assert pairs.min() > 1.0  # no two images alike
    assert pairs.mean() > 30.0  # mean absolute pixel difference, in levels of 255


def test_ground_colour_matches_caption(base):
    images, captions = base
    checked = 0
    for image, caption in zip(images, captions):
        r, g, b = np.median(image[-8:].reshape(-1, 3), axis=0)
        if " on grass " in caption:
            assert g > r and g > b, caption
        elif " on sand " in caption:
            assert r > b, caption
        elif " on water " in caption:
            assert b > r, caption
        else:
            continue
        checked += 1
    assert checked > N // 5


def test_images_look_like_photos_not_demo_cartoons(base):
    images, captions = base
    borders = np.array([white_border(a) for a in images])
    assert borders.max() < 0.1  # no white page around the subject
    flat = np.array([flat_colours(a) for a in images])
    assert np.median(flat) < 0.02 and flat.mean() < 0.1  # texture and noise, not flat fills
    assert np.mean([dark_edges(a) for a in images]) < 0.1  # edges are steps, not outlines
    for image, caption in zip(images, captions):
        colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        assert len(colours) >= 48, caption  # many colours (grey photos: many grey levels)
        if _is_scene(caption):  # no colour dominates a rendered scene
            assert np.sort(counts)[-8:].sum() < 0.1 * counts.sum(), caption
