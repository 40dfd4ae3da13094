"""Judging a run: picking a checkpoint, the scheduler comparison, and stylizing photos.

Human ratings (the write-up's 1-10 per image, averaged per checkpoint) live in :mod:`cartoonify.rating`;
this module uses them to pick the best checkpoint and produces the image sets that are rated next.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .utils import atomic_write_bytes, atomic_write_text, write_json


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's saved ``config.json`` (a clear error if the folder is not a training run)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.json); run 02_train first")
    return json.loads(path.read_text())


def resolve_checkpoint(run_dir: str | Path, which: str = "best") -> tuple[Path, str]:
    """Resolve a checkpoint choice to ``(path, label)``.

    ``which``: ``"best"`` (highest mean rating so far, else the latest, with the reason in the label),
    ``"latest"``, ``"pipeline"`` (the final pipeline) or a ``checkpoint-<step>`` folder name.
    """
    from .rating import RatingStore, best_group, collect_items, summarize
    from .train import list_checkpoints

    run_dir = Path(run_dir)
    ckpts = {p.name: p for p in list_checkpoints(run_dir)}
    if which == "pipeline":
        path = run_dir / "pipeline"
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{run_dir} has no final pipeline/ (the run has not finished)")
        return path, "pipeline"
    if which == "best":
        items = collect_items(run_dir)
        best = best_group(summarize(items, RatingStore(run_dir).records(), n_resamples=100))
        name = f"checkpoint-{best.group}" if best is not None else None
        if name in ckpts:
            return ckpts[name], name
        which = "latest"
    if which == "latest":
        if not ckpts:
            raise FileNotFoundError(f"{run_dir} has no complete checkpoint yet")
        name = list(ckpts)[-1]
        return ckpts[name], name
    if which not in ckpts:
        raise FileNotFoundError(f"no checkpoint {which!r} in {run_dir}/checkpoints (have: {', '.join(ckpts)})")
    return ckpts[which], which


def load_run_pipeline(run_dir: str | Path, which: str = "best", device: str | None = None):
    """The base model of a run with a checkpoint's trained modules: ``(pipeline, label)``.

    The safety checker stays on, as in validation: flagged images come back black and marked.
    """
    from .models import resolve_model
    from .sample import load_finetuned

    cfg = run_config(run_dir)
    path, label = resolve_checkpoint(run_dir, which)
    base = resolve_model(cfg["pretrained_model"], cfg.get("resolution", 64))
    pipe = load_finetuned(base, path, revision=cfg["revision"], variant=cfg["variant"], device=device)
    return pipe, label


# ------------------------------------------------------------------------------------------------
# scheduler comparison
# ------------------------------------------------------------------------------------------------


@dataclass
class SchedulerTiming:
    """One row of the comparison's timing table."""

    scheduler: str
    label: str
    class_name: str
    steps: int
    model_evals_per_image: float
    seconds_per_image: float
    images: int


class ModelCallCounter:
    """Counts forward calls of a module (the UNet: one call per model evaluation of a batch)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


def evals_for_steps(scheduler, steps: int) -> int:
    """Model evaluations a sampler makes for ``steps`` steps (its timesteps: Heun repeats each but the
    last, DPM2-style solvers likewise)."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def steps_for_budget(scheduler, evals: int) -> int:
    """The largest step count whose model evaluations do not exceed ``evals`` (at least 1)."""
    best = 1
    for steps in range(1, evals + 1):
        if evals_for_steps(scheduler, steps) <= evals:
            best = steps
        else:
            break
    return best


def initial_latents(pipe, seed: int, height: int, width: int) -> torch.Tensor:
    """The initial noise of ``seed`` (unit variance; the pipeline scales it by each scheduler's
    ``init_noise_sigma``), so every scheduler starts from the same noise for the same seed."""
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(pipe._execution_device, pipe.unet.dtype)


def compare_schedulers(
    pipe,
    schedulers: Sequence[str],
    prompts: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    steps: int = 25,
    budget: str = "steps",
    guidance_scale: float = 7.5,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[SchedulerTiming]:
    """Sample every prompt x seed under every scheduler, from the same initial noise per seed.

    With ``budget="evals"`` each scheduler gets the steps that make at most ``steps`` model evaluations
    (a fair comparison: Heun evaluates the model twice a step). Writes, per scheduler,
    ``out_dir/<scheduler>/image-XX.png`` and ``images.json`` (rateable with the rating widget, group key
    ``scheduler``), and ``out_dir/timing.csv``. Returns the timing rows.
    """
    from tqdm.auto import tqdm

    from .schedulers import make_scheduler, scheduler_label

    if budget not in ("steps", "evals"):
        raise ValueError(f"budget must be 'steps' or 'evals', got {budget!r}")
    out_dir = Path(out_dir)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    base = pipe.scheduler
    latents = {s: initial_latents(pipe, s, size, size) for s in seeds}
    rows: list[SchedulerTiming] = []
    counter = ModelCallCounter(pipe.unet)
    jobs = [(p, s) for p in prompts for s in seeds]
    bar = tqdm(total=len(schedulers) * len(jobs), desc="Comparing schedulers", disable=not progress)
    try:
        for name in schedulers:
            scheduler = make_scheduler(name, base)
            n_steps = steps if budget == "steps" else steps_for_budget(scheduler, steps)
            pipe.scheduler = scheduler
            _sample_one(pipe, prompts[0], latents[seeds[0]], seeds[0], 2, guidance_scale)  # warm-up
            counter.calls = 0
            records, elapsed = [], 0.0
            for i, (prompt, seed) in enumerate(jobs):
                t0 = time.perf_counter()
                image, nsfw = _sample_one(pipe, prompt, latents[seed], seed, n_steps, guidance_scale)
                elapsed += time.perf_counter() - t0
                file = f"image-{i:02d}.png"
                _save_png(image, out_dir / name / file)
                records.append({"file": file, "prompt": prompt, "seed": int(seed), "nsfw": nsfw})
                bar.update(1)
            row = SchedulerTiming(
                scheduler=name,
                label=scheduler_label(name),
                class_name=type(scheduler).__name__,
                steps=n_steps,
                model_evals_per_image=counter.calls / len(jobs),
                seconds_per_image=elapsed / len(jobs),
                images=len(jobs),
            )
            rows.append(row)
            write_json(
                out_dir / name / "images.json",
                {"scheduler": name, **asdict(row), "guidance_scale": guidance_scale, **(extra or {}), "images": records},
            )
    finally:
        counter.remove()
        pipe.scheduler = base
        bar.close()
    write_timing_csv(rows, out_dir / "timing.csv")
    return rows


def _sample_one(pipe, prompt: str, latents: torch.Tensor, seed: int, steps: int, guidance_scale: float):
    device = pipe._execution_device
    with torch.inference_mode():
        out = pipe(
            prompt=prompt,
            latents=latents.clone(),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator(device=device).manual_seed(int(seed)),  # ancestral samplers' noise
        )
    flags = getattr(out, "nsfw_content_detected", None)
    return out.images[0], (None if flags is None else bool(flags[0]))


def _save_png(image: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_timing_csv(rows: Sequence[SchedulerTiming], path: str | Path) -> Path:
    """Write the comparison's timing table as CSV."""
    buf = io.StringIO()
    fields = list(SchedulerTiming.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return atomic_write_text(path, buf.getvalue())


def read_timing_csv(path: str | Path) -> list[SchedulerTiming]:
    """Read back :func:`write_timing_csv`."""
    with Path(path).open(newline="") as fh:
        return [
            SchedulerTiming(
                scheduler=r["scheduler"],
                label=r["label"],
                class_name=r["class_name"],
                steps=int(r["steps"]),
                model_evals_per_image=float(r["model_evals_per_image"]),
                seconds_per_image=float(r["seconds_per_image"]),
                images=int(r["images"]),
            )
            for r in csv.DictReader(fh)
        ]


def timing_html(rows: Sequence[SchedulerTiming]) -> str:
    """The timing table as HTML for notebooks."""
    import html

    head = "<tr><th>scheduler</th><th>class</th><th>steps</th><th>UNet evals / image</th><th>s / image</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{r.class_name}</td><td>{r.steps}</td>"
        f"<td>{r.model_evals_per_image:g}</td><td>{r.seconds_per_image:.3f}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def comparison_images(out_dir: str | Path, schedulers: Sequence[str]) -> list[list[Image.Image]]:
    """The comparison's images as rows (one per scheduler) in prompt x seed order."""
    rows = []
    for name in schedulers:
        meta = json.loads((Path(out_dir) / name / "images.json").read_text())
        rows.append([Image.open(Path(out_dir) / name / r["file"]).convert("RGB") for r in meta["images"]])
    return rows


# ------------------------------------------------------------------------------------------------
# stylize
# ------------------------------------------------------------------------------------------------


def stylize_photos(
    pipe,
    photos: Sequence[str | Path],
    out_dir: str | Path,
    *,
    prompt: str,
    strengths: Sequence[float],
    seed: int = 0,
    steps: int = 50,
    guidance_scale: float = 7.5,
    extra: dict[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """img2img every photo at every strength (same seed); writes ``out_dir/<photo>/strength-<s>.png``,
    the center-cropped ``input.png``, and ``stylized.json``. Returns ``{photo stem: [files]}``."""
    from .data import crop_square, open_rgb, resize_shorter_side
    from .sample import image_to_image

    out_dir = Path(out_dir)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    written: dict[str, list[Path]] = {}
    records = []
    for photo in photos:
        photo = Path(photo)
        src = open_rgb(photo)
        folder = out_dir / photo.stem
        _save_png(crop_square(resize_shorter_side(src, size, Image.LANCZOS), size), folder / "input.png")
        files = []
        for strength in strengths:
            res = image_to_image(
                pipe, src, prompt, strength=strength, seed=seed, num_inference_steps=steps, guidance_scale=guidance_scale
            )
            path = folder / f"strength-{strength:.2f}.png"
            _save_png(res.images[0], path)
            files.append(path)
            records.append(
                {"photo": str(photo), "file": str(path.relative_to(out_dir)), "strength": strength, "nsfw": res.nsfw[0]}
            )
        written[photo.stem] = files
    write_json(
        out_dir / "stylized.json",
        {"prompt": prompt, "seed": seed, "steps": steps, "guidance_scale": guidance_scale, **(extra or {}), "images": records},
    )
    return written
