"""05_stylize in one call: the sweep of a config over a folder of photos with a run's chosen checkpoint,
the ControlNets loaded (or, where they cannot be, a note and img2img alone), scores, the per-setting
summary (``settings.csv``) and the recommended setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import EvalConfig, StylizeConfig
from ..evaluation import run_scorer, write_scores_csv
from ..models import make_scheduler
from ..runs import layout_of
from .folder import Controls, StylizeResult, stylize_folder
from .methods import controlnet_pipeline, sweep
from .report import recommend, setting_summary

SETTINGS_FILE = "settings.csv"  # beside stylized.json: the mean scores of each setting


@dataclass
class StylizeSession:
    """What :func:`stylize_run` produced."""

    result: StylizeResult
    rows: list[dict]
    recommended: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return self.result.out_dir


def load_controls(pipe, config: StylizeConfig) -> tuple[Controls | None, list[str]]:
    """The ControlNet pipeline (``from_pipe`` over ``pipe``) and preprocessors of ``config``, or ``None`` and
    a note naming what could not be loaded and how to get it."""
    from ..models import ControlNetUnavailable, load_controlnets

    if "controlnet" not in config.stylize_methods:
        return None, []
    try:
        model = load_controlnets(config.controlnet_models)
    except ControlNetUnavailable as err:
        return None, [f"{err} -- stylizing with img2img only"]
    settings = {"canny": config.canny(), "lineart": config.lineart()}
    preprocessors = [(p, settings[p]) for p in config.control_preprocessors]
    return Controls(controlnet_pipeline(pipe, model), list(config.controlnet_models), preprocessors), []


def stylize_run(run_dir: str | Path, pipe, label: str, config: StylizeConfig, evaluation: EvalConfig | None = None,
                progress: bool = True) -> StylizeSession:
    """Stylize ``config.photos_dir`` with ``pipe`` (the run's checkpoint ``label``) into
    ``stylized/<label>/``, scored with ``evaluation``'s models (CLIP style similarity, the identity proxy)."""
    pipe.scheduler = make_scheduler(config.stylize_scheduler, pipe.scheduler)
    controls, notes = load_controls(pipe, config)
    methods = [m for m in config.stylize_methods if m != "controlnet" or controls is not None]
    settings = sweep(methods, config.stylize_strengths, config.conditioning_scales, config.control_guidance_start,
                     config.control_guidance_end)
    scorer = run_scorer(run_dir, evaluation) if evaluation is not None else None
    if scorer is not None:
        notes += scorer.scorers.notes
    out_dir = layout_of(run_dir).stylized(label)
    result = stylize_folder(pipe, config.photos_dir, out_dir, settings, prompt=config.stylize_prompt,
                            seed=config.stylize_seed, steps=config.stylize_steps,
                            guidance_scale=config.stylize_guidance_scale, controls=controls, scorer=scorer,
                            extra={"checkpoint": label}, progress=progress)
    rows = setting_summary(result.records)
    if rows:
        write_scores_csv(rows, out_dir / SETTINGS_FILE)
    return StylizeSession(result, rows, recommend(rows, config.min_edge_f1), notes)
