"""Loading a fine-tuned model: the base model with a checkpoint's trained modules, or a run's chosen
checkpoint ("best" by the human ratings, "latest", "pipeline" or a name)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_VARIANT
from .models import (
    check_architecture,
    check_safe_to_load,
    is_pipeline_folder,
    load_pipeline,
    make_scheduler,
    resolve_device,
    resolve_model,
)
from .rating import RatingStore, best_group, collect_items, summarize
from .runs import CHECKPOINT_PREFIX, list_checkpoints, load_config, read_evaluation, resolve_checkpoint
from .training.checkpoint import TEXT_ENCODER, UNET
from .training.lora import is_lora_checkpoint, load_lora_file, remove_lora


def _stored_dtype(folder: Path) -> torch.dtype | None:
    """The dtype of the floating-point weights in a folder's safetensors (None: none found)."""
    from safetensors import safe_open

    names = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                stored = f.get_slice(key).get_dtype()
                if stored in names:
                    return names[stored]
    return None


def load_trained_modules(
    checkpoint: str | Path, base_configs: dict[str, dict] | None = None, allow_pickle: bool = False
) -> dict[str, Any]:
    """The trained modules a checkpoint folder holds: ``unet`` and, if trained, ``text_encoder``, in the
    dtype they are stored in (fp16 in a checkpoint; fp32 in one of the earlier layout).

    Only safetensors are loaded: a folder with pickle weights is refused unless ``allow_pickle``. With
    ``base_configs`` (``{"unet": config, ...}`` of the base model), a module whose architecture differs
    is refused with both named.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    checkpoint = Path(checkpoint)
    if not (checkpoint / UNET).is_dir():
        raise FileNotFoundError(f"checkpoint has no {UNET}/ folder: {checkpoint}")
    check_safe_to_load(checkpoint, allow_pickle)
    classes = {UNET: (UNet2DConditionModel, "torch_dtype"), TEXT_ENCODER: (CLIPTextModel, "dtype")}
    modules: dict[str, Any] = {}
    for name, (cls, dtype_key) in classes.items():
        if not (checkpoint / name).is_dir():
            continue
        if base_configs and name in base_configs:
            saved = json.loads((checkpoint / name / "config.json").read_text())
            check_architecture(saved, base_configs[name], name, str(checkpoint), "the base model")
        dtype = _stored_dtype(checkpoint / name)
        kwargs = {dtype_key: dtype} if dtype is not None else {}
        modules[name] = cls.from_pretrained(checkpoint, subfolder=name, use_safetensors=None if allow_pickle else True,
                                            **kwargs)
    return modules


def apply_checkpoint(pipe, checkpoint: str | Path | None, base_modules: dict[str, Any] | None = None,
                     allow_pickle: bool = False) -> None:
    """Make ``pipe`` (the base model) the fine-tuned model of a training checkpoint, in place.

    A full checkpoint's trained modules replace the pipeline's (cast to its dtype and device); a LoRA
    checkpoint's adapter file is loaded onto the base weights (:func:`~cartoonify.training.lora.load_lora_file`),
    unfused, as the run computed its own validation images. With ``base_modules`` (``{"unet": ..., "text_encoder":
    ...}`` of the base model), the pipeline is first put back to them and any adapter removed, so that one
    pipeline can visit several checkpoints (``checkpoint`` None: the base model).
    """
    if base_modules is not None:
        remove_lora(pipe.unet, pipe.text_encoder)  # a LoRA checkpoint's adapters sit on the base modules
        pipe.register_modules(**base_modules)
    if checkpoint is None:
        return
    if is_lora_checkpoint(checkpoint):
        load_lora_file(pipe.unet, pipe.text_encoder, checkpoint)
        return
    base_configs = {UNET: dict(pipe.unet.config), TEXT_ENCODER: pipe.text_encoder.config.to_dict()}
    for name, module in load_trained_modules(checkpoint, base_configs, allow_pickle).items():
        pipe.register_modules(**{name: module.to(device=pipe.device, dtype=pipe.unet.dtype)})


def load_finetuned(
    base_model: str = DEFAULT_MODEL,
    checkpoint: str | Path | None = None,
    *,
    scheduler: str | None = None,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    revision: str = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
    safety_checker: bool = True,
    allow_pickle: bool = False,
):
    """A text-to-image pipeline: the base model with a checkpoint's trained modules swapped in.

    ``checkpoint`` may be a training checkpoint (``checkpoints/checkpoint-<step>``, holding ``unet/`` and
    ``text_encoder/``, or a LoRA adapter: :func:`apply_checkpoint`) or a full pipeline folder saved at the end of training; ``None`` gives the base.
    ``scheduler`` is a registry or diffusers class name. Pickle weights are refused unless
    ``allow_pickle``; a checkpoint of another architecture than the base model is refused.
    """
    if checkpoint is not None and is_pipeline_folder(checkpoint):
        check_safe_to_load(checkpoint, allow_pickle)
        pipe = load_pipeline(
            str(checkpoint), variant=None, torch_dtype=torch_dtype, safety_checker=safety_checker,
            use_safetensors=None if allow_pickle else True,
        )
    else:
        pipe = load_pipeline(
            base_model, revision=revision, variant=variant, torch_dtype=torch_dtype, safety_checker=safety_checker
        )
        if checkpoint is not None:
            apply_checkpoint(pipe, checkpoint, allow_pickle=allow_pickle)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def choose_checkpoint(run_dir: str | Path, which: str = "best") -> tuple[Path, str]:
    """Resolve a checkpoint choice to ``(path, label)``.

    ``which``: ``"best"``, ``"latest"``, ``"pipeline"`` (the final pipeline) or a ``checkpoint-<step>``
    folder name. "best" is the one ``evaluation.json`` names (03_evaluate's rule: human mean with enough
    ratings, else automated scores); before 03 has run, the highest mean rating so far; else the latest.
    """
    run_dir = Path(run_dir)
    if which == "best":
        ckpts = {p.name: p for p in list_checkpoints(run_dir)}
        evaluation = read_evaluation(run_dir) or {}
        name = (evaluation.get("best") or {}).get("checkpoint")
        if name not in ckpts:
            best = best_group(summarize(collect_items(run_dir), RatingStore(run_dir).records(), n_resamples=100))
            name = f"{CHECKPOINT_PREFIX}{best.group}" if best is not None else None
        if name in ckpts:
            return ckpts[name], name
        which = "latest"
    path = resolve_checkpoint(run_dir, which)
    return path, "pipeline" if which == "pipeline" else path.name


def load_run_pipeline(run_dir: str | Path, which: str = "best", device: str | None = None):
    """The base model of a run with a checkpoint's trained modules: ``(pipeline, label)``.

    The safety checker stays on, as in validation: flagged images come back black and marked.
    """
    config = load_config(run_dir)
    path, label = choose_checkpoint(run_dir, which)
    base = resolve_model(config.pretrained_model, config.resolution)
    pipe = load_finetuned(base, path, revision=config.revision, variant=config.variant, device=device,
                          allow_pickle=config.allow_pickle)
    return pipe, label
