"""The ``tiny`` and ``sd15`` suites: every training variant in rounds, each run in its own process, then
(unless ``--only``) class-image generation, the optimizer step and validation; optionally a profile.

- ``tiny`` (CPU or GPU): the embedded model at 64 px, batch 4 + 4 class images, text encoder trained,
  8-bit AdamW; each optimisation on and off.
- ``sd15`` (GPU): SD1.5's architecture with random weights at 512 px, fp16 mixed precision: gradient
  checkpointing, the optimizer fused into the backward pass, bf16, channels-last, torch.compile (and with CUDA
  graphs), LoRA, each on and off; MFU from ``torch.utils.flop_counter`` against a measured matmul peak.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .common import environment
from .fixtures import base_config, prepare_sd15, prepare_tiny
from .record import Recorder
from .workers import run_worker

# name -> TrainConfig overrides relative to the default (every optimisation on)
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_cache_latents": {"cache_latents": False},
    "no_sdpa": {"use_sdpa": False},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "grads_zeroed_not_none": {"set_grads_to_none": False},
    "torch_adamw": {"use_8bit_adam": False},
    "compile_unet": {"compile_unet": True},
    "unfused_small_adam_updates": {"fuse_small_adam_updates": False},
    "lora": {"train_mode": "lora", "learning_rate": 1e-4},  # rank 4 adapters on the UNet and text encoder
    "fused_backward": {"fused_backward_pass": True},
    "fused_backward_gradient_checkpointing": {"fused_backward_pass": True, "gradient_checkpointing": True},
}
# in the order of what matters most: a --budget that runs out drops the last
SD15_VARIANTS: dict[str, dict[str, Any]] = {
    "no_gradient_checkpointing": {},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "fused_backward_gradient_checkpointing": {"fused_backward_pass": True, "gradient_checkpointing": True},
    "fused_backward": {"fused_backward_pass": True},
    "bf16": {"mixed_precision": "bf16"},
    "no_channels_last": {"channels_last": False},
    "compile_unet": {"compile_unet": True},
    "compile_unet_cuda_graphs": {"compile_unet": True, "compile_mode": "reduce-overhead"},
    "gradient_checkpointing_no_cache_latents": {"gradient_checkpointing": True, "cache_latents": False},
    "lora": {"train_mode": "lora", "learning_rate": 1e-4},
    "lora_gradient_checkpointing": {"train_mode": "lora", "learning_rate": 1e-4, "gradient_checkpointing": True},
}


def merge_rounds(results: list[dict]) -> dict[str, Any]:
    """One variant's row from its rounds: steps/s from the median step over all rounds (a slow spell of
    the machine moves it less than a mean would), the largest peak memory; failed rounds kept apart."""
    ok = [x for x in results if "error" not in x]
    if not ok:
        return results[-1]
    seconds = [t for x in ok for t in x["step_seconds"]]
    row = {**ok[-1], "steps_per_s_repeats": [rate for x in ok for rate in x["steps_per_s_repeats"]],
           "step_seconds": seconds, "steps_per_s": 1.0 / statistics.median(seconds),
           "peak_memory_bytes": max(x["peak_memory_bytes"] for x in ok)}
    if all("held_after_backward_bytes" in x for x in ok):
        row["held_after_backward_bytes"] = max(x["held_after_backward_bytes"] for x in ok)
    row["images_per_s"] = row["steps_per_s"] * ok[-1]["images_per_s"] / ok[-1]["steps_per_s"]
    if "mfu" in row:
        row["mfu"] = row["flops_per_step"] * row["steps_per_s"] / max(x["peak_flops_per_s"] for x in ok)
    if len(ok) < len(results):
        row["failed_rounds"] = [x["error"] for x in results if "error" in x]
    return row


def run_variants(variants: dict[str, dict], config, args: argparse.Namespace, recorder: Recorder,
                 flops: bool = False) -> list[dict]:
    """Each variant ``args.rounds`` times, in rounds (every variant once per round), each run in its own
    process; so a machine that is slower for a while slows every variant alike. The rows so far are
    written after every run; none starts once the budget is spent."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, overrides in variants.items():
            if recorder.skip(f"training: {name} (round {r + 1})"):
                continue
            print(f"[{args.config}] training: {name} (round {r + 1}/{args.rounds}) ...", flush=True)
            runs[name].append(run_worker("train", name, config, overrides, args, flops=flops,
                                         timeout=recorder.remaining()))
            recorder.update(training=[merge_rounds(results) for results in runs.values() if results])
    return [merge_rounds(results) for results in runs.values() if results]


def recorded_settings(args: argparse.Namespace, config) -> dict[str, Any]:
    """What was run, not where: the scratch paths of the machine stay out of the results."""
    return {"warmup": args.warmup, "steps": args.steps, "repeats": args.repeats, "rounds": args.rounds,
            **config.to_dict(), "pretrained_model": "embedded:tiny" if args.config == "tiny" else "sd15-random",
            "instance_dir": "<work>/instance", "class_dir": "<work>/class", "output_dir": "<work>/run"}


def run_parts(config, args: argparse.Namespace, recorder: Recorder) -> None:
    """Class-image generation, the optimizer step and validation, each in its own process, each written as
    soon as it is measured."""
    parts = {"class_generation": ("class_generation", "batched", config),
             "optimizer_step": ("optimizer", "optimizer", config),
             "validation": ("validation", "validation", config.replace(num_validation_images=4))}
    for key, (kind, variant, part_config) in parts.items():
        if recorder.skip(key):
            continue
        print(f"[{args.config}] {key.replace('_', ' ')} ...", flush=True)
        recorder.update(**{key: run_worker(kind, variant, part_config, {}, args, timeout=recorder.remaining())})


def run_suite(args: argparse.Namespace, recorder: Recorder) -> dict[str, Any]:
    """All variants of ``args.config`` ("tiny" or "sd15"), each in its own process; the results are written
    by ``recorder`` as they come."""
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="cartoonify-bench-")).resolve()
    paths = prepare_tiny(work)
    if args.config == "sd15":
        paths["model"] = prepare_sd15(work)
    config = base_config(args.config, paths)
    if getattr(args, "resolution", None):
        config = config.replace(resolution=args.resolution)
    variants = TINY_VARIANTS if args.config == "tiny" else SD15_VARIANTS
    if args.only:  # in the order given
        unknown = [k for k in args.only if k not in variants]
        if unknown:
            raise SystemExit(f"--only: no variant {', '.join(unknown)} in {args.config} (known: {', '.join(variants)})")
        variants = {k: variants[k] for k in args.only}
    recorder.update(config=args.config, settings=recorded_settings(args, config), environment=environment(),
                    training=[])
    run_variants(variants, config, args, recorder, flops=args.config == "sd15" and torch.cuda.is_available())
    if args.profile and not recorder.skip("profile"):
        print(f"[{args.config}] profile of the default ...", flush=True)
        recorder.update(profile=run_worker("profile", "default", config, {}, args, timeout=recorder.remaining()))
    if not args.only or getattr(args, "parts", False):
        run_parts(config, args, recorder)
    return recorder.results
