"""The VAE's generic graphics: deterministic, varied, with the white pages and dark outlines the base world lacks."""

from __future__ import annotations

import numpy as np

from cartoonify.data.baseworld import make_base_dataset
from cartoonify.data.graphics import make_graphics, render_graphic


def test_graphics_are_deterministic_and_varied():
    a, b = np.asarray(render_graphic(3)), np.asarray(render_graphic(3))
    assert np.array_equal(a, b)
    images = make_graphics(40)
    assert images.shape == (40, 64, 64, 3) and images.dtype == np.uint8
    assert len({im.tobytes() for im in images}) == 40


def test_graphics_cover_what_the_base_world_lacks():
    """White pages (the base world never reaches 235 in every channel over a border) and near-black lines."""
    graphics = make_graphics(200).astype(int)
    base, _ = make_base_dataset(200)

    def white_border(images):
        border = np.concatenate([images[:, :4].reshape(len(images), -1, 3), images[:, -4:].reshape(len(images), -1, 3)], 1)
        return (border.min(axis=2) >= 235).mean(axis=1)

    assert (white_border(graphics) > 0.5).mean() > 0.3  # mostly white page borders in a third of them
    assert (white_border(base.astype(int)) > 0.5).mean() == 0  # and in no base-world image
    assert ((graphics.max(axis=3) < 50).mean(axis=(1, 2)) > 0.01).mean() > 0.3  # dark strokes in many
