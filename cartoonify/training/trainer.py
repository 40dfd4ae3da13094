"""The DreamBooth training loop over components built by :func:`cartoonify.training.run.build_trainer`.

The trainer owns the loop and a small :class:`~cartoonify.training.checkpoint.TrainState`; the objective,
checkpoint files, validation, export, disk plan and error messages live in their own modules, and every
instrumentation point is a :class:`~cartoonify.training.callbacks.TrainerCallback` hook.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function

from ..config import TrainConfig
from ..models import make_scheduler, move_module, pipeline_from_modules
from ..runs import RunLayout, list_checkpoints
from .callbacks import CallbackList
from .checkpoint import TEXT_ENCODER, UNET, CheckpointParts, TrainState, drop_resume_states, restore_checkpoint
from .disk import check_disk, disk_plan, plan_message
from .errors import NonFiniteLossError, TrainingOutOfMemoryError, nonfinite_message, oom_message
from .export import save_pipeline
from .heldout import HeldoutMonitor
from .setup import eager_unet
from .logs import SCALARS, LossLog, step_row
from .lora import trainable_parameters
from .objective import REGIONS, training_step
from .saving import Checkpointer
from .validation import validate

logger = logging.getLogger(__name__)


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
    heldout_log: Path | None = None  # logs/heldout_loss.csv (None when holdout_images is 0)
    heldout_instance: float | None = None  # the last held-out losses measured by this call
    heldout_class: float | None = None

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.train_seconds if self.train_seconds > 0 else float("nan")


@dataclass
class TrainComponents:
    """Everything a run trains with, prepared by accelerate (``unet``/``text_encoder`` may be wrapped)."""

    accelerator: Any
    model_path: str
    tokenizer: Any
    noise_scheduler: Any
    base_scheduler: Any
    validation_scheduler: Any
    vae: Any
    unet: Any
    text_encoder: Any
    trained: list
    optimizer: Any
    lr_scheduler: Any
    dataset: Any
    sampler: Any
    dataloader: Any
    latent_cache: Any = None
    safety_checker: Any = None
    feature_extractor: Any = None
    weight_dtype: torch.dtype = torch.float32
    optimizer_name: str = ""
    heldout_sets: Any = None  # the held-out loss's fixed inputs (main process; None when off)
    fused_backward: Any = None  # fused_backward_pass: the hooks that update each parameter in backward


def log_function(progress: bool):
    """A function that logs a message, and prints it above the progress bar when ``progress``."""

    def log(msg: str) -> None:
        logger.info(msg)
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    return log


def init_trackers(accelerator, config: TrainConfig, global_step: int) -> None:
    """TensorBoard with the run's settings as hyper-parameters; after a resume it drops the killed run's
    events past the checkpoint (``purge_step``)."""
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()}
    resuming = config.resume_from_checkpoint is not None
    kwargs = {"tensorboard": {"purge_step": global_step + 1}} if resuming else {}
    accelerator.init_trackers("dreambooth", config=hparams, init_kwargs=kwargs)


def clip_gradients(accelerator, params, max_grad_norm: float) -> torch.Tensor:
    """Global-norm clipping to ``max_grad_norm`` (0: none, the gradients only unscaled); returns the norm
    before clipping."""
    with record_function(REGIONS["clip"]):
        if max_grad_norm > 0:
            return accelerator.clip_grad_norm_(params, max_grad_norm)
        accelerator.unscale_gradients()
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


class DreamBoothTrainer:
    """Trains to ``max_train_steps``, checkpointing and validating every ``checkpointing_steps``.

    Components are read as attributes (``trainer.unet``, ``trainer.optimizer``...).
    """

    def __init__(self, config: TrainConfig, components: TrainComponents, *, callbacks=(), progress: bool = True):
        self.config = config
        self.components = components
        self.layout = RunLayout.of(config)
        self.run_dir = self.layout.run_dir
        self.callbacks = CallbackList(callbacks)
        self.progress = progress
        self.state = TrainState()
        self.resumed_from: Path | None = None
        self.checkpointer = Checkpointer(self.layout, config, components.accelerator,
                                         lambda hook, *args: self.callbacks.fire(hook, self, *args))
        self.heldout_monitor: HeldoutMonitor | None = None
        acc = components.accelerator
        self.generator = torch.Generator(device=acc.device).manual_seed(config.seed + acc.process_index)
        if config.resume_from_checkpoint is not None:
            self._resume(config.resume_from_checkpoint)
        self.sampler.start = self.state.micro_step

    def __getattr__(self, name: str):
        components = self.__dict__.get("components")
        if components is not None and hasattr(components, name):
            return getattr(components, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    global_step = property(lambda self: self.state.global_step, doc="Optimizer steps taken.")
    micro_step = property(lambda self: self.state.micro_step, doc="Micro-batches taken (the data position).")

    @property
    def epoch(self) -> int:
        return self.state.micro_step // self.sampler.batches_per_epoch

    def unwrap(self, model):
        """The plain module under accelerate's and torch.compile's wrappers."""
        from diffusers.utils.torch_utils import is_compiled_module

        model = self.accelerator.unwrap_model(model)
        return model._orig_mod if is_compiled_module(model) else model

    def log(self, msg: str) -> None:
        log_function(self.progress)(msg)

    # -- checkpoints ----------------------------------------------------------------------------
    def _parts(self) -> CheckpointParts:
        modules = {UNET: self.unwrap(self.unet)}
        if self.config.train_text_encoder:
            modules[TEXT_ENCODER] = self.unwrap(self.text_encoder)
        return CheckpointParts(modules, self.optimizer.optimizer, self.lr_scheduler.scheduler,
                               self.accelerator.scaler, self.generator, self.accelerator,
                               lora=self.config.train_mode == "lora")

    def save_checkpoint(self) -> Path:
        """Save ``checkpoints/checkpoint-<step>`` (:meth:`Checkpointer.save <cartoonify.training.saving.Checkpointer.save>`:
        in the background by default, with one process)."""
        return self.checkpointer.save(self._parts(), self.state, {"epoch": self.epoch, "optimizer": self.optimizer_name})

    def _resume(self, which: str) -> None:
        restored = restore_checkpoint(self.layout, which, self._parts(), self.model_path, self.config.allow_pickle,
                                      self.config.allow_process_count_change)
        if restored is None:
            logger.warning("resume_from_checkpoint=%r: no checkpoint in %s; starting a new run", which, self.run_dir)
            return
        self.resumed_from, self.state = restored
        self.log(f"resumed from {self.resumed_from} at step {self.global_step}")

    # -- validation and export --------------------------------------------------------------------
    def pipeline(self, scheduler: str | None = None):
        """A pipeline over the modules in memory (nothing reloaded), with ``scheduler`` for sampling."""
        return pipeline_from_modules(
            unet=self.unwrap(self.unet),
            text_encoder=self.unwrap(self.text_encoder),
            vae=self.vae,
            tokenizer=self.tokenizer,
            scheduler=self.validation_scheduler if scheduler is None else make_scheduler(scheduler, self.base_scheduler),
            safety_checker=self.safety_checker,
            feature_extractor=self.feature_extractor,
        )

    def validate(self) -> Path:
        """Generate the validation images of the current step into ``validation/step-<step>/``."""
        vae_device = next(self.vae.parameters()).device
        move_module(self.vae, self.accelerator.device)  # the VAE may be offloaded while training
        for m in self.trained:
            m.eval()
        try:
            with eager_unet(self.unwrap(self.unet)):
                folder = validate(self.pipeline(), self.config, self.layout, self.global_step, self.weight_dtype,
                                  self.accelerator.trackers)
        finally:
            move_module(self.vae, vae_device)
            for m in self.trained:
                m.train()
        self.callbacks.fire("on_validation_end", self, folder)
        return folder

    def save_pipeline(self) -> Path:
        return save_pipeline(
            self.layout, self.config, self.model_path, unet=self.unwrap(self.unet),
            text_encoder=self.unwrap(self.text_encoder), vae=self.vae, tokenizer=self.tokenizer,
            scheduler=self.base_scheduler, safety_checker=self.safety_checker,
            feature_extractor=self.feature_extractor, weight_dtype=self.weight_dtype,
        )

    # -- training -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until ``max_train_steps``, checkpointing and validating every ``checkpointing_steps``."""
        c, acc = self.config, self.accelerator
        result = TrainResult(self.run_dir, self.global_step, optimizer=self.optimizer_name)
        frozen = [self.vae, self.safety_checker] + ([] if c.train_text_encoder else [self.text_encoder])
        plan = disk_plan(c, [self.unwrap(m) for m in self.trained], frozen, self.run_dir)
        self.log(plan_message(plan, self.run_dir))
        check_disk(plan, self.run_dir, c.disk_check)
        if acc.is_main_process and c.report_to != "none":
            init_trackers(acc, c, self.global_step)
        log = LossLog(self.layout.train_log, self.global_step) if acc.is_main_process else None
        result.log_csv = log.path if log else None
        if self.heldout_sets is not None and acc.is_main_process:
            self.heldout_monitor = HeldoutMonitor(self.heldout_sets, self.layout.heldout_log, self.global_step)
            result.heldout_log = self.heldout_monitor.log.path
        try:
            self.callbacks.fire("on_train_begin", self)
            if self.heldout_monitor and not self.heldout_monitor.has(self.global_step):
                measure_heldout(self, result)  # step 0 (or a checkpoint whose row a kill left unwritten)
            if c.validate_at_start and self.global_step == 0 and c.num_validation_images and acc.is_main_process:
                result.validation_dirs.append(self.validate())  # the base model, as step 0
            self._train_loop(result, log)
            if result.steps_run and self.global_step % c.checkpointing_steps != 0:
                self._checkpoint_and_validate(result)  # the end of a run off the checkpoint grid
            self.checkpointer.collect(wait=True)
            if c.save_final_pipeline and acc.is_main_process:
                result.pipeline_dir = self.save_pipeline()
            if acc.is_main_process and not c.keep_resume_at_end and self.global_step >= c.max_train_steps:
                drop_resume_states(self.layout, 0)  # the run is finished: evaluation weights only
            acc.wait_for_everyone()
            self.callbacks.fire("on_train_end", self)
        except torch.cuda.OutOfMemoryError as err:
            self.checkpointer.finish_quietly()
            raise TrainingOutOfMemoryError(
                oom_message(c, self.global_step, list_checkpoints(self.run_dir), err)) from err
        except BaseException:
            self.checkpointer.finish_quietly()  # a checkpoint being written is completed before the error propagates
            raise
        finally:
            if self.fused_backward is not None:
                self.fused_backward.close()
            for csv_log in (log, self.heldout_monitor):
                if csv_log:
                    csv_log.close()
            acc.end_training()
        result.global_step = self.global_step
        return result

    def _train_loop(self, result: TrainResult, log: LossLog | None) -> None:
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        bar = tqdm(total=c.max_train_steps, initial=self.global_step, desc="Steps", unit="step",
                   disable=not (self.progress and acc.is_main_process))
        with torch.random.fork_rng(devices=[]):  # the loader draws a seed from torch's global generator: a
            data = iter(self.dataloader)         # resumed run then saves the same global state as a straight one
        params = trainable_parameters(self.trained)
        for m in self.trained:
            m.train()
        try:
            while self.global_step < c.max_train_steps:
                t0 = time.perf_counter()
                losses, grad_norm = self._optimizer_step(data, params)
                self.state.global_step += 1
                row = self._row(losses, grad_norm)
                result.train_seconds += time.perf_counter() - t0
                result.steps_run += 1
                if not math.isfinite(row["loss"]):
                    raise NonFiniteLossError(self._nonfinite(row["loss"]))
                if log:
                    log.write(row)
                acc.log({k: row[k] for k in SCALARS if row[k] is not None}, step=self.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                self.callbacks.fire("on_step_end", self, row)
                self.checkpointer.collect()  # a background write that has finished
                if self.global_step % c.checkpointing_steps == 0:
                    self._checkpoint_and_validate(result)
        finally:
            bar.close()

    def _optimizer_step(self, data, params) -> tuple[list, Any]:
        """The micro-batches of one optimizer step; returns their losses and the gradient norm."""
        c, acc, fused = self.config, self.accelerator, self.fused_backward
        losses, grad_norm = [], None
        while True:
            with record_function(REGIONS["data"]):
                batch = next(data)
                if self.latent_cache is not None:
                    batch.update(self.latent_cache.lookup(batch))
            with acc.accumulate(*self.trained):
                loss, inst, prior = training_step(
                    self.unet, self.text_encoder, self.vae, self.noise_scheduler, batch, self.generator,
                    with_prior_preservation=c.with_prior_preservation, prior_loss_weight=c.prior_loss_weight,
                )
                loss = self.callbacks.transform_loss(self, loss)
                if fused is not None:
                    fused.arm(acc.sync_gradients)  # the last micro-batch: each parameter updated in backward
                with record_function(REGIONS["backward"]):
                    acc.backward(loss)
                self.callbacks.fire("on_after_backward", self)
                if acc.sync_gradients:
                    grad_norm = clip_gradients(acc, params, c.max_grad_norm) if fused is None else fused.finish()
                    if acc.scaler is None and not torch.isfinite(grad_norm):
                        # without a grad scaler to skip it, this update would write NaN into the weights
                        self.state.global_step += 1
                        raise NonFiniteLossError(self._nonfinite(float(grad_norm), "gradient norm"))
                if fused is None:
                    with record_function(REGIONS["optimizer"]):
                        self.optimizer.step()
                if fused is not None and acc.sync_gradients:
                    self.optimizer._is_overflow = fused.skipped  # step_was_skipped: the LR holds, as in plain mode
                if acc.sync_gradients and self.optimizer.step_was_skipped:
                    self.state.skipped_steps += 1  # the fp16 grad scaler found inf/NaN gradients
                self.lr_scheduler.step()
                with record_function(REGIONS["zero_grad"]):
                    self.optimizer.zero_grad(set_to_none=c.set_grads_to_none)
            self.state.micro_step += 1
            losses.append((loss.detach(), inst.detach(), None if prior is None else prior.detach()))
            if acc.sync_gradients:
                return losses, grad_norm

    def _checkpoint_and_validate(self, result: TrainResult) -> None:
        result.checkpoints.append(self.save_checkpoint())
        how = "being written in the background" if self.checkpointer.background else "saved"
        self.log(f"{result.checkpoints[-1]} {how}")
        measure_heldout(self, result)
        if self.config.num_validation_images and self.accelerator.is_main_process:
            result.validation_dirs.append(self.validate())

    def _row(self, losses, grad_norm) -> dict[str, Any]:
        """The log row of the step just taken (:func:`~cartoonify.training.logs.step_row`)."""
        return step_row(losses, grad_norm, self.accelerator, step=self.global_step,
                        lr=self.lr_scheduler.get_last_lr()[0],
                        epoch=(self.micro_step - 1) // self.sampler.batches_per_epoch,  # of the batches just trained
                        skipped_steps=self.state.skipped_steps)

    def _nonfinite(self, value: float, what: str = "loss") -> str:
        self.checkpointer.finish_quietly()  # the message lists the checkpoints: the one being written included
        return nonfinite_message(self.config, self.global_step, self.accelerator.mixed_precision,
                                 list_checkpoints(self.run_dir), value, what)


def measure_heldout(trainer: "DreamBoothTrainer", result: TrainResult | None = None) -> dict | None:
    """The held-out losses of the trainer's current weights, logged to the CSV and TensorBoard (main process;
    None when holdout_images is 0). See :mod:`cartoonify.training.heldout`."""
    monitor = trainer.heldout_monitor
    if monitor is None:
        return None
    with eager_unet(trainer.unwrap(trainer.unet)):
        row = monitor.measure(trainer.unwrap(trainer.unet), trainer.unwrap(trainer.text_encoder),
                              trainer.noise_scheduler, trainer.global_step, trainer.weight_dtype)
    scalars = {f"heldout/{k}": v for k in ("instance", "class") if (v := row[f"heldout_{k}"]) is not None}
    trainer.accelerator.log(scalars, step=trainer.global_step)
    trainer.log(f"held-out loss at step {trainer.global_step}: " + ", ".join(f"{k} {v:.5f}" for k, v in scalars.items()))
    if result is not None:
        result.heldout_instance, result.heldout_class = row["heldout_instance"], row["heldout_class"]
    return row
