"""The notebooks' settings: each notebook's ``parameters`` cell holds the fields of its dataclass(es).

A papermill parameters file (``configs/demo.yaml``) is checked against all of them at once
(:func:`load_parameters`): a name shared by two configs has one meaning.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .collect import CollectConfig
from .control import PREPROCESSORS, CannySettings, LineartSettings
from .core import ConfigBase, ConfigError, _did_you_mean, check_choice, coerce, load_mapping
from .samplers import DEFAULT_SCHEDULERS, check_scheduler
from .training import TrainConfig

CLIP_MODEL = "openai/clip-vit-large-patch14"  # CLIP-T and CLIP image similarity (the DreamBooth paper's CLIP-I)
DINO_MODEL = "facebook/dino-vits16"  # DINO image similarity, as in the DreamBooth paper
TINY_CLIP_MODEL = "embedded:tiny-clip-random"  # a tiny random CLIP the package builds (tests, the demo)
TINY_DINO_MODEL = "embedded:tiny-dino-random"  # a tiny random DINO ViT the package builds (tests, the demo)
CANNY_CONTROLNET = "lllyasviel/control_v11p_sd15_canny"  # ControlNet 1.1 canny for SD1.5 (OpenRAIL)
LINEART_CONTROLNET = "lllyasviel/control_v11p_sd15_lineart"  # ControlNet 1.1 lineart for SD1.5 (OpenRAIL)
TINY_CANNY_CONTROLNET = "embedded:tiny-controlnet-canny"  # trained by the package for embedded:tiny


@dataclass
class RunConfig(ConfigBase):
    """Where a run lives, ``<outputs_dir>/<run_name>``; shared by every notebook."""

    run_name: str = "disney"
    outputs_dir: str = "outputs"

    @property
    def run_dir(self) -> Path:
        return Path(self.outputs_dir) / self.run_name


@dataclass
class EvalConfig(ConfigBase):
    """03_evaluate: rate every checkpoint's validation images."""

    interactive: bool = True  # show the rating widget (False under papermill: summary only)
    rater: str = ""  # pre-filled rater name
    blind: bool = True  # hide the step and shuffle the images
    rating_seed: int = 0  # seed of the blind order
    rating_mode: str = "image"  # "image": one at a time; "grid": a group's images side by side; "pairwise": two, choose
    bootstrap_resamples: int = 10000  # resamples of the 95% confidence interval
    display_size: int = 0  # pixels an image is shown at; 0: its own size, at most 512
    # automated scores (cartoonify.evaluation): models by hub id or local folder, cached per image file
    clip_model: str = CLIP_MODEL  # CLIP-T (prompt fidelity) and CLIP style similarity to the instance images
    dino_model: str = DINO_MODEL  # DINO similarity to the instance images
    style_top_k: int = 5  # style similarity: mean of the k most similar instance images
    score_batch_size: int = 16  # images per forward pass of an evaluation model
    drift_images: int = 4  # class-prompt images per checkpoint and for the base model, same seeds (0: no drift)
    min_ratings: int = 8  # ratings per checkpoint before "best" follows the human mean, else the automated rule
    overfit_tolerance: float = 0.1  # automated rule: held-out loss at most this share above the run's lowest
    export_format: str = "diffusers"  # export the best checkpoint with its model card: "diffusers", "single-file" (SD1.5's layout only), "lora" (LoRA runs), "" (none)

    def validate(self):
        check_choice("rating_mode", self.rating_mode, ("image", "grid", "pairwise"))
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"config key 'bootstrap_resamples' must be >= 100, got {self.bootstrap_resamples}")
        for key in ("style_top_k", "score_batch_size", "min_ratings"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("display_size", "drift_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(self, key)}")
        if self.overfit_tolerance < 0:
            raise ConfigError(f"config key 'overfit_tolerance' must be >= 0, got {self.overfit_tolerance}")
        check_choice("export_format", self.export_format, ("", "diffusers", "single-file", "lora"))
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
    compare_budget: str = "evals"  # "evals": equal model evaluations (Heun: 2 a step); "steps": equal steps
    compare_guidance_scale: float = 7.5

    def validate(self):
        check_choice("compare_budget", self.compare_budget, ("steps", "evals"))
        for name in self.compare_schedulers:
            check_scheduler("compare_schedulers", name)
        for key in ("compare_schedulers", "compare_prompts", "compare_seeds"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}' must not be empty")
        if self.compare_steps < 1:
            raise ConfigError(f"config key 'compare_steps' must be >= 1, got {self.compare_steps}")
        return self


@dataclass
class StylizeConfig(ConfigBase):
    """05_stylize: photos of people -> the trained style, by img2img and by ControlNet-guided img2img."""

    stylize_checkpoint: str = "best"  # as compare_checkpoint
    photos_dir: str = "data/photos"
    stylize_prompt: str = "a person, Disney style"
    stylize_methods: list[str] = field(default_factory=lambda: ["img2img", "controlnet"])
    stylize_strengths: list[float] = field(default_factory=lambda: [0.3, 0.45, 0.6, 0.75])
    conditioning_scales: list[float] = field(default_factory=lambda: [0.5, 1.0])  # ControlNet's weight
    control_guidance_start: float = 0.0  # share of the steps before the ControlNet acts
    control_guidance_end: float = 1.0  # share of the steps after which it stops
    controlnet_models: list[str] = field(default_factory=lambda: [CANNY_CONTROLNET])  # used together
    control_preprocessors: list[str] = field(default_factory=lambda: ["canny"])  # one per ControlNet
    canny_sigma: float = CannySettings.sigma
    canny_low: float = CannySettings.low  # hysteresis thresholds, quantiles of the gradient magnitude
    canny_high: float = CannySettings.high
    lineart_sigma: float = LineartSettings.sigma
    lineart_threshold: float = LineartSettings.threshold
    lineart_gain: float = LineartSettings.gain
    min_edge_f1: float = 0.3  # the recommended setting keeps at least this edge F1 to the photo
    stylize_scheduler: str = "euler_a"  # the write-up's comparison judged Euler Ancestral best
    stylize_steps: int = 50
    stylize_guidance_scale: float = 7.5
    stylize_seed: int = 0

    def validate(self):
        if not self.stylize_strengths or not all(0 < s <= 1 for s in self.stylize_strengths):
            raise ConfigError(f"config key 'stylize_strengths' must be values in (0, 1], got {self.stylize_strengths}")
        for m in self.stylize_methods:
            check_choice("stylize_methods", m, ("img2img", "controlnet"))
        if not self.stylize_methods:
            raise ConfigError("config key 'stylize_methods' must not be empty")
        if "controlnet" in self.stylize_methods:
            if not self.conditioning_scales or any(c < 0 for c in self.conditioning_scales):
                raise ConfigError(f"config key 'conditioning_scales' must be values >= 0, got {self.conditioning_scales}")
            if len(self.control_preprocessors) != len(self.controlnet_models) or not self.controlnet_models:
                raise ConfigError("config keys 'controlnet_models' and 'control_preprocessors' must name one "
                                  f"preprocessor per ControlNet, got {self.controlnet_models} and {self.control_preprocessors}")
            for p in self.control_preprocessors:
                check_choice("control_preprocessors", p, PREPROCESSORS)
        if not 0 <= self.control_guidance_start < self.control_guidance_end <= 1:
            raise ConfigError("config keys 'control_guidance_start' < 'control_guidance_end' must lie in [0, 1]")
        try:
            self.canny(), self.lineart()
        except ValueError as err:
            raise ConfigError(f"config keys canny_* / lineart_*: {err}") from None
        check_scheduler("stylize_scheduler", self.stylize_scheduler)
        return self

    def canny(self) -> CannySettings:
        return CannySettings(self.canny_sigma, self.canny_low, self.canny_high)

    def lineart(self) -> LineartSettings:
        return LineartSettings(self.lineart_sigma, self.lineart_threshold, self.lineart_gain)


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
