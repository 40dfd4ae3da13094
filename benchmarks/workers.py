"""One measurement in a fresh process (peak memory is per process): :func:`run_worker` starts
``python -m benchmarks.bench _worker ...`` and reads back its JSON; :func:`worker` is that process's body."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import REPO_ROOT, subprocess_env

KINDS = ("train", "profile", "optimizer", "class_generation", "validation", "recipe")


def measure(kind: str, config, args: argparse.Namespace) -> dict[str, Any]:
    """The measurement ``kind`` of ``config`` (in this process)."""
    if kind == "train":
        from .training import measure_training

        return measure_training(config, args.warmup, args.steps, args.repeats, flops=args.flops)
    if kind == "recipe":
        from .recipe import measure_recipe

        return measure_recipe(config)
    if kind == "profile":
        from .training import measure_profile

        return measure_profile(config, args.warmup, args.steps)
    from cartoonify.models import resolve_device

    from .parts import measure_class_generation, measure_optimizer_step, measure_validation

    if kind == "optimizer":
        return measure_optimizer_step(config, resolve_device())
    if kind == "class_generation":
        return measure_class_generation(config.pretrained_model, resolve_device())
    if kind == "validation":
        return measure_validation(config, resolve_device())
    raise ValueError(f"unknown measurement {kind!r} (expected one of {', '.join(KINDS)})")


def worker(args: argparse.Namespace) -> int:
    """Run one variant and write its JSON to ``args.result`` (in the process :func:`run_worker` starts)."""
    from cartoonify.config import TrainConfig

    overrides = json.loads(args.overrides)
    config = TrainConfig.from_dict(json.loads(args.train_config)).replace(**overrides)
    result: dict[str, Any] = {"variant": args.variant, "overrides": overrides}
    result.update(measure(args.kind, config, args))
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def run_worker(kind: str, variant: str, config, overrides: dict, args: argparse.Namespace,
               flops: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Measure ``kind`` of ``config`` with ``overrides`` in a fresh process; its result, or
    ``{"variant", "error"}`` with the end of its stderr if it failed or ran past ``timeout`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, "-m", "benchmarks.bench", "_worker", "--kind", kind, "--variant", variant,
            "--train-config", json.dumps(config.replace(output_dir=str(Path(tmp) / "run")).to_dict()),
            "--overrides", json.dumps(overrides), "--result", str(result),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--repeats", str(args.repeats),
        ] + (["--flops"] if flops else [])
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO_ROOT,
                                  env=subprocess_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"variant": variant, "error": f"stopped at the budget ({timeout:.0f} s left when it started)"}
        if proc.returncode != 0:
            return {"variant": variant, "error": proc.stderr[-2000:]}
        return json.loads(result.read_text())
