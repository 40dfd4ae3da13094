"""The benchmarks' model, data and training config: the embedded tiny model or SD1.5's architecture with
random weights, drawn style images, generated class images; batch 4 + 4, text encoder trained."""

from __future__ import annotations

from pathlib import Path

N_CLASS_IMAGES = 48


def prepare_tiny(work: Path, n_images: int = 24, n_class: int = N_CLASS_IMAGES) -> dict[str, str]:
    """The tiny model, 64 px demo images and ``n_class`` class images under ``work`` (reused if there)."""
    from cartoonify.config import TINY_MODEL, TrainConfig
    from cartoonify.data.demo import make_style_images
    from cartoonify.data.prior import ensure_class_images
    from cartoonify.models import resolve_model

    model = resolve_model(TINY_MODEL, 64)
    instance = work / "instance"  # no captions: every image gets the instance prompt, as in diffusers' script
    make_style_images(instance, n=n_images, size=64, seed=0, captions=False)
    klass = work / "class"
    cfg = TrainConfig(pretrained_model=model, class_dir=str(klass), num_class_images=n_class, sample_batch_size=16,
                      prior_generation_precision="fp32", class_inference_steps=10)
    ensure_class_images(cfg, progress=False)
    return {"model": model, "instance_dir": str(instance), "class_dir": str(klass)}


def prepare_sd15(work: Path) -> str:
    """A random-weight SD1.5 pipeline in diffusers format (fp16 files) under ``work``."""
    from cartoonify.models import build_sd15_pipeline

    path = work / "sd15-random"
    if not (path / "model_index.json").is_file():
        build_sd15_pipeline(path)
    return str(path)


def base_config(kind: str, paths: dict[str, str]):
    """The benchmark's training config: batch 4 + 4 class images, text encoder trained, 8-bit AdamW."""
    from cartoonify.config import TrainConfig

    common = {
        "instance_dir": paths["instance_dir"], "class_dir": paths["class_dir"], "num_class_images": N_CLASS_IMAGES,
        "train_batch_size": 4, "train_text_encoder": True, "use_8bit_adam": True, "learning_rate": 1e-4,
        "checkpointing_steps": 10**6, "num_validation_images": 0, "save_final_pipeline": False, "report_to": "none",
        "validation_inference_steps": 25,
    }
    if kind == "tiny":
        return TrainConfig(pretrained_model=paths["model"], resolution=64, mixed_precision="no", **common)
    return TrainConfig(pretrained_model=paths["model"], resolution=512, mixed_precision="fp16", variant=None, **common)
