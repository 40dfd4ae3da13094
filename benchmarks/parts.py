"""Measurements of the parts around the training step, each in its own worker process: class-image
generation (diffusers' batch of 4 vs batched, compiled, fewer steps), the 8-bit AdamW step (plain vs small tensors fused) and
validation sampling (modules in memory vs a pipeline reloaded from disk)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from .common import per_second, sync, time_in_turns


def measure_class_generation(
    model: str, device, n: int | None = None, steps: int = 50, fast=("dpmpp_2m", 25), repeats: int = 2,
) -> dict[str, Any]:
    """Class-image images/s, each speed-up apart: diffusers' script (batch 4, the pipeline's sampler and 50
    steps), batching alone (the batch the package picks: ``AUTO_BATCH_START``, capped by the count), the UNet
    compiled as well (CUDA only: compiling on a CPU takes longer than it saves), and then fewer steps (``fast``:
    a sampler and its step count). Each way takes its turn, repeatedly; speed-ups are ratios of images/s."""
    import torch

    from cartoonify.data.prior import AUTO_BATCH_START
    from cartoonify.models import load_pipeline, make_scheduler, text_to_image

    cuda = device.type == "cuda"
    n = n or (16 if cuda else 8)
    big = min(n, AUTO_BATCH_START.get(device.type, 8))
    pipe = load_pipeline(model, torch_dtype=torch.float16 if cuda else torch.float32, safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    eager, base_scheduler = pipe.unet.forward, pipe.scheduler
    compiled = torch.compile(pipe.unet.forward) if cuda else None
    fast_scheduler = make_scheduler(fast[0], base_scheduler)

    def way(batch: int, n_steps: int, forward=None, scheduler=None):
        def run(n_steps: int = n_steps):
            if forward is not None:
                pipe.unet.forward = forward
            pipe.scheduler = scheduler or base_scheduler
            try:
                text_to_image(pipe, "an illustration", list(range(n)), num_inference_steps=n_steps, batch_size=batch)
            finally:
                pipe.unet.__dict__.pop("forward", None)  # the module's own (eager) forward again
                pipe.scheduler = base_scheduler
        return run

    # name -> (way, the way it is a speed-up over, what the speed-up is called); each differs in one thing
    plan = {"batch_4": (way(4, steps), None, None), f"batch_{big}": (way(big, steps), "batch_4", "batching")}
    last = f"batch_{big}"
    if compiled is not None:
        plan[f"{last}_compiled"] = (way(big, steps, compiled), last, "compilation")
        last = f"{last}_compiled"
    plan[f"{last}_{fast[0]}_{fast[1]}"] = (way(big, fast[1], compiled, fast_scheduler), last,
                                           f"fewer_steps_{steps}_to_{fast[1]}")
    ways = {name: fn for name, (fn, _, _) in plan.items()}
    for fn in ways.values():  # warm-up at 2 steps: compilation and the batch shapes, not the timing
        fn(2)
    assert pipe.unet.forward == eager  # every way put the eager forward back
    rates = per_second(n, time_in_turns(ways, device, repeats, warmup=False), "_images_per_s")
    speedups = {what: rates[f"{name}_images_per_s"] / rates[f"{over}_images_per_s"]
                for name, (_, over, what) in plan.items() if over is not None and over != name}
    return {**rates, "images": n, "steps": steps, "fast": f"{fast[0]} at {fast[1]} steps", "speedup": speedups}


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
