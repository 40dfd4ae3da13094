"""ControlNets: loading one (or several) from a hub id, a local folder or the embedded tiny canny ControlNet,
through the same ``ControlNetModel.from_pretrained`` call.

* ``CANNY_CONTROLNET`` / ``LINEART_CONTROLNET``: lllyasviel's SD1.5 ControlNets v1.1 (hub ids; download
  them with ``hf download <id> --local-dir DIR`` and pass ``DIR`` where the hub is out of reach);
* ``TINY_CANNY_CONTROLNET``: a canny ControlNet for the embedded tiny model (``embedded:tiny``), trained by
  the package (``python -m cartoonify.training.controlnet``) and shipped inside it.

This layer knows no training and no run files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

# the names are declared with the other settings; CANNY_CONTROLNET and LINEART_CONTROLNET are lllyasviel's SD1.5
# ControlNets v1.1 on the hub, TINY_CANNY_CONTROLNET the embedded tiny model's, shipped in EMBEDDED_CONTROLNET_DIR
from ..config import CANNY_CONTROLNET, LINEART_CONTROLNET, TINY_CANNY_CONTROLNET
from .loading import _dtype_kwargs, _local_or_hub
from .weights import check_safe_to_load

__all__ = ["CANNY_CONTROLNET", "EMBEDDED_CONTROLNETS", "EMBEDDED_CONTROLNET_DIR", "LINEART_CONTROLNET",
           "TINY_CANNY_CONTROLNET", "ControlNetUnavailable", "load_controlnet", "load_controlnets",
           "resolve_controlnet"]

EMBEDDED_CONTROLNET_DIR = Path(__file__).resolve().parent / "embedded" / "tiny-controlnet-canny"
EMBEDDED_CONTROLNETS = {TINY_CANNY_CONTROLNET: EMBEDDED_CONTROLNET_DIR}


class ControlNetUnavailable(RuntimeError):
    """A ControlNet could not be loaded (not downloaded, offline, no such folder, not a ControlNet)."""


def resolve_controlnet(name: str | os.PathLike) -> str:
    """The shipped folder of an embedded ControlNet; any other name unchanged (``~`` expanded for paths
    that exist).

    Raises:
        FileNotFoundError: an embedded ControlNet's folder is missing, with the command that builds it.
    """
    name = str(name)
    if name in EMBEDDED_CONTROLNETS:
        folder = EMBEDDED_CONTROLNETS[name]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded ControlNet {name} is missing from {folder}; build it with "
                f"`python -m cartoonify.training.controlnet --out {folder}` (about 10 minutes on 2 CPU cores)"
            )
        return str(folder)
    return _local_or_hub(name)


def _how_to_get(name: str) -> str:
    """One sentence on how to make ``name`` loadable."""
    if name.startswith("embedded:"):
        return "build it with `python -m cartoonify.training.controlnet --out DIR` and pass DIR"
    if "/" in name and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")):
        return f"download it with `hf download {name} --local-dir DIR` and pass DIR instead"
    return (f"pass a folder holding a diffusers ControlNet (config.json and safetensors weights), e.g. one "
            f"written by `hf download {CANNY_CONTROLNET} --local-dir DIR`")


def load_controlnet(name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> Any:
    """A ``ControlNetModel`` from a hub id, a local folder or an embedded name (the same ``from_pretrained``
    call for all), in ``torch_dtype`` (float32 when None), safetensors only.

    Raises:
        ControlNetUnavailable: the model cannot be loaded; the one-line message names it and says how to get it.
    """
    from diffusers import ControlNetModel

    name = str(name_or_path)
    try:
        resolved = resolve_controlnet(name)
        if Path(resolved).is_dir():
            check_safe_to_load(resolved)
        return ControlNetModel.from_pretrained(
            resolved, use_safetensors=True, **_dtype_kwargs("diffusers", torch_dtype or torch.float32)
        )
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ControlNetUnavailable(f"ControlNet {name!r} is unavailable ({reason}); {_how_to_get(name)}") from err


def load_controlnets(names: str | os.PathLike | Sequence[str | os.PathLike], torch_dtype: torch.dtype | None = None):
    """One ``ControlNetModel`` for a name (or a list of one), a diffusers ``MultiControlNetModel`` for several."""
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    if not names:
        raise ValueError("load_controlnets needs at least one ControlNet name")
    models = [load_controlnet(n, torch_dtype) for n in names]
    if len(models) == 1:
        return models[0]
    from diffusers import MultiControlNetModel

    return MultiControlNetModel(models)
