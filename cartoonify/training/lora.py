"""LoRA mode (``train_mode: lora``): low-rank adapters from peft on the UNet's attention projections and,
with ``train_text_encoder``, on the text encoder's; the base weights stay frozen and untouched.

The UNet's adapter is added with diffusers' own peft integration (``unet.add_adapter``), as diffusers'
``train_dreambooth_lora.py`` does; the text encoder's with peft's ``inject_adapter_in_model`` (transformers'
``add_adapter``/``load_adapter`` would do the same, but refuse the peft releases that PyPI carries beside
transformers 5: they ask for peft >= 0.22). Two files hold the adapters:

* diffusers' LoRA file (``pytorch_lora_weights.safetensors``, written by the pipeline's ``save_lora_weights``,
  with each adapter's LoraConfig in its metadata): what a checkpoint keeps for evaluation and what exports
  ship, in fp32 (megabytes), so that loading it reproduces the run's own validation images. A UNet adapter
  loads with ``pipe.load_lora_weights(folder)``; :func:`load_lora_file` loads both parts;
* peft's state dict of each module, for resuming exactly (:func:`adapter_state`, :func:`load_adapter_state`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import LORA_TEXT_ENCODER_TARGETS, LORA_UNET_TARGETS, TrainConfig
from ..models import load_components

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' name, which load_lora_weights looks for
TARGETS = {"unet": LORA_UNET_TARGETS, "text_encoder": LORA_TEXT_ENCODER_TARGETS}
CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")  # what a LoraConfig is rebuilt from


def lora_config(config: TrainConfig, module_name: str):
    """The peft ``LoraConfig`` of a module ("unet" or "text_encoder") for this run's rank, alpha and dropout."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                      lora_dropout=config.lora_dropout, init_lora_weights="gaussian",
                      target_modules=list(TARGETS[module_name]))


def _inject(module, name: str, peft_config) -> None:
    from peft import inject_adapter_in_model

    if name == "unet":
        module.add_adapter(peft_config)
    else:
        inject_adapter_in_model(peft_config, module)


def add_lora(modules: dict[str, Any], config: TrainConfig, base_dtype: torch.dtype) -> None:
    """Freeze each module (``{"unet": ..., "text_encoder": ...}``), cast its base weights to ``base_dtype``
    (the mixed-precision dtype: half the memory of the frozen model) and add a LoRA adapter whose weights
    are trained in fp32."""
    from diffusers.training_utils import cast_training_params

    for name, module in modules.items():
        module.requires_grad_(False)
        module.to(dtype=base_dtype)
        _inject(module, name, lora_config(config, name))
    cast_training_params(list(modules.values()), dtype=torch.float32)


def trainable_parameters(modules) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates: all of a fully fine-tuned module, the adapters' under LoRA."""
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def adapter_state(module) -> dict[str, torch.Tensor]:
    """peft's state dict of a module's adapter (the LoRA A/B matrices), detached and contiguous on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(module).items()}


def load_adapter_state(module, state: dict[str, torch.Tensor], where: str) -> None:
    """Put :func:`adapter_state`'s weights back into a module with the same adapter, refusing a mismatch."""
    from peft import set_peft_model_state_dict

    expected = adapter_state(module)
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{where}: the LoRA weights do not fit this run's adapter (lora_rank or targets differ)")
    set_peft_model_state_dict(module, state)


def save_lora_file(folder: Path, modules: dict[str, Any], states: dict[str, dict] | None = None) -> Path:
    """Write diffusers' LoRA file of the modules' adapters (fp32) into ``folder``; returns the file.
    ``states``: the adapters' peft state dicts by module name, captured earlier (None: read now)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    kwargs = {}
    for name, module in modules.items():
        state = adapter_state(module) if states is None else states[name]
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(dict(state))
        meta = module.peft_config["default"].to_dict()  # target_modules is a set: sorted, for a stable file
        kwargs[f"{name}_lora_adapter_metadata"] = {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items()}
    StableDiffusionPipeline.save_lora_weights(str(folder), safe_serialization=True, **kwargs)
    return Path(folder) / LORA_WEIGHTS


def is_lora_checkpoint(folder: str | Path) -> bool:
    """Whether a checkpoint (or export) folder holds a LoRA adapter rather than full weights."""
    return (Path(folder) / LORA_WEIGHTS).is_file()


def read_lora_file(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """A LoRA file's tensors and LoraConfig fields, by module ("unet", "text_encoder"), prefixes removed."""
    from safetensors import safe_open

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(Path(folder) / LORA_WEIGHTS), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
            module, rest = key.split(".", 1)
            tensors.setdefault(module, {})[rest] = f.get_tensor(key)
    configs = {m: {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith(f"{m}.")} for m in tensors}
    return tensors, configs


def load_lora_file(unet, text_encoder, folder: str | Path) -> None:
    """Load a LoRA file's adapters onto a UNet (diffusers' ``load_lora_adapter``) and a text encoder (peft),
    unfused; a text-encoder part needs the LoraConfig the file's metadata carries."""
    from diffusers.utils import convert_state_dict_to_peft
    from peft import LoraConfig, set_peft_model_state_dict

    tensors, configs = read_lora_file(folder)
    if "unet" in tensors:
        unet.load_lora_adapter(str(folder), weight_name=LORA_WEIGHTS, prefix="unet", adapter_name="default")
    if "text_encoder" in tensors:
        if not configs.get("text_encoder"):
            raise ValueError(f"{Path(folder) / LORA_WEIGHTS}: the text encoder's LoraConfig is missing from its metadata")
        cfg = LoraConfig(**{k: configs["text_encoder"][k] for k in CONFIG_KEYS if k in configs["text_encoder"]})
        _inject(text_encoder, "text_encoder", cfg)
        set_peft_model_state_dict(text_encoder, convert_state_dict_to_peft(tensors["text_encoder"]))


def remove_lora(unet, text_encoder, fuse: bool = False) -> None:
    """Take the adapters off both modules, first merged into the base weights if ``fuse`` (diffusers'
    ``fuse_lora``/``unload_lora`` for the UNet; peft's ``merge`` and diffusers' layer removal for the text
    encoder, as diffusers' own text-encoder unloading does)."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(unet, "peft_config", None):
        if fuse:
            unet.fuse_lora()
        unet.unload_lora()
    if getattr(text_encoder, "peft_config", None):
        if fuse:
            for layer in text_encoder.modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.merge()
        recurse_remove_peft_layers(text_encoder)
        del text_encoder.peft_config


def fused_components(model_path: str, config: TrainConfig, modules: dict[str, Any]) -> dict[str, Any]:
    """The base model's parts loaded afresh (fp32) with the modules' adapters fused into the UNet and text
    encoder weights and then removed: plain modules that any tool loads without peft. The adapters travel
    through their LoRA file, as an export's do."""
    base = load_components(model_path, revision=config.revision, variant=config.variant)
    with tempfile.TemporaryDirectory() as tmp:
        load_lora_file(base["unet"], base["text_encoder"], save_lora_file(Path(tmp), modules).parent)
    remove_lora(base["unet"], base["text_encoder"], fuse=True)
    return base
