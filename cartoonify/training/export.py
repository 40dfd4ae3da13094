"""The fine-tuned pipeline: the trained modules with the base model's frozen ones, in diffusers format."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..config import TrainConfig
from ..models import load_components, load_safety_components, pipeline_from_modules
from ..runs import RunLayout


def save_pipeline(
    layout: RunLayout, config: TrainConfig, model_path: str, *, unet, text_encoder, vae, tokenizer, scheduler,
    safety_checker=None, feature_extractor=None, weight_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the fine-tuned pipeline (safetensors) to ``pipeline/``, atomically; returns the folder.

    The trained modules are saved as they are (fp32). Frozen modules that were cast to the mixed-precision
    dtype for training (``weight_dtype``) are taken from the base model again, in fp32.
    """
    out, tmp = layout.pipeline, layout.partial_pipeline
    if tmp.exists():
        shutil.rmtree(tmp)
    if weight_dtype != torch.float32:
        base = load_components(model_path, revision=config.revision, variant=config.variant)
        vae = base["vae"]
        if not config.train_text_encoder:
            text_encoder = base["text_encoder"]
        safety_checker, feature_extractor = load_safety_components(
            model_path, revision=config.revision, variant=config.variant
        )
    pipe = pipeline_from_modules(
        unet=unet,
        text_encoder=text_encoder,
        vae=vae,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety_checker is not None,
    )
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
