"""Measurements of the parts around the training step, each in its own worker process: class-image
generation (batched vs diffusers' batch of 4), the 8-bit AdamW step (plain vs small tensors fused) and
validation sampling (modules in memory vs a pipeline reloaded from disk)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from .common import per_second, sync, time_in_turns


def measure_class_generation(
    model: str, device, n: int = 16, batch_sizes=(4, 16), steps: int = 50, repeats: int = 2
) -> dict[str, Any]:
    """Class-image generation images/s: diffusers' script (batch 4, the pipeline's defaults) vs batched."""
    import torch

    from cartoonify.models import load_pipeline, text_to_image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(model, torch_dtype=dtype, safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    for bs in batch_sizes:
        text_to_image(pipe, "an illustration", list(range(bs)), num_inference_steps=2, batch_size=bs)  # warm-up

    def generate(bs: int):
        return lambda: text_to_image(pipe, "an illustration", list(range(n)), num_inference_steps=steps,
                                     batch_size=bs)

    ways = {f"batch_{bs}": generate(bs) for bs in batch_sizes}
    return per_second(n, time_in_turns(ways, device, repeats, warmup=False), "_images_per_s")


def measure_optimizer_step(config, device, steps: int = 20) -> dict[str, Any]:
    """Milliseconds per ``optimizer.step()`` over the UNet and text encoder's parameters, with random
    gradients: bitsandbytes' AdamW8bit vs the same with the 32-bit tensors fused
    (``cartoonify.training.optim``), taking turns step by step."""
    import torch

    from cartoonify.models import load_components
    from cartoonify.training.optim import adamw8bit

    comps = load_components(config.pretrained_model, variant=config.variant)
    params = [p for name in ("unet", "text_encoder") for p in comps[name].to(device).parameters()]
    gen = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 1e-3
    hyper = {"lr": config.learning_rate, "betas": (config.adam_beta1, config.adam_beta2),
             "weight_decay": config.adam_weight_decay, "eps": config.adam_epsilon}
    optimizers = {"adamw8bit": adamw8bit(params, fuse_small=False, **hyper),
                  "adamw8bit_fused_small": adamw8bit(params, fuse_small=True, **hyper)}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(steps + 3):
        for name, opt in optimizers.items():
            sync(device)
            t0 = time.perf_counter()
            opt.step()
            sync(device)
            if i >= 3:  # warm-up: the first steps allocate the state
                times[name].append(time.perf_counter() - t0)
    small = sum(1 for p in params if p.numel() < 4096)
    return {"tensors": len(params), "tensors_with_32bit_state": small,
            **{f"{name}_ms": statistics.median(ts) * 1000 for name, ts in times.items()}}


def measure_validation(config, device, repeats: int = 3) -> dict[str, Any]:
    """Validation images/s: a pipeline over the modules in memory vs one reloaded from disk each time."""
    from diffusers import DiffusionPipeline

    from cartoonify.models import make_scheduler, move_module, text_to_image
    from cartoonify.training.run import build_trainer

    trainer = build_trainer(config.replace(max_train_steps=1), progress=False)
    n, steps = config.num_validation_images or 4, config.validation_inference_steps
    seeds = list(range(n))

    move_module(trainer.vae, device)  # as validate() does: the VAE may be offloaded while training

    def in_memory():
        text_to_image(trainer.pipeline(), config.validation_prompt, seeds, num_inference_steps=steps,
                      autocast_dtype=trainer.weight_dtype)

    def reloaded():
        pipe = DiffusionPipeline.from_pretrained(
            trainer.model_path, unet=trainer.unwrap(trainer.unet), text_encoder=trainer.unwrap(trainer.text_encoder),
            tokenizer=trainer.tokenizer, safety_checker=None, requires_safety_checker=False,
        )
        pipe.scheduler = make_scheduler(config.validation_scheduler, pipe.scheduler)
        pipe.to(device).set_progress_bar_config(disable=True)
        text_to_image(pipe, config.validation_prompt, seeds, num_inference_steps=steps,
                      autocast_dtype=trainer.weight_dtype)

    times = time_in_turns({"in_memory": in_memory, "reloaded_from_disk": reloaded}, device, repeats)
    return per_second(n, times, "_images_per_s")
