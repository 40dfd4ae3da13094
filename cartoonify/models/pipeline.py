"""A ``StableDiffusionPipeline`` over modules already in memory, and what a pipeline folder is."""

from __future__ import annotations

from pathlib import Path


def is_pipeline_folder(path: str | Path) -> bool:
    """True if ``path`` is a full diffusers pipeline (it has ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


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


def img2img_pipeline(pipe):
    """An img2img pipeline sharing the modules of a text-to-image pipeline (nothing reloaded)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img.set_progress_bar_config(disable=True)
    return img
