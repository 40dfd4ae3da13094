"""Training the embedded tiny model's canny ControlNet, so that the demo and tests can show what a ControlNet does.

``python -m cartoonify.training.controlnet --out DIR [--key value ...]`` loads the embedded tiny model
(``embedded:tiny``) and freezes it, renders base-world images (:mod:`cartoonify.data.baseworld`, with a seed
other than the base model's) with their captions, makes their control images with
:func:`cartoonify.edgemaps.canny_map`, and trains ``ControlNetModel.from_unet(unet)`` with the SD noise-prediction
loss (the base's noise schedule, caption dropout for classifier-free guidance). It then measures, on held-out
control images (:func:`held_out_controls`: photos and drawings the base world lacks), how much better the
outputs' Canny edges match the control with the ControlNet (conditioning scale 1) than without it (scale 0),
and writes the ControlNet in fp16 safetensors with ``build.json`` and a model card. Everything is seeded by
:class:`~cartoonify.config.ControlNetBuildConfig`.

``python -m cartoonify.training.controlnet --evaluate NAME_OR_DIR`` measures a ControlNet again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..config import TINY_MODEL, ConfigError, ControlNetBuildConfig, parse_overrides
from ..data.baseworld import make_base_dataset
from ..edgemaps import CannySettings, canny_edges, canny_map, edge_f1
from ..models.controlnet import load_controlnet
from ..models.loading import load_components, load_pipeline
from ..models.tiny import resolve_model
from ..utils import library_versions, write_json
from .basemodel import _log, _lr_lambda, _to_tensor, encode_all
from .objective import noise_target

BUILD_RECORD = "build.json"
#: the caption every held-out control image is generated with (a base-world caption)
EVAL_PROMPT = "a photo of a red ball and a blue box on grass under a blue sky"
EVAL_SEED = 0
EVAL_STEPS = 20
EVAL_GUIDANCE = 5.0


def canny_settings(config: ControlNetBuildConfig) -> CannySettings:
    """The Canny settings of the control images."""
    return CannySettings(sigma=config.canny_sigma, low=config.canny_low, high=config.canny_high)


def render_training_set(config: ControlNetBuildConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Base-world images (uint8, n x H x W x 3), their Canny control images (same shape) and captions."""
    images, captions = make_base_dataset(config.images, config.resolution, seed=config.seed)
    settings = canny_settings(config)
    controls = np.stack([np.asarray(canny_map(Image.fromarray(im), settings)) for im in images])
    return images, controls, captions


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """The frozen text encoder's hidden states of every prompt (n x 77 x dim)."""
    out = []
    for start in range(0, len(prompts), batch):
        ids = tokenizer(list(prompts[start:start + batch]), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


def new_controlnet(unet, config: ControlNetBuildConfig):
    """A ControlNet copied from ``unet`` (zero convolutions, seeded conditioning embedding)."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(config.conditioning_channels))


def controlled_prediction(controlnet, unet, noisy, timesteps, hidden, control, scale: float = 1.0) -> torch.Tensor:
    """The UNet's noise prediction with the ControlNet's residuals added (as the pipeline adds them)."""
    down, mid = controlnet(noisy, timesteps, hidden, controlnet_cond=control, conditioning_scale=scale,
                           return_dict=False)
    return unet(noisy, timesteps, hidden, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)[0]


def train_controlnet(config: ControlNetBuildConfig, parts: dict, data: dict, generator: torch.Generator, t0: float):
    """Train a ControlNet on ``data`` (latent mean/std of images and mirror images, controls, prompt states)."""
    unet, noise_scheduler = parts["unet"], parts["noise_scheduler"]
    mean, std, controls, hidden, empty = (data[k] for k in ("mean", "std", "controls", "hidden", "empty"))
    scale = parts["vae"].config.scaling_factor
    controlnet = new_controlnet(unet, config).train()
    params = [p for p in controlnet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.steps, config.warmup))
    n = len(hidden)
    for step in range(config.steps):
        idx = torch.randint(0, len(mean), (config.batch_size,), generator=generator)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scale
        states = hidden[idx % n].clone()
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        states[drop] = empty
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        noisy = noise_scheduler.add_noise(z, noise, t)
        pred = controlled_prediction(controlnet, unet, noisy, t, states, controls[idx])
        loss = F.mse_loss(pred, noise_target(noise_scheduler, z, noise, t))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % config.log_every == 0:
            _log(f"controlnet step {step + 1}/{config.steps}: loss {loss.item():.4f}", t0)
    return controlnet.eval().requires_grad_(False)


def prepare_data(config: ControlNetBuildConfig, parts: dict, t0: float) -> dict:
    """Render the training set and encode it once: latents of images and mirror images, controls in [0, 1]
    (mirrored alike), the captions' text states and the empty caption's."""
    images, controls, captions = render_training_set(config)
    _log(f"rendered {len(images)} base-world images and their Canny maps", t0)
    mean, std = encode_all(parts["vae"], _to_tensor(images))
    control = torch.from_numpy(controls).permute(0, 3, 1, 2).float().div(255.0)
    hidden = encode_prompts(parts["tokenizer"], parts["text_encoder"], captions + [""])
    _log("encoded the latents and captions", t0)
    return {"mean": mean, "std": std, "controls": torch.cat([control, control.flip(3)]),
            "hidden": hidden[:-1], "empty": hidden[-1]}


def _frozen_base(base: str) -> dict:
    """The base model's parts in float32, frozen and in eval mode."""
    parts = load_components(resolve_model(base))
    for key in ("unet", "vae", "text_encoder"):
        parts[key].eval().requires_grad_(False)
    return parts


# --------------------------------------------------------------------------------------------------------------------
# Held-out evaluation: does generation follow the control?
# --------------------------------------------------------------------------------------------------------------------


def _square(image: np.ndarray, size: int) -> Image.Image:
    """The centre square of an (H, W[, C]) uint8 array as RGB, resized to ``size``."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(image[y:y + side, x:x + side, :3]).astype(np.uint8)
    return Image.fromarray(crop).resize((size, size), Image.LANCZOS)


def _drawing(kind: str, size: int) -> Image.Image:
    """Flat drawn shapes on a light page, shapes the base world never draws (stars, rings, a house)."""
    big = size * 4
    canvas = Image.new("RGB", (big, big), (225, 222, 210))
    draw = ImageDraw.Draw(canvas)
    if kind == "shapes":
        c, r = big * 0.3, big * 0.2
        star = [(c + (r if i % 2 == 0 else r * 0.45) * np.sin(i * np.pi / 5),
                 c - (r if i % 2 == 0 else r * 0.45) * np.cos(i * np.pi / 5)) for i in range(10)]
        draw.polygon(star, fill=(40, 40, 150))
        draw.ellipse([big * 0.55, big * 0.1, big * 0.9, big * 0.45], outline=(160, 30, 30), width=big // 20)
        draw.polygon([(big * 0.15, big * 0.9), (big * 0.5, big * 0.55), (big * 0.85, big * 0.9)], fill=(30, 120, 40))
    else:  # a house with a door and a window
        draw.rectangle([big * 0.2, big * 0.45, big * 0.8, big * 0.9], fill=(170, 90, 40))
        draw.polygon([(big * 0.12, big * 0.47), (big * 0.5, big * 0.12), (big * 0.88, big * 0.47)], fill=(90, 30, 30))
        draw.rectangle([big * 0.42, big * 0.62, big * 0.58, big * 0.9], fill=(50, 40, 30))
        draw.rectangle([big * 0.26, big * 0.55, big * 0.38, big * 0.67], fill=(200, 220, 240))
    return canvas.resize((size, size), Image.LANCZOS)


def held_out_controls(size: int = 64) -> dict[str, Image.Image]:
    """Source images outside the base world, name -> RGB image: the held-out photos (scikit-image's
    ``astronaut`` and ``camera``), two scikit-image pictures the base world never uses (``horse``, ``clock``)
    and two drawings. Their Canny maps are the control images."""
    import skimage.data

    horse = np.where(np.asarray(skimage.data.horse()), 235, 40).astype(np.uint8)
    sources = {name: _square(np.asarray(getattr(skimage.data, name)()), size) for name in ("astronaut", "camera")}
    sources.update({"horse": _square(horse, size), "clock": _square(np.asarray(skimage.data.clock()), size)})
    sources.update({kind: _drawing(kind, size) for kind in ("shapes", "house")})
    return sources


def controlnet_pipeline(base_pipe, controlnet):
    """A ``StableDiffusionControlNetPipeline`` over the base pipeline's modules and ``controlnet``."""
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(
        vae=base_pipe.vae, text_encoder=base_pipe.text_encoder, tokenizer=base_pipe.tokenizer, unet=base_pipe.unet,
        controlnet=controlnet, scheduler=base_pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def control_f1(controlnet, base: str = TINY_MODEL, settings: CannySettings = CannySettings(),
               sources: dict[str, Image.Image] | None = None, prompt: str = EVAL_PROMPT) -> dict[str, dict[str, float]]:
    """Edge F1 (tolerance 1 px) between each source's Canny edges and the Canny edges of the image generated from
    its Canny map, with the ControlNet at conditioning scale 1 and at scale 0 (no control); same seed, 20 steps,
    guidance 5. Returns ``{"scale_1": {name: f1, ..., "mean": m}, "scale_0": {...}}``."""
    base_pipe = load_pipeline(resolve_model(base), safety_checker=False)
    if controlnet.dtype != torch.float32:
        controlnet = controlnet.to(torch.float32)
    pipe = controlnet_pipeline(base_pipe, controlnet)
    sources = sources if sources is not None else held_out_controls(base_pipe.unet.config.sample_size * base_pipe.vae_scale_factor)
    result: dict[str, dict[str, float]] = {}
    for scale in (1.0, 0.0):
        scores = {}
        for name, source in sources.items():
            image = pipe(prompt, image=canny_map(source, settings), num_inference_steps=EVAL_STEPS,
                         guidance_scale=EVAL_GUIDANCE, controlnet_conditioning_scale=scale,
                         height=source.height, width=source.width,
                         generator=torch.Generator().manual_seed(EVAL_SEED)).images[0]
            scores[name] = round(edge_f1(canny_edges(source, settings), canny_edges(image, settings), 1), 4)
        scores["mean"] = round(float(np.mean(list(scores.values()))), 4)
        result[f"scale_{scale:g}"] = scores
    return result


# --------------------------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------------------------


def build_tiny_controlnet(config: ControlNetBuildConfig, out: str | Path, base: str = TINY_MODEL,
                          evaluate: bool = True) -> Path:
    """Train a canny ControlNet for ``base`` and write it to ``out`` (fp16 safetensors, ``build.json``,
    ``README.md``) through a temporary folder renamed into place. With ``evaluate`` the held-out edge F1
    (:func:`control_f1`) of the written weights is measured and recorded. Returns ``out``."""
    config = config.validate()
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    parts = _frozen_base(base)
    factor = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    if config.resolution // factor != parts["unet"].config.sample_size:
        raise ConfigError(f"config key 'resolution' {config.resolution} does not give the base UNet's "
                          f"{parts['unet'].config.sample_size} px latents")
    data = prepare_data(config, parts, t0)
    controlnet = train_controlnet(config, parts, data, generator, t0)
    train_seconds = time.perf_counter() - t0
    controlnet.to(torch.float16).save_pretrained(str(tmp), safe_serialization=True)
    record = {"config": config.to_dict(), "base": str(base), "seconds": round(train_seconds, 1),
              "versions": library_versions()}
    if evaluate:
        record["evaluation"] = {"prompt": EVAL_PROMPT, "seed": EVAL_SEED, "steps": EVAL_STEPS,
                                "guidance": EVAL_GUIDANCE, "tolerance": 1,
                                "edge_f1": control_f1(load_controlnet(tmp), base, canny_settings(config))}
        _log(f"held-out edge F1: {json.dumps(record['evaluation']['edge_f1'])}", t0)
    write_json(tmp / BUILD_RECORD, record)
    (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    _log(f"wrote {out}", t0)
    return out


def _f1_table(f1: dict[str, dict[str, float]]) -> str:
    names = list(f1["scale_1"])
    rows = ["| control image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("scale_1", "scale_0"):
        rows.append(f"| scale {key[6:]} | " + " | ".join(f"{f1[key][n]:.3f}" for n in names) + " |")
    return "\n".join(rows)


def model_card(record: dict) -> str:
    """The model card written beside the weights."""
    c = record["config"]
    ev = record.get("evaluation")
    figures = "Not measured at build time." if not ev else f"""Edge F1 (tolerance 1 px) between the Canny edges of each
held-out source and of the image generated from its Canny map (prompt "{ev["prompt"]}", seed {ev["seed"]},
{ev["steps"]} steps, guidance {ev["guidance"]}), with the ControlNet at conditioning scale 1 and at scale 0
(the base model alone). The sources lie outside the base world: scikit-image's held-out photos `astronaut` and
`camera`, its `horse` and `clock`, and two flat drawings (`cartoonify.training.controlnet.held_out_controls`).

{_f1_table(ev["edge_f1"])}

Mean gain: {ev["edge_f1"]["scale_1"]["mean"] - ev["edge_f1"]["scale_0"]["mean"]:+.3f}. Reproduce with
`python -m cartoonify.training.controlnet --evaluate embedded:tiny-controlnet-canny`."""
    return f"""# Cartoonify's embedded tiny canny ControlNet (`embedded:tiny-controlnet-canny`)

A diffusers `ControlNetModel` for the package's embedded tiny model (`embedded:tiny`, 64 px images, 16 x 16
latents), trained by the package itself so that its tests and demo can show what a ControlNet does without
downloading one. It is a copy of the tiny UNet's encoder and middle block (`ControlNetModel.from_unet`) with a
conditioning embedding of channels {c["conditioning_channels"]} (64 px control images to 16 x 16 features)
and zero convolutions, trained while the tiny UNet, VAE and text encoder stayed frozen.

- Script: `python -m cartoonify.training.controlnet --out cartoonify/models/embedded/tiny-controlnet-canny`
- Settings (`cartoonify.config.ControlNetBuildConfig`): {json.dumps(c)}
- Data: {c["images"]} base-world images (`cartoonify.data.baseworld`, seed {c["seed"]}, not the base model's
  seed 0) at {c["resolution"]} px and their mirror images, with their captions ({c["caption_dropout"]:.0%}
  replaced by the empty caption, for classifier-free guidance and so that the edges alone must guide).
- Control images: Canny edge maps, white on black (`cartoonify.edgemaps.canny_map` with sigma
  {c["canny_sigma"]}, hysteresis thresholds at the {c["canny_low"]} and {c["canny_high"]} quantiles of the
  gradient magnitude), as for `lllyasviel/control_v11p_sd15_canny`.
- Objective: SD's noise-prediction MSE with the base model's noise schedule; AdamW, learning rate
  {c["learning_rate"]} with {c["warmup"]} warm-up steps and cosine decay, {c["steps"]} steps of batch
  {c["batch_size"]}; seeded.
- Weights: fp16 safetensors. Build time: {record["seconds"] / 60:.1f} min on the machine that built it.
- Licence: as the package (MIT). It is not a derivative of lllyasviel's ControlNet weights nor of Stable
  Diffusion's.

## Does generation follow the control?

{figures}
"""


def _evaluate(name: str) -> int:
    from ..models.controlnet import ControlNetUnavailable

    try:
        controlnet = load_controlnet(name)
    except ControlNetUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(control_f1(controlnet), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if len(argv) == 2 and argv[0] == "--evaluate":
        return _evaluate(argv[1])
    if "--out" not in argv or argv.index("--out") + 1 >= len(argv):
        print("usage: python -m cartoonify.training.controlnet --out DIR [--key value ...]\n"
              "       python -m cartoonify.training.controlnet --evaluate NAME_OR_DIR", file=sys.stderr)
        return 2
    i = argv.index("--out")
    out = argv[i + 1]
    try:
        config = ControlNetBuildConfig.from_dict(parse_overrides(argv[:i] + argv[i + 2:], ControlNetBuildConfig))
        config.validate()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    build_tiny_controlnet(config, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
