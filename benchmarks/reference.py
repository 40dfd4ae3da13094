"""The ``reference`` benchmark: diffusers' ``examples/dreambooth/train_dreambooth.py`` (a checkout given
with ``--diffusers``) against ``python -m cartoonify.train`` on the same tiny model, data and settings,
side by side. Steps/s come from the wall-time difference of two step counts, so start-up and saving
cancel out; the trainers take turns, one round per repeat, and the speed-up is the median of the rounds'
paired ratios. diffusers' script runs under :mod:`benchmarks.standin.launch` (no torchvision needed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import REPO_ROOT, environment, subprocess_env
from .fixtures import N_CLASS_IMAGES, prepare_tiny

INSTANCE_PROMPT = "an illustration, Disney style"
CLASS_PROMPT = "an illustration"
SETTINGS = {
    "resolution": 64, "train_batch_size": 4, "learning_rate": 1e-4, "num_class_images": N_CLASS_IMAGES, "seed": 42,
}


def reference_command(script: Path, paths: dict[str, str], steps: int, output_dir: str) -> list[str]:
    """diffusers' script under the torchvision stand-in, with the benchmark's settings."""
    s = SETTINGS
    return [
        sys.executable, "-m", "benchmarks.standin.launch", str(script),
        "--pretrained_model_name_or_path", paths["model"],
        "--instance_data_dir", paths["instance_dir"], "--class_data_dir", paths["class_dir"],
        "--instance_prompt", INSTANCE_PROMPT, "--class_prompt", CLASS_PROMPT,
        "--with_prior_preservation", "--prior_loss_weight", "1.0", "--train_text_encoder", "--use_8bit_adam",
        "--resolution", str(s["resolution"]), "--train_batch_size", str(s["train_batch_size"]),
        "--learning_rate", str(s["learning_rate"]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--num_class_images", str(s["num_class_images"]), "--max_train_steps", str(steps),
        "--checkpointing_steps", "1000000", "--center_crop", "--mixed_precision", "no", "--seed", str(s["seed"]),
        "--output_dir", output_dir,
    ]


def cartoonify_command(paths: dict[str, str], steps: int, output_dir: str, extra: Sequence[str] = ()) -> list[str]:
    """``python -m cartoonify.train`` with the same settings (its defaults match the rest)."""
    s = SETTINGS
    return [
        sys.executable, "-m", "cartoonify.train", "--pretrained_model", paths["model"],
        "--instance_dir", paths["instance_dir"], "--class_dir", paths["class_dir"],
        "--resolution", str(s["resolution"]), "--train_batch_size", str(s["train_batch_size"]),
        "--learning_rate", str(s["learning_rate"]), "--num_class_images", str(s["num_class_images"]),
        "--max_train_steps", str(steps), "--checkpointing_steps", "1000000", "--num_validation_images", "0",
        "--mixed_precision", "no", "--report_to", "none", "--output_dir", output_dir, *extra,
    ]


def timed(cmd: list[str]) -> float:
    """Wall-clock seconds of ``cmd``; raises with the end of its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def trainers(script: Path, paths: dict[str, str], work: Path) -> dict[str, Callable[[int], list[str]]]:
    """name -> the command line of a run of that many steps (each in a fresh output folder)."""

    def out(name: str, steps: int) -> str:
        return tempfile.mkdtemp(prefix=f"{name}-{steps}-", dir=work)

    return {
        "reference": lambda steps: reference_command(script, paths, steps, out("ref", steps)),
        "cartoonify": lambda steps: cartoonify_command(paths, steps, out("ours", steps)),
        "cartoonify_no_cache_latents": lambda steps: cartoonify_command(
            paths, steps, out("ours", steps), ["--cache_latents", "false"]),
    }


def summarise(times: dict[str, list[tuple[int, float]]], lo: int, hi: int) -> dict[str, Any]:
    """Steps/s per trainer and round from ``(steps, seconds)`` pairs of lo- then hi-step runs; the
    speed-up as the ratio of the medians and as the median of the rounds' paired ratios."""
    rows = {}
    for name, wall in times.items():
        rates = [(hi - lo) / (t_hi - t_lo) for (_, t_lo), (_, t_hi) in zip(wall[0::2], wall[1::2])]
        rows[name] = {"steps_per_s": statistics.median(rates), "steps_per_s_repeats": rates, "wall_s": wall}
    # paired within each round, so the machine's speed in that round cancels
    per_round = [a / b for a, b in zip(rows["cartoonify"]["steps_per_s_repeats"],
                                       rows["reference"]["steps_per_s_repeats"])]
    return {"results": rows, "speedup": rows["cartoonify"]["steps_per_s"] / rows["reference"]["steps_per_s"],
            "speedup_per_round": per_round, "speedup_paired": statistics.median(per_round)}


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s of diffusers' script and of ours on the tiny model, same settings, one sitting."""
    script = Path(args.diffusers) / "examples" / "dreambooth" / "train_dreambooth.py"
    if not script.is_file():
        raise FileNotFoundError(f"diffusers' DreamBooth script not found: {script}")
    work = Path(args.work or tempfile.mkdtemp(prefix="cartoonify-ref-")).resolve()
    paths = prepare_tiny(work)
    lo, hi = args.ref_steps
    out: dict[str, Any] = {"config": "reference", "settings": {**SETTINGS, "steps": [lo, hi]},
                           "environment": environment()}
    commands = trainers(script.resolve(), paths, work)
    times: dict[str, list[tuple[int, float]]] = {name: [] for name in commands}
    for rep in range(args.repeats):  # in rounds, so a slow spell of the machine hits every trainer alike
        for name, make in commands.items():
            for steps in (lo, hi):
                print(f"[reference] {name}: {steps} steps (round {rep + 1}/{args.repeats})", flush=True)
                times[name].append((steps, timed(make(steps))))
    out.update(summarise(times, lo, hi))
    return out
