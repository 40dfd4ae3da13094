"""What may be loaded: weights only from safetensors (pickle can run code), and only of the base model's
architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runs import CheckpointError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def pickle_files(folder: str | Path) -> list[Path]:
    """Files in ``folder`` whose format is pickle (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pkl``)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def check_safe_to_load(folder: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a folder of weights whose weights exist only as pickle files (loading them can run code)
    unless ``allow_pickle``; the message names the files and the flag. Pickle files beside safetensors
    of the same folder are harmless: only the safetensors are read."""
    if allow_pickle:
        return
    folder = Path(folder)
    found = [p for p in pickle_files(folder) if not any(p.parent.glob("*.safetensors"))]
    if found:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise CheckpointError(
            f"{folder} holds weights only as pickle files ({names}): loading them can run arbitrary code, so only "
            "safetensors are loaded. Convert them to safetensors, or pass allow_pickle=True if you trust their source."
        )


ARCHITECTURE_KEYS = (
    "_class_name",
    "architectures",
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "projection_dim",
)


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a model config that fix its weights' shapes (tuples as lists, as in config.json)."""

    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {k: norm(config[k]) for k in ARCHITECTURE_KEYS if k in config}


def check_architecture(saved_config: dict[str, Any], base_config: dict[str, Any], what: str, where: str, base: str) -> None:
    """Refuse a checkpoint module whose architecture differs from the base model's, naming both."""
    a, b = architecture(saved_config), architecture(base_config)
    diff = {
        k: (a.get(k), b.get(k))
        for k in set(a) & set(b)  # a key only one side records (e.g. _class_name in memory) is no evidence
        if a[k] != b[k] and k != "architectures"
    }
    if diff:
        detail = "; ".join(f"{k}: checkpoint {v[0]!r}, base {v[1]!r}" for k, v in sorted(diff.items()))
        raise CheckpointError(
            f"the {what} in {where} does not fit the base model {base}: {detail}. Load it with the base model it "
            "was trained from."
        )
