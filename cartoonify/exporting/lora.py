"""The ``lora`` export format: a LoRA-mode checkpoint's adapters as diffusers' LoRA file and in the kohya
layout that AUTOMATIC1111 and ComfyUI load.

* ``pytorch_lora_weights.safetensors``: diffusers' file (``pipe.load_lora_weights(folder)``), in the export's
  dtype, with the adapters' LoraConfig and the run's metadata;
* ``<run>-<checkpoint>-kohya.safetensors``: diffusers' own conversions (``convert_all_state_dict_to_peft``
  then ``convert_state_dict_to_kohya``, as its ``train_dreambooth_lora_sdxl.py --output_kohya_format``) with
  three corrections: the text encoder's keys get back the ``text_model.`` level that transformers 5 dropped
  (kohya's names have it), they start ``lora_te_`` (SD1.x's one text encoder; the conversion writes SDXL's
  ``lora_te1_``), and every ``.alpha`` records the run's ``lora_alpha`` (the conversion writes the rank, a
  scale of 1, which is wrong whenever alpha differs from the rank).
"""

from __future__ import annotations

from pathlib import Path

from ..training.lora import LORA_WEIGHTS, is_lora_checkpoint, read_lora_file
from .card import USAGE
from .formats import register_format
from .job import ExportError, ExportJob

KOHYA_SUFFIX = "-kohya.safetensors"


def kohya_state_dict(folder: str | Path) -> dict:
    """The kohya-layout state dict of a folder's diffusers LoRA file (fp32)."""
    import torch
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya

    tensors, configs = read_lora_file(folder)
    flat = {}
    for module, state in tensors.items():
        for key, value in state.items():
            if module == "text_encoder" and not key.startswith("text_model."):
                key = f"text_model.{key}"
            flat[f"{module}.{key}"] = value.float()
    converted = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(flat))
    # SDXL's names for the first text encoder (lora_te1_); SD1.x has one, lora_te_
    kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in converted.items()}
    for key in [k for k in kohya if k.endswith(".alpha")]:
        module = "text_encoder" if key.startswith("lora_te") else "unet"
        alpha = configs.get(module, {}).get("lora_alpha")
        if alpha is not None:
            kohya[key] = torch.tensor(float(alpha))
    return kohya


def write_lora(job: ExportJob, folder: Path) -> Path:
    """Both LoRA files of a LoRA-mode checkpoint; a checkpoint with full weights is refused before anything is
    written (export it as ``single-file`` or ``diffusers``)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not is_lora_checkpoint(job.checkpoint):
        raise ExportError(f"{job.checkpoint} holds full weights, not a LoRA adapter (the run's train_mode is "
                          f"{job.config.train_mode!r}): export it with --format single-file or diffusers")
    with safe_open(str(job.checkpoint / LORA_WEIGHTS), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k).to(job.torch_dtype) for k in f.keys()}  # noqa: SIM118
    meta.update(job.metadata())
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / LORA_WEIGHTS), metadata=meta)
    kohya = {k: v.to(job.torch_dtype) for k, v in kohya_state_dict(job.checkpoint).items()}
    save_file(kohya, str(folder / f"{job.stem}{KOHYA_SUFFIX}"),
              metadata={**job.metadata(), "ss_network_module": "networks.lora",
                        "ss_network_dim": str(job.config.lora_rank),
                        "ss_network_alpha": str(job.config.lora_alpha or job.config.lora_rank)})
    return folder / LORA_WEIGHTS


def _usage_lora(job: ExportJob, model_file: str) -> list[str]:
    kohya = f"{job.stem}{KOHYA_SUFFIX}"
    return [
        f"A LoRA adapter (rank {job.config.lora_rank}) for `{job.config.pretrained_model}`:", "",
        "```python", "import torch", "from diffusers import StableDiffusionPipeline", "",
        f'pipe = StableDiffusionPipeline.from_pretrained("{job.config.pretrained_model}", '
        'torch_dtype=torch.float16).to("cuda")',
        'pipe.load_lora_weights("path/to/this/folder")  # reads ' + model_file,
        "```", "",
        f"**AUTOMATIC1111:** copy `{kohya}` into `stable-diffusion-webui/models/Lora/` and add "
        f"`<lora:{Path(kohya).stem}:1>` to the prompt; **ComfyUI:** into `ComfyUI/models/loras/` and use a "
        "LoraLoader node. The base checkpoint is Stable Diffusion v1.5.",
    ]


register_format("lora", write_lora)
USAGE["lora"] = _usage_lora
