"""Stand-in for ``torchvision``: only :mod:`.transforms`, the part diffusers' DreamBooth script uses."""

from . import transforms

__all__ = ["transforms"]
