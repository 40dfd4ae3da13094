"""Drift, the idea behind the DreamBooth paper's PRES: the class prompt rendered by each checkpoint and by
the base model from the same seeds, so that how far a checkpoint has moved away from the base model's idea
of the class can be measured image by image.

Prior preservation exists to keep this small. The images go to ``drift/step-<step>/`` (step 0 is the base
model), laid out like the validation images; a step whose folder already holds the same prompt, seeds and
sampling settings is not rendered again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..models import resolve_model, text_to_image
from ..runs import checkpoint_step, layout_of, list_checkpoints, load_config, read_images_json
from ..sampling import apply_checkpoint, load_finetuned
from ..training.checkpoint import TEXT_ENCODER, UNET
from ..training.validation import save_sample_result


def drift_seeds(seed: int, num_images: int) -> list[int]:
    """The seeds of the drift images: the run's seed onwards, the same for every checkpoint and the base."""
    return [seed + i for i in range(num_images)]


def _settings(config, num_images: int) -> dict:
    return {
        "prompt": config.class_prompt,
        "seeds": drift_seeds(config.seed, num_images),
        "num_inference_steps": config.validation_inference_steps,
        "guidance_scale": config.validation_guidance_scale,
        "scheduler_name": config.validation_scheduler,
    }


def _is_current(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` already holds the drift images of ``settings``."""
    try:
        meta = read_images_json(folder)
    except ValueError:
        return False
    have = {**{k: meta.get(k) for k in settings if k != "seeds"}, "seeds": [r.get("seed") for r in meta["images"]]}
    return have == settings and all((folder / r["file"]).is_file() for r in meta["images"])


def drift_steps(run_dir: str | Path) -> list[int]:
    """Steps with drift images on disk, in order (0 is the base model)."""
    layout = layout_of(run_dir)
    if not layout.drift.is_dir():
        return []
    out = []
    for folder in layout.drift.iterdir():
        try:
            out.append(int(folder.name.rsplit("-", 1)[1]))
        except (IndexError, ValueError):
            continue
    return sorted(s for s in out if (layout.drift_dir(s) / "images.json").is_file())


def render_drift_images(
    run_dir: str | Path,
    num_images: int = 4,
    steps: Sequence[int] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[int, Path]:
    """Render the class prompt at fixed seeds with the base model (step 0) and each checkpoint's trained
    modules (``steps``: those checkpoints; default all), with the validation's sampler, steps and guidance.

    The base pipeline is loaded once and each checkpoint's UNet (and text encoder) swapped in. Up-to-date
    folders are skipped. Returns ``{step: folder}``; empty when ``num_images`` is 0.
    """
    from tqdm.auto import tqdm

    if num_images <= 0:
        return {}
    layout = layout_of(run_dir)
    config = load_config(run_dir)
    settings = _settings(config, num_images)
    ckpts = {checkpoint_step(p): p for p in list_checkpoints(layout.run_dir)}
    wanted = [0] + [s for s in sorted(ckpts) if steps is None or s in steps]
    todo = [s for s in wanted if not _is_current(layout.drift_dir(s), settings)]
    if todo:
        base = resolve_model(config.pretrained_model, config.resolution)
        pipe = load_finetuned(base, None, scheduler=config.validation_scheduler, device=device,
                              revision=config.revision, variant=config.variant)
        originals = {UNET: pipe.unet, TEXT_ENCODER: pipe.text_encoder}
        for step in tqdm(todo, desc="Drift images", disable=not progress):
            apply_checkpoint(pipe, ckpts[step] if step else None, originals, config.allow_pickle)
            _render(pipe, config, settings, layout.drift_dir(step), step)
    return {s: layout.drift_dir(s) for s in wanted}


def _render(pipe, config, settings: dict, folder: Path, step: int) -> Path:
    result = text_to_image(
        pipe, settings["prompt"], settings["seeds"], num_inference_steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"], height=config.resolution, width=config.resolution,
    )
    return save_sample_result(result, folder, extra={"step": step, "scheduler_name": settings["scheduler_name"]})


def drift_image_paths(run_dir: str | Path, step: int) -> list[Path]:
    """The drift images of ``step`` in seed order."""
    folder = layout_of(run_dir).drift_dir(step)
    return [folder / r["file"] for r in read_images_json(folder)["images"]]
