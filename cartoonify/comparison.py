"""The scheduler comparison: one checkpoint, the same prompts and initial noise per seed under every
sampler, timed and counted in model evaluations; the image sets are rateable like validation images."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .config import scheduler_label
from .imaging import save_png
from .models import make_scheduler
from .runs import read_images_json, write_images_json
from .utils import atomic_write_text

TIMING_FILE = "timing.csv"  # beside the schedulers' folders of a comparison


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
            row = _run_scheduler(pipe, name, base, jobs, latents, out_dir, steps, budget, guidance_scale, counter,
                                 extra, bar)
            rows.append(row)
    finally:
        counter.remove()
        pipe.scheduler = base
        bar.close()
    write_timing_csv(rows, out_dir / TIMING_FILE)
    return rows


def _run_scheduler(pipe, name, base, jobs, latents, out_dir: Path, steps: int, budget: str, guidance_scale: float,
                   counter: ModelCallCounter, extra, bar) -> SchedulerTiming:
    """One scheduler of the comparison: an untimed warm-up, then every (prompt, seed), saved and timed."""
    scheduler = make_scheduler(name, base)
    n_steps = steps if budget == "steps" else steps_for_budget(scheduler, steps)
    pipe.scheduler = scheduler
    first_prompt, first_seed = jobs[0]
    _sample_one(pipe, first_prompt, latents[first_seed], first_seed, 2, guidance_scale)  # warm-up
    counter.calls = 0
    records, elapsed = [], 0.0
    for i, (prompt, seed) in enumerate(jobs):
        t0 = time.perf_counter()
        image, nsfw = _sample_one(pipe, prompt, latents[seed], seed, n_steps, guidance_scale)
        elapsed += time.perf_counter() - t0
        file = f"image-{i:02d}.png"
        save_png(image, out_dir / name / file)
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
    meta = {"scheduler": name, **asdict(row), "guidance_scale": guidance_scale, **(extra or {})}
    write_images_json(out_dir / name, meta, records)
    return row


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
        meta = read_images_json(Path(out_dir) / name)
        rows.append([Image.open(Path(out_dir) / name / r["file"]).convert("RGB") for r in meta["images"]])
    return rows


def comparison_html(rows: Sequence[SchedulerTiming], scores: Sequence[dict] = (), pairwise: Sequence[Any] = ()) -> str:
    """One table per scheduler: steps, UNet evaluations and seconds per image, the automated scores of its
    images (``scores``: rows with a ``scheduler`` key) and, when there are pairwise choices, its
    Bradley-Terry strength (``pairwise``: :class:`~cartoonify.rating.PairwiseSummary` rows)."""
    import html
    import math

    by_name = {r["scheduler"]: r for r in scores}
    strength = {p.group: p for p in pairwise if p.n}
    keys = ["clip_t", "clip_style", "dino", "style_score"]
    head = ["scheduler", "class", "steps", "UNet evals / image", "s / image", *keys]
    if strength:
        head.append("pairwise strength [95% CI]")

    def fmt(v):
        return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"

    body = []
    for r in rows:
        cells = [html.escape(r.label), r.class_name, str(r.steps), f"{r.model_evals_per_image:g}",
                 f"{r.seconds_per_image:.3f}", *[fmt(by_name.get(r.scheduler, {}).get(k)) for k in keys]]
        if strength:
            p = strength.get(r.scheduler)
            cells.append(f"{p.strength:+.2f} [{p.ci_low:.2f}, {p.ci_high:.2f}]" if p else "–")
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
