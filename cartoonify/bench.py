"""Speed and memory benchmarks: ``python -m cartoonify.bench {tiny,sd15,reference}``.

- ``tiny`` (CPU or GPU): the embedded model at 64 px, batch 4 + 4 class images, text encoder trained,
  8-bit AdamW. Training steps/s and images/s with each optimisation on and off, peak memory, class-image
  generation images/s (batched vs diffusers' batch of 4) and validation images/s (modules in memory vs a
  pipeline reloaded from disk, as diffusers' script does).
- ``sd15`` (GPU): the full SD1.5 architecture with random weights at 512², batch 4 + 4, UNet and text
  encoder trained, fp16 mixed precision, 8-bit AdamW, with and without gradient checkpointing; MFU from
  ``torch.utils.flop_counter`` against a measured matmul peak.
- ``reference``: diffusers' ``examples/dreambooth/train_dreambooth.py`` (a checkout given with
  ``--diffusers``) against ``python -m cartoonify.train`` on the same model, data and settings, side by
  side; steps/s from the wall-time difference of two step counts, so start-up and saving cancel out.

Each variant runs in its own process (peak RSS is per process). Warm-up steps are dropped; the figure is
the median of several timed repetitions. Results go to ``benchmarks/results/<config>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

RESULTS_DIR = Path("benchmarks") / "results"

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
}
SD15_VARIANTS: dict[str, dict[str, Any]] = {
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "no_gradient_checkpointing": {},
    "gradient_checkpointing_no_cache_latents": {"gradient_checkpointing": True, "cache_latents": False},
    "gradient_checkpointing_no_channels_last": {"gradient_checkpointing": True, "channels_last": False},
}


# ------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The machine and library versions a result was measured with."""
    from .utils import library_versions, machine_info

    return {"machine": machine_info(), "versions": library_versions(), "python": platform.python_version()}


def peak_memory_bytes(device) -> int:
    """CUDA: max allocated since the last reset; CPU: this process's peak resident set size."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# fixtures: model, data
# ------------------------------------------------------------------------------------------------


def prepare_tiny(work: Path, n_images: int = 24, n_class: int = 48) -> dict[str, str]:
    """The tiny model, 64 px demo images and ``n_class`` class images under ``work`` (reused if there)."""
    from .config import TrainConfig
    from .demo_data import make_style_images
    from .models import TINY_MODEL, resolve_model
    from .prior import ensure_class_images

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
    from .models import build_sd15_pipeline

    path = work / "sd15-random"
    if not (path / "model_index.json").is_file():
        build_sd15_pipeline(path)
    return str(path)


# ------------------------------------------------------------------------------------------------
# one variant (runs in a worker process)
# ------------------------------------------------------------------------------------------------


def measure_training(config, warmup: int, steps: int, repeats: int, flops: bool = False) -> dict[str, Any]:
    """Train ``warmup + steps * repeats`` steps; steps/s of each repetition, their median, peak memory."""
    import torch

    from .train import DreamBoothTrainer

    stamps: list[float] = []

    def stamp(trainer, row):
        _sync(trainer.accelerator.device)
        stamps.append(time.perf_counter())

    total = warmup + steps * repeats
    trainer = DreamBoothTrainer(config.replace(max_train_steps=total), progress=False, callbacks=[stamp])
    device = trainer.accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    trainer.run()
    rates = []
    for r in range(repeats):
        a = stamps[warmup - 1 + r * steps] if warmup else (t_start if r == 0 else stamps[r * steps - 1])
        b = stamps[warmup - 1 + (r + 1) * steps]
        rates.append(steps / (b - a))
    ends = [t_start] + stamps  # ends[i]: when step i finished (ends[0]: the start)
    step_seconds = [ends[i] - ends[i - 1] for i in range(warmup + 1, total + 1)]  # the timed steps, one by one
    per_step_images = config.train_batch_size * (2 if config.with_prior_preservation else 1)
    out = {
        "steps_per_s": 1.0 / statistics.median(step_seconds),
        "steps_per_s_repeats": rates,
        "step_seconds": step_seconds,
        "images_per_s": per_step_images / statistics.median(step_seconds),
        "peak_memory_bytes": peak_memory_bytes(device),
        "optimizer": trainer.optimizer_name,
        "device": str(device),
    }
    if flops:
        out.update(measure_mfu(trainer, out["steps_per_s"]))
    return out


# the regions the trainer marks with torch.profiler.record_function, in the order of a step
PROFILE_REGIONS = (
    "data", "latents", "text_encoder_forward", "unet_forward", "loss", "backward", "clip_grad_norm",
    "optimizer_step", "zero_grad",
)


def measure_profile(config, warmup: int, steps: int, top: int = 12) -> dict[str, Any]:
    """Where a training step's time goes: ``steps`` steps under ``torch.profiler`` after ``warmup``.

    Per region of the step (the trainer's ``record_function`` marks): milliseconds per step, wall (CPU)
    and, on CUDA, device time; what the marks do not cover is "other". Plus the ``top`` operators by self
    time. The profiler's own overhead makes the total somewhat slower than an unprofiled step.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from .train import DreamBoothTrainer

    stamps: list[float] = []
    prof_ref: list = []

    def on_step(trainer, row):
        _sync(trainer.accelerator.device)
        stamps.append(time.perf_counter())
        prof_ref[0].step()

    trainer = DreamBoothTrainer(config.replace(max_train_steps=warmup + steps), progress=False, callbacks=[on_step])
    cuda = trainer.accelerator.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1)) as prof:
        prof_ref.append(prof)
        trainer.run()
    step_ms = (stamps[-1] - stamps[warmup - 1]) / steps * 1000 if warmup else None
    events = prof.key_averages()
    by_name = {e.key: e for e in events}

    def device_us(e) -> float:
        return float(getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0) or 0.0)

    regions = []
    for name in PROFILE_REGIONS:
        e = by_name.get(name)
        if e is None:
            continue
        row = {"region": name, "cpu_ms": e.cpu_time_total / 1000 / steps}
        if cuda:
            row["device_ms"] = device_us(e) / 1000 / steps
        regions.append(row)
    if step_ms is not None:
        regions.append({"region": "other", "cpu_ms": max(0.0, step_ms - sum(r["cpu_ms"] for r in regions))})
    ops = [e for e in events if e.key not in PROFILE_REGIONS and not e.key.startswith("ProfilerStep")]
    if cuda:
        ops.sort(key=lambda e: getattr(e, "self_device_time_total", 0.0), reverse=True)
        top_ops = [{"op": e.key, "calls_per_step": e.count / steps,
                    "self_device_ms": getattr(e, "self_device_time_total", 0.0) / 1000 / steps} for e in ops[:top]]
    else:
        ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        top_ops = [{"op": e.key, "calls_per_step": e.count / steps,
                    "self_cpu_ms": e.self_cpu_time_total / 1000 / steps} for e in ops[:top]]
    return {"profiled_steps": steps, "step_ms": step_ms, "regions": regions, "top_ops": top_ops,
            "device": str(trainer.accelerator.device)}


def training_flops(trainer) -> int:
    """FLOPs of one training step (forward + backward), counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .train import training_step

    batch = next(iter(trainer.dataloader))
    if trainer.latent_cache is not None:
        batch.update(trainer.latent_cache.lookup(batch))
    gen = torch.Generator(device=trainer.accelerator.device).manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        with trainer.accelerator.autocast():
            loss, _, _ = training_step(
                trainer.unet, trainer.text_encoder, trainer.vae, trainer.noise_scheduler, batch, gen,
                with_prior_preservation=trainer.config.with_prior_preservation,
            )
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_peak_flops(device, dtype=None, n: int = 8192, repeats: int = 20) -> float:
    """Achievable FLOP/s of a large matmul on ``device`` (fp16 on CUDA, fp32 on CPU)."""
    import torch

    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    n = n if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def measure_mfu(trainer, steps_per_s: float) -> dict[str, Any]:
    """Model FLOPs utilisation: counted FLOPs per step x steps/s over the measured matmul peak."""
    flops = training_flops(trainer)
    peak = matmul_peak_flops(trainer.accelerator.device)
    return {"flops_per_step": flops, "peak_flops_per_s": peak, "mfu": flops * steps_per_s / peak}


def measure_class_generation(
    model: str, device, n: int = 16, batch_sizes=(4, 16), steps: int = 50, repeats: int = 2
) -> dict[str, Any]:
    """Class-image generation images/s: diffusers' script (batch 4, the pipeline's defaults) vs batched."""
    import torch

    from .models import load_pipeline
    from .sample import text_to_image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(model, torch_dtype=dtype, safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    times: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
    for bs in batch_sizes:
        text_to_image(pipe, "an illustration", list(range(bs)), num_inference_steps=2, batch_size=bs)  # warm-up
    for _ in range(repeats):  # in turns, so a slow spell of the machine hits every batch size alike
        for bs in batch_sizes:
            _sync(device)
            t0 = time.perf_counter()
            text_to_image(pipe, "an illustration", list(range(n)), num_inference_steps=steps, batch_size=bs)
            _sync(device)
            times[bs].append(time.perf_counter() - t0)
    return {f"batch_{bs}_images_per_s": n / statistics.median(ts) for bs, ts in times.items()}


def measure_optimizer_step(config, device, steps: int = 20) -> dict[str, Any]:
    """Milliseconds per ``optimizer.step()`` over the UNet and text encoder's parameters, with random
    gradients: bitsandbytes' AdamW8bit vs the same with the 32-bit tensors fused (``cartoonify.optim``),
    taking turns step by step."""
    import torch

    from .models import load_components
    from .optim import adamw8bit

    comps = load_components(config.pretrained_model, variant=config.variant)
    params = [p for name in ("unet", "text_encoder") for p in comps[name].to(device).parameters()]
    gen = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 1e-3
    hyper = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                 weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    optimizers = {"adamw8bit": adamw8bit(params, fuse_small=False, **hyper),
                  "adamw8bit_fused_small": adamw8bit(params, fuse_small=True, **hyper)}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(steps + 3):
        for name, opt in optimizers.items():
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            if i >= 3:  # warm-up: the first steps allocate the state
                times[name].append(time.perf_counter() - t0)
    small = sum(1 for p in params if p.numel() < 4096)
    return {"tensors": len(params), "tensors_with_32bit_state": small,
            **{f"{name}_ms": statistics.median(ts) * 1000 for name, ts in times.items()}}


def measure_validation(config, device, repeats: int = 3) -> dict[str, Any]:
    """Validation images/s: a pipeline over the modules in memory vs one reloaded from disk each time."""
    from diffusers import DiffusionPipeline

    from .schedulers import make_scheduler
    from .sample import text_to_image
    from .train import DreamBoothTrainer
    from .utils import move_module

    trainer = DreamBoothTrainer(config.replace(max_train_steps=1), progress=False)
    n, steps = config.num_validation_images or 4, config.validation_inference_steps
    seeds = list(range(n))

    move_module(trainer.vae, device)  # as validate() does: the VAE may be offloaded while training

    def in_memory():
        text_to_image(trainer.pipeline(), config.validation_prompt, seeds, num_inference_steps=steps,
                      autocast_dtype=trainer.weight_dtype)

    def reloaded():
        pipe = DiffusionPipeline.from_pretrained(
            trainer.model_path, unet=trainer._unwrap(trainer.unet), text_encoder=trainer._unwrap(trainer.text_encoder),
            tokenizer=trainer.tokenizer, safety_checker=None, requires_safety_checker=False,
        )
        pipe.scheduler = make_scheduler(config.validation_scheduler, pipe.scheduler)
        pipe.to(device).set_progress_bar_config(disable=True)
        text_to_image(pipe, config.validation_prompt, seeds, num_inference_steps=steps,
                      autocast_dtype=trainer.weight_dtype)

    ways = {"in_memory": in_memory, "reloaded_from_disk": reloaded}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for fn in ways.values():
        fn()  # warm-up
    for _ in range(repeats):  # in turns, so a slow spell of the machine hits both alike
        for name, fn in ways.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {f"{name}_images_per_s": n / statistics.median(ts) for name, ts in times.items()}


def worker(args: argparse.Namespace) -> int:
    """Run one variant and write its JSON (called in a fresh process by :func:`run_suite`)."""
    from .config import TrainConfig

    overrides = json.loads(args.overrides)
    config = TrainConfig.from_dict(json.loads(args.train_config)).replace(**overrides)
    result: dict[str, Any] = {"variant": args.variant, "overrides": overrides}
    if args.kind == "train":
        result.update(measure_training(config, args.warmup, args.steps, args.repeats, flops=args.flops))
    elif args.kind == "profile":
        result.update(measure_profile(config, args.warmup, args.steps))
    elif args.kind == "optimizer":
        from .utils import resolve_device

        result.update(measure_optimizer_step(config, resolve_device()))
    elif args.kind == "class_generation":
        from .utils import resolve_device

        result.update(measure_class_generation(config.pretrained_model, resolve_device(), steps=args.steps))
    elif args.kind == "validation":
        from .utils import resolve_device

        result.update(measure_validation(config, resolve_device()))
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def _run_worker(kind: str, variant: str, config, overrides: dict, args, flops: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, "-m", "cartoonify.bench", "_worker", "--kind", kind, "--variant", variant,
            "--train-config", json.dumps(config.replace(output_dir=str(Path(tmp) / "run")).to_dict()),
            "--overrides", json.dumps(overrides), "--result", str(result),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--repeats", str(args.repeats),
        ] + (["--flops"] if flops else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"variant": variant, "error": proc.stderr[-2000:]}
        return json.loads(result.read_text())


def base_config(kind: str, paths: dict[str, str]):
    """The benchmark's training config: batch 4 + 4 class images, text encoder trained, 8-bit AdamW."""
    from .config import TrainConfig

    common = dict(
        instance_dir=paths["instance_dir"], class_dir=paths["class_dir"], num_class_images=48, train_batch_size=4,
        train_text_encoder=True, use_8bit_adam=True, learning_rate=1e-4, checkpointing_steps=10**6,
        num_validation_images=0, save_final_pipeline=False, report_to="none", validation_inference_steps=25,
    )
    if kind == "tiny":
        return TrainConfig(pretrained_model=paths["model"], resolution=64, mixed_precision="no", **common)
    return TrainConfig(pretrained_model=paths["model"], resolution=512, mixed_precision="fp16", variant=None, **common)


def run_variants(variants: dict[str, dict], config, args: argparse.Namespace, flops: bool = False) -> list[dict]:
    """Each variant ``args.rounds`` times, in rounds (every variant once per round), each run in its own
    process; so a machine that is slower for a while slows every variant alike. A variant's figure is the
    median over all its timed repetitions; its peak memory the largest seen."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, overrides in variants.items():
            print(f"[{args.config}] training: {name} (round {r + 1}/{args.rounds}) ...", flush=True)
            runs[name].append(_run_worker("train", name, config, overrides, args, flops=flops))
    rows = []
    for name, results in runs.items():
        ok = [x for x in results if "error" not in x]
        if not ok:
            rows.append(results[-1])
            continue
        rates = [rate for x in ok for rate in x["steps_per_s_repeats"]]
        seconds = [t for x in ok for t in x["step_seconds"]]
        # the median step of all rounds: a slow spell of the machine moves it less than a mean would
        row = {**ok[-1], "steps_per_s_repeats": rates, "step_seconds": seconds,
               "steps_per_s": 1.0 / statistics.median(seconds),
               "peak_memory_bytes": max(x["peak_memory_bytes"] for x in ok)}
        row["images_per_s"] = row["steps_per_s"] * ok[-1]["images_per_s"] / ok[-1]["steps_per_s"]
        if "mfu" in row:
            row["mfu"] = row["flops_per_step"] * row["steps_per_s"] / max(x["peak_flops_per_s"] for x in ok)
        if len(ok) < len(results):
            row["failed_rounds"] = [x["error"] for x in results if "error" in x]
        rows.append(row)
    return rows


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """All variants of ``args.config`` ("tiny" or "sd15"), each in its own process."""
    work = Path(args.work or tempfile.mkdtemp(prefix="cartoonify-bench-"))
    paths = prepare_tiny(work)
    if args.config == "sd15":
        paths["model"] = prepare_sd15(work)
    config = base_config(args.config, paths)
    variants = TINY_VARIANTS if args.config == "tiny" else SD15_VARIANTS
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    # record what was run, not where: the scratch paths of this machine stay out of the results
    settings = {**config.to_dict(), "pretrained_model": "embedded:tiny" if args.config == "tiny" else "sd15-random",
                "instance_dir": "<work>/instance", "class_dir": "<work>/class", "output_dir": "<work>/run"}
    results: dict[str, Any] = {
        "config": args.config,
        "settings": {"warmup": args.warmup, "steps": args.steps, "repeats": args.repeats, "rounds": args.rounds,
                     **settings},
        "environment": environment(),
        "training": [],
    }
    results["training"] = run_variants(variants, config, args, flops=args.config == "sd15")
    if args.profile:
        print(f"[{args.config}] profile of the default ...", flush=True)
        results["profile"] = _run_worker("profile", "default", config, {}, args)
    if not args.only:
        print(f"[{args.config}] class-image generation ...", flush=True)
        results["class_generation"] = _run_worker("class_generation", "batched", config, {}, args)
        print(f"[{args.config}] optimizer step ...", flush=True)
        results["optimizer_step"] = _run_worker("optimizer", "optimizer", config, {}, args)
        print(f"[{args.config}] validation ...", flush=True)
        results["validation"] = _run_worker("validation", "validation", config.replace(num_validation_images=4), {}, args)
    return results


# ------------------------------------------------------------------------------------------------
# the reference, side by side
# ------------------------------------------------------------------------------------------------

# diffusers' script imports torchvision only for these four transforms; there is no CPU build of
# torchvision here, so the reference runs with this stand-in (PIL/numpy, the same operations)
TORCHVISION_STANDIN = '''
import numpy as np, torch
from PIL import Image
class InterpolationMode:
    BILINEAR = Image.BILINEAR
class Compose:
    def __init__(self, ts): self.ts = ts
    def __call__(self, x):
        for t in self.ts: x = t(x)
        return x
class Resize:
    def __init__(self, size, interpolation=Image.BILINEAR): self.size, self.i = size, interpolation
    def __call__(self, img):
        w, h = img.size
        if w <= h: nw, nh = self.size, int(self.size * h / w)
        else: nw, nh = int(self.size * w / h), self.size
        return img if (w, h) == (nw, nh) else img.resize((nw, nh), self.i)
class CenterCrop:
    def __init__(self, size): self.size = size
    def __call__(self, img):
        w, h = img.size; l = int(round((w - self.size) / 2.0)); t = int(round((h - self.size) / 2.0))
        return img.crop((l, t, l + self.size, t + self.size))
RandomCrop = CenterCrop
class ToTensor:
    def __call__(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
class Normalize:
    def __init__(self, mean, std): self.m, self.s = mean[0], std[0]
    def __call__(self, x): return (x - self.m) / self.s
'''


# transformers and diffusers decide whether torchvision is there when they are imported: import them
# first, then register the stand-in under sys.modules only, and run the script as __main__
REFERENCE_RUNNER = '''
import runpy, sys, types
import diffusers, transformers  # noqa: F401  (their torchvision checks run now, and find none)
transforms = types.ModuleType("torchvision.transforms")
exec({standin!r}, transforms.__dict__)
torchvision = types.ModuleType("torchvision")
torchvision.transforms = transforms
sys.modules.update({{"torchvision": torchvision, "torchvision.transforms": transforms}})
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
'''


def _timed(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s of diffusers' script and of ours on the tiny model, same settings, one sitting."""
    script = Path(args.diffusers) / "examples" / "dreambooth" / "train_dreambooth.py"
    if not script.is_file():
        raise FileNotFoundError(f"diffusers' DreamBooth script not found: {script}")
    work = Path(args.work or tempfile.mkdtemp(prefix="cartoonify-ref-"))
    paths = prepare_tiny(work)
    runner = work / "run_reference.py"
    runner.write_text(REFERENCE_RUNNER.format(standin=TORCHVISION_STANDIN))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    settings = dict(resolution=64, train_batch_size=4, learning_rate=1e-4, num_class_images=48, seed=42)

    def reference(steps: int) -> list[str]:
        return [
            sys.executable, str(runner), str(script), "--pretrained_model_name_or_path", paths["model"],
            "--instance_data_dir", paths["instance_dir"], "--class_data_dir", paths["class_dir"],
            "--instance_prompt", "an illustration, Disney style", "--class_prompt", "an illustration",
            "--with_prior_preservation", "--prior_loss_weight", "1.0", "--train_text_encoder", "--use_8bit_adam",
            "--resolution", str(settings["resolution"]), "--train_batch_size", str(settings["train_batch_size"]),
            "--learning_rate", str(settings["learning_rate"]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--num_class_images", str(settings["num_class_images"]), "--max_train_steps", str(steps),
            "--checkpointing_steps", "1000000", "--center_crop", "--mixed_precision", "no", "--seed", "42",
            "--output_dir", tempfile.mkdtemp(prefix=f"ref-{steps}-", dir=work),
        ]

    def ours(steps: int, extra: Sequence[str] = ()) -> list[str]:
        return [
            sys.executable, "-m", "cartoonify.train", "--pretrained_model", paths["model"],
            "--instance_dir", paths["instance_dir"], "--class_dir", paths["class_dir"],
            "--resolution", "64", "--train_batch_size", "4", "--learning_rate", "1e-4", "--num_class_images", "48",
            "--max_train_steps", str(steps), "--checkpointing_steps", "1000000", "--num_validation_images", "0",
            "--mixed_precision", "no", "--report_to", "none",
            "--output_dir", tempfile.mkdtemp(prefix=f"ours-{steps}-", dir=work),
            *extra,
        ]

    lo, hi = args.ref_steps
    out: dict[str, Any] = {"config": "reference", "settings": {**settings, "steps": [lo, hi]}, "environment": environment()}
    trainers = {
        "reference": reference,
        "cartoonify": ours,
        "cartoonify_no_cache_latents": lambda s: ours(s, ["--cache_latents", "false"]),
    }
    times: dict[str, list[tuple[int, float]]] = {name: [] for name in trainers}
    for rep in range(args.repeats):  # in rounds, so a slow spell of the machine hits every trainer alike
        for name, make in trainers.items():
            for steps in (lo, hi):
                print(f"[reference] {name}: {steps} steps (round {rep + 1}/{args.repeats})", flush=True)
                times[name].append((steps, _timed(make(steps), env)))
    rows = {}
    for name, wall in times.items():
        rates = [(hi - lo) / (t_hi - t_lo) for (_, t_lo), (_, t_hi) in zip(wall[0::2], wall[1::2])]
        rows[name] = {"steps_per_s": statistics.median(rates), "steps_per_s_repeats": rates, "wall_s": wall}
    out["results"] = rows
    out["speedup"] = rows["cartoonify"]["steps_per_s"] / rows["reference"]["steps_per_s"]
    # paired within each round, so the machine's speed in that round cancels
    out["speedup_per_round"] = [
        a / b for a, b in zip(rows["cartoonify"]["steps_per_s_repeats"], rows["reference"]["steps_per_s_repeats"])
    ]
    out["speedup_paired"] = statistics.median(out["speedup_per_round"])
    return out


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------


def _mb(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f} MiB"


def markdown(results: dict[str, Any]) -> str:
    """A short table of a results dict."""
    env = results["environment"]["machine"]
    where = env.get("gpu") or f"{env.get('processor')} ({env.get('cpu_count')} CPUs)"
    lines = [f"# `{results['config']}` benchmark", "", f"Machine: {where}; torch "
             f"{results['environment']['versions'].get('torch')}, diffusers {results['environment']['versions'].get('diffusers')}.", ""]
    if results["config"] == "reference":
        lines += ["| trainer | steps/s (median) | repeats |", "| --- | --- | --- |"]
        for name, row in results["results"].items():
            reps = ", ".join(f"{r:.2f}" for r in row["steps_per_s_repeats"])
            lines.append(f"| {name} | {row['steps_per_s']:.2f} | {reps} |")
        per_round = ", ".join(f"{r:.2f}" for r in results.get("speedup_per_round", []))
        paired = results.get("speedup_paired", results["speedup"])
        lines += ["", f"Speed-up of cartoonify over diffusers' script: **{paired:.2f}x**, the median of the "
                  f"rounds' ratios ({per_round}); the ratio of the medians is {results['speedup']:.2f}x."]
        lines += ["", f"Steps/s from the wall-time difference of {results['settings']['steps'][1]}- and "
                  f"{results['settings']['steps'][0]}-step runs; the trainers take turns, one round per repeat."]
        return "\n".join(lines) + "\n"
    lines += ["| variant | steps/s | images/s | peak memory | MFU |", "| --- | --- | --- | --- | --- |"]
    for row in results["training"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | error | | | |")
            continue
        mfu = f"{row['mfu'] * 100:.1f}%" if "mfu" in row else ""
        lines.append(
            f"| {row['variant']} | {row['steps_per_s']:.2f} | {row['images_per_s']:.1f} | "
            f"{_mb(row['peak_memory_bytes'])} | {mfu} |"
        )
    if "class_generation" in results:
        cg = results["class_generation"]
        lines += ["", "Class-image generation (50 steps): " + ", ".join(
            f"{k.replace('_images_per_s', '').replace('_', ' ')}: {v:.2f} images/s" for k, v in cg.items()
            if k.endswith("images_per_s"))]
    if "optimizer_step" in results and "adamw8bit_ms" in results["optimizer_step"]:
        op = results["optimizer_step"]
        lines += ["", f"Optimizer step over {op['tensors']} tensors ({op['tensors_with_32bit_state']} with 32-bit "
                  f"state): AdamW8bit {op['adamw8bit_ms']:.1f} ms, with the 32-bit tensors fused "
                  f"{op['adamw8bit_fused_small_ms']:.1f} ms"]
    if "validation" in results:
        va = results["validation"]
        lines += ["", "Validation sampling: " + ", ".join(
            f"{k.replace('_images_per_s', '').replace('_', ' ')}: {v:.2f} images/s" for k, v in va.items()
            if k.endswith("images_per_s"))]
    s = results["settings"]
    rounds = s.get("rounds", 1)
    lines += ["", f"Steps/s: one over the median step time of {rounds * s['repeats']} timed runs of {s['steps']} "
              f"steps, each after {s['warmup']} warm-up steps; every variant in its own process, {rounds} round(s) "
              "of all variants in turn."]
    prof = results.get("profile")
    if prof and "regions" in prof:
        device = "device_ms" in prof["regions"][0]
        lines += ["", f"Where a step of the default goes (torch.profiler over {prof['profiled_steps']} steps, "
                  f"{prof['step_ms']:.0f} ms per profiled step):", ""]
        lines += ["| region | ms/step | share |" + (" device ms/step |" if device else ""),
                  "| --- | --- | --- |" + (" --- |" if device else "")]
        for r in prof["regions"]:
            share = f"{r['cpu_ms'] / prof['step_ms'] * 100:.0f}%" if prof["step_ms"] else ""
            extra = f" {r['device_ms']:.1f} |" if device and "device_ms" in r else (" |" if device else "")
            lines.append(f"| {r['region']} | {r['cpu_ms']:.1f} | {share} |" + extra)
        key = "self_device_ms" if device else "self_cpu_ms"
        lines += ["", "Top operators by self time:", "", "| operator | calls/step | ms/step |", "| --- | --- | --- |"]
        lines += [f"| `{o['op']}` | {o['calls_per_step']:.0f} | {o[key]:.1f} |" for o in prof["top_ops"]]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``<out_dir>/<name>.json`` and ``.md``."""
    from .utils import atomic_write_text, write_json

    out_dir = Path(out_dir)
    return write_json(out_dir / f"{name}.json", results), atomic_write_text(out_dir / f"{name}.md", markdown(results))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cartoonify.bench", description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=["tiny", "sd15", "reference", "_worker"])
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    parser.add_argument("--name", help="results file name (default: the config)")
    parser.add_argument("--work", help="scratch folder for the model and data (default: a temporary one)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, help="timed repetitions per process (default: tiny 1, sd15 3; "
                        "reference: rounds)")
    parser.add_argument("--rounds", type=int, help="processes per variant, run in turns (default: tiny 3, sd15 1)")
    parser.add_argument("--profile", action="store_true", help="also profile the default (torch.profiler)")
    parser.add_argument("--only", nargs="+", help="only these training variants")
    parser.add_argument("--diffusers", help="a diffusers checkout (reference)")
    parser.add_argument("--ref-steps", type=int, nargs=2, default=[10, 60], metavar=("LO", "HI"))
    # worker-only
    parser.add_argument("--kind")
    parser.add_argument("--train-config")
    parser.add_argument("--variant")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--result")
    parser.add_argument("--flops", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.config == "_worker":
        return worker(args)
    # CPU timings wander, so tiny runs each variant in several processes taking turns; a GPU holds steady,
    # and each sd15 process pays for loading the model, so sd15 repeats within one process instead
    args.rounds = args.rounds or (1 if args.config == "sd15" else 3)
    args.repeats = args.repeats or (3 if args.config in ("sd15", "reference") else 1)
    if args.config == "sd15":
        import torch

        if not torch.cuda.is_available():
            print("error: the sd15 benchmark needs a CUDA GPU", file=sys.stderr)
            return 2
    results = run_reference(args) if args.config == "reference" else run_suite(args)
    json_path, md_path = write_results(results, args.out, args.name or args.config)
    print(md_path.read_text())
    print(f"written: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
