"""Cartoonify: teach Stable Diffusion v1.5 a cartoon style with DreamBooth, judge the checkpoints, and
turn photos of people into that style.

The public API is flat; submodules are imported on first use so that ``import cartoonify`` stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # config
    "TrainConfig": "config",
    "RunConfig": "config",
    "CollectConfig": "config",
    "EvalConfig": "config",
    "CompareConfig": "config",
    "StylizeConfig": "config",
    "ConfigError": "config",
    "load_parameters": "config",
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
    "collect": "collect",
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
    "adamw8bit": "optim",
    # sampling
    "load_finetuned": "sample",
    "text_to_image": "sample",
    "image_to_image": "sample",
    "image_grid": "sample",
    "SCHEDULERS": "schedulers",
    "make_scheduler": "schedulers",
    "scheduler_label": "schedulers",
    # rating
    "RatingStore": "rating",
    "RatingWidget": "rating",
    "collect_items": "rating",
    "rating_session": "rating",
    "summarize": "rating",
    "summary_html": "rating",
    "summary_table": "rating",
    "summary_message": "rating",
    "best_group": "rating",
    "write_summary_csv": "rating",
    # evaluate
    "resolve_checkpoint": "evaluate",
    "load_run_pipeline": "evaluate",
    "compare_schedulers": "evaluate",
    "stylize_photos": "evaluate",
    # notebooks
    "enter_project_root": "notebooks",
    "run_notebooks": "notebooks",
    # demo data
    "make_demo_dataset": "demo_data",
    "make_style_images": "demo_data",
    "demo_photos": "demo_data",
}

_SUBMODULES = ("checkpoint", "config", "data", "demo_data", "evaluate", "models", "notebooks", "optim", "plots", "prior", "rating",
               "sample", "schedulers", "train", "utils")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # cartoonify.plots etc. without an explicit import
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cartoonify' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``cartoonify.train`` the function: importing the submodule of the same name would otherwise
    rebind the package attribute to the module (the submodule stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return __all__
