"""Checkpoints: saving, restoring and pruning, and the name of every file inside a checkpoint folder.

A checkpoint folder holds::

    unet/, text_encoder/    the trained modules in fp16 (save_pretrained, safetensors): what validation,
                            rating, the scheduler comparison, stylization and export read
    resume/                 the full resume state, kept by the newest ``keep_resume_states`` checkpoints only:
      unet/, text_encoder/    the trained modules in fp32 (resuming reads these, never the fp16 copy)
      optimizer.*             the optimizer (8-bit state included), lr_scheduler.json, grad_scaler.json,
      rng_<rank>.*            every random generator (one file per process), trainer_state.json (the data position)
    checkpoint.json         the marker, last: the SHA-256 of every file and where the resume state is

It is written to a hidden temporary folder and renamed into place, so a folder named ``checkpoint-<step>`` is
complete, and the checksums catch one damaged later. Once a newer checkpoint is complete, the older ones
lose their ``resume/`` (:func:`drop_resume_states`): first the marker is rewritten without it, then it is
removed (:func:`cartoonify.runs.drop_resume_state`). A checkpoint of the earlier layout (fp32 ``unet/`` and
``text_encoder/``, the rest at the top level, no ``resume_state`` in its marker) still loads for evaluation
and still resumes: its top level is its resume state. The folders themselves are named by
:class:`cartoonify.runs.RunLayout`.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..models.weights import check_architecture, check_safe_to_load
from ..runs import (
    RESUME_DIR,
    RESUME_KEY,
    CheckpointError,
    RunLayout,
    drop_resume_state,
    list_checkpoints,
    read_marker,
    resolve_checkpoint,
    resume_dir,
    write_marker,
)
from ..utils import write_json
from .lora import LORA_WEIGHTS, adapter_state, load_adapter_state, save_lora_file
from .state import flatten_state, load_state, rng_states, save_flat_state, set_rng_states

logger = logging.getLogger(__name__)

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TRAINED_MODULES = (UNET, TEXT_ENCODER)
OPTIMIZER = "optimizer"
LR_SCHEDULER = "lr_scheduler"
GRAD_SCALER = "grad_scaler"
TRAINER_STATE = "trainer_state.json"
EVALUATION_DTYPE = torch.float16  # the trained modules in unet/ and text_encoder/

__all__ = ["CheckpointError", "CheckpointSaveError", "TrainState", "save_checkpoint", "restore_checkpoint",
           "prune_checkpoints", "drop_resume_states", "read_module_state", "rng_file", "cast_copy",
           "record_default_dtype", "capture_files"]


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk); earlier checkpoints are intact."""


def lora_resume_file(module_name: str) -> str:
    """The resume state's file of a module's LoRA adapter (peft's state dict, fp32)."""
    return f"lora_{module_name}.safetensors"


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
    lora: bool = False  # the modules train LoRA adapters: only those are saved and restored


def _atomic_replace(tmp: Path, final: Path, displaced: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (re-saving a step after resuming from an older
    checkpoint) is moved aside first and removed after."""
    if final.exists():
        os.replace(final, displaced)
        os.replace(tmp, final)
        shutil.rmtree(displaced)
    else:
        os.replace(tmp, final)


def cast_copy(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """A copy of ``module`` on the CPU with its floating-point parameters and buffers in ``dtype`` (None:
    each keeps its own; others keep theirs); ``module`` is untouched, and no second copy in its own precision
    is made."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if id(t) not in memo:
            new = t.detach().to("cpu", dtype if dtype is not None and t.is_floating_point() else t.dtype, copy=True,
                                memory_format=torch.contiguous_format)
            memo[id(t)] = torch.nn.Parameter(new, requires_grad=False) if isinstance(t, torch.nn.Parameter) else new
    return copy.deepcopy(module, memo)


def record_default_dtype(folder: Path) -> None:
    """Make the ``config.json`` in ``folder`` (if any) record float32 wherever it records a dtype, as the
    hub's fp16 variants do (fp16 weights, the fp32 config): ``from_pretrained`` without a dtype then loads a
    transformers module in fp32 like diffusers' own, instead of a pipeline of mixed dtypes."""
    path = folder / "config.json"
    if not path.is_file():
        return

    def fix(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: "float32" if k in ("dtype", "torch_dtype") and v is not None else fix(v) for k, v in obj.items()}
        return obj

    write_json(path, fix(json.loads(path.read_text())))


def save_module(module: torch.nn.Module, folder: Path, dtype: torch.dtype | None = None) -> None:
    """``save_pretrained`` (safetensors) of a trained module, in ``dtype`` (None: as it is); a cast copy
    still loads in fp32 by default (:func:`record_default_dtype`)."""
    out = module if dtype is None else cast_copy(module, dtype)
    out.save_pretrained(str(folder), safe_serialization=True)
    if dtype is not None:
        record_default_dtype(folder)


FileJob = tuple[str, Callable[[Path], None]]  # a path inside the checkpoint folder, and what writes it there


def capture_files(parts: CheckpointParts, copy: bool) -> list[FileJob]:
    """This process's files of a checkpoint, as jobs that write them. With ``copy`` every job holds a CPU copy
    of its state taken now (a background writer then saves the state of this step while training goes on);
    without, the full-weight jobs read the live modules when they run. Optimizer, LR scheduler, grad scaler and
    random generators are always captured now (:func:`~cartoonify.training.state.flatten_state` copies them)."""
    acc, jobs = parts.accelerator, []
    if acc.is_main_process and parts.lora:
        adapters = {name: adapter_state(m) for name, m in parts.modules.items()}
        if copy:  # on a CPU adapter_state's tensors are the live ones
            adapters = {name: {k: v.clone() for k, v in state.items()} for name, state in adapters.items()}
        # for evaluation: diffusers' LoRA file (fp32, megabytes)
        jobs.append((LORA_WEIGHTS, lambda path: save_lora_file(path.parent, parts.modules, adapters)))
        for name, state in adapters.items():  # for resuming: peft's state of each adapter
            jobs.append((f"{RESUME_DIR}/{lora_resume_file(name)}", functools.partial(_save_tensors, state)))
    elif acc.is_main_process:
        sources = {name: cast_copy(m, None) if copy else m for name, m in parts.modules.items()}
        for name, source in sources.items():  # for evaluation
            jobs.append((name, functools.partial(save_module, source, dtype=EVALUATION_DTYPE)))
        for name, source in sources.items():  # for resuming: the weights as they are trained (fp32)
            jobs.append((f"{RESUME_DIR}/{name}", functools.partial(save_module, source)))
    named = [(OPTIMIZER, parts.optimizer.state_dict()), (LR_SCHEDULER, parts.lr_scheduler.state_dict()),
             (GRAD_SCALER, parts.scaler.state_dict() if parts.scaler is not None else {})] if acc.is_main_process else []
    named.append((rng_file(acc.process_index), rng_states(parts.generator)))
    for name, state in named:
        flat = flatten_state(state)  # a new skeleton and copied tensors: training may change the originals
        jobs.append((f"{RESUME_DIR}/{name}", functools.partial(_save_flat, flat)))
    return jobs


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path))


def _save_flat(flat: tuple[Any, dict[str, torch.Tensor]], path: Path) -> None:
    save_flat_state(path.parent, path.name, *flat)


def _write_files(tmp: Path, jobs: list[FileJob], on_file: Callable[[Path], None]) -> None:
    for name, write in jobs:
        write(tmp / name)
        on_file(tmp / name)


def save_checkpoint(
    layout: RunLayout, parts: CheckpointParts, state: TrainState, info: dict[str, Any],
    on_file: Callable[[Path], None] = lambda path: None, jobs: list[FileJob] | None = None,
) -> Path:
    """Save the trained modules (fp16, for evaluation) and the full resume state (``resume/``) to
    ``checkpoints/checkpoint-<step>``, atomically.

    ``jobs`` are the files :func:`capture_files` captured (None: captured now, reading the live modules; a
    background writer passes the copies it was handed). ``on_file`` is called after each file or folder is
    written (instrumentation, fault injection). A write error (a full disk) removes the temporary folder,
    leaves every earlier checkpoint as it was, and raises :class:`CheckpointSaveError`.
    """
    from safetensors import SafetensorError

    acc, step = parts.accelerator, state.global_step
    jobs = capture_files(parts, copy=False) if jobs is None else jobs
    final, tmp = layout.checkpoint(step), layout.partial_checkpoint(step)
    if acc.is_main_process:
        layout.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in (tmp, layout.replaced_checkpoint(step)):  # left by a crash
            if stale.exists():
                shutil.rmtree(stale)
        (tmp / RESUME_DIR).mkdir(parents=True)
    acc.wait_for_everyone()
    error: BaseException | None = None
    try:
        _write_files(tmp, jobs, on_file)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
        error = err
    _agree_or_fail(layout, tmp, step, error, acc)  # every process learns of a failure on any one
    if acc.is_main_process:
        try:
            write_json(tmp / RESUME_DIR / TRAINER_STATE, {**asdict(state), "epoch": info.get("epoch")})
            write_marker(tmp, {**asdict(state), **info, "processes": acc.num_processes, RESUME_KEY: RESUME_DIR})
            _atomic_replace(tmp, final, layout.replaced_checkpoint(step))
        except (OSError, SafetensorError) as err:
            error = err
    _agree_or_fail(layout, tmp, step, error, acc)
    return final


def _any_process(acc, failed: bool) -> bool:
    """Whether any process reports a failure (a collective: every process must call it)."""
    if acc.num_processes == 1:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=acc.device)
    return bool(acc.reduce(flag, reduction="sum").item() > 0)


def _agree_or_fail(layout: RunLayout, tmp: Path, step: int, error: BaseException | None, acc) -> None:
    """A write error on any process stops the save on every process (none is left waiting at a barrier): the
    main process removes the partial save and every process raises :class:`CheckpointSaveError`."""
    if not _any_process(acc, error is not None):
        return
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    last = list_checkpoints(layout.run_dir)
    intact = f"the previous checkpoint {last[-1]} is intact" if last else "no earlier checkpoint exists"
    where = f"{type(error).__name__}: {error}" if error is not None else "another process failed to write its part"
    raise CheckpointSaveError(
        f"could not write checkpoint-{step} ({where}); is the disk full? The partial save was removed; {intact}."
    ) from error


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


def drop_resume_states(layout: RunLayout, keep: int) -> list[Path]:
    """Remove the resume state of all but the newest ``keep`` checkpoints that hold one (called once a new
    checkpoint is complete); returns those reduced to evaluation weights. Files a crash left behind in the
    others (after their marker was rewritten) are removed too."""
    ckpts = list_checkpoints(layout.run_dir)
    holding = [c for c in ckpts if resume_dir(c) is not None]
    kept = holding[len(holding) - keep:] if keep else []
    for ckpt in ckpts:
        if ckpt not in kept and drop_resume_state(ckpt):
            logger.info("removed the resume state of %s (keep_resume_states=%d)", ckpt, keep)
    return [c for c in holding if c not in kept]


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


def check_process_count(path: Path, processes: int, allow_change: bool) -> None:
    """Refuse to resume a checkpoint saved by another number of processes (the data order and the random
    generators are per process: the run would not continue as it was), unless ``allow_change``: then warn."""
    saved = int(read_marker(path).get("processes", 1))
    if saved == processes:
        return
    msg = (f"{path.name} was saved by {saved} process(es), this run has {processes}: the data order and the "
           "per-process random generators change")
    if not allow_change:
        raise CheckpointError(
            f"resume_from_checkpoint: {msg}. Launch it as before ({saved} process(es)), or set "
            "allow_process_count_change=True to resume the weights and optimizer with another data order"
        )
    warnings.warn(f"{msg}; resuming the weights and optimizer anyway (allow_process_count_change)",
                  RuntimeWarning, stacklevel=3)


def restore_checkpoint(
    layout: RunLayout, which: str, parts: CheckpointParts, base: str, allow_pickle: bool = False,
    allow_process_count_change: bool = False,
) -> tuple[Path, TrainState] | None:
    """Restore everything that makes the rest of the run identical from a checkpoint's resume state: the
    fp32 trained weights, optimizer (8-bit state included), LR scheduler, grad scaler, every random
    generator and the data position.

    Returns ``(folder, state)``, or None when ``which`` is "latest" and the run has no usable checkpoint. A
    checkpoint with evaluation weights only is refused (:func:`cartoonify.runs.resolve_checkpoint`).
    """
    path = resolve_checkpoint(layout.run_dir, which, verify=True)
    if path is None:
        return None
    check_process_count(path, parts.accelerator.num_processes, allow_process_count_change)
    check_safe_to_load(path, allow_pickle)
    root = resume_dir(path)  # resume/, or the checkpoint itself in the earlier layout
    _restore_modules(root, parts, base)
    parts.optimizer.load_state_dict(load_state(root, OPTIMIZER))
    parts.lr_scheduler.load_state_dict(load_state(root, LR_SCHEDULER))
    scaler_state = load_state(root, GRAD_SCALER)
    if parts.scaler is not None and scaler_state:
        parts.scaler.load_state_dict(scaler_state)
    rng = rng_file(parts.accelerator.process_index)
    if (root / f"{rng}.json").is_file():
        set_rng_states(load_state(root, rng), parts.generator)
    else:  # a process the checkpoint did not have (allow_process_count_change): its seeded generators
        logger.warning("%s has no %s: process %d keeps its seeded generators", path.name, rng,
                       parts.accelerator.process_index)
    saved = json.loads((root / TRAINER_STATE).read_text())
    state = TrainState(int(saved["global_step"]), int(saved["micro_step"]), int(saved.get("skipped_steps", 0)))
    return path, state


def _restore_modules(root: Path, parts: CheckpointParts, base: str) -> None:
    """Load the trained weights of a resume state into the modules: full fp32 weights, or LoRA adapters."""
    for name, model in parts.modules.items():
        if parts.lora:
            file = root / lora_resume_file(name)
            if not file.is_file():
                raise CheckpointError(f"{file} is missing: the checkpoint was not saved with train_mode 'lora'")
            try:
                load_adapter_state(model, load_file(str(file)), str(file))
            except ValueError as err:
                raise CheckpointError(str(err)) from err
            continue
        if (root / lora_resume_file(name)).is_file():
            raise CheckpointError(f"{root} holds LoRA adapters: resume it with train_mode 'lora'")
        config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        weights = read_module_state(root, name, config, base)
        dtypes = {str(v.dtype) for v in weights.values() if v.is_floating_point()} - {str(model.dtype)}
        if dtypes:  # load_state_dict would cast them silently, and the run would not continue exactly
            raise CheckpointError(f"{root / name} holds {', '.join(sorted(dtypes))} weights, the model trains in "
                                  f"{model.dtype}: it is not a resume state")
        model.load_state_dict(weights, strict=True)
