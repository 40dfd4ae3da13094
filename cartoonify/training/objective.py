"""The DreamBooth objective as pure functions: latents, noise, timesteps, the prior-preservation loss.

With prior preservation each batch holds the instance examples followed by as many class examples, and
the loss is the instance MSE plus ``prior_loss_weight`` times the class MSE (diffusers'
``train_dreambooth.py`` objective). The profiler regions are named from :data:`REGIONS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ..data.dataset import load_training_image

# the regions of a training step, as torch.profiler record_function names (the benchmark's profile
# splits a step by these)
REGIONS = {
    "data": "data",
    "latents": "latents",
    "text_encoder": "text_encoder_forward",
    "unet": "unet_forward",
    "loss": "loss",
    "backward": "backward",
    "clip": "clip_grad_norm",
    "optimizer": "optimizer_step",
    "zero_grad": "zero_grad",
}




def dreambooth_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    with_prior_preservation: bool,
    prior_loss_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(loss, instance_loss, prior_loss)``.

    With prior preservation the first half of the batch is instance examples and the second half class
    examples; each half gets its own mean-squared error and ``loss = instance + weight * prior``.
    """
    prior = None
    if with_prior_preservation:
        model_pred, pred_prior = torch.chunk(model_pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        prior = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
    instance = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss = instance if prior is None else instance + prior_loss_weight * prior
    return loss, instance, prior


def noise_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """The regression target for the scheduler's prediction type (``epsilon`` or ``v_prediction``)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r} (expected epsilon or v_prediction)")


def encode_latents(vae, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """VAE latents of images in [-1, 1]: one draw of the posterior, times the scaling factor."""
    with torch.no_grad():
        dist = vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return dist.sample(generator=generator) * vae.config.scaling_factor


class LatentCache:
    """The VAE posterior (mean, std) of every training image, encoded once.

    With center crops and no random augmentation an image's encoding never changes, so the per-step
    ``vae.encode(pixels).latent_dist.sample()`` of diffusers' script reduces to ``mean + std * noise``
    with fresh noise each step from the seeded generator: the same draw, without the encoder.
    """

    def __init__(self, instance: tuple[torch.Tensor, torch.Tensor], klass: tuple[torch.Tensor, torch.Tensor] | None):
        self.instance_mean, self.instance_std = instance
        self.class_mean, self.class_std = klass if klass is not None else (None, None)

    @classmethod
    def build(cls, dataset, vae, batch_size: int = 8, progress: bool = False) -> "LatentCache":
        """Encode the dataset's instance and class images with ``vae`` (on its device and dtype)."""
        from tqdm.auto import tqdm

        def encode(paths, desc):
            means, stds = [], []
            for start in tqdm(range(0, len(paths), batch_size), desc=desc, disable=not progress):
                pixels = torch.stack(
                    [load_training_image(p, dataset.resolution, True) for p in paths[start : start + batch_size]]
                )
                with torch.no_grad():
                    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
            return torch.cat(means), torch.cat(stds)

        klass = encode(dataset.class_paths, "Encoding class images") if dataset.class_paths else None
        return cls(encode(dataset.instance_paths, "Encoding instance images"), klass)

    def lookup(self, batch: dict) -> dict:
        """``latent_mean``/``latent_std`` of a batch, instance rows then class rows (the batch's order)."""
        dev = self.instance_mean.device
        mean = [self.instance_mean[batch["instance_index"].to(dev)]]
        std = [self.instance_std[batch["instance_index"].to(dev)]]
        if "class_index" in batch:
            mean.append(self.class_mean[batch["class_index"].to(dev)])
            std.append(self.class_std[batch["class_index"].to(dev)])
        return {"latent_mean": torch.cat(mean), "latent_std": torch.cat(std)}

    @property
    def nbytes(self) -> int:
        tensors = [self.instance_mean, self.instance_std, self.class_mean, self.class_std]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def sample_latents(batch: dict, vae, generator: torch.Generator) -> torch.Tensor:
    """One posterior sample per image, times the VAE's scaling factor: from cached (mean, std) when the
    batch has them, else by encoding ``pixel_values``. Both draw the same noise from ``generator``."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps) * vae.config.scaling_factor
    return encode_latents(vae, batch["pixel_values"], generator)


def training_step(
    unet,
    text_encoder,
    vae,
    noise_scheduler,
    batch: dict,
    generator: torch.Generator,
    *,
    with_prior_preservation: bool,
    prior_loss_weight: float = 1.0,
):
    """One forward pass of the DreamBooth objective. Returns ``(loss, instance_loss, prior_loss)``.

    Draws, in this order and all from ``generator``: the latent sample, the noise, the timesteps.
    """
    with record_function(REGIONS["latents"]):
        latents = sample_latents(batch, vae, generator)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(
            0,
            noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=latents.device,
        ).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    with record_function(REGIONS["text_encoder"]):
        encoder_hidden_states = text_encoder(batch["input_ids"].to(latents.device), return_dict=False)[0]
    with record_function(REGIONS["unet"]):
        model_pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    with record_function(REGIONS["loss"]):
        target = noise_target(noise_scheduler, latents, noise, timesteps)
        return dreambooth_loss(model_pred, target, with_prior_preservation, prior_loss_weight)
