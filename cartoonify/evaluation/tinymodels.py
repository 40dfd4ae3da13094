"""Tiny random CLIP and DINO (ViT) models that the package builds itself, so that the evaluation runs in tests
and the demo without any download; they load through the same ``from_pretrained`` path as the real models."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import TINY_CLIP_MODEL, TINY_DINO_MODEL
from ..utils import build_folder
from ..models.tiny import tiny_safety_checker_config
from ..models.tokenizer import write_bpe_files, write_tiny_tokenizer

# Embedded evaluation model of each kind.
TINY_EVAL_MODELS = {"clip": TINY_CLIP_MODEL, "dino": TINY_DINO_MODEL}
# Marker file that records how a tiny evaluation model folder was built (written last).
TINY_EVAL_MARKER = "cartoonify_tiny_eval.json"
# Bump when a tiny model's layout changes, so that stale cache folders are rebuilt.
TINY_EVAL_FORMAT_VERSION = 1

TINY_CLIP_IMAGE_SIZE = 32
TINY_DINO_IMAGE_SIZE = 64
# ImageNet statistics, with which DINO (facebook/dino-vits16) normalises its input.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# --------------------------------------------------------------------------------------------------------------------
# Architectures.
# --------------------------------------------------------------------------------------------------------------------


def tiny_clip_config(vocab_size: int) -> dict[str, Any]:
    """Keyword arguments of the tiny ``CLIPConfig``: the shape of the tiny SD model's safety checker, with the
    tiny tokenizer's vocabulary and special token ids."""
    config = tiny_safety_checker_config()
    config["text_config"].update(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                 pad_token_id=vocab_size - 1)
    config["vision_config"]["image_size"] = TINY_CLIP_IMAGE_SIZE
    return config


def tiny_dino_config() -> dict[str, Any]:
    """Keyword arguments of the tiny ``ViTConfig`` (DINO's architecture: a ViT read at its CLS token)."""
    return {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": TINY_DINO_IMAGE_SIZE,
        "patch_size": 8,
        "num_channels": 3,
    }


# --------------------------------------------------------------------------------------------------------------------
# Writing the folders.
# --------------------------------------------------------------------------------------------------------------------


def _write_clip(target: Path, seed: int) -> None:
    """Writes the tiny CLIP model, its image processor and the tiny tokenizer into ``target``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = write_tiny_tokenizer(target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(**tiny_clip_config(len(tokenizer)))).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
    )
    model.save_pretrained(target, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)
    write_bpe_files(target)  # keep the canonical vocab.json / merges.txt whatever save_pretrained wrote


def _write_dino(target: Path, seed: int) -> None:
    """Writes the tiny ViT and its image processor into ``target``."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(ViTConfig(**tiny_dino_config())).eval()
    image_processor = ViTImageProcessor(
        size={"height": TINY_DINO_IMAGE_SIZE, "width": TINY_DINO_IMAGE_SIZE},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    model.save_pretrained(target, safe_serialization=True)
    image_processor.save_pretrained(target)


_WRITERS: dict[str, Callable[[Path, int], None]] = {"clip": _write_clip, "dino": _write_dino}


def _marker(kind: str, seed: int) -> dict[str, Any]:
    """The marker contents that identify one tiny evaluation model build."""
    return {"format_version": TINY_EVAL_FORMAT_VERSION, "kind": kind, "seed": int(seed)}


def _build(kind: str, path: str | os.PathLike, seed: int, overwrite: bool) -> Path:
    """Builds the tiny ``kind`` model into a temporary folder beside ``path`` and renames it into place."""
    return build_folder(path, _marker(kind, seed), TINY_EVAL_MARKER, lambda tmp: _WRITERS[kind](tmp, seed),
                        overwrite=overwrite, what="tiny evaluation model", required="config.json")


def build_tiny_clip(path: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Writes a deterministic random-weight miniature ``CLIPModel`` with its ``CLIPProcessor`` to ``path``.

    The folder loads with ``CLIPModel.from_pretrained(path)`` and ``CLIPProcessor.from_pretrained(path)``
    (32 px images, the package's tiny tokenizer, 32-dimensional embeddings). It is built in a temporary folder and
    renamed into place, so a reader never sees half a model; the caller's global torch RNG is left untouched, and
    the same seed gives bit-identical weights.

    Raises:
        FileExistsError: ``path`` holds something else (not empty, not this build) and ``overwrite`` is False.
    """
    return _build("clip", path, seed, overwrite)


def build_tiny_dino(path: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Writes a deterministic random-weight miniature DINO-style ``ViTModel`` and its ``ViTImageProcessor``.

    64 px images, 8 px patches, 2 layers, 48-dimensional CLS embeddings; otherwise as :func:`build_tiny_clip`.
    """
    return _build("dino", path, seed, overwrite)


# --------------------------------------------------------------------------------------------------------------------
# Resolving names.
# --------------------------------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    """Raises ``ValueError`` for a kind of evaluation model other than clip or dino."""
    if kind not in TINY_EVAL_MODELS:
        raise ValueError(f"unknown evaluation model kind {kind!r}; expected one of {', '.join(TINY_EVAL_MODELS)}")


def tiny_eval_model_path(kind: str) -> Path:
    """The cache folder of the tiny ``kind`` model (under ``$CARTOONIFY_HOME`` or ``~/.cache/cartoonify``)."""
    _check_kind(kind)
    home = Path(os.environ.get("CARTOONIFY_HOME", "~/.cache/cartoonify")).expanduser()
    return home / f"tiny-{kind}-random"


def resolve_eval_model(name_or_path: str, kind: str) -> str:
    """The folder of an embedded tiny model (built on first use into the cache), else ``name_or_path`` itself.

    An existing local path comes back with ``~`` expanded; a hub id comes back unchanged.

    Raises:
        ValueError: an unknown ``kind``, the other kind's embedded model, or an unknown ``embedded:`` name.
    """
    _check_kind(kind)
    name = str(name_or_path)
    if name == TINY_EVAL_MODELS[kind]:
        # the cache folder is the package's own: a stale or broken build there is replaced
        return str(_build(kind, tiny_eval_model_path(kind), seed=0, overwrite=True))
    for other, embedded in TINY_EVAL_MODELS.items():
        if name == embedded:
            raise ValueError(
                f"{name!r} is the embedded {other} model and cannot serve as the {kind} model; "
                f"use {TINY_EVAL_MODELS[kind]!r} for {kind}"
            )
    if name.startswith("embedded:"):
        known = ", ".join(repr(n) for n in TINY_EVAL_MODELS.values())
        raise ValueError(f"unknown embedded evaluation model {name!r}; the embedded ones are {known}")
    expanded = Path(name).expanduser()
    return str(expanded) if expanded.exists() else name
