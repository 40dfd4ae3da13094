"""Pretraining the embedded tiny model on the base world, so that a DreamBooth run can be judged on outcomes.

``python -m cartoonify.training.basemodel --out DIR [--key value ...]`` renders the base world
(:mod:`cartoonify.data.baseworld`: photo crops and shaded scenes, captioned), trains the tiny VAE to
reconstruct it and generic graphics (:mod:`cartoonify.data.graphics`: flat shapes, outlines, white
pages, so that it can later draw what DreamBooth teaches), then the tiny UNet and CLIP text encoder to generate it from its captions (SD1.5's noise
schedule, epsilon prediction, caption dropout for classifier-free guidance, EMA weights), and writes a
diffusers pipeline in fp16 safetensors with a model card. Everything is seeded by
:class:`~cartoonify.config.BaseModelConfig`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import BaseModelConfig, ConfigError, parse_overrides
from ..data.baseworld import BASE_WORDS, HELD_OUT_PHOTOS, make_base_dataset
from ..data.graphics import make_graphics
from ..data.dataset import tokenize_prompts
from ..models.pipeline import pipeline_from_modules
from ..models.sd15 import SD15_SCHEDULER_CONFIG
from ..models.tiny import base_text_encoder_config, base_unet_config, base_vae_config
from ..models.tokenizer import TINY_TOKENIZER_WORDS, write_bpe_files, write_tiny_tokenizer
from ..utils import library_versions, write_json

BUILD_RECORD = "build.json"


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 5% of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)


def train_vae(config: BaseModelConfig, pixels: torch.Tensor, generator: torch.Generator, t0: float):
    """The tiny VAE, trained to reconstruct the base world (L1 + MSE + a small KL term)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**base_vae_config(config.resolution))
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.vae_steps, 0))
    for step in range(config.vae_steps):
        idx = torch.randint(0, len(pixels), (config.vae_batch_size,), generator=generator)
        x = pixels[idx]
        if step % 2:
            x = x.flip(3)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=generator)).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + config.kl_weight * posterior.kl().mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % config.log_every == 0:
            _log(f"vae step {step + 1}/{config.vae_steps}: loss {loss.item():.4f}", t0)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(vae, pixels: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean and std of every image and of its mirror image (the training set's flips)."""
    means, stds = [], []
    for x in (pixels, pixels.flip(3)):
        for start in range(0, len(x), batch):
            dist = vae.encode(x[start : start + batch]).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


class _EMA:
    """Exponential moving averages of a list of modules' parameters (copied into the modules at the end)."""

    def __init__(self, modules: Sequence[torch.nn.Module], decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def copy_to_modules(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def train_unet(config, latents, tokens, unconditional, scale: float, vocab_size: int, generator, t0):
    """The tiny UNet and text encoder, trained to denoise the base world's latents given its captions."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    mean, std = latents
    unet = UNet2DConditionModel(**base_unet_config(config.resolution))
    text_encoder = CLIPTextModel(CLIPTextConfig(**base_text_encoder_config(vocab_size)))
    noise_scheduler = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.unet_learning_rate, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.unet_steps, config.warmup_steps))
    ema = _EMA([unet, text_encoder], config.ema_decay)
    n = len(tokens)
    for step in range(config.unet_steps):
        idx = torch.randint(0, len(mean), (config.unet_batch_size,), generator=generator)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scale
        ids = tokens[idx % n].clone()
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        ids[drop] = unconditional
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        pred = unet(noise_scheduler.add_noise(z, noise, t), t, text_encoder(ids)[0]).sample
        loss = (pred - noise).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.update(step)
        if (step + 1) % config.log_every == 0:
            _log(f"unet step {step + 1}/{config.unet_steps}: loss {loss.item():.4f}", t0)
    ema.copy_to_modules()
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def tokenizer_words() -> tuple[str, ...]:
    """The tiny tokenizer's word list with the base world's words (so its captions are whole tokens)."""
    return tuple(dict.fromkeys(TINY_TOKENIZER_WORDS + tuple(BASE_WORDS)))


def build_base_model(config: BaseModelConfig, out: str | Path) -> Path:
    """Render the base world, train the VAE, then the UNet and text encoder; write the pipeline to ``out``
    (atomically: a temporary folder beside it is renamed into place). Returns ``out``."""
    config = config.validate()
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, captions = make_base_dataset(config.images, config.resolution, seed=config.seed)
    tokenizer = write_tiny_tokenizer(tmp / "tokenizer", words=tokenizer_words())
    tokens = tokenize_prompts(tokenizer, captions)
    unconditional = tokenize_prompts(tokenizer, [""])[0]
    pixels = _to_tensor(images)
    vae_images, _ = make_base_dataset(config.vae_images, config.resolution, seed=config.seed + 1,
                                      photo_share=config.vae_photo_share)
    vae_images = np.concatenate([vae_images, make_graphics(config.vae_graphics, config.resolution, config.seed)])
    _log(f"rendered {len(images)} base-world images, and {len(vae_images)} images for the VAE", t0)
    vae = train_vae(config, _to_tensor(vae_images), generator, t0)
    t_vae = time.perf_counter() - t0
    mean, std = encode_all(vae, pixels)
    scale = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scale)
    unet, text_encoder = train_unet(config, (mean, std), tokens, unconditional, scale, len(tokenizer), generator, t0)
    from diffusers import PNDMScheduler

    pipe = pipeline_from_modules(unet, text_encoder, vae, tokenizer, PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG))
    pipe.to(torch.float16).save_pretrained(str(tmp), safe_serialization=True)
    write_bpe_files(tmp / "tokenizer", words=tokenizer_words())
    record = {"config": config.to_dict(), "scaling_factor": scale, "vae_seconds": round(t_vae, 1),
              "seconds": round(time.perf_counter() - t0, 1), "held_out_photos": list(HELD_OUT_PHOTOS),
              "versions": library_versions()}
    write_json(tmp / BUILD_RECORD, record)
    (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    _log(f"wrote {out}", t0)
    return out


def model_card(record: dict) -> str:
    """The model card written beside the weights."""
    c = record["config"]
    return f"""# Cartoonify's embedded tiny model (`embedded:tiny`)

A miniature Stable Diffusion pipeline in diffusers format (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel + CLIPTokenizer, SD1.5's noise schedule), pretrained by the package itself so that its
tests and demo can show a style being learned without downloading a model. It knows only the **base
world**, a stand-in for photographs; the package's cartoon demo images lie outside it.

- Script: `python -m cartoonify.training.basemodel --out cartoonify/models/embedded/tiny`
- Settings (`cartoonify.config.BaseModelConfig`): {json.dumps(c)}
- Seed: {c["seed"]}; VAE latent scaling factor {record["scaling_factor"]:.5f}
- Data: {c["images"]} images of `cartoonify.data.baseworld` at {c["resolution"]} px: random crops of
  scikit-image's sample photographs and rendered shaded scenes, each with a caption from what is in it.
  The photos {", ".join(record["held_out_photos"])} are held out (they are the photos the demo stylizes).
  The VAE also trains on {c["vae_graphics"]} generic graphics (`cartoonify.data.graphics`: random flat
  shapes, outlines, white pages) so that it can draw what DreamBooth later teaches; the UNet never sees them.
- Weights: fp16 safetensors. Build time: {record["seconds"] / 60:.1f} min on the machine that built it
  (VAE {record["vae_seconds"] / 60:.1f} min).
- Licence: as the package (MIT). It is not a derivative of Stable Diffusion's weights.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        print("usage: python -m cartoonify.training.basemodel --out DIR [--key value ...]", file=sys.stderr)
        return 2
    i = argv.index("--out")
    out = argv[i + 1]
    try:
        config = BaseModelConfig.from_dict(parse_overrides(argv[:i] + argv[i + 2:], BaseModelConfig))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    build_base_model(config, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
