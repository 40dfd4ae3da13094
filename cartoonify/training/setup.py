"""Setting a run up: the run folder (never clobbered; resumed only with a compatible config), its
record (config, git commit, library versions), precision and the kernel-level speed switches."""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig, resumable_changes
from ..runs import RunLayout, list_checkpoints
from ..utils import run_info, write_json
from .errors import RunExistsError


def apply_speed_settings(config: TrainConfig, unet, device: torch.device) -> None:
    """The kernel-level switches: SDPA (or classic) attention, channels-last, TF32, torch.compile."""
    if not config.use_sdpa:
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    if config.channels_last and device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    if config.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.compile_unet:  # the training step only: validation and the held-out loss run eager (eager_unet)
        unet._eager_forward = unet.forward
        unet.forward = torch.compile(unet.forward, **config.compile_options)


@contextmanager
def eager_unet(unet):
    """The UNet's eager forward while the block runs, when it was compiled for training: sampling (no grad,
    eval mode, another batch shape) would otherwise recompile it at every checkpoint."""
    eager, compiled = unet.__dict__.get("_eager_forward"), unet.__dict__.get("forward")
    if eager is None or compiled is None:
        yield
        return
    unet.forward = eager
    try:
        yield
    finally:
        unet.forward = compiled


def resolve_mixed_precision(mixed_precision: str, device: torch.device) -> str:
    """fp16 mixed precision needs CUDA; on another device fall back to fp32 ("no") with a warning."""
    if mixed_precision == "fp16" and device.type != "cuda":
        warnings.warn(
            f"mixed_precision='fp16' is not usable on {device.type}; training in fp32 instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return "no"
    return mixed_precision


def release_accelerator_state(mixed_precision: str) -> None:
    """Let a second run in the same Python process (a notebook kernel, a test session) use another
    ``mixed_precision``: accelerate keeps one process-wide state that refuses a change. Only done in a
    single, non-distributed process, where that state holds nothing else."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if not AcceleratorState._shared_state or PartialState().num_processes != 1:
        return
    if AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def check_run_dir(config: TrainConfig) -> Path:
    """Refuse to clobber an existing run; returns the run folder (not created here).

    A folder holding checkpoints or a final pipeline is only reused to resume, and only with a config
    that differs from the saved one in the keys of the fields marked resumable (:func:`cartoonify.config.resumable_changes`).
    """
    layout = RunLayout.of(config)
    run_dir = layout.run_dir
    existing = list_checkpoints(run_dir)
    saved_path = layout.config
    if config.resume_from_checkpoint is None:
        if existing or layout.pipeline.exists():
            raise RunExistsError(
                f"{run_dir} already holds a run ({len(existing)} checkpoints"
                f"{', a final pipeline' if layout.pipeline.exists() else ''}); resume it with "
                "resume_from_checkpoint='latest' or choose another output_dir"
            )
    elif saved_path.is_file():
        # a key the saved config lacks (a setting added since) had its default: older runs still resume
        saved = {**type(config)().to_dict(), **json.loads(saved_path.read_text())}
        current = config.to_dict()
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        refused = [k for k in changed if k not in resumable_changes()]
        if "max_train_steps" in changed and config.lr_scheduler != "constant":
            warnings.warn(
                f"resuming with max_train_steps={config.max_train_steps} (was {saved.get('max_train_steps')}) "
                f"reshapes the {config.lr_scheduler!r} learning-rate schedule from here on",
                RuntimeWarning,
                stacklevel=2,
            )
        if refused:
            raise ConfigError(
                f"cannot resume {run_dir} with a different config: key(s) {', '.join(refused)} differ from "
                f"{saved_path} (e.g. {refused[0]}: saved {saved.get(refused[0])!r}, now {current.get(refused[0])!r})"
            )
    return run_dir


def record_run(config: TrainConfig, run_dir: Path) -> None:
    """Write ``config.json`` and ``run_info.json`` (git commit, versions, machine; resumes are appended)."""
    layout = RunLayout(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(layout.config)
    info_path = layout.run_info
    info = run_info()
    if config.resume_from_checkpoint is not None and info_path.is_file():
        first = json.loads(info_path.read_text())
        info = {**first, "resumes": first.get("resumes", []) + [info]}
    write_json(info_path, info)


class LaunchError(RuntimeError):
    """The environment says several processes, but accelerate sees one: copies would race into one run."""


def check_launch(num_processes: int, environ=os.environ) -> None:
    """Refuse to start when the launcher set ``WORLD_SIZE`` > 1 but accelerate runs one process (torchrun on a
    CPU without ``ACCELERATE_USE_CPU=1``, or a launcher accelerate does not see): every copy would train the
    same steps and write the same checkpoint folders at the same moment."""
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and num_processes == 1:
        raise LaunchError(
            f"WORLD_SIZE={world} says this is one of {world} processes, but accelerate sees a single process, so "
            f"{world} independent copies would race into one run folder; nothing was written. Launch with "
            "accelerate (`accelerate config`, then `accelerate launch --multi_gpu --num_processes N -m "
            "cartoonify.train ...`), or on CPUs with `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m "
            "cartoonify.train ...`; for one process, run `python -m cartoonify.train ...` without a launcher."
        )


def check_fused_backward(config: TrainConfig, num_processes: int) -> None:
    """``fused_backward_pass`` needs one process: under DDP a gradient is averaged across processes only after
    its hook has updated the parameter (:mod:`cartoonify.training.fused`)."""
    if config.fused_backward_pass and num_processes > 1:
        raise ConfigError(
            f"config key 'fused_backward_pass' works with one process, this launch has {num_processes}: each "
            "process would update its parameters with its own, unaveraged gradients; nothing was written. "
            "Set fused_backward_pass: false (the default) to train with several processes."
        )
