"""Typed settings: dataclasses whose defaults are the write-up's, strict about keys and types; no torch.

* :mod:`.core`: the shared machinery (dict/YAML/JSON round trip, choice checks, ``--key value`` overrides);
* :mod:`.training`: :class:`TrainConfig` and the model defaults;
* :mod:`.samplers`: the sampler registry as data;
* :mod:`.collect`: :class:`CollectConfig`;
* :mod:`.basemodel`: :class:`BaseModelConfig`, the embedded tiny model's pretraining;
* :mod:`.stages`: the other notebooks' configs and the papermill parameter files;
* :mod:`.export`: :class:`ExportConfig`, the settings of ``python -m cartoonify.export``.
"""

from .basemodel import BaseModelConfig
from .controlnet import ControlNetBuildConfig
from .collect import CollectConfig
from .control import PREPROCESSORS, CannySettings, LineartSettings
from .export import EXPORT_PRECISIONS, ExportConfig
from .core import (
    ConfigBase,
    ConfigError,
    check_at_least,
    check_choice,
    coerce,
    load_mapping,
    parse_overrides,
    resumable,
    resumable_fields,
    save_mapping,
)
from .samplers import DEFAULT_SCHEDULERS, SCHEDULERS, SchedulerSpec, check_scheduler, scheduler_label, scheduler_spec
from .stages import (
    CANNY_CONTROLNET,
    CLIP_MODEL,
    LINEART_CONTROLNET,
    TINY_CANNY_CONTROLNET,
    DINO_MODEL,
    PARAMETER_CONFIGS,
    TINY_CLIP_MODEL,
    TINY_DINO_MODEL,
    CompareConfig,
    EvalConfig,
    RunConfig,
    StylizeConfig,
    load_parameters,
    parameter_types,
    train_config_from_parameters,
)
from .training import (
    DEFAULT_MODEL,
    DEFAULT_REVISION,
    DEFAULT_VARIANT,
    LORA_TEXT_ENCODER_TARGETS,
    LORA_UNET_TARGETS,
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    PRIOR_PRECISIONS,
    TINY_MODEL,
    TINY_RANDOM_MODEL,
    TRAIN_MODES,
    TrainConfig,
    resumable_changes,
)

__all__ = [n for n in dir() if not n.startswith("_")]
