"""Samplers built from the base model's own scheduler config (``from_config``): betas, timestep spacing and
prediction type stay those the model was trained with; only the sampling algorithm changes. The registry
of names is data in :mod:`cartoonify.config.samplers`."""

from __future__ import annotations

from typing import Any

from ..config.samplers import scheduler_spec


def make_scheduler(name: str, base_config: Any, **overrides: Any):
    """Build scheduler ``name`` (a registry or diffusers class name) from a base scheduler's ``config``.

    As in diffusers' training scripts, a learned variance type is mapped to ``fixed_small`` since the
    fine-tuned model predicts noise only. An unknown class name raises ``KeyError`` naming it.
    """
    import diffusers

    config = getattr(base_config, "config", base_config)
    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.class_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise KeyError(f"unknown scheduler {name!r}: diffusers has no scheduler class {spec.class_name!r}")
    kwargs = dict(spec.kwargs)
    if config.get("variance_type") in ("learned", "learned_range"):
        kwargs["variance_type"] = "fixed_small"
    kwargs.update(overrides)
    return cls.from_config(config, **kwargs)
