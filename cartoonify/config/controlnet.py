"""The settings of the embedded tiny canny ControlNet's training (``python -m cartoonify.training.controlnet``).

The defaults are the settings the shipped ControlNet (``embedded:tiny-controlnet-canny``) was built with;
the build takes about ten minutes on 2 CPU cores. Tests run the same script with a handful of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from .control import CannySettings
from .core import ConfigBase, ConfigError, check_at_least


@dataclass
class ControlNetBuildConfig(ConfigBase):
    """Training a canny ControlNet for the embedded tiny model on base-world images and their Canny maps."""

    images: int = 3000  # base-world images rendered (with ``seed``, not the base model's seed 0), captioned
    resolution: int = 64  # pixels, the tiny model's; its VAE downsamples by 4 to 16 x 16 latents
    seed: int = 7  # seeds the images, the conditioning embedding's initial weights and every random draw

    steps: int = 1200  # optimizer steps of the ControlNet (the UNet, VAE and text encoder stay frozen)
    batch_size: int = 32
    learning_rate: float = 3e-3  # AdamW, linear warm-up then cosine decay to 5%
    warmup: int = 50  # warm-up steps
    caption_dropout: float = 0.5  # share of captions replaced by "": the ControlNet must read the edges
    # channels of the conditioning embedding: two stride-2 convolutions take 64 px control images to 16 x 16
    conditioning_channels: tuple[int, ...] = (16, 32, 64)

    canny_sigma: float = CannySettings.sigma  # the control images: cartoonify.edgemaps.canny_map with these CannySettings
    canny_low: float = CannySettings.low
    canny_high: float = CannySettings.high

    log_every: int = 50  # print a progress line every so many steps

    def validate(self):
        check_at_least(self, 1, "images", "resolution", "steps", "batch_size", "log_every")
        check_at_least(self, 0, "warmup")
        if not self.learning_rate > 0:
            raise ConfigError(f"config key 'learning_rate' must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.caption_dropout <= 1:
            raise ConfigError(f"config key 'caption_dropout' must be in [0, 1], got {self.caption_dropout!r}")
        if len(self.conditioning_channels) < 1 or min(self.conditioning_channels) < 1:
            raise ConfigError("config key 'conditioning_channels' must be a non-empty list of positive channel "
                              f"counts, got {list(self.conditioning_channels)!r}")
        factor = 2 ** (len(self.conditioning_channels) - 1)  # each channel after the first halves the size
        if factor != 4:
            raise ConfigError(
                f"config key 'conditioning_channels' must have 3 entries (the conditioning embedding downsamples by "
                f"2 per entry after the first, and the tiny model's latents are 1/4 of the image), got "
                f"{list(self.conditioning_channels)!r}")
        if self.resolution % 4:
            raise ConfigError(f"config key 'resolution' must be a multiple of 4, got {self.resolution!r}")
        if not (0 < self.canny_low < self.canny_high < 1):
            raise ConfigError(f"config keys 'canny_low' and 'canny_high' need 0 < low < high < 1, got "
                              f"{self.canny_low!r} and {self.canny_high!r}")
        if self.canny_sigma < 0:
            raise ConfigError(f"config key 'canny_sigma' must be >= 0, got {self.canny_sigma!r}")
        return self
