"""Export to the original (CompVis / LDM) Stable Diffusion single-file layout, which AUTOMATIC1111 and ComfyUI load.

diffusers reads this layout (``diffusers.loaders.single_file_utils``, ``StableDiffusionPipeline.from_single_file``) but
does not write it; this module is the other direction, diffusers state dicts to one ``.safetensors``:

* the UNet under ``model.diffusion_model.`` (``input_blocks`` / ``middle_block`` / ``output_blocks``),
* the VAE under ``first_stage_model.`` (``encoder.down.*`` / ``decoder.up.*``, the mid-block attention's
  q/k/v/proj_out as 1x1 convolutions),
* the CLIP text encoder under ``cond_stage_model.transformer.text_model.`` (the names transformers uses, with the
  ``text_model.`` level that transformers >= 5.6 dropped from ``CLIPTextModel`` put back).

The key mappings follow the config's block counts and layers per block; :func:`check_mappable` is the gate for what
may be *published*: the fixed SD1.x structure (4 levels, 2 resnets each, ...) that the original code and the tools
built on it assume. Widths and the cross-attention size are carried by the tensors' shapes and may differ (a smaller
model of the same layout round-trips through diffusers' loader with ``config=``), but A1111 and ComfyUI only
recognise the real SD1.5 widths.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_write_with

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."


class SingleFileError(ValueError):
    """A model that the original Stable Diffusion single-file layout cannot hold."""


# --------------------------------------------------------------------------------------------------------------------
# What the original SD1.x layout fixes (its v1-inference.yaml and the LDM code's hard-coded choices).
# --------------------------------------------------------------------------------------------------------------------

SD1_DOWN_BLOCKS = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD1_UP_BLOCKS = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3

# (config key, required value): values the file cannot record and the original code assumes, or structure it fixes.
# Widths (block_out_channels), cross_attention_dim and in_channels (4, or 9 for inpainting) are carried by shapes.
_UNET_REQUIRED: tuple[tuple[str, Any], ...] = (
    ("down_block_types", SD1_DOWN_BLOCKS),
    ("up_block_types", SD1_UP_BLOCKS),
    ("layers_per_block", 2),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("transformer_layers_per_block", 1),
    ("attention_head_dim", 8),  # diffusers' name for SD1.x's num_heads
    ("num_attention_heads", None),
    ("use_linear_projection", False),
    ("out_channels", 4),
    ("norm_num_groups", 32),
    ("norm_eps", 1e-5),
    ("act_fn", "silu"),
    ("conv_in_kernel", 3),
    ("conv_out_kernel", 3),
    ("downsample_padding", 1),
    ("center_input_sample", False),
    ("mid_block_scale_factor", 1),
    ("resnet_out_scale_factor", 1.0),
    ("resnet_skip_time_act", False),
    ("flip_sin_to_cos", True),
    ("freq_shift", 0),
    ("time_embedding_type", "positional"),
    ("resnet_time_scale_shift", "default"),
    ("only_cross_attention", False),
    ("dual_cross_attention", False),
    ("attention_type", "default"),
    ("class_embed_type", None),
    ("num_class_embeds", None),
    ("addition_embed_type", None),
    ("encoder_hid_dim", None),
    ("time_cond_proj_dim", None),
    ("time_embedding_dim", None),
    ("time_embedding_act_fn", None),
    ("timestep_post_act", None),
    ("mid_block_only_cross_attention", None),
    ("cross_attention_norm", None),
)

_VAE_REQUIRED: tuple[tuple[str, Any], ...] = (
    ("down_block_types", ("DownEncoderBlock2D",) * 4),
    ("up_block_types", ("UpDecoderBlock2D",) * 4),
    ("layers_per_block", 2),
    ("in_channels", 3),
    ("out_channels", 3),
    ("latent_channels", 4),
    ("norm_num_groups", 32),
    ("act_fn", "silu"),
    ("mid_block_add_attention", True),
    ("use_quant_conv", True),
    ("use_post_quant_conv", True),
    ("scaling_factor", 0.18215),
    ("shift_factor", None),
    ("latents_mean", None),
    ("latents_std", None),
)


def _with_defaults(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a dict or diffusers ``FrozenDict``, possibly partial) completed with ``cls.__init__``'s defaults."""
    params = inspect.signature(cls.__init__).parameters.values()
    full = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    full.update({k: v for k, v in dict(config).items() if not k.startswith("_")})
    return full


def _same(value: Any, required: Any) -> bool:
    """Whether a config value equals the required one (a per-block list of one repeated value counts as it)."""
    if isinstance(required, tuple):
        return isinstance(value, (list, tuple)) and tuple(value) == required
    if isinstance(value, (list, tuple)) and value:
        return all(_same(v, required) for v in value)
    if isinstance(value, bool) != isinstance(required, bool) or (value is None) != (required is None):
        return False
    if isinstance(required, float):
        return isinstance(value, (int, float)) and abs(value - required) <= 1e-9 * max(1.0, abs(required))
    return value == required


def _differences(what: str, config: dict[str, Any], required: tuple[tuple[str, Any], ...]) -> list[str]:
    """Human-readable differences between ``config`` and the SD1.x layout (``what`` is "UNet" or "VAE")."""
    problems = []
    for key, want in required:
        have = config.get(key)
        if _same(have, want):
            continue
        if key == "down_block_types" and len(have or ()) != len(want):
            problems.append(f"the {what} has {len(have or ())} down blocks; the original Stable Diffusion layout has 4")
        elif key == "up_block_types" and len(have or ()) != len(want):
            problems.append(f"the {what} has {len(have or ())} up blocks; the original Stable Diffusion layout has 4")
        else:
            have_text = list(have) if isinstance(have, tuple) else have
            want_text = list(want) if isinstance(want, tuple) else want
            problems.append(
                f"the {what}'s {key} is {have_text!r}; the original Stable Diffusion layout has {want_text!r}"
            )
    return problems


def check_mappable(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> None:
    """Raises :class:`SingleFileError` naming every way the UNet / VAE configs differ from the SD1.x layout.

    Partial configs (such as :func:`cartoonify.models.tiny.tiny_unet_config`) are completed with diffusers' defaults.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = _with_defaults(UNet2DConditionModel, unet_config)
    vae = _with_defaults(AutoencoderKL, vae_config)
    problems = _differences("UNet", unet, _UNET_REQUIRED)
    if unet.get("in_channels") not in (4, 9):
        have = unet.get("in_channels")
        problems.append(f"the UNet's in_channels is {have!r}; the original layout has 4 (9: inpainting)")
    problems += _differences("VAE", vae, _VAE_REQUIRED)
    if problems:
        raise SingleFileError(
            "cannot export to the original Stable Diffusion single-file layout: " + "; ".join(problems)
        )


# --------------------------------------------------------------------------------------------------------------------
# Key mappings. Each builds a table of diffusers module prefixes -> original prefixes from the config, then renames
# every key through its longest matching prefix; a key that matches nothing is an error, never silently dropped.
# --------------------------------------------------------------------------------------------------------------------

_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _layers_per_block(config: Mapping[str, Any], n_blocks: int) -> int:
    layers = config.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise SingleFileError(f"layers_per_block {list(layers)} varies by block; the original layout has one count")
        layers = layers[0]
    if n_blocks < 1 or int(layers) < 1:
        raise SingleFileError(f"cannot map {n_blocks} blocks of {layers} layers")
    return int(layers)


def _unet_prefixes(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, str] | None]]:
    """diffusers UNet module prefix -> (original prefix, renames inside it) for ``config``'s block counts."""
    n = len(config["block_out_channels"])
    lpb = _layers_per_block(config, n)
    table: dict[str, tuple[str, dict[str, str] | None]] = {
        "time_embedding.linear_1": ("time_embed.0", None),
        "time_embedding.linear_2": ("time_embed.2", None),
        "conv_in": ("input_blocks.0.0", None),
        "conv_norm_out": ("out.0", None),
        "conv_out": ("out.2", None),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET_PARTS),
        "mid_block.attentions.0": ("middle_block.1", None),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET_PARTS),
    }
    for i in range(n):
        for j in range(lpb):  # LDM: input_blocks.0 is conv_in, then lpb (resnet, attention) pairs and a downsampler
            slot = 1 + i * (lpb + 1) + j
            table[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{slot}.0", _UNET_RESNET_PARTS)
            table[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{slot}.1", None)
        table[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{(i + 1) * (lpb + 1)}.0.op", None)
        for j in range(lpb + 1):  # LDM: lpb + 1 (resnet, attention) pairs per level, the upsampler after the last
            slot = i * (lpb + 1) + j
            table[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{slot}.0", _UNET_RESNET_PARTS)
            table[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{slot}.1", None)
        has_attention = "CrossAttn" in str(config["up_block_types"][i])
        last = i * (lpb + 1) + lpb
        table[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{last}.{2 if has_attention else 1}.conv", None)
    return table


def _vae_prefixes(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, str] | None]]:
    """diffusers VAE module prefix -> (original prefix, renames inside it) for ``config``'s block counts."""
    n = len(config["block_out_channels"])
    lpb = _layers_per_block(config, n)
    table: dict[str, tuple[str, dict[str, str] | None]] = {
        name: (name, None) for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                                        "quant_conv", "post_quant_conv")
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_norm_out"] = (f"{part}.norm_out", None)
        table[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", _VAE_RESNET_PARTS)
        table[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", _VAE_RESNET_PARTS)
        table[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION_PARTS)
    for i in range(n):
        for j in range(lpb):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", _VAE_RESNET_PARTS)
        table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", None)
        level = n - 1 - i  # the original decoder numbers its levels from the bottom (highest resolution) up
        for j in range(lpb + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{level}.block.{j}", _VAE_RESNET_PARTS)
        table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{level}.upsample.conv", None)
    return table


def _rename(key: str, table: Mapping[str, tuple[str, dict[str, str] | None]], what: str) -> str:
    """``key`` renamed through the longest prefix of ``table`` it starts with (plus the renames inside it)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        entry = table.get(".".join(parts[:cut]))
        if entry is None:
            continue
        target, inner = entry
        rest = ".".join(parts[cut:])
        for old, new in (inner or {}).items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        return f"{target}.{rest}"
    raise SingleFileError(f"the {what} key {key!r} has no place in the original Stable Diffusion layout")


def unet_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the original layout (keys ``model.diffusion_model.*``)."""
    table = _unet_prefixes(config)
    return {UNET_PREFIX + _rename(key, table, "UNet"): value for key, value in state_dict.items()}


def vae_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the original layout (keys ``first_stage_model.*``).

    The mid-block attention's q/k/v/proj_out are ``Linear`` layers in diffusers and 1x1 convolutions in the
    original, so their ``[C, C]`` weights become ``[C, C, 1, 1]`` (a view, no copy).
    """
    table = _vae_prefixes(config)
    out = {}
    for key, value in state_dict.items():
        name = _rename(key, table, "VAE")
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + name] = value
    return out


def text_encoder_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict in the original SD1.x layout (``cond_stage_model.transformer.*``).

    SD1.x files hold the text model as ``cond_stage_model.transformer.text_model.*`` (diffusers recognises the CLIP
    tower by ``...text_model.embeddings.position_embedding.weight``). transformers >= 5.6 dropped the ``text_model.``
    level from ``CLIPTextModel``; it is put back here. The ``position_ids`` buffer, where present, is left out.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids"):
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key
        out[TEXT_ENCODER_PREFIX + key] = value
    return out


# --------------------------------------------------------------------------------------------------------------------
# The single file.
# --------------------------------------------------------------------------------------------------------------------


def _cast(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    value = value.detach()
    return value.to(dtype).contiguous() if value.is_floating_point() else value.contiguous()


def single_file_state_dict(unet, text_encoder, vae, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The three modules' weights in the original layout, floating tensors cast to ``dtype`` (no check)."""
    converted = {
        **unet_to_original(unet.state_dict(), unet.config),
        **vae_to_original(vae.state_dict(), vae.config),
        **text_encoder_to_original(text_encoder.state_dict()),
    }
    return {key: _cast(value, dtype) for key, value in converted.items()}


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata keys and values must be strings; not so for {bad!r}")
    return dict(metadata)


def to_single_file(
    unet,
    text_encoder,
    vae,
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float16,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes the UNet, CLIP text encoder and VAE as one original-layout ``.safetensors`` file; returns its path.

    Floating tensors are cast to ``dtype``. The file is written beside ``path`` under a temporary name and renamed
    into place, so a reader never sees half of it. A model the SD1.x layout cannot hold (:func:`check_mappable`) or
    metadata that is not all strings is refused before anything is written.
    """
    check_mappable(unet.config, vae.config)
    metadata = _check_metadata(metadata)
    from safetensors.torch import save_file

    tensors = single_file_state_dict(unet, text_encoder, vae, dtype)
    return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _meta_modules(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_config: Any) -> tuple:
    """The UNet, VAE and CLIP text encoder built on the meta device (no memory for weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if not isinstance(text_config, CLIPTextConfig):
        text_config = CLIPTextConfig(**{k: v for k, v in dict(text_config).items() if not k.startswith("_")})
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
        vae = AutoencoderKL.from_config(dict(vae_config))
        text_encoder = CLIPTextModel(text_config)
    return unet, vae, text_encoder


def single_file_shapes(
    unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_config: Any
) -> dict[str, tuple[int, ...]]:
    """Every key of the single file for these configs and its shape, computed on the meta device."""
    unet, vae, text_encoder = _meta_modules(unet_config, vae_config, text_config)
    tensors = single_file_state_dict(unet, text_encoder, vae, dtype=torch.float16)
    return {key: tuple(value.shape) for key, value in tensors.items()}


def single_file_keys(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_config: Any) -> set[str]:
    """The key set of the single file for these configs, computed on the meta device."""
    return set(single_file_shapes(unet_config, vae_config, text_config))
