"""Speed and memory benchmarks: ``python -m benchmarks.bench {tiny,sd15,reference,recipe}`` (from the repository root).

- ``tiny`` (CPU or GPU): the embedded model at 64 px, batch 4 + 4 class images, text encoder trained,
  8-bit AdamW. Training steps/s and images/s with each optimisation on and off, peak memory, class-image
  generation images/s (batched vs diffusers' batch of 4), the optimizer step (plain vs fused 8-bit AdamW)
  and validation images/s (modules in memory vs a pipeline reloaded from disk, as diffusers' script does).
- ``sd15`` (GPU): the full SD1.5 architecture with random weights at 512², batch 4 + 4, UNet and text
  encoder trained, fp16 mixed precision, 8-bit AdamW, with and without gradient checkpointing; MFU from
  ``torch.utils.flop_counter`` against a measured matmul peak.
- ``reference``: diffusers' ``examples/dreambooth/train_dreambooth.py`` (a checkout given with
  ``--diffusers``) against ``python -m cartoonify.train`` on the same model, data and settings, side by
  side; steps/s from the wall-time difference of two step counts, so start-up and saving cancel out.
- ``recipe`` (``--model tiny`` on CPU or GPU, ``--model sd15`` on GPU): the write-up's recipe scaled down
  (64 class images, 200 steps, 2 checkpoints with 4 validation images), timed stage by stage and
  extrapolated to the whole recipe (:mod:`benchmarks.recipe`).

Each variant runs in its own process (peak RSS is per process). Warm-up steps are dropped; the figure is
the median of several timed repetitions. Results go to ``benchmarks/results/<config>.json`` and ``.md``
(``--out`` for another folder), rewritten after every variant and stage; ``--budget SECONDS`` stops cleanly
before a device's time limit. ``--profile`` adds a ``torch.profiler`` split of the default's step by the
trainer's regions.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .common import RESULTS_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=["tiny", "sd15", "reference", "recipe", "_worker"])
    parser.add_argument("--model", choices=["tiny", "sd15"], default="tiny", help="the recipe's model")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default: benchmarks/results)")
    parser.add_argument("--name", help="results file name (default: the config)")
    parser.add_argument("--work", help="scratch folder for the model and data (default: a temporary one)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, help="timed repetitions per process (default: tiny 1, sd15 3; "
                        "reference: rounds)")
    parser.add_argument("--rounds", type=int, help="processes per variant, run in turns (default: tiny 3, sd15 1)")
    parser.add_argument("--profile", action="store_true", help="also profile the default (torch.profiler)")
    parser.add_argument("--budget", type=float, help="seconds: start no measurement after this, stop a running "
                        "one at it (results so far are kept: they are written after every variant and stage)")
    parser.add_argument("--only", nargs="+", help="only these training variants, in this order (no parts unless --parts)")
    parser.add_argument("--parts", action="store_true", help="with --only: measure the parts too (class images, "
                        "optimizer step, validation)")
    parser.add_argument("--resolution", type=int, help="sd15: train at this resolution instead of 512")
    parser.add_argument("--allow-cpu", action="store_true", help="sd15 without a GPU (slow: for memory figures, "
                        "with --resolution)")
    parser.add_argument("--diffusers", help="a diffusers checkout (reference)")
    parser.add_argument("--ref-steps", type=int, nargs=2, default=[10, 60], metavar=("LO", "HI"))
    worker = parser.add_argument_group("worker process (internal)")
    worker.add_argument("--kind")
    worker.add_argument("--train-config")
    worker.add_argument("--variant")
    worker.add_argument("--overrides", default="{}")
    worker.add_argument("--result")
    worker.add_argument("--flops", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.config == "_worker":
        from .workers import worker

        return worker(args)
    # CPU timings wander, so tiny runs each variant in several processes taking turns; a GPU holds steady,
    # and each sd15 process pays for loading the model, so sd15 repeats within one process instead
    args.rounds = args.rounds or (1 if args.config == "sd15" else 3)
    args.repeats = args.repeats or (3 if args.config in ("sd15", "reference") else 1)
    if args.config == "sd15" or (args.config == "recipe" and args.model == "sd15"):
        import torch

        if not torch.cuda.is_available() and not args.allow_cpu:
            print("error: the sd15 benchmark needs a CUDA GPU (--allow-cpu to run it anyway)", file=sys.stderr)
            return 2
    from .record import Recorder

    recorder = Recorder(args.out, args.name or args.config, budget=args.budget)
    if args.config == "reference":
        from .reference import run_reference

        recorder.update(**run_reference(args))
    elif args.config == "recipe":
        from .recipe import run_recipe

        run_recipe(args, recorder)
    else:
        from .suite import run_suite

        run_suite(args, recorder)
    json_path, md_path = recorder.written
    print(md_path.read_text())
    print(f"written: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
