"""Sampling: a base model plus a checkpoint, text-to-image with per-image seeds, img2img, image grids.

Every image ``i`` of a call is drawn from its own ``torch.Generator`` seeded with ``seeds[i]``, so an
image depends only on (model, scheduler, prompt, seed, steps) and never on its batch: grids of
different checkpoints or schedulers are comparable image by image.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .models import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_VARIANT, load_pipeline
from .schedulers import make_scheduler
from .utils import write_json


@dataclass
class SampleResult:
    """Images of one sampling call with the seed and the safety checker's verdict of each."""

    images: list[Image.Image]
    seeds: list[int]
    nsfw: list[bool | None] = field(default_factory=list)
    prompt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def is_pipeline_folder(path: str | Path) -> bool:
    """True if ``path`` is a full diffusers pipeline (it has ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


def load_trained_modules(
    checkpoint: str | Path, base_configs: dict[str, dict] | None = None, allow_pickle: bool = False
) -> dict[str, Any]:
    """The trained modules a checkpoint folder holds: ``unet`` and, if trained, ``text_encoder``.

    Only safetensors are loaded: a folder with pickle weights is refused unless ``allow_pickle``. With
    ``base_configs`` (``{"unet": config, ...}`` of the base model), a module whose architecture differs
    is refused with both named.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from .checkpoint import check_architecture, check_safe_to_load

    checkpoint = Path(checkpoint)
    if not (checkpoint / "unet").is_dir():
        raise FileNotFoundError(f"checkpoint has no unet/ folder: {checkpoint}")
    check_safe_to_load(checkpoint, allow_pickle)
    classes = {"unet": UNet2DConditionModel, "text_encoder": CLIPTextModel}
    modules: dict[str, Any] = {}
    for name, cls in classes.items():
        if not (checkpoint / name).is_dir():
            continue
        if base_configs and name in base_configs:
            saved = json.loads((checkpoint / name / "config.json").read_text())
            check_architecture(saved, base_configs[name], name, str(checkpoint), "the base model")
        modules[name] = cls.from_pretrained(checkpoint, subfolder=name, use_safetensors=None if allow_pickle else True)
    return modules


def load_finetuned(
    base_model: str = DEFAULT_MODEL,
    checkpoint: str | Path | None = None,
    *,
    scheduler: str | None = None,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    revision: str = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
    safety_checker: bool = True,
    allow_pickle: bool = False,
):
    """A text-to-image pipeline: the base model with a checkpoint's trained modules swapped in.

    ``checkpoint`` may be a training checkpoint (``checkpoints/checkpoint-<step>``, holding ``unet/`` and
    ``text_encoder/``) or a full pipeline folder saved at the end of training; ``None`` gives the base.
    ``scheduler`` is a registry or diffusers class name. Pickle weights are refused unless
    ``allow_pickle``; a checkpoint of another architecture than the base model is refused.
    """
    from .checkpoint import check_safe_to_load
    from .utils import resolve_device

    if checkpoint is not None and is_pipeline_folder(checkpoint):
        check_safe_to_load(checkpoint, allow_pickle)
        pipe = load_pipeline(
            str(checkpoint), variant=None, torch_dtype=torch_dtype, safety_checker=safety_checker,
            use_safetensors=None if allow_pickle else True,
        )
    else:
        pipe = load_pipeline(
            base_model, revision=revision, variant=variant, torch_dtype=torch_dtype, safety_checker=safety_checker
        )
        if checkpoint is not None:
            base_configs = {"unet": dict(pipe.unet.config), "text_encoder": pipe.text_encoder.config.to_dict()}
            for name, module in load_trained_modules(checkpoint, base_configs, allow_pickle).items():
                pipe.register_modules(**{name: module.to(dtype=pipe.unet.dtype)})
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def pipeline_from_modules(
    unet,
    text_encoder,
    vae,
    tokenizer,
    scheduler,
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker: bool = False,
):
    """A ``StableDiffusionPipeline`` over modules already in memory (no reload from disk)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=requires_safety_checker,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------


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


def img2img_pipeline(pipe):
    """An img2img pipeline sharing the modules of a text-to-image pipeline (nothing reloaded)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img.set_progress_bar_config(disable=True)
    return img


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
    from .data import crop_square, resize_shorter_side

    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    from diffusers import StableDiffusionImg2ImgPipeline

    img_pipe = pipe if isinstance(pipe, StableDiffusionImg2ImgPipeline) else img2img_pipeline(pipe)
    size = resolution or img_pipe.unet.config.sample_size * img_pipe.vae_scale_factor
    init = crop_square(resize_shorter_side(image.convert("RGB"), size, Image.LANCZOS), size)
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


# ------------------------------------------------------------------------------------------------
# grids and files
# ------------------------------------------------------------------------------------------------


def image_grid(
    images: Sequence[Image.Image], rows: int | None = None, cols: int | None = None, pad: int = 2, fill="white"
) -> Image.Image:
    """Paste images (resized to the first one's size) into a ``rows`` x ``cols`` grid with ``pad`` px gaps."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    n = len(images)
    if cols is None and rows is None:
        cols = math.ceil(math.sqrt(n))
    if cols is None:
        cols = math.ceil(n / rows)
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {n} images")
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), fill)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        if img.size != (w, h):
            img = img.resize((w, h), Image.LANCZOS)
        grid.paste(img.convert("RGB"), (c * (w + pad), r * (h + pad)))
    return grid


def save_sample_result(result: SampleResult, out_dir: str | Path, prefix: str = "image", extra: dict | None = None):
    """Write each image as ``<prefix>-<i>.png``, a ``grid.png`` and a ``<prefix>s.json`` record
    (prompt, seed, file and NSFW flag per image). Returns the JSON path."""
    import io

    from .utils import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (img, seed, flag) in enumerate(zip(result.images, result.seeds, result.nsfw)):
        name = f"{prefix}-{i:02d}.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(out_dir / name, buf.getvalue())
        records.append({"file": name, "seed": seed, "nsfw": flag})
    buf = io.BytesIO()
    image_grid(result.images, rows=1 if len(result.images) <= 4 else None).save(buf, format="PNG")
    atomic_write_bytes(out_dir / "grid.png", buf.getvalue())
    return write_json(
        out_dir / f"{prefix}s.json",
        {"prompt": result.prompt, **result.meta, **(extra or {}), "images": records},
    )
