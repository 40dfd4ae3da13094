"""Devices and dtypes: where a module runs and in which precision."""

from __future__ import annotations

import warnings

import torch

# "no": no reduced precision (accelerate's spelling); "fp32" the same
PRECISION_DTYPES = {"no": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a precision name ("no"/"fp32", "fp16", "bf16"); the one mapping of the package."""
    return PRECISION_DTYPES[precision]


def resolve_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: str, device: "torch.device", what: str = "precision") -> torch.dtype:
    """Map "fp16"/"bf16"/"fp32"/"no" to a dtype usable on ``device``; fp16 on CPU falls back to fp32 with a warning."""
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"unknown {what} {precision!r}; expected one of {', '.join(PRECISION_DTYPES)}")
    if precision == "fp16":
        if device.type == "cpu":
            warnings.warn(
                f"{what}='fp16' is not usable on CPU; using fp32 instead", RuntimeWarning, stacklevel=2
            )
            return torch.float32
    return precision_dtype(precision)


def move_module(module, device=None, dtype=None):
    """``module.to(device, dtype)``, skipping what already holds (diffusers warns on every dtype cast)."""
    p = next(module.parameters(), None)
    if p is None:
        return module
    if device is not None and p.device != torch.device(device):
        module.to(device)
    if dtype is not None and p.dtype != dtype:
        module.to(dtype=dtype)
    return module
