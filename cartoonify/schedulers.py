"""One registry of sampler names -> diffusers scheduler classes, swapped with ``from_config``.

Every scheduler is built from the base model's own scheduler config, so that betas, timestep spacing
and prediction type stay those the model was trained with; only the sampling algorithm changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import diffusers


@dataclass(frozen=True)
class SchedulerSpec:
    """A named sampler: the diffusers class and the keyword arguments that make it that sampler."""

    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""


SCHEDULERS: dict[str, SchedulerSpec] = {
    "pndm": SchedulerSpec("PNDMScheduler", {}, "PNDM"),
    "ddim": SchedulerSpec("DDIMScheduler", {}, "DDIM"),
    "ddpm": SchedulerSpec("DDPMScheduler", {}, "DDPM"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", {}, "Euler Ancestral"),
    "dpmpp_2m": SchedulerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    "dpmpp_2m_karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", {}, "UniPC"),
    "heun": SchedulerSpec("HeunDiscreteScheduler", {}, "Heun"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", {}, "LMS"),
}


def _diffusers_scheduler_names() -> list[str]:
    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and n != "SchedulerMixin")


def resolve_scheduler(name: str) -> SchedulerSpec:
    """A registry name (``"euler_a"``) or any diffusers scheduler class name (``"PNDMScheduler"``)."""
    if name in SCHEDULERS:
        return SCHEDULERS[name]
    if name in _diffusers_scheduler_names():
        return SchedulerSpec(name, {}, name)
    raise KeyError(
        f"unknown scheduler {name!r}; use a registry name ({', '.join(SCHEDULERS)}) "
        f"or a diffusers scheduler class name"
    )


def make_scheduler(name: str, base_config: Any, **overrides: Any):
    """Build scheduler ``name`` from a base scheduler's ``config`` (a scheduler or its config dict).

    As in diffusers' training scripts, a learned variance type is mapped to ``fixed_small`` since the
    fine-tuned model predicts noise only.
    """
    config = getattr(base_config, "config", base_config)
    spec = resolve_scheduler(name)
    cls = getattr(diffusers, spec.class_name)
    kwargs = dict(spec.kwargs)
    if config.get("variance_type") in ("learned", "learned_range"):
        kwargs["variance_type"] = "fixed_small"
    kwargs.update(overrides)
    return cls.from_config(config, **kwargs)


def scheduler_label(name: str) -> str:
    """A human-readable label for plots and tables."""
    return resolve_scheduler(name).label or name
