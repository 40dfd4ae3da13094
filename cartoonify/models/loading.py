"""Loading Stable Diffusion from a hub id or a local folder (the same path for both, and for
``embedded:tiny``): the whole pipeline, its parts for training, or its safety checker."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_VARIANT
from .tiny import resolve_model
from .weights import check_safe_to_load

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

# --------------------------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------------------------


# First versions whose ``from_pretrained`` takes ``dtype`` (and deprecate ``torch_dtype``).
_DTYPE_KEYWORD_SINCE = {"diffusers": "0.40.0", "transformers": "4.56.0"}


@functools.lru_cache(maxsize=None)
def _accepts_dtype_keyword(package: str) -> bool:
    """Whether ``package``'s ``from_pretrained`` takes ``dtype`` rather than the older ``torch_dtype``."""
    from importlib.metadata import version

    from packaging.version import Version

    installed = Version(Version(version(package)).base_version)
    return installed >= Version(_DTYPE_KEYWORD_SINCE[package])


def _dtype_kwargs(package: str, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Returns ``{"dtype": dtype}`` or ``{"torch_dtype": dtype}``, whichever ``package`` expects."""
    return {("dtype" if _accepts_dtype_keyword(package) else "torch_dtype"): dtype}


def _variant_for(name_or_path: str | os.PathLike, variant: str | None) -> str | None:
    """Returns ``variant`` unless ``name_or_path`` is a local folder without any ``*.<variant>.*`` weight files.

    diffusers refuses a variant that a folder lacks; local folders (the tiny model, one's own fine-tunes) are
    usually saved without one, so the variant is dropped for them. Hub ids are left alone.
    """
    if variant is None or not Path(name_or_path).expanduser().is_dir():
        return variant
    root = Path(name_or_path).expanduser()
    for suffix in ("safetensors", "bin"):
        if next(root.rglob(f"*.{variant}.{suffix}"), None) is not None:
            return variant
        # sharded variant checkpoints: model.safetensors.index.fp16.json / *.fp16-00001-of-00002.safetensors
        if next(root.rglob(f"*.{variant}-*.{suffix}"), None) is not None:
            return variant
    return None


def _local_or_hub(name_or_path: str | os.PathLike) -> str:
    """Expands ``~`` for existing local paths; hub ids are returned unchanged."""
    expanded = Path(name_or_path).expanduser()
    return str(expanded) if expanded.exists() else str(name_or_path)


def load_pipeline(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
    torch_dtype: torch.dtype | None = None,
    safety_checker: bool = True,
    **kwargs: Any,
) -> "StableDiffusionPipeline":
    """Loads a base ``StableDiffusionPipeline`` from a hub id, a local folder or ``TINY_MODEL``.

    Args:
        name_or_path: Hub id, local diffusers folder, or ``TINY_MODEL``.
        revision: Hub revision (ignored by diffusers for local folders).
        variant: Weight variant such as ``"fp16"``; dropped for local folders that have no such files.
        torch_dtype: Dtype of every loaded module; float32 when None. (Left unset, transformers would load
            the fp16 variant's text encoder and safety checker in fp16 next to an fp32 UNet.)
        safety_checker: If False, load without the safety checker (``safety_checker=None``).
        **kwargs: Passed on to ``StableDiffusionPipeline.from_pretrained`` (``use_safetensors`` defaults to True).
    """
    from diffusers import StableDiffusionPipeline

    resolved = _local_or_hub(resolve_model(name_or_path))
    kwargs.setdefault("use_safetensors", True)
    if kwargs["use_safetensors"] and Path(resolved).is_dir():
        check_safe_to_load(resolved)  # a clear refusal, naming the pickle files, before diffusers' own
    kwargs.update(_dtype_kwargs("diffusers", torch_dtype or torch.float32))
    if not safety_checker:
        kwargs["safety_checker"] = None
        kwargs["requires_safety_checker"] = False
    return StableDiffusionPipeline.from_pretrained(
        resolved, revision=revision, variant=_variant_for(resolved, variant), **kwargs
    )


def _scheduler_as_saved(name_or_path: str, revision: str | None) -> Any:
    """Loads the scheduler stored in ``scheduler/`` with the class named in its config."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(name_or_path, subfolder="scheduler", revision=revision)
    scheduler_class = getattr(diffusers, config["_class_name"])
    return scheduler_class.from_config(config)


def load_components(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
) -> dict[str, Any]:
    """Loads an SD checkpoint's parts separately, in float32, as diffusers' ``train_dreambooth.py`` does.

    Returns:
        A dict with ``tokenizer``, ``text_encoder``, ``vae``, ``unet``, ``noise_scheduler`` (a ``DDPMScheduler`` for
        training) and ``scheduler`` (the pipeline's own sampler, as saved).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    resolved = _local_or_hub(resolve_model(name_or_path))
    variant = _variant_for(resolved, variant)
    model_kwargs: dict[str, Any] = {"revision": revision, "variant": variant, "use_safetensors": True}
    text_kwargs = {**model_kwargs, **_dtype_kwargs("transformers", torch.float32)}
    diffusers_kwargs = {**model_kwargs, **_dtype_kwargs("diffusers", torch.float32)}
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(resolved, subfolder="tokenizer", revision=revision),
        "text_encoder": CLIPTextModel.from_pretrained(resolved, subfolder="text_encoder", **text_kwargs),
        "vae": AutoencoderKL.from_pretrained(resolved, subfolder="vae", **diffusers_kwargs),
        "unet": UNet2DConditionModel.from_pretrained(resolved, subfolder="unet", **diffusers_kwargs),
        "noise_scheduler": DDPMScheduler.from_pretrained(resolved, subfolder="scheduler", revision=revision),
        "scheduler": _scheduler_as_saved(resolved, revision),
    }


def load_safety_components(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
) -> tuple[Any, Any]:
    """The model's safety checker and its feature extractor, or ``(None, None)`` if it has none.

    Training validation keeps the checker on, as the write-up's runs did: an image it flags comes back
    black and is recorded as NSFW, so that rating can exclude it.
    """
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    resolved = _local_or_hub(resolve_model(name_or_path))
    index = DiffusionPipeline.load_config(resolved, revision=revision)
    checker_entry = index.get("safety_checker") or [None, None]
    extractor_entry = index.get("feature_extractor") or [None, None]
    if checker_entry[1] is None or extractor_entry[1] is None:
        return None, None
    checker = StableDiffusionSafetyChecker.from_pretrained(
        resolved,
        subfolder="safety_checker",
        revision=revision,
        variant=_variant_for(resolved, variant),
        use_safetensors=True,
        **_dtype_kwargs("transformers", torch.float32),
    )
    extractor_cls = getattr(transformers, extractor_entry[1])
    extractor = extractor_cls.from_pretrained(resolved, subfolder="feature_extractor", revision=revision)
    return checker, extractor

