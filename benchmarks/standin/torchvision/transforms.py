"""Stand-in for ``torchvision.transforms``: the transforms diffusers' ``train_dreambooth.py`` builds
(``Resize``, ``CenterCrop`` / ``RandomCrop``, ``ToTensor``, ``Normalize``, ``Compose``) on PIL images.

Resizing and cropping are cartoonify's own (:func:`cartoonify.imaging.resize_shorter_side`,
:func:`cartoonify.imaging.crop_square`), which follow torchvision's rounding; so the reference script
sees the same pixels as cartoonify's trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from cartoonify.imaging import crop_square, resize_shorter_side


class InterpolationMode:
    """torchvision's names for PIL's resampling filters."""

    NEAREST = Image.NEAREST
    BILINEAR = Image.BILINEAR
    BICUBIC = Image.BICUBIC
    LANCZOS = Image.LANCZOS


def _square_size(size) -> int:
    if isinstance(size, int):
        return size
    if len(size) == 1 or size[0] == size[1]:
        return int(size[0])
    raise ValueError(f"the stand-in crops squares only, not {tuple(size)}")


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    """Resize the shorter side to ``size`` (an int, as diffusers' script passes it)."""

    def __init__(self, size: int, interpolation=InterpolationMode.BILINEAR):
        if not isinstance(size, int):
            raise TypeError(f"the stand-in resizes the shorter side only (an int size), not {size!r}")
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        return resize_shorter_side(img, self.size, resample=self.interpolation)


class CenterCrop:
    def __init__(self, size):
        self.size = _square_size(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        return crop_square(img, self.size, center=True)


class RandomCrop:
    """A square at a random offset, drawn from torch's global generator (seeded by the script)."""

    def __init__(self, size):
        self.size = _square_size(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        return crop_square(img, self.size, center=False, rng=rng)


class ToTensor:
    """An RGB PIL image to a float tensor (C, H, W) in [0, 1]."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.transpose(2, 0, 1) / 255.0)


class Normalize:
    """``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
