"""Training state in safetensors and JSON only (no pickle is written or read): nested optimizer/scheduler
states split into tensors and a JSON skeleton, and every random generator."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import write_json


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
            tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()  # one copy, also of a device tensor
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
    return save_flat_state(folder, name, *flatten_state(state))


def save_flat_state(folder: str | Path, name: str, skeleton: Any, tensors: dict[str, torch.Tensor]) -> list[Path]:
    """:func:`save_state` of a state already split by :func:`flatten_state`."""
    from safetensors.torch import save_file

    folder = Path(folder)
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
