"""The stylization methods, one call each, on a square photo at the model's size:

* :func:`img2img`: SDEdit, the photo noised to ``strength`` and denoised toward the prompt; low strength keeps
  the photo but not the style, high strength takes the style but loses the person.
* :func:`controlnet`: the same img2img with one or more ControlNets holding the photo's outline (Canny or
  lineart control images), ``StableDiffusionControlNetImg2ImgPipeline`` built with ``from_pipe`` from the
  fine-tuned pipeline: its UNet, text encoder and VAE are shared, not copied.

A :class:`Setting` names one point of a sweep (method, strength, conditioning scale); its ``label`` is the
output's file name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from PIL import Image

METHODS = ("img2img", "controlnet")


@dataclass(frozen=True)
class Setting:
    """One stylization setting. ``conditioning_scale`` (ControlNet only) multiplies every ControlNet's
    residuals; ``control_start``/``control_end`` are the share of the denoising steps it acts in."""

    method: str
    strength: float
    conditioning_scale: float | None = None
    control_start: float = 0.0
    control_end: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown stylize method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.method == "controlnet" and self.conditioning_scale is None:
            raise ValueError("a controlnet setting needs a conditioning_scale")
        if not 0 <= self.control_start < self.control_end <= 1:
            raise ValueError(f"need 0 <= control_start < control_end <= 1, got {self.control_start}, {self.control_end}")

    @property
    def label(self) -> str:
        if self.method == "img2img":
            return f"img2img-s{self.strength:.2f}"
        return f"controlnet-s{self.strength:.2f}-c{self.conditioning_scale:.2f}"

    def record(self) -> dict:
        out = asdict(self)
        if self.method == "img2img":
            out.update(conditioning_scale=None, control_start=None, control_end=None)
        return out


def sweep(methods: Sequence[str], strengths: Sequence[float], scales: Sequence[float], control_start: float = 0.0,
          control_end: float = 1.0) -> list[Setting]:
    """Every method x strength (x conditioning scale for ControlNet), img2img first."""
    out = []
    for method in METHODS:
        if method not in methods:
            continue
        for strength in strengths:
            if method == "img2img":
                out.append(Setting("img2img", float(strength)))
            else:
                out += [Setting("controlnet", float(strength), float(c), control_start, control_end) for c in scales]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown stylize method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return out


def controlnet_pipeline(pipe, controlnet):
    """A ``StableDiffusionControlNetImg2ImgPipeline`` over ``pipe``'s modules (``from_pipe``: the UNet, text
    encoder, VAE and scheduler are the same objects) with ``controlnet`` (a model or a MultiControlNetModel)."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from ..models import move_module

    out = StableDiffusionControlNetImg2ImgPipeline.from_pipe(pipe, controlnet=controlnet)
    move_module(out.controlnet, pipe.device, pipe.unet.dtype)
    out.set_progress_bar_config(disable=True)
    return out


def _generator(pipe, seed: int) -> torch.Generator:
    return torch.Generator(device=pipe._execution_device).manual_seed(int(seed))


def img2img(pipe, photo: Image.Image, prompt: str, setting: Setting, *, seed: int = 0, steps: int = 50,
            guidance_scale: float = 7.5) -> Image.Image:
    """SDEdit of a square ``photo`` (already at the model's size) at ``setting.strength``; ``pipe`` is a
    text-to-image pipeline or an img2img one over the same modules."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from ..models import img2img_pipeline

    img_pipe = pipe if isinstance(pipe, StableDiffusionImg2ImgPipeline) else img2img_pipeline(pipe)
    with torch.inference_mode():
        out = img_pipe(prompt=prompt, image=photo, strength=setting.strength, num_inference_steps=steps,
                       guidance_scale=guidance_scale, generator=_generator(pipe, seed))
    return out.images[0]


def controlnet(cn_pipe, photo: Image.Image, controls: Sequence[Image.Image], prompt: str, setting: Setting, *,
               seed: int = 0, steps: int = 50, guidance_scale: float = 7.5) -> Image.Image:
    """img2img of ``photo`` guided by the ControlNet(s) of ``cn_pipe`` (:func:`controlnet_pipeline`), one
    control image per ControlNet, at ``setting``'s conditioning scale and guidance window."""
    many = len(controls) > 1
    with torch.inference_mode():
        out = cn_pipe(
            prompt=prompt, image=photo, control_image=list(controls) if many else controls[0],
            strength=setting.strength, num_inference_steps=steps, guidance_scale=guidance_scale,
            controlnet_conditioning_scale=[setting.conditioning_scale] * len(controls) if many
            else setting.conditioning_scale,
            control_guidance_start=setting.control_start, control_guidance_end=setting.control_end,
            generator=_generator(cn_pipe, seed),
        )
    return out.images[0]
