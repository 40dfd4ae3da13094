"""Training measurements, each in the worker process of one variant: steps/s and peak memory, a
``torch.profiler`` split of a step by the trainer's regions, and model FLOPs utilisation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from cartoonify.training.callbacks import TrainerCallback

from .common import heap_in_use_bytes, is_cuda, peak_memory_bytes, reset_peak_memory, sync


class StepClock(TrainerCallback):
    """Stamps the wall-clock time at the end of every optimizer step (after the device's work is done) and
    reads the peak memory so far, then calls ``then()`` if given."""

    def __init__(self, then: Callable[[], Any] | None = None):
        self.stamps: list[float] = []
        self.peak_memory = 0
        self.then = then

    def on_step_end(self, trainer, row) -> None:
        sync(trainer.accelerator.device)
        self.stamps.append(time.perf_counter())
        # the peak so far, read at every step end: the last one is the steps' peak, before the run's closing
        # checkpoint (whose host copies would otherwise count on a CPU)
        self.peak_memory = peak_memory_bytes(trainer.accelerator.device)
        if self.then is not None:
            self.then()


class HeldAfterBackward(TrainerCallback):
    """CPU: the most the C heap held at the end of a backward pass (weights, optimizer state and whatever
    gradients are still alive), over the steps."""

    def __init__(self):
        self.most: int | None = None

    def on_after_backward(self, trainer) -> None:
        held = heap_in_use_bytes()
        if held is not None:
            self.most = max(self.most or 0, held)


def _repeat_rates(stamps: list[float], t_start: float, warmup: int, steps: int, repeats: int) -> list[float]:
    """Steps/s of each timed repetition of ``steps`` steps after ``warmup`` steps."""
    rates = []
    for r in range(repeats):
        a = stamps[warmup - 1 + r * steps] if warmup else (t_start if r == 0 else stamps[r * steps - 1])
        b = stamps[warmup - 1 + (r + 1) * steps]
        rates.append(steps / (b - a))
    return rates


def measure_training(config, warmup: int, steps: int, repeats: int, flops: bool = False) -> dict[str, Any]:
    """Train ``warmup + steps * repeats`` steps; steps/s of each repetition, their median, peak memory."""
    import torch

    from cartoonify.training.run import build_trainer

    clock, held = StepClock(), HeldAfterBackward()
    total = warmup + steps * repeats
    trainer = build_trainer(config.replace(max_train_steps=total), progress=False, callbacks=[clock, held])
    device = trainer.accelerator.device
    reset_peak_memory(device)  # the training steps only, not loading the model
    t_start = time.perf_counter()
    trainer.run()
    ends = [t_start] + clock.stamps  # ends[i]: when step i finished (ends[0]: the start)
    step_seconds = [ends[i] - ends[i - 1] for i in range(warmup + 1, total + 1)]  # the timed steps, one by one
    per_step_images = config.train_batch_size * (2 if config.with_prior_preservation else 1)
    out = {
        "steps_per_s": 1.0 / statistics.median(step_seconds),
        "steps_per_s_repeats": _repeat_rates(clock.stamps, t_start, warmup, steps, repeats),
        "step_seconds": step_seconds,
        "images_per_s": per_step_images / statistics.median(step_seconds),
        "peak_memory_bytes": clock.peak_memory,
        "optimizer": trainer.optimizer_name,
        "device": str(device),
    }
    if not is_cuda(device) and held.most is not None:
        out["held_after_backward_bytes"] = held.most
    if flops:
        out.update(measure_mfu(trainer, out["steps_per_s"]))
    return out


# ------------------------------------------------------------------------------------------------
# profile
# ------------------------------------------------------------------------------------------------


def profile_regions() -> tuple[str, ...]:
    """The ``record_function`` names the trainer marks a step's regions with, in the order of a step."""
    from cartoonify.training.objective import REGIONS

    return tuple(REGIONS.values())


def _device_us(event) -> float:
    return float(getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0.0) or 0.0)


def _region_rows(events, steps: int, step_ms: float | None, cuda: bool) -> list[dict[str, Any]]:
    """Milliseconds per step of each region the profile saw, then "other": what the regions leave out."""
    by_name = {e.key: e for e in events}
    rows = []
    for name in profile_regions():
        e = by_name.get(name)
        if e is None:
            continue
        row = {"region": name, "cpu_ms": e.cpu_time_total / 1000 / steps}
        if cuda:
            row["device_ms"] = _device_us(e) / 1000 / steps
        rows.append(row)
    if step_ms is not None:
        rows.append({"region": "other", "cpu_ms": max(0.0, step_ms - sum(r["cpu_ms"] for r in rows))})
    return rows


def _top_ops(events, steps: int, top: int, cuda: bool) -> list[dict[str, Any]]:
    """The ``top`` operators by self time (device time on CUDA), per step."""
    regions = set(profile_regions())
    ops = [e for e in events if e.key not in regions and not e.key.startswith("ProfilerStep")]
    if cuda:
        ops.sort(key=lambda e: getattr(e, "self_device_time_total", 0.0), reverse=True)
        return [{"op": e.key, "calls_per_step": e.count / steps,
                 "self_device_ms": getattr(e, "self_device_time_total", 0.0) / 1000 / steps} for e in ops[:top]]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls_per_step": e.count / steps,
             "self_cpu_ms": e.self_cpu_time_total / 1000 / steps} for e in ops[:top]]


def measure_profile(config, warmup: int, steps: int, top: int = 12) -> dict[str, Any]:
    """Where a training step's time goes: ``steps`` steps under ``torch.profiler`` after ``warmup``.

    Per region of the step (the trainer's ``record_function`` marks, named by
    ``cartoonify.training.objective.REGIONS``): milliseconds per step, wall (CPU) and, on CUDA, device
    time; what the marks do not cover is "other". Plus the ``top`` operators by self time. The profiler's
    own overhead makes the total somewhat slower than an unprofiled step.
    """
    from torch.profiler import ProfilerActivity, profile, schedule

    from cartoonify.training.run import build_trainer

    prof_ref: list = []
    clock = StepClock(then=lambda: prof_ref[0].step())
    trainer = build_trainer(config.replace(max_train_steps=warmup + steps), progress=False, callbacks=[clock])
    cuda = is_cuda(trainer.accelerator.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1)) as prof:
        prof_ref.append(prof)
        trainer.run()
    stamps = clock.stamps
    step_ms = (stamps[-1] - stamps[warmup - 1]) / steps * 1000 if warmup else None
    events = prof.key_averages()
    return {"profiled_steps": steps, "step_ms": step_ms, "regions": _region_rows(events, steps, step_ms, cuda),
            "top_ops": _top_ops(events, steps, top, cuda), "device": str(trainer.accelerator.device)}


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------


def training_flops(trainer) -> int:
    """FLOPs of one training step (forward + backward), counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cartoonify.training.objective import training_step

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

    dtype = dtype or (torch.float16 if is_cuda(device) else torch.float32)
    n = n if is_cuda(device) else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def measure_mfu(trainer, steps_per_s: float) -> dict[str, Any]:
    """Model FLOPs utilisation: counted FLOPs per step x steps/s over the measured matmul peak."""
    flops = training_flops(trainer)
    peak = matmul_peak_flops(trainer.accelerator.device)
    return {"flops_per_step": flops, "peak_flops_per_s": peak, "mfu": flops * steps_per_s / peak}
