"""Checkpoints: saving, restoring and pruning, and the name of every file inside a checkpoint folder.

A checkpoint folder holds the trained modules (``unet/``, ``text_encoder/``: ``save_pretrained`` in
safetensors), the optimizer (8-bit state included), LR scheduler and grad scaler states, every random
generator (one file per process), the data position, and last the marker with the SHA-256 of every file
(:func:`cartoonify.runs.write_marker`). It is written to a hidden temporary folder and renamed into
place, so a folder named ``checkpoint-<step>`` is complete, and the checksums catch one damaged later.
The folders themselves are named by :class:`cartoonify.runs.RunLayout`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..models.weights import check_architecture, check_safe_to_load
from ..runs import CheckpointError, RunLayout, list_checkpoints, resolve_checkpoint, write_marker
from ..utils import write_json
from .state import load_state, rng_states, save_state, set_rng_states

logger = logging.getLogger(__name__)

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TRAINED_MODULES = (UNET, TEXT_ENCODER)
OPTIMIZER = "optimizer"
LR_SCHEDULER = "lr_scheduler"
GRAD_SCALER = "grad_scaler"
TRAINER_STATE = "trainer_state.json"

__all__ = ["CheckpointError", "CheckpointSaveError", "TrainState", "save_checkpoint", "restore_checkpoint",
           "prune_checkpoints", "read_module_state", "rng_file"]


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk); earlier checkpoints are intact."""


def rng_file(rank: int) -> str:
    """The random-generator state file of process ``rank``."""
    return f"rng_{rank}"


@dataclass
class TrainState:
    """Where training stands: optimizer steps, micro-batches (the data position) and skipped fp16 steps."""

    global_step: int = 0
    micro_step: int = 0
    skipped_steps: int = 0


@dataclass
class CheckpointParts:
    """What a checkpoint saves and restores: the trained modules (unwrapped) by name, the optimizer, LR
    scheduler and grad scaler (or None), the per-process generator and the accelerator."""

    modules: dict[str, Any]
    optimizer: Any
    lr_scheduler: Any
    scaler: Any
    generator: Any
    accelerator: Any


def _atomic_replace(tmp: Path, final: Path, displaced: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (re-saving a step after resuming from an older
    checkpoint) is moved aside first and removed after."""
    if final.exists():
        os.replace(final, displaced)
        os.replace(tmp, final)
        shutil.rmtree(displaced)
    else:
        os.replace(tmp, final)


def _write_files(tmp: Path, parts: CheckpointParts, on_file: Callable[[Path], None]) -> None:
    acc = parts.accelerator
    if acc.is_main_process:
        for name, module in parts.modules.items():
            module.save_pretrained(str(tmp / name), safe_serialization=True)
            on_file(tmp / name)
        for name, state in (
            (OPTIMIZER, parts.optimizer.state_dict()),
            (LR_SCHEDULER, parts.lr_scheduler.state_dict()),
            (GRAD_SCALER, parts.scaler.state_dict() if parts.scaler is not None else {}),
        ):
            save_state(tmp, name, state)
            on_file(tmp / name)
    save_state(tmp, rng_file(acc.process_index), rng_states(parts.generator))
    on_file(tmp / rng_file(acc.process_index))


def save_checkpoint(
    layout: RunLayout, parts: CheckpointParts, state: TrainState, info: dict[str, Any],
    on_file: Callable[[Path], None] = lambda path: None,
) -> Path:
    """Save the full training state to ``checkpoints/checkpoint-<step>``, atomically.

    ``on_file`` is called after each file or folder is written (instrumentation, fault injection). A write
    error (a full disk) removes the temporary folder, leaves every earlier checkpoint as it was, and raises
    :class:`CheckpointSaveError`.
    """
    from safetensors import SafetensorError

    acc, step = parts.accelerator, state.global_step
    final, tmp = layout.checkpoint(step), layout.partial_checkpoint(step)
    if acc.is_main_process:
        layout.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in (tmp, layout.replaced_checkpoint(step)):  # left by a crash
            if stale.exists():
                shutil.rmtree(stale)
        tmp.mkdir()
    acc.wait_for_everyone()
    try:
        _write_files(tmp, parts, on_file)
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(tmp / TRAINER_STATE, {**asdict(state), "epoch": info.get("epoch")})
            write_marker(tmp, {**asdict(state), **info, "processes": acc.num_processes})
            _atomic_replace(tmp, final, layout.replaced_checkpoint(step))
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        last = list_checkpoints(layout.run_dir)
        intact = f"the previous checkpoint {last[-1]} is intact" if last else "no earlier checkpoint exists"
        raise CheckpointSaveError(
            f"could not write checkpoint-{step} ({type(err).__name__}: {err}); is the disk full? "
            f"The partial save was removed; {intact}."
        ) from err
    acc.wait_for_everyone()
    return final


def prune_checkpoints(layout: RunLayout, limit: int | None) -> list[Path]:
    """Remove the oldest complete checkpoints beyond ``limit`` (None: keep all); returns those removed."""
    if limit is None:
        return []
    ckpts = list_checkpoints(layout.run_dir)
    removed = ckpts[: max(0, len(ckpts) - limit)]
    for old in removed:
        logger.info("removing %s (checkpoints_total_limit=%d)", old, limit)
        shutil.rmtree(old)
    return removed


def read_module_state(folder: Path, name: str, model_config: dict, base: str) -> dict[str, Any]:
    """The weights of trained module ``name`` in a checkpoint folder, after checking that its architecture
    is the base model's (``model_config``)."""
    from safetensors.torch import load_file

    saved = json.loads((folder / name / "config.json").read_text())
    check_architecture(saved, model_config, name, str(folder), base)
    weights: dict[str, Any] = {}
    for f in sorted((folder / name).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    return weights


def restore_checkpoint(
    layout: RunLayout, which: str, parts: CheckpointParts, base: str, allow_pickle: bool = False
) -> tuple[Path, TrainState] | None:
    """Restore everything that makes the rest of the run identical: trained weights, optimizer (8-bit
    state included), LR scheduler, grad scaler, every random generator and the data position.

    Returns ``(folder, state)``, or None when ``which`` is "latest" and the run has no usable checkpoint.
    """
    path = resolve_checkpoint(layout.run_dir, which, verify=True)
    if path is None:
        return None
    check_safe_to_load(path, allow_pickle)
    for name, model in parts.modules.items():
        config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        model.load_state_dict(read_module_state(path, name, config, base), strict=True)
    parts.optimizer.load_state_dict(load_state(path, OPTIMIZER))
    parts.lr_scheduler.load_state_dict(load_state(path, LR_SCHEDULER))
    scaler_state = load_state(path, GRAD_SCALER)
    if parts.scaler is not None and scaler_state:
        parts.scaler.load_state_dict(scaler_state)
    set_rng_states(load_state(path, rng_file(parts.accelerator.process_index)), parts.generator)
    saved = json.loads((path / TRAINER_STATE).read_text())
    state = TrainState(int(saved["global_step"]), int(saved["micro_step"]), int(saved.get("skipped_steps", 0)))
    return path, state
