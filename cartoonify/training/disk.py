"""Disk: what a run will write, against the free space, checked before training."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import TrainConfig
from ..runs import list_checkpoints


class InsufficientDiskError(OSError):
    """The run would need more disk than is free (``disk_check="refuse"``)."""


def checkpoint_bytes(modules: Sequence[torch.nn.Module], use_8bit_adam: bool) -> int:
    """Approximate size of one checkpoint: fp32 trainable weights plus the Adam state.

    AdamW8bit keeps two uint8 states per element (plus one fp32 scale per 256) for tensors of at least
    4096 elements, and fp32 states for smaller ones; torch AdamW keeps two fp32 states.
    """
    total = 0
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad:
                continue
            n = p.numel()
            total += n * 4
            if use_8bit_adam and n >= 4096:
                total += 2 * n + 2 * 4 * math.ceil(n / 256)
            else:
                total += 2 * 4 * n
    return total


def disk_plan(
    config: TrainConfig, trained: Sequence[torch.nn.Module], frozen: Sequence[torch.nn.Module], run_dir: Path
) -> dict[str, Any]:
    """What a full run will write to disk, compared with the free space; logged before training.

    Old checkpoints are pruned only after a new one is complete, so with ``checkpoints_total_limit`` the
    peak holds one checkpoint more than the limit. The final pipeline holds every module in fp32.
    """
    per_ckpt = checkpoint_bytes(trained, config.use_8bit_adam)
    n = math.ceil(config.max_train_steps / config.checkpointing_steps)
    limit = config.checkpoints_total_limit
    kept = n if limit is None else min(n, limit)
    peak = kept + 1 if limit is not None and n > limit else kept
    pipeline = 0
    if config.save_final_pipeline:
        pipeline = sum(p.numel() * 4 for m in [*trained, *frozen] if m is not None for p in m.parameters())
    free = shutil.disk_usage(run_dir).free
    return {
        "checkpoint_bytes": per_ckpt,
        "checkpoints": n,
        "kept": kept,
        "pipeline_bytes": pipeline,
        "bytes": per_ckpt * peak + pipeline,
        "free": free,
    }


def human_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def plan_message(plan: dict[str, Any], run_dir: Path) -> str:
    """The line logged before training."""
    gb = human_bytes
    return (
        f"disk: a full run writes {plan['checkpoints']} checkpoint(s) of {gb(plan['checkpoint_bytes'])}, "
        f"keeps {plan['kept']}, plus a {gb(plan['pipeline_bytes'])} pipeline: about {gb(plan['bytes'])} "
        f"at its peak; {gb(plan['free'])} free in {run_dir}"
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
        f"{gb(plan['checkpoint_bytes'])} + the final pipeline) but only {gb(plan['free'])} is free in "
        f"{run_dir}; free space, set checkpoints_total_limit, or disk_check='warn' to go on anyway"
    )
    if policy == "refuse":
        raise InsufficientDiskError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
