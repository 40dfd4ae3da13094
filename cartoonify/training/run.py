"""A training run: record it, top up the class images, build the components, train.

:func:`run_training` is the package's entry point (``cartoonify.run_training(config)``); tests and
benchmarks that need the pieces call :func:`build_trainer` and then ``trainer.run()``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Sequence

import torch

from ..config import TrainConfig
from ..data.dataset import DreamBoothDataset, StepBatchSampler, collate_examples
from ..data.prior import ensure_class_images
from ..models import (
    load_components,
    load_safety_components,
    make_scheduler,
    move_module,
    precision_dtype,
    resolve_device,
    resolve_model,
)
from .disk import human_bytes
from .background import wait_for_writers
from .fused import FusedBackward
from .heldout import Holdout, build_heldout_sets, check_holdout_size, prepare_holdout
from .lora import add_lora, trainable_parameters
from .objective import LatentCache
from .optim import build_optimizer
from .preflight import preflight
from .setup import (
    apply_speed_settings,
    check_fused_backward,
    check_launch,
    check_run_dir,
    record_run,
    release_accelerator_state,
    resolve_mixed_precision,
)
from .trainer import DreamBoothTrainer, TrainComponents, TrainResult, log_function


def _accelerator(config: TrainConfig, run_dir):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mixed_precision = resolve_mixed_precision(config.mixed_precision, resolve_device())
    release_accelerator_state(mixed_precision)
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / config.logging_dir)),
    )


def build_data(config: TrainConfig, tokenizer, accelerator, use_latent_cache: bool, holdout: Holdout | None = None):
    """The dataset (without the held-out images), its step-indexed sampler and the data loader."""
    c = config
    dataset = DreamBoothDataset(
        c.instance_dir, tokenizer, c.instance_prompt, resolution=c.resolution, center_crop=c.center_crop,
        class_dir=c.class_dir if c.with_prior_preservation else None, class_prompt=c.class_prompt,
        num_class_images=c.num_class_images, seed=c.seed, load_pixels=not use_latent_cache,
        # the latent cache decodes every image before training anyway (and names a bad one)
        check_images=not use_latent_cache, holdout=holdout.images if holdout is not None else (),
    )
    sampler = StepBatchSampler(len(dataset), c.train_batch_size, seed=c.seed,
                               num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=c.dataloader_num_workers,
        collate_fn=partial(collate_examples, with_prior_preservation=dataset.with_prior_preservation),
    )
    return dataset, sampler, loader


def _prepare_models(config: TrainConfig, parts: dict, device, weight_dtype: torch.dtype) -> list:
    """Freeze the VAE, add the LoRA adapters (``train_mode: lora``), set the speed and memory switches;
    returns the modules to train."""
    c, unet, text_encoder = config, parts["unet"], parts["text_encoder"]
    parts["vae"].requires_grad_(False)
    text_encoder.requires_grad_(c.train_text_encoder)
    if c.train_mode == "lora":
        add_lora({"unet": unet, **({"text_encoder": text_encoder} if c.train_text_encoder else {})}, c, weight_dtype)
    apply_speed_settings(c, unet, device)
    if c.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if c.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    # trainable weights stay fp32 under fp16 autocast (load_components loads fp32; add_lora casts the
    # adapters to fp32): the guard against "Attempting to unscale FP16 gradients"
    return [unet, text_encoder] if c.train_text_encoder else [unet]


def _latent_cache(trainer_log, dataset, vae, progress: bool):
    t0 = time.perf_counter()
    cache = LatentCache.build(dataset, vae, progress=progress)
    n = len(dataset.instance_paths) + len(dataset.class_paths)
    trainer_log(f"cached the latents of {n} images ({human_bytes(cache.nbytes)}) in {time.perf_counter() - t0:.1f} s")
    return cache


def build_components(config: TrainConfig, acc, model_path: str, progress: bool = True, log=print,
                     holdout: Holdout | None = None) -> TrainComponents:
    """Load the models, build the data, optimizer and LR schedule, and prepare them with accelerate; the
    ``holdout`` images are left out of the data and encoded for the held-out loss."""
    from diffusers.optimization import get_scheduler

    c = config
    parts = load_components(model_path, revision=c.revision, variant=c.variant)
    # built now so that a scheduler that cannot be built fails here, not at the first validation
    validation_scheduler = make_scheduler(c.validation_scheduler, parts["scheduler"])
    weight_dtype = precision_dtype(acc.mixed_precision)
    checker, extractor = None, None
    if acc.is_main_process and c.num_validation_images:
        checker, extractor = load_safety_components(model_path, revision=c.revision, variant=c.variant)
        if checker is not None:
            move_module(checker, acc.device, weight_dtype)
    trained = _prepare_models(c, parts, acc.device, weight_dtype)
    use_cache = c.cache_latents and c.center_crop  # random crops change the latents
    dataset, sampler, loader = build_data(c, parts["tokenizer"], acc, use_cache, holdout)
    optimizer = build_optimizer(trainable_parameters(trained), c, acc.device)
    lr_scheduler = get_scheduler(c.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=c.lr_warmup_steps * acc.num_processes,
                                 num_training_steps=c.max_train_steps * acc.num_processes)
    optimizer_name = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
    *trained, optimizer, lr_scheduler = acc.prepare(*trained, optimizer, lr_scheduler)
    fused = FusedBackward(optimizer.optimizer, c.max_grad_norm, acc.scaler) if c.fused_backward_pass else None
    vae, text_encoder = parts["vae"], trained[1] if c.train_text_encoder else parts["text_encoder"]
    move_module(vae, acc.device, weight_dtype)
    if not c.train_text_encoder:
        move_module(text_encoder, acc.device, weight_dtype)
    cache = _latent_cache(log, dataset, vae, progress) if use_cache else None
    heldout = None
    if holdout is not None and acc.is_main_process:
        heldout = build_heldout_sets(holdout, c, parts["tokenizer"], vae)
    if cache is not None and c.offload_vae and acc.device.type == "cuda":
        move_module(vae, "cpu")  # back on the GPU only for validation
    return TrainComponents(
        accelerator=acc, model_path=model_path, tokenizer=parts["tokenizer"],
        noise_scheduler=parts["noise_scheduler"], base_scheduler=parts["scheduler"],
        validation_scheduler=validation_scheduler, vae=vae, unet=trained[0], text_encoder=text_encoder,
        trained=trained, optimizer=optimizer, lr_scheduler=lr_scheduler, dataset=dataset, sampler=sampler,
        dataloader=loader, latent_cache=cache, safety_checker=checker, feature_extractor=extractor,
        weight_dtype=weight_dtype, optimizer_name=optimizer_name, heldout_sets=heldout, fused_backward=fused,
    )


def build_trainer(config: TrainConfig, *, progress: bool = True, callbacks: Sequence = ()) -> DreamBoothTrainer:
    """Check and record the run, top up the class images, build the components; the trainer is ready to
    :meth:`~DreamBoothTrainer.run` (resumed if ``resume_from_checkpoint`` says so)."""
    from accelerate.utils import set_seed

    config = config.validate()
    wait_for_writers()  # a checkpoint of an interrupted run in this process, still being written
    preflight(config)  # every missing input or unreachable base model, one paragraph each, before anything is written
    run_dir = check_run_dir(config)
    check_holdout_size(config)  # before anything is written or generated
    model_path = resolve_model(config.pretrained_model, config.resolution)
    acc = _accelerator(config, run_dir)
    check_launch(acc.num_processes)  # before anything is written
    check_fused_backward(config, acc.num_processes)
    if acc.is_main_process:
        record_run(config, run_dir)
    set_seed(config.seed)
    if config.with_prior_preservation:
        with acc.main_process_first():  # the main process generates, the others then find them
            ensure_class_images(config.replace(pretrained_model=model_path), acc.device, progress=progress)
    with acc.main_process_first():  # the main process writes holdout.json, the others read it
        holdout = prepare_holdout(config, write=acc.is_main_process)
    log = log_function(progress)
    components = build_components(config, acc, model_path, progress, log, holdout)
    return DreamBoothTrainer(config, components, callbacks=callbacks, progress=progress)


def run_training(config: TrainConfig, *, progress: bool = True, callbacks: Sequence = ()) -> TrainResult:
    """Run DreamBooth training for ``config``: class images, training, checkpoints, validation, final pipeline."""
    return build_trainer(config, progress=progress, callbacks=callbacks).run()
