"""Cartoonify: teach Stable Diffusion v1.5 a cartoon style with DreamBooth, judge the checkpoints, and
turn photos of people into that style.

The public API is flat (``cartoonify.run_training(config)``); each name is imported from its module on
first use, so that ``import cartoonify`` stays light. ``import cartoonify.<module>`` always gives that
module. The layers, each importing only those before it::

    utils -> config -> runs -> imaging, style -> models -> data -> training
           -> rating -> sampling -> evaluation -> comparison, stylize, exporting -> plots -> notebooks
"""

from __future__ import annotations

import importlib
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
    "SCHEDULERS": "config",
    "scheduler_label": "config",
    "DEFAULT_MODEL": "config",
    "TINY_MODEL": "config",
    # run folders
    "RunLayout": "runs",
    "list_checkpoints": "runs",
    "load_config": "runs",
    # imaging
    "image_grid": "imaging",
    "open_rgb": "imaging",
    "save_png": "imaging",
    # models
    "build_tiny": "models",
    "build_sd15": "models",
    "load_pipeline": "models",
    "load_components": "models",
    "resolve_model": "models",
    "make_scheduler": "models",
    "text_to_image": "models",
    "image_to_image": "models",
    # data
    "DreamBoothDataset": "data.dataset",
    "list_images": "data.folders",
    "read_caption": "data.folders",
    "load_training_image": "data.dataset",
    "collect_dataset": "data.collect",
    "CollectResult": "data.collect",
    "generate_class_images": "data.prior",
    "ensure_class_images": "data.prior",
    "make_demo_dataset": "data.demo",
    "make_style_images": "data.demo",
    "demo_photos": "data.demo",
    # training
    "run_training": "training.run",
    "build_trainer": "training.run",
    "DreamBoothTrainer": "training.trainer",
    "TrainResult": "training.trainer",
    "TrainerCallback": "training.callbacks",
    "dreambooth_loss": "training.objective",
    "read_loss_log": "training.logs",
    "adamw8bit": "training.optim",
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
    "krippendorff_alpha": "rating",
    "rater_summary": "rating",
    "rater_table_html": "rating",
    "spearman": "rating",
    "PairwiseStore": "rating",
    "PairwiseWidget": "rating",
    "pairwise_session": "rating",
    "make_pairs": "rating",
    "comparisons_from_records": "rating",
    "bradley_terry": "rating",
    "bradley_terry_ci": "rating",
    "pairwise_summary": "rating",
    "pairwise_html": "rating",
    "style_score": "style",
    "mean_style_score": "style",
    # evaluation: automated scores beside the human ratings
    "evaluate_run": "evaluation",
    "run_scorer": "evaluation",
    "scheduler_scores": "evaluation",
    "render_drift_images": "evaluation",
    "choose_best": "evaluation",
    "format_agreement": "evaluation",
    "rating_widget": "evaluation",
    "human_summary": "evaluation",
    "human_summary_html": "evaluation",
    "load_encoder": "evaluation",
    "EvalModelUnavailable": "evaluation",
    "read_evaluation": "runs",
    # sampling, comparison, stylize
    "load_finetuned": "sampling",
    "choose_checkpoint": "sampling",
    "load_run_pipeline": "sampling",
    "compare_schedulers": "comparison",
    "timing_html": "comparison",
    "comparison_html": "comparison",
    "stylize_run": "stylize",
    "stylize_folder": "stylize",
    "sweep_html": "stylize",
    "manifest_html": "stylize",
    "contact_sheet": "stylize",
    "TrainingProgress": "training.progress",
    "PreflightError": "training.preflight",
    "check_inputs": "training.preflight",
    # export
    "export_model": "exporting",
    "write_model_card": "exporting",
    "ExportConfig": "config",
    # notebooks
    "enter_project_root": "notebooks",
    "run_notebooks": "notebooks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # cartoonify.plots etc. without an explicit import
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'cartoonify' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return __all__
