"""Disk: what a run will write, against the free space, checked before training.

Every checkpoint keeps the trained modules in fp16 for evaluation; only the newest ``keep_resume_states``
also keep the resume state (fp32 weights and the Adam state). ``python -m cartoonify.training.disk`` prints
the plan of the write-up's run (the full SD1.5 architecture, built on the meta device: nothing is
allocated) beside the earlier layout's, where every checkpoint kept everything.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import TrainConfig
from ..runs import list_checkpoints

PNG_RATIO = 0.5  # a generated image as PNG: about half its raw RGB bytes


class InsufficientDiskError(OSError):
    """The run would need more disk than is free (``disk_check="refuse"``)."""


def weight_bytes(modules: Sequence[torch.nn.Module | None], bytes_per_element: int) -> int:
    """The weights of ``modules`` at ``bytes_per_element`` (2: fp16, 4: fp32); None entries count nothing."""
    return sum(p.numel() * bytes_per_element for m in modules if m is not None for p in m.parameters())


def optimizer_bytes(modules: Sequence[torch.nn.Module], use_8bit_adam: bool) -> int:
    """The Adam state of the trainable weights.

    AdamW8bit keeps two uint8 states per element (plus one fp32 scale per 256) for tensors of at least
    4096 elements, and fp32 states for smaller ones; torch AdamW keeps two fp32 states.
    """
    total = 0
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                n = p.numel()
                total += 2 * n + 2 * 4 * math.ceil(n / 256) if use_8bit_adam and n >= 4096 else 2 * 4 * n
    return total


def trainable_bytes(modules: Sequence[torch.nn.Module], bytes_per_element: int) -> int:
    """The weights the optimizer updates (all of a fine-tuned module; the adapters under LoRA)."""
    return sum(p.numel() * bytes_per_element for m in modules for p in m.parameters() if p.requires_grad)


def resume_state_bytes(modules: Sequence[torch.nn.Module], use_8bit_adam: bool) -> int:
    """One checkpoint's resume state: the fp32 trained weights and the Adam state (the LR scheduler, RNG and
    data position add a few KB). A checkpoint of the earlier layout was this size."""
    return trainable_bytes(modules, 4) + optimizer_bytes(modules, use_8bit_adam)


def disk_plan(
    config: TrainConfig, trained: Sequence[torch.nn.Module], frozen: Sequence[torch.nn.Module | None],
    run_dir: Path | None, class_images: int = 0,
) -> dict[str, Any]:
    """What a full run will write to disk, compared with the free space in ``run_dir`` (None: not looked up).

    ``class_images`` is the number still to be generated. An old checkpoint is pruned, and an old resume
    state dropped, only after the new checkpoint is complete: the peak is while the last one is written, or
    at the end with the final pipeline. A finished run drops its last resume state too, unless
    ``keep_resume_at_end``. ``old_layout_bytes`` is the same run with every checkpoint keeping
    everything (fp32 weights and the Adam state) and an fp32 pipeline.
    """
    n = math.ceil(config.max_train_steps / config.checkpointing_steps)
    limit = config.checkpoints_total_limit
    kept = n if limit is None else min(n, limit)
    resume_kept = min(n, config.keep_resume_states)
    # evaluation weights: the trained modules in fp16, or under LoRA the adapters in fp32
    evaluation = trainable_bytes(trained, 4) if config.train_mode == "lora" else weight_bytes(trained, 2)
    resume = resume_state_bytes(trained, config.use_8bit_adam)
    modules = [*trained, *frozen] if config.save_final_pipeline else []
    pipeline = weight_bytes(modules, 2 if config.final_pipeline_precision == "fp16" else 4)
    validation = n * config.num_validation_images * 2  # the images and their grid
    images = int((class_images + validation) * config.resolution**2 * 3 * PNG_RATIO)
    saving = min(n, kept + 1) * evaluation + min(n, resume_kept + 1) * resume
    final = kept * evaluation + (resume_kept * resume if config.keep_resume_at_end else 0) + pipeline
    return {
        "checkpoints": n,
        "kept": kept,
        "evaluation_bytes": evaluation,
        "resume_kept": resume_kept,
        "resume_bytes": resume,
        "pipeline_bytes": pipeline,
        "pipeline_precision": config.final_pipeline_precision,
        "keep_resume_at_end": config.keep_resume_at_end,
        "image_bytes": images,
        "final_bytes": final + images,
        "bytes": max(saving, final) + images,
        "old_layout_bytes": min(n, kept + 1) * resume + weight_bytes(modules, 4) + images,
        "free": shutil.disk_usage(run_dir).free if run_dir is not None else None,
    }


def human_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def plan_message(plan: dict[str, Any], run_dir: Path | None) -> str:
    """The line logged before training."""
    gb = human_bytes
    free = f"; {gb(plan['free'])} free in {run_dir}" if plan["free"] is not None else ""
    return (
        f"disk: a full run writes {plan['checkpoints']} checkpoint(s) and keeps {plan['kept']}, each with "
        f"{gb(plan['evaluation_bytes'])} of weights for evaluation, the newest {plan['resume_kept']} also with a "
        f"{gb(plan['resume_bytes'])} resume state{'' if plan['keep_resume_at_end'] else ' while training'}; a {gb(plan['pipeline_bytes'])} {plan['pipeline_precision']} "
        f"pipeline; {gb(plan['image_bytes'])} of images: about {gb(plan['final_bytes'])} at the end, "
        f"{gb(plan['bytes'])} at the peak{free}"
    )


def check_disk(plan: dict[str, Any], run_dir: Path, policy: str) -> None:
    """Refuse (``policy="refuse"``) or warn when the rest of the run needs more disk than is free."""
    done = sum(p.stat().st_size for ck in list_checkpoints(run_dir) for p in ck.rglob("*") if p.is_file())
    needed = max(0, plan["bytes"] - done)
    if needed <= plan["free"] or policy == "off":
        return
    gb = human_bytes
    msg = (
        f"the rest of this run needs about {gb(needed)} of disk ({plan['kept']} checkpoint(s) of "
        f"{gb(plan['evaluation_bytes'])}, {plan['resume_kept']} resume state(s) of {gb(plan['resume_bytes'])} "
        f"+ the final pipeline) but only {gb(plan['free'])} is free in {run_dir}; free space, set "
        "checkpoints_total_limit, or disk_check='warn' to go on anyway"
    )
    if policy == "refuse":
        raise InsufficientDiskError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def sd15_safety_checker(device: str = "meta") -> torch.nn.Module:
    """SD1.5's safety checker (CLIP ViT-L/14 vision tower and the concept embeddings), random weights."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 224, "patch_size": 14, "projection_dim": 768}
    with torch.device(device):
        return StableDiffusionSafetyChecker(CLIPConfig(vision_config=vision, projection_dim=768))


def sd15_disk_plan(config: TrainConfig | None = None, safety_checker: bool = True) -> dict[str, Any]:
    """The disk plan of ``config`` (default: the write-up's run) on the full SD1.5 architecture, counted on
    the meta device; every class image is counted as still to be generated. The run's pipeline holds the
    safety checker when validation images are made (``safety_checker``)."""
    from ..models.sd15 import build_sd15

    config = config or TrainConfig()
    m = build_sd15("meta")
    if config.train_mode == "lora":
        from .lora import add_lora

        add_lora({"unet": m["unet"], **({"text_encoder": m["text_encoder"]} if config.train_text_encoder else {})},
                 config, torch.float16)
    trained = [m["unet"]] + ([m["text_encoder"]] if config.train_text_encoder else [])
    frozen = [m["vae"]] + ([] if config.train_text_encoder else [m["text_encoder"]])
    if safety_checker and config.num_validation_images:
        frozen.append(sd15_safety_checker())
    class_images = config.num_class_images if config.with_prior_preservation else 0
    return disk_plan(config, trained, frozen, None, class_images=class_images)


def main() -> None:
    plan = sd15_disk_plan()
    print("the write-up's run (SD1.5, 4000 steps, a checkpoint every 500):")
    print(plan_message(plan, None))
    print(f"earlier layout (every checkpoint fp32 + Adam state, fp32 pipeline): about "
          f"{human_bytes(plan['old_layout_bytes'])}")
    lora = sd15_disk_plan(TrainConfig(train_mode="lora"))
    print("the same run in LoRA mode (rank 4, UNet and text encoder):")
    print(plan_message(lora, None))


if __name__ == "__main__":
    main()
