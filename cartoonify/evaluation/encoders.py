"""One loader for every evaluation model (CLIP for CLIP-T and CLIP-I, DINO for DINO similarity), from a hub id,
a local folder or an embedded tiny model, through the same ``from_pretrained`` call; and their embeddings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..models.devices import resolve_device
from ..models.loading import _dtype_kwargs
from ..models.weights import check_safe_to_load
from ..runs import CheckpointError
from .tinymodels import resolve_eval_model

if TYPE_CHECKING:
    from PIL import Image

KINDS = ("clip", "dino")


class EvalModelUnavailable(RuntimeError):
    """The weights of an evaluation model cannot be loaded; the message says which, why and how to get them."""


# --------------------------------------------------------------------------------------------------------------------
# The encoder.
# --------------------------------------------------------------------------------------------------------------------


def _slug_text(text: str) -> str:
    """``text`` with every character that is unsafe in a file name replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _l2_normalised(features: torch.Tensor) -> np.ndarray:
    """Rows of ``features`` scaled to unit length, as a float32 numpy array."""
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def _projected(output: Any) -> torch.Tensor:
    """The embedding tensor of ``get_image_features`` / ``get_text_features``.

    transformers 4 returns the projected tensor; transformers 5 returns a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` holds the projected embedding.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected output of a CLIP feature method: {type(output).__name__}")


@dataclass
class Encoder:
    """A loaded evaluation model: ``kind`` (clip or dino), ``name`` as given, the model, its processor and where
    and in which precision it runs."""

    kind: str
    name: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def slug(self) -> str:
        """A file-safe name, unique per kind and model (a local folder: its name plus a hash of its absolute path)."""
        local = Path(self.name).expanduser()
        if local.exists():
            resolved = local.resolve()
            digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:10]
            return f"{self.kind}-{_slug_text(resolved.name)}-{digest}"
        return f"{self.kind}-{_slug_text(self.name.replace('/', '--'))}"

    @property
    def has_text(self) -> bool:
        """Whether the model embeds text (CLIP does, DINO does not)."""
        return self.kind == "clip"

    @property
    def dim(self) -> int:
        """The length of one embedding."""
        config = self.model.config
        return int(config.projection_dim if self.kind == "clip" else config.hidden_size)

    @property
    def image_processor(self) -> Any:
        """The processor's image part (CLIP's processor holds one; DINO's processor is one)."""
        return getattr(self.processor, "image_processor", self.processor)

    def _pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocessed ``images`` on the model's device and dtype."""
        batch = self.image_processor(images=[img.convert("RGB") for img in images], return_tensors="pt")
        return batch["pixel_values"].to(self.device, self.dtype)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP: the projected image embedding; DINO: the CLS token of the last hidden state."""
        if self.kind == "clip":
            return _projected(self.model.get_image_features(pixel_values=pixel_values))
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        """L2-normalised embeddings of ``images``, shape (N, D), float32, computed ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                pixels = self._pixel_values(images[start : start + batch_size])
                out.append(_l2_normalised(self._image_features(pixels)))
        return np.concatenate(out, axis=0)

    def _max_text_length(self) -> int:
        """The longest token sequence the text model takes (the tokenizer's limit if lower)."""
        limit = int(self.model.config.text_config.max_position_embeddings)
        tokenizer_limit = getattr(self.processor.tokenizer, "model_max_length", limit) or limit
        return min(limit, int(tokenizer_limit))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised CLIP text embeddings, shape (N, D), float32; texts are truncated to the model's length.

        Raises:
            ValueError: the model has no text tower (DINO).
            TypeError: ``texts`` is a single string.
        """
        if not self.has_text:
            raise ValueError(f"the {self.kind} model {self.name!r} embeds images only, not texts")
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        max_length = self._max_text_length()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.processor.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                features = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
                out.append(_l2_normalised(_projected(features)))
        return np.concatenate(out, axis=0)


# --------------------------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` reads as a filesystem path rather than a hub id (``name`` or ``owner/name``)."""
    return name.startswith(("/", "~", ".", "\\")) or name.count("/") > 1 or "\\" in name or ":" in name


def _how_to_get(kind: str, name: str) -> str:
    """One sentence on how to obtain the weights of ``name``."""
    if Path(name).expanduser().is_dir():
        return (
            f"the folder must hold a {kind} model saved with save_pretrained (config.json, model.safetensors) and "
            "its processor's configs"
        )
    if _looks_like_path(name):
        return f"no such folder; pass an existing folder or a hub id as the `{kind}_model` parameter"
    return (
        f"on a machine with internet run `hf download {name} --local-dir <folder>` (older huggingface_hub: "
        f"`huggingface-cli download {name}`), then pass that folder as the `{kind}_model` parameter; "
        "or set HF_HUB_OFFLINE=0 where the hub is reachable"
    )


def _unavailable(kind: str, name: str, resolved: str, err: BaseException) -> EvalModelUnavailable:
    """An :class:`EvalModelUnavailable` naming the model, the reason in one line and how to get it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = (lines[0] if lines else type(err).__name__)[:300].rstrip(".")
    where = name if resolved == name else f"{name} ({resolved})"
    return EvalModelUnavailable(
        f"cannot load the {kind} evaluation model {where}: {reason}. To get it: {_how_to_get(kind, name)}."
    )


def _from_pretrained(kind: str, resolved: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model and processor of ``kind`` at ``resolved`` (hub id or folder), through ``from_pretrained``."""
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

    if Path(resolved).is_dir():
        check_safe_to_load(resolved)  # a clear refusal of pickle-only folders
    model_kwargs = {"use_safetensors": True, "output_loading_info": True, **_dtype_kwargs("transformers", dtype)}
    model_class, processor_class = (CLIPModel, CLIPProcessor) if kind == "clip" else (AutoModel, AutoImageProcessor)
    model, info = model_class.from_pretrained(resolved, **model_kwargs)
    _check_complete(kind, model, info)
    return model, processor_class.from_pretrained(resolved)


# Parameters a checkpoint may lack without changing the embeddings (ViT's pooler is not read; DINO has none).
_OPTIONAL_PREFIXES = ("pooler.",)


def _check_complete(kind: str, model: Any, info: dict[str, Any]) -> None:
    """Raises ``ValueError`` if loading left used parameters at random (e.g. a DINO folder read as CLIP).

    transformers only warns when a checkpoint of another architecture is loaded: the missing weights come out
    randomly initialised, which would give plausible-looking but meaningless scores.
    """
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(_OPTIONAL_PREFIXES))
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} weights of a {type(model).__name__} (e.g. {missing[0]}): "
            f"it is not a {kind} model (its config says model_type={getattr(model.config, 'model_type', None)!r})"
        )
    if kind == "dino" and not hasattr(model, "embeddings"):
        raise ValueError(f"{type(model).__name__} is not a vision transformer that DINO scores can read")


def load_encoder(
    kind: str,
    name_or_path: str,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
) -> Encoder:
    """Loads an evaluation model: the one function every evaluation model loads through.

    Args:
        kind: ``"clip"`` (``CLIPModel`` + ``CLIPProcessor``) or ``"dino"`` (``AutoModel`` + ``AutoImageProcessor``).
        name_or_path: Hub id, local folder, or the kind's embedded tiny model (``TINY_CLIP_MODEL`` /
            ``TINY_DINO_MODEL``, built on first use); all load through the same ``from_pretrained`` call.
        device: Where to run; CUDA when available, else CPU.
        torch_dtype: Precision; float16 on CUDA and float32 on CPU when None.

    Raises:
        ValueError: an unknown ``kind`` or a misused embedded name.
        EvalModelUnavailable: the weights cannot be loaded (not downloaded and offline, no such folder, pickle only).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation model kind {kind!r}; expected one of {', '.join(KINDS)}")
    name = str(name_or_path)
    resolved = resolve_eval_model(name, kind)
    device = resolve_device(str(device) if device is not None else None)
    dtype = torch_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    try:
        model, processor = _from_pretrained(kind, resolved, dtype)
    except (OSError, ValueError, CheckpointError) as err:
        raise _unavailable(kind, name, resolved, err) from err
    model = model.to(device=device, dtype=dtype).eval()
    return Encoder(kind=kind, name=name, model=model, processor=processor, device=device, dtype=dtype)


def try_load_encoder(kind: str, name_or_path: str, **kwargs: Any) -> tuple[Encoder | None, str | None]:
    """:func:`load_encoder`, returning ``(None, message)`` instead of raising :class:`EvalModelUnavailable`."""
    try:
        return load_encoder(kind, name_or_path, **kwargs), None
    except EvalModelUnavailable as err:
        return None, str(err)
