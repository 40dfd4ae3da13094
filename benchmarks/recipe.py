"""The write-up's recipe, scaled down and timed stage by stage, then extrapolated to the whole recipe.

``python -m benchmarks.bench recipe --model tiny|sd15`` runs, in one worker process, a real training run of
:data:`SCALED` (64 class images at 50 steps, 200 steps, 2 checkpoints with 4 validation images each) and
times each stage through the trainer's callbacks: class images, setup (the models loaded, the latent cache
built), training steps, checkpoint saves, validation, the final pipeline. :func:`extrapolate` scales each
stage to :data:`FULL` (1,000 class images at 50 steps, 4,000 steps, 8 checkpoints and validations).
"""

from __future__ import annotations

import time
from typing import Any

from cartoonify.training.callbacks import TrainerCallback

from .common import sync

SCALED = {"num_class_images": 64, "class_inference_steps": 50, "max_train_steps": 200, "checkpointing_steps": 100,
          "num_validation_images": 4}
FULL = {"class_images": 1000, "steps": 4000, "checkpoints": 8, "validations": 8}


class StageClock(TrainerCallback):
    """Seconds of the training thread spent saving checkpoints (until their state is captured: with background
    saves the writing goes on beside training) and making validation images (between the hooks around them)."""

    def __init__(self):
        self.saves: list[float] = []
        self.validations: list[float] = []
        self.final = 0.0
        self._mark = 0.0

    def _now(self, trainer) -> float:
        sync(trainer.accelerator.device)
        return time.perf_counter()

    def on_step_end(self, trainer, row) -> None:
        self._mark = self._now(trainer)

    def on_checkpoint_captured(self, trainer, path) -> None:
        """Training goes on from here: with background saves, the files are still being written."""
        now = self._now(trainer)
        self.saves.append(now - self._mark)
        self._mark = now

    def on_validation_end(self, trainer, folder) -> None:
        now = self._now(trainer)
        if trainer.global_step:  # not the base model's images at the start
            self.validations.append(now - self._mark)
        self._mark = now

    def on_train_end(self, trainer) -> None:
        self.final = self._now(trainer) - self._mark  # the final pipeline (and anything after the last step)


def save_times(trainer, clock: StageClock) -> dict[str, Any]:
    """Whether checkpoints were written in the background, the seconds of writing, and of waiting for it."""
    saver = trainer.checkpointer.saver
    if saver is None:
        return {"background": False, "write_seconds": sum(clock.saves), "waited_seconds": 0.0}
    return {"background": True, "write_seconds": sum(saver.write_seconds), "waited_seconds": saver.wait_seconds}


def measure_recipe(config) -> dict[str, Any]:
    """Run :data:`SCALED` on ``config`` (its class folder emptied first) and time every stage."""
    from cartoonify.data.prior import ensure_class_images
    from cartoonify.training.run import build_trainer

    from pathlib import Path

    fresh = Path(config.output_dir).parent / "recipe-class"  # generated here: the first stage of the recipe
    config = config.replace(**SCALED, class_dir=str(fresh), save_final_pipeline=True, validate_at_start=False)
    t0 = time.perf_counter()
    made = ensure_class_images(config, progress=False)
    class_s = time.perf_counter() - t0
    clock = StageClock()
    t0 = time.perf_counter()
    trainer = build_trainer(config, progress=False, callbacks=[clock])
    setup_s = time.perf_counter() - t0
    result = trainer.run()
    return {
        "stages": {
            "class_images": {"seconds": class_s, "count": len(made), "steps": config.class_inference_steps},
            "setup": {"seconds": setup_s},
            "training_steps": {"seconds": result.train_seconds, "count": result.steps_run},
            "checkpoint_saves": {"seconds": sum(clock.saves), "count": len(clock.saves), **save_times(trainer, clock)},
            "validation": {"seconds": sum(clock.validations), "count": len(clock.validations),
                           "images_each": config.num_validation_images},
            "final_pipeline": {"seconds": clock.final},
        },
        "device": str(trainer.accelerator.device),
        "optimizer": trainer.optimizer_name,
    }


def extrapolate(stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each stage scaled from its measured count to :data:`FULL` (per image, step, save or validation), the
    setup and final pipeline taken once; seconds and the share of the total."""
    def per(stage: str, full: int) -> float:
        s = stages[stage]
        return s["seconds"] / s["count"] * full if s.get("count") else 0.0

    seconds = {
        "class_images": per("class_images", FULL["class_images"]),
        "setup": stages["setup"]["seconds"],
        "training_steps": per("training_steps", FULL["steps"]),
        "checkpoint_saves": per("checkpoint_saves", FULL["checkpoints"]),
        "validation": per("validation", FULL["validations"]),
        "final_pipeline": stages["final_pipeline"]["seconds"],
    }
    total = sum(seconds.values())
    return {"recipe": FULL, "seconds": seconds, "total_seconds": total,
            "share": {k: v / total for k, v in seconds.items()} if total else {}}


def recipe_markdown(results: dict[str, Any]) -> list[str]:
    """The measured stages beside their extrapolation to the whole recipe."""
    measured = results.get("recipe_run") or {}
    if "stages" not in measured:
        return ["", f"The recipe run failed: {measured.get('error', 'not run')[-500:]}"]
    full = extrapolate(measured["stages"])
    lines = ["| stage | measured (scaled recipe) | whole recipe (extrapolated) | share |", "| --- | --- | --- | --- |"]
    for name, stage in measured["stages"].items():
        count = f" ({stage['count']})" if "count" in stage else ""
        lines.append(f"| {name.replace('_', ' ')} | {stage['seconds']:.1f} s{count} | "
                     f"{full['seconds'][name] / 60:.1f} min | {full['share'].get(name, 0) * 100:.0f}% |")
    lines.append(f"| **total** | | **{full['total_seconds'] / 60:.1f} min** | |")
    saves = measured["stages"]["checkpoint_saves"]
    if saves.get("background"):
        lines += ["", f"Checkpoints written in the background: {saves['seconds']:.1f} s on the training thread (the "
                  f"state captured), {saves['write_seconds']:.1f} s of writing beside training, "
                  f"{saves['waited_seconds']:.1f} s waited for a write to finish."]
    scaled = ", ".join(f"{k} {v}" for k, v in SCALED.items())
    return ["", *lines, "", f"Scaled recipe: {scaled}. Whole recipe: 1,000 class images at 50 steps, 4,000 steps, "
            "8 checkpoints and 8 validations; class images, steps, saves and validations scale by their counts, "
            "setup and the final pipeline are taken once."]


def run_recipe(args, recorder) -> dict[str, Any]:
    """The recipe on ``args.model`` ("tiny" or "sd15") in a worker process, written as soon as it is done."""
    import tempfile
    from pathlib import Path

    from .common import environment
    from .fixtures import base_config, prepare_sd15, prepare_tiny
    from .workers import run_worker

    work = Path(args.work or tempfile.mkdtemp(prefix="cartoonify-bench-")).resolve()
    paths = prepare_tiny(work)
    if args.model == "sd15":
        paths["model"] = prepare_sd15(work)
    config = base_config(args.model, paths)
    recorder.update(config="recipe", model=args.model, settings={**SCALED, "model": args.model,
                    "train_batch_size": config.train_batch_size, "resolution": config.resolution,
                    "mixed_precision": config.mixed_precision}, environment=environment())
    if not recorder.skip("recipe run"):
        print(f"[recipe] the scaled recipe on {args.model} ...", flush=True)
        run = run_worker("recipe", "recipe", config, {}, args, timeout=recorder.remaining())
        recorder.update(recipe_run=run, **({"extrapolated": extrapolate(run["stages"])} if "stages" in run else {}))
    return recorder.results
