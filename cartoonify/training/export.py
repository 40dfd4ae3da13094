"""The fine-tuned pipeline: the trained modules with the base model's frozen ones, in diffusers format."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..config import TrainConfig
from ..models import load_components, load_safety_components, pipeline_from_modules
from ..runs import RunLayout
from .checkpoint import cast_copy, record_default_dtype
from .lora import fused_components

PIPELINE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def save_pipeline(
    layout: RunLayout, config: TrainConfig, model_path: str, *, unet, text_encoder, vae, tokenizer, scheduler,
    safety_checker=None, feature_extractor=None, weight_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the fine-tuned pipeline (safetensors) to ``pipeline/``, atomically; returns the folder.

    Every module is saved in ``final_pipeline_precision`` (fp16 by default: half the disk; fp32 keeps the
    trained weights as they are); under LoRA, the adapters fused into the base weights. Without a dtype, ``from_pretrained`` loads either in fp32. Frozen modules
    that were cast to another mixed-precision dtype for training (``weight_dtype``) are taken from the base
    model again. The modules in memory are left as they are: the fp16 ones are copies.
    """
    out, tmp = layout.pipeline, layout.partial_pipeline
    target = PIPELINE_DTYPES[config.final_pipeline_precision]
    if tmp.exists():
        shutil.rmtree(tmp)
    if config.train_mode == "lora":  # the adapters fused into fresh base weights
        trained = {"unet": unet, **({"text_encoder": text_encoder} if config.train_text_encoder else {})}
        fused = fused_components(model_path, config, trained)
        unet, text_encoder, vae = fused["unet"], fused["text_encoder"], fused["vae"]
    if weight_dtype not in (torch.float32, target):
        base = load_components(model_path, revision=config.revision, variant=config.variant)
        vae = base["vae"]
        if not config.train_text_encoder:
            text_encoder = base["text_encoder"]
        safety_checker, feature_extractor = load_safety_components(
            model_path, revision=config.revision, variant=config.variant
        )
    modules = {"unet": unet, "text_encoder": text_encoder, "vae": vae, "safety_checker": safety_checker}
    if target != torch.float32:
        modules = {k: None if m is None else cast_copy(m, target) for k, m in modules.items()}
    pipe = pipeline_from_modules(
        **modules,
        tokenizer=tokenizer,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety_checker is not None,
    )
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if target != torch.float32:  # from_pretrained without a dtype: every module in fp32, none mixed
        for name in modules:
            record_default_dtype(tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
