"""The settings of one DreamBooth run (:class:`TrainConfig`); the defaults are the write-up's.

Stable Diffusion v1.5, ~200 style images, prior preservation with 1000 class images, text encoder
trained, 8-bit AdamW at a constant 1e-6, fp16, 4000 steps, a checkpoint and validation images every 500
steps, seed 42. Fields made with :func:`~cartoonify.config.core.resumable` may change when a run is
resumed; any other difference from the saved ``config.json`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .core import ConfigBase, ConfigError, check_at_least, check_choice, resumable, resumable_fields
from .samplers import check_scheduler

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_REVISION = "main"
DEFAULT_VARIANT = "fp16"
TINY_MODEL = "embedded:tiny"  # the pretrained tiny model shipped with the package
TINY_RANDOM_MODEL = "embedded:tiny-random"  # the same format with random weights (for the machinery)

MIXED_PRECISIONS = ("no", "fp16", "bf16")
PRIOR_PRECISIONS = ("no", "fp32", "fp16", "bf16")
FINAL_PIPELINE_PRECISIONS = ("fp16", "fp32")
TRAIN_MODES = ("full", "lora")
# peft LoRA targets: the attention projections of the UNet (as diffusers' train_dreambooth_lora.py) and of CLIP
LORA_UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
LORA_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig(ConfigBase):
    """Settings of one DreamBooth run; the defaults are the write-up's.

    Paths are used as given (relative paths are relative to the working directory of the process).
    """

    # --- model -----------------------------------------------------------------------------------
    pretrained_model: str = DEFAULT_MODEL  # hub id, local diffusers folder, or "embedded:tiny"
    revision: str = DEFAULT_REVISION
    variant: Optional[str] = DEFAULT_VARIANT  # weight variant; ignored for local folders that lack it

    # --- data ------------------------------------------------------------------------------------
    instance_dir: str = "data/disney/images"  # the ~200 style images, as 01_collect writes them (+ captions)
    class_dir: str = "data/style_ddim"  # class images for prior preservation (topped up if short)
    instance_prompt: str = "an illustration, Disney style"  # used where an image has no caption
    class_prompt: str = "an illustration"  # the instance prompt without the style phrase
    num_class_images: int = 1000
    with_prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    resolution: int = 512
    center_crop: bool = True
    sample_batch_size: Optional[int] = None  # batch of class-image generation; None: the largest that fits
    class_inference_steps: int = 50  # denoising steps per class image (the pipeline's default)
    class_scheduler: Optional[str] = None  # sampler of class images; None: the model's own (PNDM)
    holdout_images: int = 8  # instance images held out of training for the held-out loss (0: off)

    # --- training --------------------------------------------------------------------------------
    train_text_encoder: bool = True  # in LoRA mode: adapters on the text encoder too
    train_mode: str = "full"  # "full": fine-tune the weights; "lora": train low-rank adapters only (peft)
    lora_rank: int = 4  # LoRA rank r (train_mode "lora")
    lora_alpha: Optional[float] = None  # LoRA scale numerator (alpha / r scales the update); None: = lora_rank
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    train_batch_size: int = 4  # instance images per step (as many class images are added)
    max_train_steps: int = resumable(4000)  # optimizer steps; governs over epochs, as in diffusers' script
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = resumable(False)
    set_grads_to_none: bool = resumable(True)
    dataloader_num_workers: int = resumable(0)

    # --- speed (each switch is measured on and off by `python -m benchmarks.bench`) ---------------
    cache_latents: bool = resumable(True)  # encode each image once (mean, std); a fresh posterior sample per step
    offload_vae: bool = resumable(True)  # with cached latents, keep the VAE off the GPU except for validation
    use_sdpa: bool = resumable(True)  # PyTorch scaled-dot-product attention (False: diffusers' classic attention)
    channels_last: bool = resumable(True)  # channels-last memory format for the UNet (CUDA)
    allow_tf32: bool = resumable(True)  # TF32 matmuls on Ampere and newer GPUs
    compile_unet: bool = resumable(False)  # torch.compile the UNet (training steps, and class images)
    compile_mode: str = resumable("default")  # torch.compile mode; "reduce-overhead": with CUDA graphs
    fused_backward_pass: bool = resumable(False)  # update each parameter in backward, free its gradient; clipping per parameter
    background_saves: bool = resumable(True)  # checkpoints written by a thread while training goes on (one process)

    # --- optimizer -------------------------------------------------------------------------------
    use_8bit_adam: bool = True
    fuse_small_adam_updates: bool = True  # 8-bit Adam: the tensors it keeps in 32-bit updated in one fused call
    learning_rate: float = 1e-6
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # global-norm clipping (per parameter with fused_backward_pass); 0: off

    # --- checkpoints and logs --------------------------------------------------------------------
    output_dir: str = resumable("outputs/disney")  # the run folder, outputs/<run>
    checkpointing_steps: int = resumable(500)
    checkpoints_total_limit: Optional[int] = resumable(None)  # keep at most this many checkpoints (None: all)
    keep_resume_states: int = resumable(1)  # the newest checkpoints that keep the resume state (the rest: fp16 weights)
    keep_resume_at_end: bool = resumable(False)  # a finished run keeps its newest resume state (to extend it later)
    resume_from_checkpoint: Optional[str] = resumable(None)  # "latest", a checkpoint folder name, or None
    allow_process_count_change: bool = resumable(False)  # resume a checkpoint saved by another number of processes
    logging_dir: str = "logs"  # inside the run folder
    disk_check: str = resumable("refuse")  # before training: "refuse" or "warn" if the run needs more disk than is free
    allow_pickle: bool = resumable(False)  # load pickle files (.bin/.ckpt/.pt) from checkpoints; only if you trust them
    report_to: str = resumable("tensorboard")  # "tensorboard" or "none"

    # --- precision -------------------------------------------------------------------------------
    mixed_precision: str = "fp16"  # "no", "fp16", "bf16"; fp16 falls back to fp32 on CPU
    prior_generation_precision: str = "fp16"  # class-image dtype; "no": fp16 on CUDA, else fp32

    # --- validation ------------------------------------------------------------------------------
    validation_prompt: str = resumable("a person, Disney style")
    num_validation_images: int = resumable(4)
    validation_scheduler: str = resumable("PNDMScheduler")  # any diffusers scheduler class or registry name
    validation_inference_steps: int = resumable(25)  # as in diffusers' DreamBooth script
    validation_guidance_scale: float = resumable(7.5)
    validate_at_start: bool = resumable(False)  # also validate the base model, as step 0, before training
    save_final_pipeline: bool = resumable(True)  # write outputs/<run>/pipeline/ at the end
    final_pipeline_precision: str = resumable("fp16")  # dtype of the final pipeline's weights: "fp16" or "fp32"

    seed: int = 42

    @property
    def compile_options(self) -> dict:
        """``torch.compile`` keyword arguments of ``compile_mode``."""
        return {} if self.compile_mode == "default" else {"mode": self.compile_mode}

    def validate(self) -> "TrainConfig":
        """Check values that a type alone cannot (choices, positive counts). Returns self."""
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        check_choice("prior_generation_precision", self.prior_generation_precision, PRIOR_PRECISIONS)
        check_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        check_choice("report_to", self.report_to, ("tensorboard", "none"))
        check_choice("disk_check", self.disk_check, ("refuse", "warn", "off"))
        check_choice("train_mode", self.train_mode, TRAIN_MODES)
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_choice("final_pipeline_precision", self.final_pipeline_precision, FINAL_PIPELINE_PRECISIONS)
        check_at_least(self, 1, "resolution", "train_batch_size", "max_train_steps", "gradient_accumulation_steps",
                       "checkpointing_steps", "keep_resume_states", "lora_rank", "class_inference_steps",
                       "validation_inference_steps")
        check_at_least(self, 0, "num_class_images", "num_validation_images", "lr_warmup_steps", "dataloader_num_workers",
                       "holdout_images")
        if self.max_grad_norm < 0:
            raise ConfigError(f"config key 'max_grad_norm' must be >= 0 (0: no clipping), got {self.max_grad_norm!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"config key 'learning_rate' must be > 0, got {self.learning_rate!r}")
        if self.sample_batch_size is not None and self.sample_batch_size < 1:
            raise ConfigError(f"config key 'sample_batch_size' must be >= 1 or null, got {self.sample_batch_size!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"config key 'lora_dropout' must be in [0, 1), got {self.lora_dropout!r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"config key 'lora_alpha' must be > 0 or null, got {self.lora_alpha!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError("config key 'checkpoints_total_limit' must be >= 1 or null")
        if self.with_prior_preservation and self.num_class_images < 1:
            raise ConfigError("config key 'num_class_images' must be >= 1 when with_prior_preservation is true")
        if self.resolution % 8:
            raise ConfigError(f"config key 'resolution' must be a multiple of 8, got {self.resolution}")
        check_scheduler("validation_scheduler", self.validation_scheduler)
        check_scheduler("class_scheduler", self.class_scheduler)
        return self


def resumable_changes() -> frozenset[str]:
    """The :class:`TrainConfig` keys that may differ from the saved config when a run is resumed."""
    return resumable_fields(TrainConfig)
