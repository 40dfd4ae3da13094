"""Cartoonify: teach Stable Diffusion v1.5 a cartoon style with DreamBooth, judge the checkpoints, and
turn photos of people into that style.

The public API is flat; submodules are imported on first use so that ``import cartoonify`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # config
    "TrainConfig": "config",
    "ConfigError": "config",
    # models
    "DEFAULT_MODEL": "models",
    "TINY_MODEL": "models",
    "build_tiny": "models",
    "build_sd15": "models",
    "load_pipeline": "models",
    "load_components": "models",
    "resolve_model": "models",
    # data
    "DreamBoothDataset": "data",
    "list_images": "data",
    "read_caption": "data",
    "load_training_image": "data",
    # prior
    "generate_class_images": "prior",
    "ensure_class_images": "prior",
    # train
    "train": "train",
    "DreamBoothTrainer": "train",
    "TrainResult": "train",
    "dreambooth_loss": "train",
    "list_checkpoints": "train",
    "read_loss_log": "train",
    # sampling
    "load_finetuned": "sample",
    "text_to_image": "sample",
    "image_to_image": "sample",
    "image_grid": "sample",
    "SCHEDULERS": "schedulers",
    "make_scheduler": "schedulers",
    # demo data
    "make_demo_dataset": "demo_data",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cartoonify' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
