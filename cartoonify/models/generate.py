"""Generating images with a pipeline: text-to-image with per-image seeds, and img2img.

Every image ``i`` of a call is drawn from its own ``torch.Generator`` seeded with ``seeds[i]``, so an
image depends only on (model, scheduler, prompt, seed, steps) and never on its batch: grids of
different checkpoints or schedulers are comparable image by image. Stateless functions: a pipeline in,
images out; nothing is written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image

from ..imaging import fit_square
from .pipeline import img2img_pipeline


@dataclass
class SampleResult:
    """Images of one sampling call with the seed and the safety checker's verdict of each."""

    images: list[Image.Image]
    seeds: list[int]
    nsfw: list[bool | None] = field(default_factory=list)
    prompt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def generators(seeds: Sequence[int], device: str | torch.device) -> list[torch.Generator]:
    """One generator per image, each seeded with its own seed."""
    device = torch.device(device)
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _autocast(pipe, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on the pipeline's device (fp16 or bf16 frozen modules next to fp32 trained ones)."""
    device = pipe._execution_device
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _nsfw_flags(out, n: int) -> list[bool | None]:
    flags = getattr(out, "nsfw_content_detected", None)
    if flags is None:
        return [None] * n
    return [bool(f) for f in flags]


def text_to_image(
    pipe,
    prompt: str,
    seeds: Sequence[int],
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> SampleResult:
    """Generate ``len(seeds)`` images of ``prompt``; image ``i`` comes from ``seeds[i]`` alone.

    ``batch_size`` images go through the model at once (default: all). ``autocast_dtype`` runs the
    call under autocast (fp16/bf16 validation of fp32 training weights).
    """
    seeds = [int(s) for s in seeds]
    batch_size = batch_size or max(1, len(seeds))
    images: list[Image.Image] = []
    nsfw: list[bool | None] = []
    device = pipe._execution_device
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        with _autocast(pipe, autocast_dtype), torch.inference_mode():
            out = pipe(
                prompt=[prompt] * len(chunk),
                negative_prompt=None if negative_prompt is None else [negative_prompt] * len(chunk),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=generators(chunk, device),
            )
        images.extend(out.images)
        nsfw.extend(_nsfw_flags(out, len(chunk)))
    return SampleResult(
        images=images,
        seeds=seeds,
        nsfw=nsfw,
        prompt=prompt,
        meta={
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "negative_prompt": negative_prompt,
            "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config": dict(pipe.scheduler.config),
        },
    )


def image_to_image(
    pipe,
    image: Image.Image,
    prompt: str,
    *,
    strength: float = 0.5,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    resolution: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> SampleResult:
    """Photo -> style: img2img of ``image`` towards ``prompt``. ``strength`` in (0, 1]: how much noise is
    added (0 keeps the photo, 1 ignores it). The photo is center-cropped to a square of ``resolution``
    (default: the model's native size)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    from diffusers import StableDiffusionImg2ImgPipeline

    img_pipe = pipe if isinstance(pipe, StableDiffusionImg2ImgPipeline) else img2img_pipeline(pipe)
    size = resolution or img_pipe.unet.config.sample_size * img_pipe.vae_scale_factor
    init = fit_square(image.convert("RGB"), size)
    device = img_pipe._execution_device
    with _autocast(img_pipe, autocast_dtype), torch.inference_mode():
        out = img_pipe(
            prompt=prompt,
            image=init,
            strength=strength,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            generator=torch.Generator(device=device).manual_seed(int(seed)),
        )
    return SampleResult(
        images=out.images,
        seeds=[int(seed)],
        nsfw=_nsfw_flags(out, 1),
        prompt=prompt,
        meta={"strength": strength, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale},
    )
