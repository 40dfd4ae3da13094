"""Validation images: the validation prompt at fixed seeds, written to ``validation/step-<step>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..imaging import GRID_FILE, image_grid, save_png
from ..models import SampleResult, text_to_image
from ..runs import RunLayout, write_images_json


def save_sample_result(result: SampleResult, out_dir: str | Path, prefix: str = "image", extra: dict | None = None) -> Path:
    """Write each image as ``<prefix>-<i>.png``, a ``grid.png`` and ``images.json`` (prompt, settings, and
    the file, seed and NSFW flag of each image). Returns the JSON path."""
    out_dir = Path(out_dir)
    records = []
    for i, (img, seed, flag) in enumerate(zip(result.images, result.seeds, result.nsfw)):
        name = f"{prefix}-{i:02d}.png"
        save_png(img, out_dir / name)
        records.append({"file": name, "seed": seed, "nsfw": flag})
    save_png(image_grid(result.images, rows=1 if len(result.images) <= 4 else None), out_dir / GRID_FILE)
    return write_images_json(out_dir, {"prompt": result.prompt, **result.meta, **(extra or {})}, records)


def validation_seeds(config: TrainConfig) -> list[int]:
    """The seeds of the validation images: the same at every checkpoint, so grids compare image by image."""
    return [config.seed + i for i in range(config.num_validation_images)]


def validate(pipe, config: TrainConfig, layout: RunLayout, step: int, autocast_dtype=None, trackers: Any = ()) -> Path:
    """Generate the validation images of ``step`` with ``pipe`` into ``validation/step-<step>/``; also
    sent to a TensorBoard tracker if one is given. Returns the folder."""
    result = text_to_image(
        pipe,
        config.validation_prompt,
        validation_seeds(config),
        num_inference_steps=config.validation_inference_steps,
        guidance_scale=config.validation_guidance_scale,
        height=config.resolution,
        width=config.resolution,
        autocast_dtype=autocast_dtype,
    )
    out_dir = layout.validation_dir(step)
    save_sample_result(result, out_dir, extra={"step": step})
    for tracker in trackers:
        if tracker.name == "tensorboard":
            arr = np.stack([np.asarray(img) for img in result.images])
            tracker.writer.add_images("validation", arr, step, dataformats="NHWC")
    return out_dir
