"""The main job on the embedded default: demo data -> class images -> DreamBooth -> validation -> stylize.

``python -m cartoonify.demo [--run demo] [--config configs/demo.yaml]`` writes everything under
``outputs/<run>/`` and prints where. A second call resumes the run (finished steps are not redone).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import TrainConfig, load_mapping, parse_overrides

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
STYLIZE_PROMPT = "a person, Disney style"


def demo_config(run_dir: Path, config_file: str | Path = DEFAULT_CONFIG, **overrides) -> TrainConfig:
    """The demo's TrainConfig with its data and outputs placed under ``run_dir``."""
    data = load_mapping(config_file)
    data.update(
        output_dir=str(run_dir),
        instance_dir=str(run_dir / "data" / "instance"),
        class_dir=str(run_dir / "data" / "class"),
        resume_from_checkpoint="latest",
    )
    data.update(overrides)
    return TrainConfig.from_dict(data)


def stylize_photos(
    pipeline_dir: Path, photos: Sequence[Path], out_dir: Path, strength: float = 0.6, seed: int = 0
) -> list[Path]:
    """img2img each photo with the fine-tuned pipeline; saves ``<photo>-stylized.png`` and a before/after pair."""
    from PIL import Image

    from .sample import image_grid, image_to_image, load_finetuned

    pipe = load_finetuned(checkpoint=pipeline_dir, safety_checker=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for photo in photos:
        with Image.open(photo) as img:
            src = img.convert("RGB")
        res = image_to_image(pipe, src, STYLIZE_PROMPT, strength=strength, seed=seed, num_inference_steps=25)
        out = res.images[0]
        path = out_dir / f"{photo.stem}-stylized.png"
        out.save(path)
        image_grid([src.resize(out.size, Image.LANCZOS), out], rows=1).save(out_dir / f"{photo.stem}-before-after.png")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cartoonify.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="demo", help="run name: outputs go to <outputs>/<run>")
    parser.add_argument("--outputs", default="outputs", help="the outputs folder")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="TrainConfig YAML of the demo")
    parser.add_argument("--n-images", type=int, default=24, help="number of drawn style images")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from .demo_data import make_demo_dataset
    from .train import train

    t0 = time.perf_counter()
    run_dir = Path(args.outputs) / args.run
    config = demo_config(run_dir, args.config, **parse_overrides(rest))
    data = make_demo_dataset(run_dir / "data", size=config.resolution, n=args.n_images, seed=config.seed)
    result = train(config)
    photos = sorted(Path(data["photos_dir"]).glob("*.png"))
    stylized = stylize_photos(result.pipeline_dir, photos[:1], run_dir / "stylized")
    wall = time.perf_counter() - t0
    print()
    print(f"Demo finished in {wall:.0f} s ({result.steps_per_second:.2f} training steps/s). Outputs in {run_dir}/:")
    print(f"  config.json, run_info.json      the run's config, git commit and library versions")
    print(f"  checkpoints/                    {', '.join(p.name for p in sorted(result.checkpoints))}")
    print(f"  validation/step-*/grid.png      validation grid per checkpoint")
    print(f"  logs/train_log.csv, logs/       loss and learning rate per step (CSV, TensorBoard)")
    print(f"  pipeline/                       the fine-tuned pipeline (StableDiffusionPipeline.from_pretrained)")
    print(f"  stylized/                       {', '.join(p.name for p in stylized)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
