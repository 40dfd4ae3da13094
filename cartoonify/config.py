"""Typed run configuration.

:class:`TrainConfig` holds every setting of a DreamBooth run. Its defaults are the settings of the
write-up this package reproduces (Stable Diffusion v1.5, ~200 style images, prior preservation with
1000 class images, text encoder trained, 8-bit AdamW at a constant 1e-6, fp16, 4000 steps, a checkpoint
and validation images every 500 steps, seed 42).

Configs round-trip through YAML and JSON. Unknown keys and values of the wrong type are refused with the
key named, in the spirit of nanoGPT's configurator but without ``exec``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .models import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_VARIANT

MIXED_PRECISIONS = ("no", "fp16", "bf16")
PRIOR_PRECISIONS = ("no", "fp32", "fp16", "bf16")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's scalars: ``1e-6`` is a float (YAML 1.1 wants ``1.0e-6``), and
    only true/false are booleans (YAML 1.1 also reads ``no``, ``yes``, ``on``, ``off`` as booleans, which
    would turn ``mixed_precision: no`` into ``False``)."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type or an invalid value."""


class ConfigBase:
    """Shared behaviour of the config dataclasses: dict/YAML/JSON round trip with strict checks."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, in declaration order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build a config from a dict, refusing unknown keys and wrong types (the key is named)."""
        return _from_dict(cls, data)

    @classmethod
    def from_parameters(cls, namespace: dict[str, Any], **overrides: Any):
        """Build a config from the fields found in ``namespace`` (a notebook's ``globals()``, or a
        parameters file), ignoring other names; ``overrides`` win."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({**{k: v for k, v in namespace.items() if k in names}, **overrides})

    @classmethod
    def load(cls, path: str | Path):
        """Load a YAML (``.yaml``/``.yml``) or JSON file."""
        return cls.from_dict(load_mapping(path))

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML or JSON, chosen by the file's suffix."""
        return save_mapping(self.to_dict(), path)

    def to_yaml(self) -> str:
        """The config as YAML text, in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any):
        """A copy with some fields changed, type-checked like :meth:`from_dict`."""
        return self.from_dict({**self.to_dict(), **changes})

    def validate(self):
        """Check values that a type alone cannot; returns self."""
        return self


@dataclass
class TrainConfig(ConfigBase):
    """Settings of one DreamBooth run; the defaults are the write-up's.

    Paths are used as given (relative paths are relative to the working directory of the process).
    """

    # --- model -----------------------------------------------------------------------------------
    pretrained_model: str = DEFAULT_MODEL  # hub id, local diffusers folder, or "embedded:tiny"
    revision: str = DEFAULT_REVISION
    variant: Optional[str] = DEFAULT_VARIANT  # weight variant; ignored for local folders that lack it

    # --- data ------------------------------------------------------------------------------------
    instance_dir: str = "data/disney/images"  # the ~200 style images, as 01_collect writes them (+ captions)
    class_dir: str = "data/style_ddim"  # class images for prior preservation (topped up if short)
    instance_prompt: str = "an illustration, Disney style"  # used where an image has no caption
    class_prompt: str = "an illustration"  # the instance prompt without the style phrase
    num_class_images: int = 1000
    with_prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    resolution: int = 512
    center_crop: bool = True
    sample_batch_size: int = 4  # batch size of class-image generation
    class_inference_steps: int = 50  # denoising steps per class image (the pipeline's default)
    class_scheduler: Optional[str] = None  # sampler of class images; None: the model's own (PNDM)

    # --- training --------------------------------------------------------------------------------
    train_text_encoder: bool = True
    train_batch_size: int = 4  # instance images per step (as many class images are added)
    max_train_steps: int = 4000  # optimizer steps; governs over epochs, as in diffusers' script
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    set_grads_to_none: bool = True
    dataloader_num_workers: int = 0

    # --- speed (each switch is measured on and off by `python -m cartoonify.bench`) ---------------
    cache_latents: bool = True  # encode each image once (mean, std); a fresh posterior sample per step
    offload_vae: bool = True  # with cached latents, keep the VAE off the GPU except for validation
    use_sdpa: bool = True  # PyTorch scaled-dot-product attention (False: diffusers' classic attention)
    channels_last: bool = True  # channels-last memory format for the UNet (CUDA)
    allow_tf32: bool = True  # TF32 matmuls on Ampere and newer GPUs
    compile_unet: bool = False  # torch.compile the UNet

    # --- optimizer -------------------------------------------------------------------------------
    use_8bit_adam: bool = True
    fuse_small_adam_updates: bool = True  # 8-bit Adam: the tensors it keeps in 32-bit updated in one fused call
    learning_rate: float = 1e-6
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0

    # --- checkpoints and logs --------------------------------------------------------------------
    output_dir: str = "outputs/disney"  # the run folder, outputs/<run>
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = None  # keep at most this many checkpoints (None: all)
    resume_from_checkpoint: Optional[str] = None  # "latest", a checkpoint folder name, or None
    logging_dir: str = "logs"  # inside the run folder
    disk_check: str = "refuse"  # before training: "refuse" or "warn" if the run needs more disk than is free
    allow_pickle: bool = False  # load pickle files (.bin/.ckpt/.pt) from checkpoints; only if you trust them
    report_to: str = "tensorboard"  # "tensorboard" or "none"

    # --- precision -------------------------------------------------------------------------------
    mixed_precision: str = "fp16"  # "no", "fp16", "bf16"; fp16 falls back to fp32 on CPU
    prior_generation_precision: str = "fp16"  # class-image dtype; "no": fp16 on CUDA, else fp32

    # --- validation ------------------------------------------------------------------------------
    validation_prompt: str = "a person, Disney style"
    num_validation_images: int = 4
    validation_scheduler: str = "PNDMScheduler"  # any diffusers scheduler class or registry name
    validation_inference_steps: int = 25  # as in diffusers' DreamBooth script
    validation_guidance_scale: float = 7.5
    save_final_pipeline: bool = True  # write outputs/<run>/pipeline/ at the end

    seed: int = 42

    def validate(self) -> "TrainConfig":
        """Check values that a type alone cannot (choices, positive counts). Returns self."""
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _check_choice("prior_generation_precision", self.prior_generation_precision, PRIOR_PRECISIONS)
        _check_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _check_choice("report_to", self.report_to, ("tensorboard", "none"))
        _check_choice("disk_check", self.disk_check, ("refuse", "warn", "off"))
        for key in (
            "resolution",
            "train_batch_size",
            "max_train_steps",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "sample_batch_size",
            "class_inference_steps",
            "validation_inference_steps",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)!r}")
        for key in ("num_class_images", "num_validation_images", "lr_warmup_steps", "dataloader_num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(self, key)!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"config key 'learning_rate' must be > 0, got {self.learning_rate!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError("config key 'checkpoints_total_limit' must be >= 1 or null")
        if self.with_prior_preservation and self.num_class_images < 1:
            raise ConfigError("config key 'num_class_images' must be >= 1 when with_prior_preservation is true")
        if self.resolution % 8:
            raise ConfigError(f"config key 'resolution' must be a multiple of 8, got {self.resolution}")
        from .schedulers import resolve_scheduler  # local: schedulers imports diffusers

        for key in ("validation_scheduler", "class_scheduler"):
            if getattr(self, key) is not None:
                try:
                    resolve_scheduler(getattr(self, key))
                except KeyError as err:
                    raise ConfigError(f"config key '{key}': {err.args[0]}") from None
        return self


# ------------------------------------------------------------------------------------------------
# the notebooks' settings: each notebook's parameters cell holds the fields of its dataclass(es)
# ------------------------------------------------------------------------------------------------

DEFAULT_SCHEDULERS = ["pndm", "ddim", "euler", "euler_a", "dpmpp_2m_karras", "unipc", "heun", "lms"]


@dataclass
class RunConfig(ConfigBase):
    """Where a run lives, ``<outputs_dir>/<run_name>``; shared by every notebook."""

    run_name: str = "disney"
    outputs_dir: str = "outputs"

    @property
    def run_dir(self) -> Path:
        return Path(self.outputs_dir) / self.run_name


@dataclass
class CollectConfig(ConfigBase):
    """01_collect: turn collected folders and URL lists into the training set (``cartoonify.collect``)."""

    sources: list[str] = field(default_factory=lambda: ["data/raw"])  # folders (recursive) and URL-list .txt files
    collect_dir: str = "data/disney"  # images/ (the training set), originals/, manifest.csv, contact_sheet.png
    photos_dir: str = "data/photos"  # photos of people to stylize (05_stylize)
    resolution: int = 512  # side of the square training images (the write-up: 512)
    fit: str = "pad"  # "pad" on the background colour (keeps whole characters) or "crop" (center crop)
    min_size: int = 64  # smaller images are rejected ("reject") or kept and flagged ("flag")
    small_policy: str = "reject"
    background_min: float = 0.6  # share of the border that must be near white or near black
    background_policy: str = "warn"  # "keep", "warn" or "reject" below background_min
    whiten_background: bool = False  # turn a near-uniform background pure white
    make_demo_data: bool = False  # draw the package's demo images into the first source first
    demo_images: int = 24  # how many demo images to draw

    def validate(self):
        if self.resolution < 8:
            raise ConfigError(f"config key 'resolution' must be >= 8, got {self.resolution}")
        _check_choice("fit", self.fit, ("pad", "crop"))
        _check_choice("small_policy", self.small_policy, ("reject", "flag"))
        _check_choice("background_policy", self.background_policy, ("keep", "warn", "reject"))
        if not self.sources:
            raise ConfigError("config key 'sources' must name at least one folder or URL list")
        return self


@dataclass
class EvalConfig(ConfigBase):
    """03_evaluate: rate every checkpoint's validation images."""

    interactive: bool = True  # show the rating widget (False under papermill: summary only)
    rater: str = ""  # pre-filled rater name
    blind: bool = True  # hide the step and shuffle the images
    rating_seed: int = 0  # seed of the blind order
    rating_mode: str = "image"  # "image": one at a time, "grid": a checkpoint's images side by side
    bootstrap_resamples: int = 10000  # resamples of the 95% confidence interval

    def validate(self):
        _check_choice("rating_mode", self.rating_mode, ("image", "grid"))
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"config key 'bootstrap_resamples' must be >= 100, got {self.bootstrap_resamples}")
        return self


@dataclass
class CompareConfig(ConfigBase):
    """04_compare_schedulers: the same checkpoint, prompts and seeds under every sampler."""

    compare_checkpoint: str = "best"  # "best" (highest mean rating), "latest", "pipeline" or "checkpoint-<step>"
    compare_schedulers: list[str] = field(default_factory=lambda: list(DEFAULT_SCHEDULERS))
    compare_prompts: list[str] = field(
        default_factory=lambda: ["a person, Disney style", "a castle on a hill, Disney style"]
    )
    compare_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    compare_steps: int = 25  # denoising steps, or model evaluations when compare_budget is "evals"
    compare_budget: str = "steps"  # "steps": equal steps; "evals": equal model evaluations (Heun: 2 a step)
    compare_guidance_scale: float = 7.5

    def validate(self):
        from .schedulers import resolve_scheduler

        _check_choice("compare_budget", self.compare_budget, ("steps", "evals"))
        for name in self.compare_schedulers:
            try:
                resolve_scheduler(name)
            except KeyError as err:
                raise ConfigError(f"config key 'compare_schedulers': {err.args[0]}") from None
        for key in ("compare_schedulers", "compare_prompts", "compare_seeds"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}' must not be empty")
        if self.compare_steps < 1:
            raise ConfigError(f"config key 'compare_steps' must be >= 1, got {self.compare_steps}")
        return self


@dataclass
class StylizeConfig(ConfigBase):
    """05_stylize: photos of people -> the trained style, by img2img."""

    stylize_checkpoint: str = "best"  # as compare_checkpoint
    photos_dir: str = "data/photos"
    stylize_prompt: str = "a person, Disney style"
    stylize_strengths: list[float] = field(default_factory=lambda: [0.3, 0.45, 0.6, 0.75])
    stylize_scheduler: str = "euler_a"  # the write-up's comparison judged Euler Ancestral best
    stylize_steps: int = 50
    stylize_guidance_scale: float = 7.5
    stylize_seed: int = 0

    def validate(self):
        from .schedulers import resolve_scheduler

        if not self.stylize_strengths or not all(0 < s <= 1 for s in self.stylize_strengths):
            raise ConfigError(f"config key 'stylize_strengths' must be values in (0, 1], got {self.stylize_strengths}")
        try:
            resolve_scheduler(self.stylize_scheduler)
        except KeyError as err:
            raise ConfigError(f"config key 'stylize_scheduler': {err.args[0]}") from None
        return self


PARAMETER_CONFIGS: tuple[type, ...] = (RunConfig, CollectConfig, TrainConfig, EvalConfig, CompareConfig, StylizeConfig)


def parameter_types() -> dict[str, Any]:
    """Every notebook parameter name with its type (a name shared by two configs has one meaning)."""
    out: dict[str, Any] = {}
    for cls in PARAMETER_CONFIGS:
        for name, tp in typing.get_type_hints(cls).items():
            out.setdefault(name, tp)
    return out


def load_parameters(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A papermill parameters file (``configs/demo.yaml``) or dict, checked: every key must be a field of
    one of :data:`PARAMETER_CONFIGS`, with a value of its type. Returns the coerced values."""
    data = load_mapping(source) if not isinstance(source, dict) else dict(source)
    types_ = parameter_types()
    unknown = [k for k in data if k not in types_]
    if unknown:
        where = f" in {source}" if not isinstance(source, dict) else ""
        raise ConfigError(f"unknown parameter {unknown[0]!r}{where}" + _did_you_mean(unknown[0], list(types_)))
    return {k: coerce(k, v, types_[k]) for k, v in data.items()}


def train_config_from_parameters(params: dict[str, Any], **overrides: Any) -> TrainConfig:
    """The run's TrainConfig from notebook parameters: its fields, with ``output_dir`` the run folder
    (``<outputs_dir>/<run_name>``) unless given."""
    if "output_dir" not in params and "output_dir" not in overrides and "run_name" in params:
        overrides["output_dir"] = str(RunConfig.from_parameters(params).run_dir)
    return TrainConfig.from_parameters(params, **overrides)


# ------------------------------------------------------------------------------------------------
# (de)serialisation helpers, shared by every config dataclass of the package
# ------------------------------------------------------------------------------------------------


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` checked against the annotation ``tp``; raise :class:`ConfigError` naming ``key``.

    ``int`` is accepted where ``float`` is declared (and converted); ``bool`` is never taken for a number
    nor a number for a ``bool``; ``Optional[X]`` admits ``None``.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(
            f"config key '{key}' expects {' or '.join(_type_name(a) for a in args)}, "
            f"got {type(value).__name__} {value!r}"
        )
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return origin(items)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _from_dict(cls: type, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ConfigError(f"a {cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} for {cls.__name__}"
            + (f" (also: {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
            + _did_you_mean(unknown[0], names)
        )
    values = {k: coerce(k, v, hints[k]) for k, v in data.items()}
    return cls(**values)


def _did_you_mean(key: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; a missing file or a non-mapping is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=YamlLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def save_mapping(data: dict[str, Any], path: str | Path) -> Path:
    """Write a mapping as JSON (``.json``) or YAML (anything else), atomically."""
    from .utils import atomic_write_text

    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)
    return path


def parse_overrides(argv: list[str], types_: type | dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse ``--key value`` / ``--key=value`` pairs.

    Values are read as YAML scalars (``1e-4``, ``true``, ``null``), except that for a string field of
    ``types_`` (a config class, or a name -> type mapping) the text is kept as typed (``--revision 1.0``, ``--mixed_precision no``, ``--validation_prompt
    "sks: dog"``); ``null``/``None`` still clear an optional string.
    """
    string_fields = _string_fields(types_) if types_ is not None else {}
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"config key '{key}' given without a value")
            i += 1
            raw = argv[i]
        key = key.replace("-", "_")
        if key in string_fields:
            optional = string_fields[key]
            out[key] = None if optional and raw in ("null", "None", "~") else raw
        else:
            out[key] = _yaml_scalar(raw)
        i += 1
    return out


def _string_fields(types_: type | dict[str, Any]) -> dict[str, bool]:
    """``{field: is_optional}`` for the ``str`` and ``Optional[str]`` fields of a config class or mapping."""
    out = {}
    hints = types_ if isinstance(types_, dict) else typing.get_type_hints(types_)
    for name, tp in hints.items():
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if str in args and all(a in (str, type(None)) for a in args):
            out[name] = type(None) in args
    return out


def _yaml_scalar(raw: str) -> Any:
    try:
        return yaml.load(raw, Loader=YamlLoader)
    except yaml.YAMLError:
        return raw
