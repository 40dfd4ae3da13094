"""The embedded tiny model (``embedded:tiny``): a deterministic miniature SD pipeline in diffusers format,
written by the package so that tests and the demo need no download, loaded through the same
``from_pretrained`` path as a real model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import TINY_MODEL, TINY_RANDOM_MODEL
from .pipeline import pipeline_from_modules
from .sd15 import SD15_SCHEDULER_CONFIG
from ..utils import build_folder, read_marker_file
from .tokenizer import MODEL_MAX_LENGTH, write_bpe_files, write_tiny_tokenizer

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

# The pretrained tiny model shipped with the package (built by cartoonify.training.basemodel).
EMBEDDED_TINY_DIR = Path(__file__).resolve().parent / "embedded" / "tiny"
# Name of the marker file that records how a tiny model folder was built.
TINY_MARKER = "cartoonify_tiny.json"
# Bump when the tiny model's layout changes so that stale caches are not reused.
TINY_FORMAT_VERSION = 1

# --------------------------------------------------------------------------------------------------------------------
# Tiny model architecture (the classic tiny pipeline of diffusers' StableDiffusionPipeline fast tests).
# --------------------------------------------------------------------------------------------------------------------

TINY_CROSS_ATTENTION_DIM = 32


def tiny_unet_config(resolution: int = 64) -> dict[str, Any]:
    """Returns the tiny UNet's config; latents are ``resolution // 2`` because the tiny VAE downsamples by 2."""
    return {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "sample_size": resolution // 2,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": TINY_CROSS_ATTENTION_DIM,
    }


def tiny_vae_config(resolution: int = 64) -> dict[str, Any]:
    """Returns the tiny VAE's config (two blocks, so a downsample factor of 2)."""
    return {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "sample_size": resolution,
    }


def tiny_text_encoder_config(vocab_size: int) -> dict[str, Any]:
    """Returns the tiny CLIP text encoder's config; special token ids match :func:`tiny_vocab`'s layout."""
    return {
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
        "hidden_size": TINY_CROSS_ATTENTION_DIM,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": MODEL_MAX_LENGTH,
    }


BASE_LATENT_CHANNELS = 16


def base_vae_config(resolution: int = 64) -> dict[str, Any]:
    """The pretrained tiny model's VAE: three blocks, so 4x downsampling, to 16 x 16 latents of 16 channels
    at 64 px (a third of the pixels' numbers, SD3's latent depth: it reconstructs photos after minutes of
    CPU training, where SD1.5's 4 channels would need hours)."""
    return {
        "block_out_channels": [16, 32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "latent_channels": BASE_LATENT_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "mid_block_add_attention": False,
        "sample_size": resolution,
    }


def base_unet_config(resolution: int = 64) -> dict[str, Any]:
    """The pretrained tiny model's UNet, on 16 x 16 latents at 64 px."""
    return {
        "sample_size": resolution // 4,
        "in_channels": BASE_LATENT_CHANNELS,
        "out_channels": BASE_LATENT_CHANNELS,
        "block_out_channels": (48, 64, 96),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": BASE_TEXT_DIM,
        "attention_head_dim": 4,
        "norm_num_groups": 16,
    }


BASE_TEXT_DIM = 64


def base_text_encoder_config(vocab_size: int) -> dict[str, Any]:
    """The pretrained tiny model's CLIP text encoder (special token ids as :func:`tiny_vocab` lays them out)."""
    return {
        **tiny_text_encoder_config(vocab_size),
        "hidden_size": BASE_TEXT_DIM,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
    }


def tiny_safety_checker_config() -> dict[str, Any]:
    """Returns a tiny ``CLIPConfig`` (as keyword arguments) for a randomly initialised safety checker."""
    return {
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "max_position_embeddings": MODEL_MAX_LENGTH,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        "projection_dim": 32,
    }


# --------------------------------------------------------------------------------------------------------------------
# Tiny model construction.
# --------------------------------------------------------------------------------------------------------------------


def _seeded(seed: int) -> None:
    """Seeds torch's CPU RNG (callers wrap this in ``torch.random.fork_rng`` to keep the global state intact)."""
    torch.manual_seed(seed)


def _tiny_marker(resolution: int, seed: int, with_safety_checker: bool) -> dict[str, Any]:
    """Returns the marker contents that identify a tiny model build."""
    return {
        "format_version": TINY_FORMAT_VERSION,
        "resolution": int(resolution),
        "seed": int(seed),
        "with_safety_checker": bool(with_safety_checker),
    }


def _is_complete_tiny(path: Path, marker: dict[str, Any]) -> bool:
    """Whether ``path`` holds a complete tiny model built with exactly ``marker``'s parameters."""
    return (path / "model_index.json").is_file() and read_marker_file(path / TINY_MARKER) == marker


def _build_tiny_safety_checker(seed: int) -> tuple[Any, Any]:
    """Builds a tiny randomly initialised ``StableDiffusionSafetyChecker`` and a matching feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    _seeded(seed)
    safety_checker = StableDiffusionSafetyChecker(CLIPConfig(**tiny_safety_checker_config())).eval()
    size = tiny_safety_checker_config()["vision_config"]["image_size"]
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
    )
    return safety_checker, feature_extractor


def _build_tiny_pipeline(
    tokenizer: Any, resolution: int, seed: int, with_safety_checker: bool
) -> "StableDiffusionPipeline":
    """Builds the tiny pipeline in memory, re-seeding before each randomly initialised component."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(resolution))
    _seeded(seed)
    vae = AutoencoderKL(**tiny_vae_config(resolution))
    _seeded(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(len(tokenizer))))
    # from_config (not __init__) keeps SD1.5's extra ``clip_sample: false`` key, which DDPMScheduler later reads.
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    safety_checker, feature_extractor = (
        _build_tiny_safety_checker(seed) if with_safety_checker else (None, None)
    )
    return pipeline_from_modules(
        unet, text_encoder, vae, tokenizer, scheduler, safety_checker, feature_extractor, with_safety_checker
    )


def _write_tiny(target: Path, resolution: int, seed: int, with_safety_checker: bool) -> None:
    """Writes a complete tiny model (and finally its marker) into the empty folder ``target``."""
    tokenizer = write_tiny_tokenizer(target / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        pipeline = _build_tiny_pipeline(tokenizer, resolution, seed, with_safety_checker)
    pipeline.save_pretrained(target, safe_serialization=True)
    write_bpe_files(target / "tokenizer")


def build_tiny(
    path: str | os.PathLike,
    resolution: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    with_safety_checker: bool = False,
) -> Path:
    """Writes a deterministic, randomly initialised miniature SD pipeline (diffusers format) to ``path``.

    The folder loads with ``StableDiffusionPipeline.from_pretrained(path)``. The model is built in a temporary folder
    beside ``path`` and renamed into place, so readers never see a half-written model. The caller's global torch RNG
    state is left untouched.

    Args:
        path: Destination folder.
        resolution: Image resolution in pixels (the latents are ``resolution // 2``); must be a multiple of 8.
        seed: Seed for the random initialisation of every component.
        overwrite: Replace whatever ``path`` holds if it is not this exact tiny model.
        with_safety_checker: Include a tiny random ``StableDiffusionSafetyChecker`` and its feature extractor.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileExistsError: If ``path`` exists, is not an empty folder nor this exact tiny model, and ``overwrite`` is
            False.
    """
    if resolution <= 0 or resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
    return build_folder(
        path, _tiny_marker(resolution, seed, with_safety_checker), TINY_MARKER,
        lambda tmp: _write_tiny(tmp, resolution, seed, with_safety_checker),
        overwrite=overwrite, what="tiny model", required="model_index.json",
    )


def tiny_model_path(resolution: int = 64) -> Path:
    """The cache folder of the random-weight tiny model (``$CARTOONIFY_HOME`` or ``~/.cache/cartoonify``)."""
    home = Path(os.environ.get("CARTOONIFY_HOME", "~/.cache/cartoonify")).expanduser()
    return home / f"tiny-sd-{resolution}"


def resolve_model(name_or_path: str, resolution: int = 64) -> str:
    """``name_or_path`` unchanged, or the folder of an embedded model.

    ``TINY_MODEL`` is the pretrained tiny model shipped inside the package (64 px); ``TINY_RANDOM_MODEL``
    is the random-weight tiny model, built on first use into the cache at ``resolution``.
    """
    name = str(name_or_path)
    if name == TINY_RANDOM_MODEL:
        return str(build_tiny(tiny_model_path(resolution), resolution=resolution))
    if name != TINY_MODEL:
        return name
    if not (EMBEDDED_TINY_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded tiny model is missing from {EMBEDDED_TINY_DIR}; build it with "
            f"`python -m cartoonify.training.basemodel --out {EMBEDDED_TINY_DIR}` (about 30 minutes on 2 CPU cores)"
        )
    return str(EMBEDDED_TINY_DIR)

