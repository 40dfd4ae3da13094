"""``python -m cartoonify.export``'s settings: which checkpoint of which run, in which format, where to.

Every export setting is declared once, here: its type, its default and its help text. The command line
(:mod:`cartoonify.exporting.cli`) is built from these fields: ``--field-name`` for each (``CHECKPOINT`` is the
positional argument), a bool as ``--flag``/``--no-flag``. The formats themselves are a registry of the export
layer (:data:`cartoonify.exporting.FORMATS`), so ``format`` is checked there, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .core import ConfigBase, ConfigError, check_choice

EXPORT_PRECISIONS = ("fp16", "fp32")  # the dtype of the exported weights


def setting(default: Any, text: str, *, positional: bool = False, choices: tuple = (), metavar: str | None = None):
    """An export setting: a dataclass field whose metadata carries its help ``text``, whether the command line
    takes it as the ``positional`` argument, its ``choices`` and how its usage names the value (``metavar``)."""
    return dataclasses.field(
        default=default, metadata={"help": text, "positional": positional, "choices": choices, "metavar": metavar}
    )


@dataclass
class ExportConfig(ConfigBase):
    """One export: a run's checkpoint as a model file or folder, with its model card beside it."""

    checkpoint: str = setting(
        "best", "a checkpoint folder (outputs/<run>/checkpoints/checkpoint-<step>, outputs/<run>/pipeline), a run "
        "folder (its best checkpoint), or with --run a name: best (03_evaluate's choice), latest, pipeline, "
        "checkpoint-<step>", positional=True, metavar="CHECKPOINT",
    )  # fmt: skip
    format: str = setting(
        "single-file", "single-file: one .safetensors in the original SD layout (AUTOMATIC1111, ComfyUI, "
        "from_single_file); diffusers: a pipeline folder (from_pretrained); lora: a LoRA run's adapters (diffusers' "
        "file and the kohya layout for AUTOMATIC1111/ComfyUI)", metavar="FORMAT",
    )  # fmt: skip
    run: str = setting("", "the run folder, outputs/<run> (empty: the one CHECKPOINT's path lies in)", metavar="RUN_DIR")
    out: str = setting("", "the export's folder (empty: outputs/<run>/exports/<checkpoint>-<format>/)", metavar="PATH")
    dtype: str = setting("fp16", "dtype of the exported weights", choices=EXPORT_PRECISIONS)
    overwrite: bool = setting(False, "replace an earlier export in the same folder")

    def validate(self):
        """Check the dtype and that a checkpoint is named; returns self."""
        check_choice("dtype", self.dtype, EXPORT_PRECISIONS)
        for key in ("checkpoint", "format"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}' must not be empty")
        return self
