"""The settings of the embedded tiny model's pretraining (``python -m cartoonify.training.basemodel``).

The defaults are the settings the shipped model was built with; the build takes about half an hour on
2 CPU cores. Tests run the same script with a handful of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from .core import ConfigBase, check_at_least


@dataclass
class BaseModelConfig(ConfigBase):
    """Pretraining the tiny VAE, then the tiny UNet and text encoder, on the base world."""

    images: int = 6000  # base-world images rendered once (photo crops and shaded scenes, captioned)
    resolution: int = 64  # pixels; the VAE downsamples by 4, so latents are 16 x 16
    seed: int = 0  # seeds the images, the initial weights and every random draw of training

    vae_images: int = 4000  # the VAE's own base-world images (photo crops weighted up: it must reconstruct photos)
    vae_photo_share: float = 0.5
    vae_graphics: int = 2000  # and generic graphics (flat shapes, outlines, white pages) the UNet never sees
    vae_steps: int = 2400  # optimizer steps of the VAE
    vae_batch_size: int = 16
    vae_learning_rate: float = 1.5e-3  # AdamW, cosine decay to 5%
    kl_weight: float = 1e-6  # weight of the KL term (a nearly deterministic autoencoder, as SD's)

    unet_steps: int = 2900  # optimizer steps of the UNet and text encoder
    unet_batch_size: int = 32
    unet_learning_rate: float = 8e-4  # AdamW, linear warm-up then cosine decay to 5%
    warmup_steps: int = 200
    caption_dropout: float = 0.1  # share of captions replaced by "" (for classifier-free guidance)
    ema_decay: float = 0.999  # the shipped UNet and text encoder are the exponential moving averages

    log_every: int = 100  # print a progress line every so many steps

    def validate(self):
        check_at_least(self, 1, "images", "vae_images", "resolution", "vae_steps", "vae_batch_size", "unet_steps",
                       "unet_batch_size", "log_every")
        check_at_least(self, 0, "warmup_steps", "vae_graphics")
        return self
