"""DreamBooth fine-tuning with prior preservation, on accelerate.

The UNet and (by default) the text encoder are trained; the VAE stays frozen. Each batch holds the
instance examples followed by as many class examples, and the loss is the instance MSE plus
``prior_loss_weight`` times the class MSE (diffusers' ``train_dreambooth.py`` objective).

Run layout (``config.output_dir``)::

    config.json, run_info.json
    checkpoints/checkpoint-<step>/   unet/, text_encoder/ (safetensors), optimizer, scheduler, RNG, data position
    validation/step-<step>/          image-XX.png, grid.png, images.json (seed and NSFW flag per image)
    logs/                            TensorBoard events, train_log.csv
    pipeline/                        the fine-tuned pipeline (diffusers format)

Command line::

    python -m cartoonify.train --config configs/demo.yaml [--key value ...]
    accelerate launch -m cartoonify.train --config configs/disney.yaml
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from .config import (
    ConfigError,
    TrainConfig,
    load_mapping,
    load_parameters,
    parameter_types,
    parse_overrides,
    train_config_from_parameters,
)
from .checkpoint import MARKER, CheckpointError
from .data import ImageLoadError
from .sample import pipeline_from_modules
from .utils import move_module, resolve_device, run_info, write_json

logger = logging.getLogger(__name__)

LOG_COLUMNS = (
    "step", "loss", "loss_instance", "loss_prior", "lr", "grad_norm", "skipped_steps", "epoch", "wall_time"
)
CHECKPOINT_MARKER = MARKER
# keys that may change when a run is resumed; any other difference is refused
RESUMABLE_CHANGES = frozenset(
    {
        "resume_from_checkpoint",
        "output_dir",
        "max_train_steps",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "dataloader_num_workers",
        "report_to",
        "save_final_pipeline",
        "num_validation_images",
        "validation_prompt",
        "validation_scheduler",
        "validation_inference_steps",
        "validation_guidance_scale",
        # settings that change speed or memory, not the run's results
        "gradient_checkpointing",
        "set_grads_to_none",
        "cache_latents",
        "offload_vae",
        "use_sdpa",
        "channels_last",
        "allow_tf32",
        "compile_unet",
        "disk_check",
        "allow_pickle",
    }
)


class RunExistsError(FileExistsError):
    """The run folder already holds a run that this call would overwrite."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk); earlier checkpoints are intact."""


class TrainingOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory; the message names the settings that lower memory."""


class InsufficientDiskError(OSError):
    """The run would need more disk than is free (``disk_check="refuse"``)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


@dataclass
class TrainResult:
    """What a training call produced."""

    output_dir: Path
    global_step: int
    checkpoints: list[Path] = field(default_factory=list)
    validation_dirs: list[Path] = field(default_factory=list)
    pipeline_dir: Path | None = None
    log_csv: Path | None = None
    train_seconds: float = 0.0  # time in training steps (excludes checkpoints and validation)
    steps_run: int = 0  # optimizer steps run by this call (after a resume, only the new ones)
    optimizer: str = ""

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.train_seconds if self.train_seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------------


def dreambooth_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    with_prior_preservation: bool,
    prior_loss_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(loss, instance_loss, prior_loss)``.

    With prior preservation the first half of the batch is instance examples and the second half class
    examples; each half gets its own mean-squared error and ``loss = instance + weight * prior``.
    """
    prior = None
    if with_prior_preservation:
        model_pred, pred_prior = torch.chunk(model_pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        prior = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
    instance = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss = instance if prior is None else instance + prior_loss_weight * prior
    return loss, instance, prior


def noise_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """The regression target for the scheduler's prediction type (``epsilon`` or ``v_prediction``)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r} (expected epsilon or v_prediction)")


def encode_latents(vae, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """VAE latents of images in [-1, 1]: one draw of the posterior, times the scaling factor."""
    with torch.no_grad():
        dist = vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return dist.sample(generator=generator) * vae.config.scaling_factor


class LatentCache:
    """The VAE posterior (mean, std) of every training image, encoded once.

    With center crops and no random augmentation an image's encoding never changes, so the per-step
    ``vae.encode(pixels).latent_dist.sample()`` of diffusers' script reduces to ``mean + std * noise``
    with fresh noise each step from the seeded generator: the same draw, without the encoder.
    """

    def __init__(self, instance: tuple[torch.Tensor, torch.Tensor], klass: tuple[torch.Tensor, torch.Tensor] | None):
        self.instance_mean, self.instance_std = instance
        self.class_mean, self.class_std = klass if klass is not None else (None, None)

    @classmethod
    def build(cls, dataset, vae, batch_size: int = 8, progress: bool = False) -> "LatentCache":
        """Encode the dataset's instance and class images with ``vae`` (on its device and dtype)."""
        from tqdm.auto import tqdm

        from .data import load_training_image

        def encode(paths, desc):
            means, stds = [], []
            for start in tqdm(range(0, len(paths), batch_size), desc=desc, disable=not progress):
                pixels = torch.stack(
                    [load_training_image(p, dataset.resolution, True) for p in paths[start : start + batch_size]]
                )
                with torch.no_grad():
                    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
            return torch.cat(means), torch.cat(stds)

        klass = encode(dataset.class_paths, "Encoding class images") if dataset.class_paths else None
        return cls(encode(dataset.instance_paths, "Encoding instance images"), klass)

    def lookup(self, batch: dict) -> dict:
        """``latent_mean``/``latent_std`` of a batch, instance rows then class rows (the batch's order)."""
        dev = self.instance_mean.device
        mean = [self.instance_mean[batch["instance_index"].to(dev)]]
        std = [self.instance_std[batch["instance_index"].to(dev)]]
        if "class_index" in batch:
            mean.append(self.class_mean[batch["class_index"].to(dev)])
            std.append(self.class_std[batch["class_index"].to(dev)])
        return {"latent_mean": torch.cat(mean), "latent_std": torch.cat(std)}

    @property
    def nbytes(self) -> int:
        tensors = [self.instance_mean, self.instance_std, self.class_mean, self.class_std]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def sample_latents(batch: dict, vae, generator: torch.Generator) -> torch.Tensor:
    """One posterior sample per image, times the VAE's scaling factor: from cached (mean, std) when the
    batch has them, else by encoding ``pixel_values``. Both draw the same noise from ``generator``."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps) * vae.config.scaling_factor
    return encode_latents(vae, batch["pixel_values"], generator)


def training_step(
    unet,
    text_encoder,
    vae,
    noise_scheduler,
    batch: dict,
    generator: torch.Generator,
    *,
    with_prior_preservation: bool,
    prior_loss_weight: float = 1.0,
):
    """One forward pass of the DreamBooth objective. Returns ``(loss, instance_loss, prior_loss)``.

    Draws, in this order and all from ``generator``: the latent sample, the noise, the timesteps.
    """
    with record_function("latents"):
        latents = sample_latents(batch, vae, generator)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(
            0,
            noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=latents.device,
        ).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    with record_function("text_encoder_forward"):
        encoder_hidden_states = text_encoder(batch["input_ids"].to(latents.device), return_dict=False)[0]
    with record_function("unet_forward"):
        model_pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    with record_function("loss"):
        target = noise_target(noise_scheduler, latents, noise, timesteps)
        return dreambooth_loss(model_pred, target, with_prior_preservation, prior_loss_weight)


# ------------------------------------------------------------------------------------------------
# optimizer, precision, disk
# ------------------------------------------------------------------------------------------------


def build_optimizer(params, config: TrainConfig, device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit when ``use_8bit_adam``, else torch AdamW; the write-up's betas, weight decay
    and epsilon. With ``fuse_small_adam_updates`` the tensors bitsandbytes keeps in 32-bit are updated in
    one fused call (:mod:`cartoonify.optim`; same arithmetic, same state layout).

    bitsandbytes is tried with one step on a probe tensor on ``device`` first: its native library often
    imports fine and only fails at the first step. If it fails, training falls back to torch AdamW with
    a warning that says why.
    """
    kwargs = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    params = list(params)
    if config.use_8bit_adam:
        try:
            from .optim import adamw8bit

            # 4096 elements: 8-bit state; 16: 32-bit state (the fused path)
            probes = [torch.nn.Parameter(torch.zeros(n, device=device)) for n in (4096, 16)]
            for probe in probes:
                probe.grad = torch.ones_like(probe)
            adamw8bit(probes, fuse_small=config.fuse_small_adam_updates, **kwargs).step()
            return adamw8bit(params, fuse_small=config.fuse_small_adam_updates, **kwargs)
        except Exception as err:  # ImportError, or a native library that fails to load or run
            warnings.warn(
                f"use_8bit_adam=True but bitsandbytes' AdamW8bit does not work here ({type(err).__name__}: "
                f"{err}); falling back to torch.optim.AdamW (32-bit state: 4x the optimizer memory)",
                RuntimeWarning,
                stacklevel=2,
            )
    return torch.optim.AdamW(params, **kwargs)


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
    if config.compile_unet:
        unet.forward = torch.compile(unet.forward)


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


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ------------------------------------------------------------------------------------------------
# run folder, checkpoints, logs
# ------------------------------------------------------------------------------------------------


def _release_accelerator_state(mixed_precision: str) -> None:
    """Let a second run in the same Python process (a notebook kernel, a test session) use another
    ``mixed_precision``: accelerate keeps one process-wide state that refuses a change. Only done in a
    single, non-distributed process, where that state holds nothing else."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if not AcceleratorState._shared_state or PartialState().num_processes != 1:
        return
    if AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def checkpoint_step(path: Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    return int(path.name.rsplit("-", 1)[1])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (those with their marker file), oldest first.

    Folders without the marker are incomplete (a crash during a save) and are reported, not used.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith(".tmp-checkpoint-"):
            logger.warning("ignoring partial checkpoint %s (a save that did not complete)", path)
            continue
        if not (path.is_dir() and path.name.startswith("checkpoint-") and path.name[11:].isdigit()):
            continue
        if (path / CHECKPOINT_MARKER).is_file():
            found.append(path)
        else:
            logger.warning("ignoring incomplete checkpoint %s (no %s)", path, CHECKPOINT_MARKER)
    return sorted(found, key=checkpoint_step)


def find_checkpoint(run_dir: Path, which: str) -> Path | None:
    """Resolve ``resume_from_checkpoint``: "latest" (the newest complete checkpoint whose checksums hold,
    damaged ones reported and skipped; None if there is none), a checkpoint name or a path."""
    from .checkpoint import CheckpointError, verify_checkpoint

    if which == "latest":
        for path in reversed(list_checkpoints(run_dir)):
            problems = verify_checkpoint(path)
            if not problems:
                return path
            logger.warning("skipping damaged checkpoint %s: %s", path, "; ".join(problems))
            warnings.warn(f"skipping damaged checkpoint {path}: {'; '.join(problems)}", RuntimeWarning, stacklevel=2)
        return None
    path = Path(which)
    if not path.is_dir():
        path = run_dir / "checkpoints" / which
    problems = verify_checkpoint(path)
    if problems:
        raise CheckpointError(f"resume_from_checkpoint: {path} cannot be used: {'; '.join(problems)}")
    return path


def check_run_dir(config: TrainConfig) -> Path:
    """Refuse to clobber an existing run; returns the run folder (not created here).

    A folder holding checkpoints or a final pipeline is only reused to resume, and only with a config
    that differs from the saved one in the keys of :data:`RESUMABLE_CHANGES`.
    """
    run_dir = Path(config.output_dir)
    existing = list_checkpoints(run_dir)
    saved_path = run_dir / "config.json"
    if config.resume_from_checkpoint is None:
        if existing or (run_dir / "pipeline").exists():
            raise RunExistsError(
                f"{run_dir} already holds a run ({len(existing)} checkpoints"
                f"{', a final pipeline' if (run_dir / 'pipeline').exists() else ''}); resume it with "
                "resume_from_checkpoint='latest' or choose another output_dir"
            )
    elif saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        current = config.to_dict()
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        refused = [k for k in changed if k not in RESUMABLE_CHANGES]
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
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    info_path = run_dir / "run_info.json"
    info = run_info()
    if config.resume_from_checkpoint is not None and info_path.is_file():
        first = json.loads(info_path.read_text())
        info = {**first, "resumes": first.get("resumes", []) + [info]}
    write_json(info_path, info)


class LossLog:
    """``logs/train_log.csv``: one row per optimizer step, appended and flushed as training goes.

    On (re)start the rows after the starting step are dropped, so a resumed run has no duplicates.
    """

    def __init__(self, path: Path, start_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self._fh = path.open("a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_COLUMNS})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_loss_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``train_log.csv`` as floats (empty cells become NaN)."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) if v != "" else float("nan") for k, v in row.items()} for row in csv.DictReader(fh)]


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------


class DreamBoothTrainer:
    """Holds a run's models, optimizer and data; :meth:`run` trains to ``max_train_steps``.

    Use :func:`train` unless you need the pieces (tests and benchmarks do).
    """

    hooks: dict[str, Callable]

    def __init__(
        self,
        config: TrainConfig,
        *,
        progress: bool = True,
        callbacks: Sequence[Callable] = (),
        hooks: dict[str, Callable] | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        from diffusers.optimization import get_scheduler

        from .models import load_components, load_safety_components, resolve_model
        from .prior import ensure_class_images
        from .schedulers import make_scheduler

        self.config = config = config.validate()
        self.progress = progress
        self.callbacks = list(callbacks)  # called as cb(trainer, row) after every optimizer step
        # named hook points for tests and instrumentation: "loss" (may return a replacement loss),
        # "after_backward", "checkpoint_file" (after each file or folder of a checkpoint is written)
        self.hooks = dict(hooks or {})
        self.run_dir = check_run_dir(config)
        self.model_path = resolve_model(config.pretrained_model, config.resolution)
        mixed_precision = resolve_mixed_precision(config.mixed_precision, resolve_device())
        _release_accelerator_state(mixed_precision)
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir), logging_dir=str(self.run_dir / config.logging_dir)
            ),
        )
        if acc.is_main_process:
            record_run(config, self.run_dir)
        set_seed(config.seed)
        if config.with_prior_preservation:
            with acc.main_process_first():  # the main process generates, the others then find them
                ensure_class_images(config.replace(pretrained_model=self.model_path), acc.device, progress=progress)

        parts = load_components(self.model_path, revision=config.revision, variant=config.variant)
        self.tokenizer = parts["tokenizer"]
        self.noise_scheduler = parts["noise_scheduler"]
        self.base_scheduler = parts["scheduler"]
        # built now so that a scheduler that cannot be built fails here, not at the first validation
        self.validation_scheduler = make_scheduler(config.validation_scheduler, self.base_scheduler)
        self.vae, unet, text_encoder = parts["vae"], parts["unet"], parts["text_encoder"]
        self.safety_checker, self.feature_extractor = None, None
        if acc.is_main_process and config.num_validation_images:
            self.safety_checker, self.feature_extractor = load_safety_components(
                self.model_path, revision=config.revision, variant=config.variant
            )
            if self.safety_checker is not None:
                move_module(self.safety_checker, acc.device, self.weight_dtype_for(acc))
        self.vae.requires_grad_(False)
        text_encoder.requires_grad_(config.train_text_encoder)
        apply_speed_settings(config, unet, acc.device)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                text_encoder.gradient_checkpointing_enable()
        # trainable weights stay fp32 under fp16 autocast (load_components loads fp32): the guard against
        # "Attempting to unscale FP16 gradients"
        trained = [unet, text_encoder] if config.train_text_encoder else [unet]

        self._build_data()
        optimizer = build_optimizer(itertools.chain(*(m.parameters() for m in trained)), config, acc.device)
        self.optimizer_name = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
        lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps * acc.num_processes,
            num_training_steps=config.max_train_steps * acc.num_processes,
        )
        *trained, optimizer, lr_scheduler = acc.prepare(*trained, optimizer, lr_scheduler)
        self.trained = trained
        self.unet = trained[0]
        self.text_encoder = trained[1] if config.train_text_encoder else text_encoder
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler

        self.weight_dtype = self.weight_dtype_for(acc)
        move_module(self.vae, acc.device, self.weight_dtype)
        if not config.train_text_encoder:
            move_module(self.text_encoder, acc.device, self.weight_dtype)
        self.latent_cache = None
        if self.use_latent_cache:
            t0 = time.perf_counter()
            self.latent_cache = LatentCache.build(self.dataset, self.vae, progress=progress)
            self._log(
                f"cached the latents of {len(self.dataset.instance_paths) + len(self.dataset.class_paths)} images "
                f"({_gb(self.latent_cache.nbytes)}) in {time.perf_counter() - t0:.1f} s"
            )
            if config.offload_vae and acc.device.type == "cuda":
                move_module(self.vae, "cpu")  # back on the GPU only for validation
        self.generator = torch.Generator(device=acc.device).manual_seed(config.seed + acc.process_index)
        self.global_step = 0
        self.micro_step = 0
        self.skipped_steps = 0  # optimizer steps the fp16 grad scaler skipped (inf/NaN gradients)
        self.resumed_from: Path | None = None
        if config.resume_from_checkpoint is not None:
            self._resume(config.resume_from_checkpoint)
        self.sampler.start = self.micro_step

    @staticmethod
    def weight_dtype_for(accelerator) -> torch.dtype:
        """The dtype of the frozen modules (VAE; text encoder when not trained): the mixed-precision dtype."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # -- data -----------------------------------------------------------------------------------
    @property
    def use_latent_cache(self) -> bool:
        """Latents are cached when asked for and the images are center-cropped (random crops change them)."""
        return self.config.cache_latents and self.config.center_crop

    def _build_data(self) -> None:
        from .data import DreamBoothDataset, StepBatchSampler, collate_examples

        c = self.config
        self.dataset = DreamBoothDataset(
            c.instance_dir,
            self.tokenizer,
            c.instance_prompt,
            resolution=c.resolution,
            center_crop=c.center_crop,
            class_dir=c.class_dir if c.with_prior_preservation else None,
            class_prompt=c.class_prompt,
            num_class_images=c.num_class_images,
            seed=c.seed,
            load_pixels=not self.use_latent_cache,
            # the latent cache decodes every image before training anyway (and names a bad one)
            check_images=not self.use_latent_cache,
        )
        self.sampler = StepBatchSampler(
            len(self.dataset),
            c.train_batch_size,
            seed=c.seed,
            num_replicas=self.accelerator.num_processes,
            rank=self.accelerator.process_index,
        )
        self.dataloader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=partial(collate_examples, with_prior_preservation=self.dataset.with_prior_preservation),
            num_workers=c.dataloader_num_workers,
        )

    @property
    def epoch(self) -> int:
        return self.micro_step // self.sampler.batches_per_epoch

    # -- checkpoints ----------------------------------------------------------------------------
    def _unwrap(self, model):
        from diffusers.utils.torch_utils import is_compiled_module

        model = self.accelerator.unwrap_model(model)
        return model._orig_mod if is_compiled_module(model) else model

    def _fire(self, point: str, *args):
        """Call the hook registered for ``point`` (fault injection in tests, instrumentation)."""
        hook = self.hooks.get(point)
        return hook(self, *args) if hook is not None else None

    def save_checkpoint(self) -> Path:
        """Save the full training state to ``checkpoints/checkpoint-<step>``, atomically, in safetensors and
        JSON only (see :mod:`cartoonify.checkpoint`).

        Everything is written to a hidden temporary folder, the marker with the checksums last, then the
        folder is renamed into place; older checkpoints beyond ``checkpoints_total_limit`` are removed only
        after that. A write error (a full disk) removes the temporary folder, leaves every earlier
        checkpoint as it was, and stops training with :class:`CheckpointSaveError`.
        """
        from safetensors import SafetensorError

        from .checkpoint import rng_states, save_state, write_marker

        acc = self.accelerator
        root = self.run_dir / "checkpoints"
        final = root / f"checkpoint-{self.global_step}"
        tmp = root / f".tmp-checkpoint-{self.global_step}"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            for stale in (tmp, root / f".old-checkpoint-{self.global_step}"):  # left by a crash
                if stale.exists():
                    shutil.rmtree(stale)
            tmp.mkdir()
        acc.wait_for_everyone()
        try:
            if acc.is_main_process:
                for name, module in (("unet", self.unet), ("text_encoder", self.text_encoder)):
                    if name == "text_encoder" and not self.config.train_text_encoder:
                        continue
                    self._unwrap(module).save_pretrained(str(tmp / name), safe_serialization=True)
                    self._fire("checkpoint_file", tmp / name)
                for name, state in (
                    ("optimizer", self.optimizer.optimizer.state_dict()),
                    ("lr_scheduler", self.lr_scheduler.scheduler.state_dict()),
                    ("grad_scaler", acc.scaler.state_dict() if acc.scaler is not None else {}),
                ):
                    save_state(tmp, name, state)
                    self._fire("checkpoint_file", tmp / name)
            save_state(tmp, f"rng_{acc.process_index}", rng_states(self.generator))
            self._fire("checkpoint_file", tmp / f"rng_{acc.process_index}")
            acc.wait_for_everyone()
            if acc.is_main_process:
                state = {"global_step": self.global_step, "micro_step": self.micro_step, "epoch": self.epoch,
                         "skipped_steps": self.skipped_steps}
                write_json(tmp / "trainer_state.json", state)
                write_marker(tmp, {**state, "optimizer": self.optimizer_name, "processes": acc.num_processes})
                if final.exists():  # re-saving a step after resuming from an older checkpoint
                    old = root / f".old-checkpoint-{self.global_step}"
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old)
                else:
                    os.replace(tmp, final)
        except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
            if acc.is_main_process and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            last = list_checkpoints(self.run_dir)
            raise CheckpointSaveError(
                f"could not write checkpoint-{self.global_step} ({type(err).__name__}: {err}); is the disk full? "
                f"The partial save was removed; "
                f"{'the previous checkpoint ' + str(last[-1]) + ' is intact' if last else 'no earlier checkpoint exists'}."
            ) from err
        if acc.is_main_process:
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.config.checkpoints_total_limit
        if limit is None:
            return
        ckpts = list_checkpoints(self.run_dir)
        for old in ckpts[: max(0, len(ckpts) - limit)]:
            logger.info("removing %s (checkpoints_total_limit=%d)", old, limit)
            shutil.rmtree(old)

    def _resume(self, which: str) -> None:
        """Restore everything that makes the rest of the run identical: trained weights, optimizer (8-bit
        state included), LR scheduler, grad scaler, every random generator and the data position."""
        from safetensors.torch import load_file

        from .checkpoint import check_architecture, check_safe_to_load, load_state, set_rng_states

        path = find_checkpoint(self.run_dir, which)
        if path is None:
            logger.warning("resume_from_checkpoint=%r: no checkpoint in %s; starting a new run", which, self.run_dir)
            return
        check_safe_to_load(path, self.config.allow_pickle)
        for name, module in (("unet", self.unet), ("text_encoder", self.text_encoder)):
            if name == "text_encoder" and not self.config.train_text_encoder:
                continue
            model = self._unwrap(module)
            saved = json.loads((path / name / "config.json").read_text())
            check_architecture(saved, dict(model.config.to_dict() if hasattr(model.config, "to_dict") else model.config),
                               name, str(path), self.model_path)
            state = {}
            for f in sorted((path / name).glob("*.safetensors")):
                state.update(load_file(str(f)))
            model.load_state_dict(state, strict=True)
        self.optimizer.optimizer.load_state_dict(load_state(path, "optimizer"))
        self.lr_scheduler.scheduler.load_state_dict(load_state(path, "lr_scheduler"))
        scaler_state = load_state(path, "grad_scaler")
        if self.accelerator.scaler is not None and scaler_state:
            self.accelerator.scaler.load_state_dict(scaler_state)
        set_rng_states(load_state(path, f"rng_{self.accelerator.process_index}"), self.generator)
        state = json.loads((path / "trainer_state.json").read_text())
        self.global_step, self.micro_step = int(state["global_step"]), int(state["micro_step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.resumed_from = path
        self._log(f"resumed from {path} at step {self.global_step}")

    # -- validation -----------------------------------------------------------------------------
    def pipeline(self, scheduler: str | None = None):
        """A pipeline over the modules in memory (nothing reloaded), with ``scheduler`` for sampling."""
        from .schedulers import make_scheduler

        return pipeline_from_modules(
            unet=self._unwrap(self.unet),
            text_encoder=self._unwrap(self.text_encoder),
            vae=self.vae,
            tokenizer=self.tokenizer,
            scheduler=self.validation_scheduler if scheduler is None else make_scheduler(scheduler, self.base_scheduler),
            safety_checker=self.safety_checker,
            feature_extractor=self.feature_extractor,
        )

    def validate(self) -> Path:
        """Generate the validation images of the current step into ``validation/step-<step>/``."""
        import numpy as np

        from .sample import save_sample_result, text_to_image

        c = self.config
        out_dir = self.run_dir / "validation" / f"step-{self.global_step}"
        for m in self.trained:
            m.eval()
        vae_device = next(self.vae.parameters()).device
        move_module(self.vae, self.accelerator.device)
        try:
            result = text_to_image(
                self.pipeline(),
                c.validation_prompt,
                [c.seed + i for i in range(c.num_validation_images)],
                num_inference_steps=c.validation_inference_steps,
                guidance_scale=c.validation_guidance_scale,
                height=c.resolution,
                width=c.resolution,
                autocast_dtype=self.weight_dtype,
            )
        finally:
            move_module(self.vae, vae_device)
            for m in self.trained:
                m.train()
        save_sample_result(result, out_dir, extra={"step": self.global_step})
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                arr = np.stack([np.asarray(img) for img in result.images])
                tracker.writer.add_images("validation", arr, self.global_step, dataformats="NHWC")
        return out_dir

    # -- training -------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        logger.info(msg)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    def run(self) -> TrainResult:
        """Train until ``max_train_steps``, checkpointing and validating every ``checkpointing_steps``."""
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        result = TrainResult(self.run_dir, self.global_step, optimizer=self.optimizer_name)
        frozen = [self.vae, self.safety_checker] + ([] if c.train_text_encoder else [self.text_encoder])
        plan = disk_plan(c, [self._unwrap(m) for m in self.trained], frozen, self.run_dir)
        self._log(
            f"disk: a full run writes {plan['checkpoints']} checkpoint(s) of {_gb(plan['checkpoint_bytes'])}, "
            f"keeps {plan['kept']}, plus a {_gb(plan['pipeline_bytes'])} pipeline: about {_gb(plan['bytes'])} "
            f"at its peak; {_gb(plan['free'])} free in {self.run_dir}"
        )
        self._check_disk(plan)
        if acc.is_main_process and c.report_to != "none":
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in c.to_dict().items()}
            # after a resume, TensorBoard drops the killed run's events past the checkpoint (purge_step)
            resuming = c.resume_from_checkpoint is not None
            kwargs = {"tensorboard": {"purge_step": self.global_step + 1}} if resuming else {}
            acc.init_trackers("dreambooth", config=hparams, init_kwargs=kwargs)
        main = acc.is_main_process
        log = LossLog(self.run_dir / c.logging_dir / "train_log.csv", self.global_step) if main else None
        result.log_csv = log.path if log else None
        bar = tqdm(
            total=c.max_train_steps,
            initial=self.global_step,
            desc="Steps",
            disable=not (self.progress and main),
            unit="step",
        )
        params = [p for m in self.trained for p in m.parameters()]
        data = iter(self.dataloader)
        for m in self.trained:
            m.train()
        try:
            self._train_loop(result, log, bar, params, data)
            if result.steps_run and self.global_step % c.checkpointing_steps != 0:
                self._checkpoint_and_validate(result)  # the end of a run off the checkpoint grid
            if c.save_final_pipeline and main:
                result.pipeline_dir = self.save_pipeline()
            acc.wait_for_everyone()
        except torch.cuda.OutOfMemoryError as err:
            raise TrainingOutOfMemoryError(self._oom_message(err)) from err
        finally:
            bar.close()
            if log:
                log.close()
            acc.end_training()
        result.global_step = self.global_step
        return result

    def _check_disk(self, plan: dict[str, Any]) -> None:
        """Refuse (``disk_check="refuse"``) or warn when the rest of the run needs more disk than is free."""
        done = sum(p.stat().st_size for ck in list_checkpoints(self.run_dir) for p in ck.rglob("*") if p.is_file())
        needed = max(0, plan["bytes"] - done)
        if needed <= plan["free"] or self.config.disk_check == "off":
            return
        msg = (
            f"the rest of this run needs about {_gb(needed)} of disk ({plan['kept']} checkpoint(s) of "
            f"{_gb(plan['checkpoint_bytes'])} + the final pipeline) but only {_gb(plan['free'])} is free in "
            f"{self.run_dir}; free space, set checkpoints_total_limit, or disk_check='warn' to go on anyway"
        )
        if self.config.disk_check == "refuse":
            raise InsufficientDiskError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def _oom_message(self, err: BaseException) -> str:
        c = self.config
        last = list_checkpoints(self.run_dir)
        return (
            f"CUDA ran out of memory after step {self.global_step}. Settings that lower memory: "
            f"gradient_checkpointing=True (now {c.gradient_checkpointing}); use_8bit_adam=True (now "
            f"{c.use_8bit_adam}); a smaller train_batch_size (now {c.train_batch_size}; start a new run, with "
            f"gradient_accumulation_steps to keep the effective batch); train_text_encoder=False (now "
            f"{c.train_text_encoder}); mixed_precision='fp16' (now {c.mixed_precision!r}). No checkpoint was "
            f"corrupted; the last complete one is {last[-1] if last else 'none'}. ({err})"
        )

    def _train_loop(self, result: TrainResult, log, bar, params, data) -> None:
        """Optimizer steps until ``max_train_steps``; a checkpoint and validation every ``checkpointing_steps``."""
        c, acc = self.config, self.accelerator
        while self.global_step < c.max_train_steps:
            t0 = time.perf_counter()
            losses = []
            grad_norm = None
            while True:  # micro-batches of one optimizer step
                with record_function("data"):
                    batch = next(data)
                    if self.latent_cache is not None:
                        batch.update(self.latent_cache.lookup(batch))
                with acc.accumulate(*self.trained):
                    loss, inst, prior = training_step(
                        self.unet,
                        self.text_encoder,
                        self.vae,
                        self.noise_scheduler,
                        batch,
                        self.generator,
                        with_prior_preservation=c.with_prior_preservation,
                        prior_loss_weight=c.prior_loss_weight,
                    )
                    loss = self._fire("loss", loss) if "loss" in self.hooks else loss
                    with record_function("backward"):
                        acc.backward(loss)
                    self._fire("after_backward")
                    if acc.sync_gradients:
                        with record_function("clip_grad_norm"):
                            grad_norm = acc.clip_grad_norm_(params, c.max_grad_norm)
                        if acc.scaler is None and not torch.isfinite(grad_norm):
                            # without a grad scaler to skip it, this update would write NaN into the weights
                            self.global_step += 1
                            raise NonFiniteLossError(self._nonfinite_message(float(grad_norm), "gradient norm"))
                    with record_function("optimizer_step"):
                        self.optimizer.step()
                    if acc.sync_gradients and self.optimizer.step_was_skipped:
                        self.skipped_steps += 1  # the fp16 grad scaler found inf/NaN gradients
                    self.lr_scheduler.step()
                    with record_function("zero_grad"):
                        self.optimizer.zero_grad(set_to_none=c.set_grads_to_none)
                self.micro_step += 1
                losses.append((loss.detach(), inst.detach(), None if prior is None else prior.detach()))
                if acc.sync_gradients:
                    break
            self.global_step += 1
            row = self._row(losses, grad_norm)
            result.train_seconds += time.perf_counter() - t0
            result.steps_run += 1
            if not math.isfinite(row["loss"]):
                raise NonFiniteLossError(self._nonfinite_message(row["loss"]))
            if log:
                log.write(row)
            scalars = ("loss", "loss_instance", "loss_prior", "lr", "grad_norm", "skipped_steps")
            acc.log({k: row[k] for k in scalars if row[k] is not None}, step=self.global_step)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            for cb in self.callbacks:
                cb(self, row)
            if self.global_step % c.checkpointing_steps == 0:
                self._checkpoint_and_validate(result)

    def _checkpoint_and_validate(self, result: TrainResult) -> None:
        result.checkpoints.append(self.save_checkpoint())
        self._log(f"saved {result.checkpoints[-1]}")
        if self.config.num_validation_images and self.accelerator.is_main_process:
            result.validation_dirs.append(self.validate())

    def _row(self, losses, grad_norm) -> dict[str, Any]:
        """The log row of the step just taken; losses are averaged over micro-batches and processes (so
        every process sees the same values and stops together on a non-finite loss)."""

        def mean(xs):
            xs = [x for x in xs if x is not None]
            if not xs:
                return None
            return float(self.accelerator.reduce(torch.stack(xs).float().mean(), reduction="mean"))

        return {
            "step": self.global_step,
            "loss": mean([l[0] for l in losses]),
            "loss_instance": mean([l[1] for l in losses]),
            "loss_prior": mean([l[2] for l in losses]),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "epoch": (self.micro_step - 1) // self.sampler.batches_per_epoch,  # of the batches just trained
            "skipped_steps": self.skipped_steps,
            "wall_time": round(time.time(), 3),
        }

    def _nonfinite_message(self, value: float, what: str = "loss") -> str:
        last = list_checkpoints(self.run_dir)
        return (
            f"{what} is {value} at step {self.global_step}; training stopped. Likely causes: a learning rate too "
            f"high (learning_rate={self.config.learning_rate}), fp16 overflow (mixed_precision="
            f"{self.accelerator.mixed_precision!r}; try bf16 or fp32), or corrupt input images. "
            f"The last good checkpoint is {last[-1] if last else 'none (no checkpoint was saved yet)'}."
        )

    def save_pipeline(self) -> Path:
        """Write the fine-tuned pipeline (diffusers format, safetensors) to ``pipeline/``, atomically.

        The trained modules are saved as they are (fp32). Frozen modules that were cast to the
        mixed-precision dtype for training are taken from the base model again, in fp32.
        """
        from .models import load_components, load_safety_components

        c = self.config
        out = self.run_dir / "pipeline"
        tmp = self.run_dir / ".tmp-pipeline"
        if tmp.exists():
            shutil.rmtree(tmp)
        vae, text_encoder = self.vae, self._unwrap(self.text_encoder)
        checker, extractor = self.safety_checker, self.feature_extractor
        if self.weight_dtype != torch.float32:
            base = load_components(self.model_path, revision=c.revision, variant=c.variant)
            vae = base["vae"]
            if not c.train_text_encoder:
                text_encoder = base["text_encoder"]
            checker, extractor = load_safety_components(self.model_path, revision=c.revision, variant=c.variant)
        pipe = pipeline_from_modules(
            unet=self._unwrap(self.unet),
            text_encoder=text_encoder,
            vae=vae,
            tokenizer=self.tokenizer,
            scheduler=self.base_scheduler,
            safety_checker=checker,
            feature_extractor=extractor,
            requires_safety_checker=checker is not None,
        )
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out


def train(
    config: TrainConfig, *, progress: bool = True, callbacks: Sequence[Callable] = ()
) -> TrainResult:
    """Run DreamBooth training for ``config`` (class images, training, checkpoints, validation, final pipeline)."""
    return DreamBoothTrainer(config, progress=progress, callbacks=callbacks).run()


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """``--config FILE`` then ``--key value`` overrides.

    The file is a TrainConfig (YAML/JSON, e.g. a run's ``config.json``) or a notebooks' parameters file
    (``configs/disney.yaml``): every key must be a known parameter; the TrainConfig fields are used, and
    ``output_dir`` defaults to ``<outputs_dir>/<run_name>``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m cartoonify.train",
        description="DreamBooth fine-tuning with prior preservation. Any TrainConfig key (and run_name, "
        "outputs_dir) can be given as --key value after the config file.",
    )
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig keys or notebook parameters")
    args, rest = parser.parse_known_args(argv)
    data = load_mapping(args.config) if args.config else {}
    data.update(parse_overrides(rest, parameter_types()))
    return train_config_from_parameters(load_parameters(data))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(argv)
        result = train(config)
    except (
        ConfigError,
        FileNotFoundError,
        RunExistsError,
        ImageLoadError,
        NonFiniteLossError,
        TrainingOutOfMemoryError,
        InsufficientDiskError,
        CheckpointSaveError,
        CheckpointError,
    ) as err:
        # DataFolderError is a FileNotFoundError; every message names the key, file, folder or step
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"done: {result.global_step} steps in {result.output_dir} "
        f"({result.steps_per_second:.2f} steps/s over {result.steps_run} steps); "
        f"checkpoints: {len(list_checkpoints(result.output_dir))}, final pipeline: {result.pipeline_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
