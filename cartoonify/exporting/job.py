"""What one export is about: a run, one of its checkpoints (resolved as sampling resolves it), the step it was
saved at, the run's settings, and the fine-tuned pipeline built the way sampling builds it.

Nothing here writes a file; torch and diffusers are imported only when a pipeline is built, so that a bad
argument is refused before the heavy imports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import TrainConfig
from ..config.export import EXPORT_PRECISIONS
from ..runs import CHECKPOINT_PREFIX, MARKER, load_config, read_marker

OPENRAIL_LICENSE = "creativeml-openrail-m"  # Stable Diffusion v1.5's licence, and so its fine-tunes'
EMBEDDED_LICENSE = "mit"  # the package's own embedded models are not derived from Stable Diffusion's weights
EMBEDDED_PREFIX = "embedded:"


class ExportError(ValueError):
    """An export that cannot be made as asked: an unknown format, a path that is no checkpoint, a bad option."""


def checkpoint_step_of(path: Path, config: TrainConfig) -> int:
    """The training step a checkpoint folder holds: its marker's ``global_step``, else the number in its name
    (``checkpoint-<step>``); the final ``pipeline/`` holds the last step, ``max_train_steps``."""
    if (path / MARKER).is_file():
        step = read_marker(path).get("global_step")
        if isinstance(step, int):
            return step
    digits = path.name[len(CHECKPOINT_PREFIX):]
    if path.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit():
        return int(digits)
    return config.max_train_steps


def resolve_export(run_dir: str | Path, checkpoint: str | Path) -> tuple[Path, str]:
    """``(folder, name)`` of a run's checkpoint by the package's resolver (:func:`cartoonify.sampling.choose_checkpoint`):
    ``"best"`` (``evaluation.json``'s choice, else the best rated, else the latest), ``"latest"``, ``"pipeline"``,
    ``checkpoint-<step>`` or a folder. A run without ``config.json`` or an unknown name is a ``FileNotFoundError``."""
    from ..sampling import choose_checkpoint

    load_config(run_dir)  # a clear error first when run_dir is not a training run
    return choose_checkpoint(Path(run_dir), str(checkpoint))


def base_license(config: TrainConfig) -> str:
    """The licence of a fine-tune of the run's base model: CreativeML OpenRAIL-M for Stable Diffusion (any hub
    id or folder), MIT for the package's embedded models, which are not derived from Stable Diffusion."""
    return EMBEDDED_LICENSE if config.pretrained_model.startswith(EMBEDDED_PREFIX) else OPENRAIL_LICENSE


@contextmanager
def quiet() -> Iterator[None]:
    """diffusers' and transformers' progress bars and warnings off while a pipeline is loaded or saved for export,
    their settings restored after (an fp16 pipeline on the CPU draws warnings about running it, which an export
    never does)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


@dataclass(frozen=True)
class ExportJob:
    """One checkpoint of one run, to be written in ``fmt`` with weights in ``dtype`` (``"fp16"``/``"fp32"``).

    A format's writer gets the job and reads what it needs: :meth:`load_pipeline` for the fine-tuned
    pipeline, :meth:`metadata` for the strings a file records, :attr:`config` for the run's settings.
    """

    run_dir: Path
    checkpoint: Path
    name: str  # checkpoint-<step> or pipeline
    step: int
    config: TrainConfig
    fmt: str
    dtype: str = "fp16"

    @classmethod
    def of(cls, run_dir: str | Path, checkpoint: str | Path, fmt: str, dtype: str = "fp16") -> ExportJob:
        """The job of a run's checkpoint (resolved by :func:`resolve_export`)."""
        if dtype not in EXPORT_PRECISIONS:
            raise ExportError(f"dtype must be one of {list(EXPORT_PRECISIONS)}, got {dtype!r}")
        run_dir = Path(run_dir)
        path, name = resolve_export(run_dir, checkpoint)
        config = load_config(run_dir)
        return cls(run_dir, Path(path), name, checkpoint_step_of(Path(path), config), config, fmt, dtype)

    @property
    def torch_dtype(self):
        import torch

        return {"fp16": torch.float16, "fp32": torch.float32}[self.dtype]

    @property
    def stem(self) -> str:
        """The file name stem of a single-file export: ``<run>-<checkpoint>``."""
        return f"{self.run_dir.name}-{self.name}"

    def load_pipeline(self, safety_checker: bool = False):
        """The fine-tuned pipeline on the CPU in :attr:`torch_dtype`, built as sampling builds it
        (:func:`cartoonify.sampling.load_finetuned`: the run's base model, hub id, folder or ``embedded:`` name,
        with the checkpoint's trained modules swapped in, or the final pipeline folder as it is). Adapters of a
        LoRA checkpoint are fused into the weights, so that the pipeline's modules are the fine-tuned model."""
        import torch

        from ..models import resolve_model
        from ..sampling import load_finetuned
        from ..training.lora import is_lora_checkpoint, remove_lora

        c = self.config
        base = resolve_model(c.pretrained_model, c.resolution)
        lora = is_lora_checkpoint(self.checkpoint)  # fused in fp32, then cast
        with quiet():
            pipe = load_finetuned(base, self.checkpoint, revision=c.revision, variant=c.variant, device="cpu",
                                  torch_dtype=torch.float32 if lora else self.torch_dtype,
                                  safety_checker=safety_checker, allow_pickle=c.allow_pickle)
            if lora:
                remove_lora(pipe.unet, pipe.text_encoder, fuse=True)
                pipe.to(dtype=self.torch_dtype)
        return pipe

    def metadata(self, prediction_type: str = "epsilon") -> dict[str, str]:
        """What an exported file records about itself, every value a string (safetensors metadata): the SAI
        model spec's keys (``modelspec.*``) and the run's (``cartoonify.*``)."""
        c = self.config
        title = f"{self.run_dir.name} {self.name}"
        return {
            "format": "pt",
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.title": title,
            "modelspec.description": f"DreamBooth fine-tune of {c.pretrained_model} (cartoonify), step {self.step}",
            "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "modelspec.license": base_license(c),
            "modelspec.resolution": f"{c.resolution}x{c.resolution}",
            "modelspec.prediction_type": prediction_type,
            "modelspec.trigger_phrase": c.instance_prompt,
            "modelspec.tags": "dreambooth,cartoonify,text-to-image",
            **{f"cartoonify.{k}": str(v) for k, v in self.record().items()},
        }

    def record(self) -> dict[str, Any]:
        """The run facts an export carries (its metadata, ``export.json``, the model card)."""
        c = self.config
        return {
            "version": __version__, "run": self.run_dir.name, "checkpoint": self.name, "step": self.step,
            "format": self.fmt, "dtype": self.dtype, "base_model": c.pretrained_model, "base_revision": c.revision,
            "instance_prompt": c.instance_prompt, "class_prompt": c.class_prompt, "seed": c.seed,
            "learning_rate": c.learning_rate, "train_text_encoder": c.train_text_encoder, "resolution": c.resolution,
            "max_train_steps": c.max_train_steps, "train_mode": c.train_mode,
        }
