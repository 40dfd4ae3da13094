"""The full SD1.5 architecture: its reference configs, random-weight builds for benchmarks and memory
estimates (also on the meta device), and a pipeline folder of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .devices import move_module
from .pipeline import pipeline_from_modules
from .tokenizer import write_bpe_files, write_tiny_tokenizer

# --------------------------------------------------------------------------------------------------------------------
# SD1.5 reference configurations (copied from the checkpoint's unet/, vae/ and text_encoder/ config.json files).
# --------------------------------------------------------------------------------------------------------------------

SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

SD15_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": [
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
    ],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": [
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
    ],
}

# CLIP ViT-L/14 text tower, as stored in SD1.5's text_encoder/config.json.
SD15_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# Parameter counts of the real SD1.5 checkpoint, which :func:`build_sd15` reproduces.
SD15_PARAMETER_COUNTS: dict[str, int] = {
    "unet": 859_520_964,
    "text_encoder": 123_060_480,
    "vae": 83_653_863,
}

# SD1.5's scheduler/scheduler_config.json (PNDM, the pipeline's default sampler).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# --------------------------------------------------------------------------------------------------------------------
# Full-size SD1.5 with random weights.
# --------------------------------------------------------------------------------------------------------------------


def build_sd15(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, torch.nn.Module]:
    """Builds SD1.5's UNet, VAE and CLIP text encoder with random weights on ``device`` (``"meta"`` allowed).

    Parameter counts equal the real checkpoint's: UNet 859,520,964; text encoder 123,060,480; VAE 83,653,863.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel(**SD15_UNET_CONFIG),
            "vae": AutoencoderKL(**SD15_VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG)),
        }
    return {name: move_module(module, dtype=dtype) for name, module in modules.items()}


def build_sd15_pipeline(path: str | os.PathLike, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write SD1.5's full architecture with random weights as a diffusers pipeline (for benchmarks).

    The tokenizer is the package's small one: its ids are valid for SD1.5's 49,408-token embedding, and
    the token ids do not change the cost of a step.
    """
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = build_sd15(dtype=dtype)
    tokenizer = write_tiny_tokenizer(path / "tokenizer")
    from diffusers import PNDMScheduler

    pipe = pipeline_from_modules(
        modules["unet"], modules["text_encoder"], modules["vae"], tokenizer, PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    )
    pipe.save_pretrained(path, safe_serialization=True)
    write_bpe_files(path / "tokenizer")
    return path


def count_parameters(module: torch.nn.Module) -> int:
    """Returns the number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


