"""The sampler registry as data: names -> diffusers scheduler class names and the kwargs that make them.

Kept here, with no diffusers import, so that configs can check a sampler name without loading torch;
:mod:`cartoonify.models.schedulers` builds the schedulers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .core import ConfigError


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

DEFAULT_SCHEDULERS = ["pndm", "ddim", "euler", "euler_a", "dpmpp_2m_karras", "unipc", "heun", "lms"]


def scheduler_spec(name: str) -> SchedulerSpec:
    """A registry name (``"euler_a"``) or a diffusers scheduler class name (``"PNDMScheduler"``).

    A class name must be one diffusers has: diffusers (and so torch) is imported for that check only, when
    a name outside the registry is given, never when this module is imported.
    """
    if name in SCHEDULERS:
        return SCHEDULERS[name]
    if name.isidentifier() and name.endswith("Scheduler") and name != "SchedulerMixin" and _diffusers_has(name):
        return SchedulerSpec(name, {}, name)
    raise KeyError(
        f"unknown scheduler {name!r}; use a registry name ({', '.join(SCHEDULERS)}) "
        f"or a diffusers scheduler class name"
    )


def _diffusers_has(class_name: str) -> bool:
    import diffusers

    return hasattr(getattr(diffusers, class_name, None), "from_config")


def check_scheduler(key: str, name: str | None) -> None:
    """Refuse a sampler name that is neither in the registry nor a scheduler class name, naming ``key``."""
    if name is None:
        return
    try:
        scheduler_spec(name)
    except KeyError as err:
        raise ConfigError(f"config key '{key}': {err.args[0]}") from None


def scheduler_label(name: str) -> str:
    """A human-readable label for plots and tables."""
    return scheduler_spec(name).label or name
