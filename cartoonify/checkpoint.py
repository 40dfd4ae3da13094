"""Training state on disk in safetensors and JSON only: no pickle is written or read.

A checkpoint folder holds the trained modules (``unet/``, ``text_encoder/``, diffusers' and transformers'
``save_pretrained`` in safetensors), the optimizer (8-bit state included), LR scheduler and grad scaler
states, every random generator, the data position, and last a marker ``checkpoint.json`` with the
SHA-256 of every file. The trainer writes it in a temporary folder and renames it into place, so a
folder named ``checkpoint-<step>`` is complete, and the checksums catch one damaged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .utils import write_json

MARKER = "checkpoint.json"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, damaged, unsafe to load, or does not fit the model."""


# ------------------------------------------------------------------------------------------------
# nested state <-> (tensors, JSON)
# ------------------------------------------------------------------------------------------------


def flatten_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays) into a
    JSON-able skeleton and a flat dict of tensors for safetensors. A tensor that appears several times
    (bitsandbytes shares its quantisation maps between parameters) is stored once."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}

    def walk(obj: Any, prefix: str) -> Any:
        if isinstance(obj, torch.Tensor):
            ident = (obj.data_ptr(), obj.dtype, tuple(obj.shape), tuple(obj.stride()), obj.device.type)
            if obj.numel() and ident in seen:
                return {"__tensor__": seen[ident]}
            seen[ident] = prefix
            tensors[prefix] = obj.detach().cpu().contiguous().clone()
            return {"__tensor__": prefix}
        if isinstance(obj, np.ndarray):
            tensors[prefix] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
            return {"__ndarray__": prefix, "dtype": str(obj.dtype)}
        if isinstance(obj, dict):
            items = [(k, walk(v, f"{prefix}.{k}")) for k, v in obj.items()]
            if all(isinstance(k, str) for k, _ in items):
                return dict(items)
            return {"__items__": [[k, v] for k, v in items]}
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{prefix}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{prefix}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, (np.integer, np.floating)):
            return obj.item()
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store a {type(obj).__name__} at {prefix} in safetensors/JSON")

    return walk(obj, "s"), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy().astype(skeleton["dtype"])
        if "__items__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_state(folder: str | Path, name: str, state: Any) -> list[Path]:
    """Write ``state`` as ``<name>.safetensors`` (its tensors) and ``<name>.json`` (the rest)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    skeleton, tensors = flatten_state(state)
    written = [write_json(folder / f"{name}.json", skeleton)]
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
        written.append(folder / f"{name}.safetensors")
    return written


def load_state(folder: str | Path, name: str) -> Any:
    """Read back :func:`save_state`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    skeleton = json.loads((folder / f"{name}.json").read_text())
    st = folder / f"{name}.safetensors"
    return unflatten_state(skeleton, load_file(str(st)) if st.is_file() else {})


# ------------------------------------------------------------------------------------------------
# random generators
# ------------------------------------------------------------------------------------------------


def rng_states(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python's, numpy's, torch's (CPU and CUDA) global generators and ``generator``."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_states(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore :func:`rng_states`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ------------------------------------------------------------------------------------------------
# completeness, checksums, safety
# ------------------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_marker(folder: str | Path, info: dict[str, Any]) -> Path:
    """The last file of a checkpoint: ``info`` plus the size and SHA-256 of every other file."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    return write_json(folder / MARKER, {**info, "files": files})


def verify_checkpoint(folder: str | Path) -> list[str]:
    """Problems of a checkpoint folder (empty when its marker is there and every checksum matches)."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        return [f"no {MARKER}: the save did not complete"]
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        return [f"{MARKER} is unreadable: {err}"]
    problems = []
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != meta["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, expected {meta['bytes']}")
        elif sha256_file(path) != meta["sha256"]:
            problems.append(f"{rel} does not match its checksum")
    return problems


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
