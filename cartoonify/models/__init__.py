"""Models: loading SD from a hub id or a local folder, the embedded tiny model, the SD1.5 architecture,
pipelines over modules in memory, samplers, generation. This layer knows no training and writes no run
files (the tiny model's own folder aside).

* the real base model (``DEFAULT_MODEL``) or any other diffusers-format SD checkpoint, loaded through
  :func:`load_pipeline` / :func:`load_components` from a hub id or a local folder;
* the *embedded tiny model* (``TINY_MODEL``), written by the package (:func:`build_tiny`);
* the full SD1.5 architecture with random weights (:func:`build_sd15`), for benchmarks and memory estimates.
"""

from ..config import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_VARIANT, TINY_MODEL, TINY_RANDOM_MODEL
from .controlnet import (
    CANNY_CONTROLNET,
    EMBEDDED_CONTROLNET_DIR,
    LINEART_CONTROLNET,
    TINY_CANNY_CONTROLNET,
    ControlNetUnavailable,
    load_controlnet,
    load_controlnets,
    resolve_controlnet,
)
from .devices import move_module, precision_dtype, resolve_device, resolve_dtype
from .generate import SampleResult, generators, image_to_image, text_to_image
from .loading import load_components, load_pipeline, load_safety_components
from .pipeline import img2img_pipeline, is_pipeline_folder, pipeline_from_modules
from .schedulers import make_scheduler
from .sd15 import (
    SD15_PARAMETER_COUNTS,
    SD15_SCHEDULER_CONFIG,
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    build_sd15,
    build_sd15_pipeline,
    count_parameters,
)
from .tiny import EMBEDDED_TINY_DIR, build_tiny, resolve_model, tiny_model_path
from .weights import check_architecture, check_safe_to_load

__all__ = [n for n in dir() if not n.startswith("_")]
