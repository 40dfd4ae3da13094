"""The model card beside every export: ``README.md`` with YAML front matter (licence, base model, tags), as
published style models have, and ``samples.png``, a grid of the validation images of the exported step.

It says what the model is (base model, trigger phrase, class prompt, step, learning rate, seed), how its samples
were made (sampler, steps, CFG, seeds), what people and the automated scores made of that checkpoint where they
exist, how to load it, and its licence.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..imaging import ImageLoadError, image_grid, open_rgb, save_png
from ..rating import RatingStore, collect_items, summarize
from ..runs import layout_of, read_evaluation, read_images_json
from ..utils import atomic_write_text
from .job import OPENRAIL_LICENSE, ExportJob, base_license

CARD_FILE = "README.md"
SAMPLES_FILE = "samples.png"
LICENSE_URL = "https://huggingface.co/spaces/CompVis/stable-diffusion-license"


def front_matter(job: ExportJob, license_id: str) -> str:
    """The YAML header the hub and model sites read."""
    c = job.config
    meta: dict[str, Any] = {"license": license_id, "base_model": c.pretrained_model,
                            "tags": ["stable-diffusion", "text-to-image", "dreambooth", "cartoonify"],
                            "instance_prompt": c.instance_prompt, "pipeline_tag": "text-to-image"}
    if job.fmt == "diffusers":
        meta["tags"].insert(1, "stable-diffusion-diffusers")
        meta["library_name"] = "diffusers"
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n"


def training_section(job: ExportJob) -> list[str]:
    c = job.config
    prior = (f"yes: {c.num_class_images} class images of `{c.class_prompt}`, weight {c.prior_loss_weight}"
             if c.with_prior_preservation else "no")
    rows = [
        ("base model", f"`{c.pretrained_model}` (revision `{c.revision}`)"),
        ("steps", f"{job.step} (this checkpoint, `{job.name}`) of {c.max_train_steps}"),
        ("learning rate", f"{c.learning_rate:g} ({c.lr_scheduler}, {c.lr_warmup_steps} warmup steps)"),
        ("batch", f"{c.train_batch_size} instance image(s)" + (" + as many class images" if c.with_prior_preservation
                                                               else "")
         + (f", {c.gradient_accumulation_steps} accumulated" if c.gradient_accumulation_steps > 1 else "")),
        ("prior preservation", prior),
        ("text encoder trained", "yes" if c.train_text_encoder else "no"),
        ("resolution", f"{c.resolution} px"),
        ("mixed precision", c.mixed_precision),
        ("seed", str(c.seed)),
        ("exported weights", f"{job.dtype}, {job.fmt}"),
    ]
    return ["## Training", "", "| setting | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows], ""]


def samples_section(job: ExportJob, out_dir: Path) -> list[str]:
    """Saves ``samples.png`` from the validation images of the job's step; the lines that show and describe it."""
    folder = layout_of(job.run_dir).validation_dir(job.step)
    head = ["## Sample images", ""]
    if not folder.is_dir():
        return [*head, f"No validation images were made at step {job.step}.", ""]
    try:
        record = read_images_json(folder)
        shown = [r for r in record["images"] if r.get("nsfw") is not True]
        images = [open_rgb(folder / r["file"]) for r in shown]
    except (ValueError, ImageLoadError) as err:
        return [*head, f"The validation images of step {job.step} cannot be read: {err}", ""]
    if not images:
        return [*head, f"Every validation image of step {job.step} was flagged by the safety checker.", ""]
    save_png(image_grid(images, rows=1 if len(images) <= 4 else None), out_dir / SAMPLES_FILE)
    seeds = ", ".join(str(r.get("seed")) for r in shown)
    size = f"{images[0].width} x {images[0].height} px"
    lines = [*head, f"![validation images of step {job.step}]({SAMPLES_FILE})", "",
             f"The validation images of step {job.step}, as the run made them: prompt `{record.get('prompt', '')}`, "
             f"sampler {record.get('scheduler', 'unknown')}, {record.get('num_inference_steps', '?')} steps, "
             f"CFG {record.get('guidance_scale', '?')}, seeds {seeds}, {size}."]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: `{record['negative_prompt']}`.")
    flagged = len(record["images"]) - len(shown)
    if flagged:
        lines.append(f"{flagged} image(s) flagged by the safety checker are left out.")
    return [*lines, ""]


def human_lines(job: ExportJob) -> list[str]:
    """The human ratings of the step's validation images (1-10), or "not rated"."""
    items = [i for i in collect_items(job.run_dir) if i.group == job.step]
    records = RatingStore(job.run_dir).records()
    summary = summarize(items, records, n_resamples=2000)[0] if items else None
    if summary is None or summary.n == 0:
        return ["**People:** not rated (no ratings of this checkpoint's validation images in `ratings.csv`)."]
    paths = {i.path for i in items}
    raters = len({r["rater"] for r in records if r["image"] in paths})
    ci = (f" (95% CI {summary.ci_low:.2f}-{summary.ci_high:.2f})"
          if math.isfinite(summary.ci_low) and math.isfinite(summary.ci_high) else "")
    return [f"**People:** mean {summary.mean:.2f}{ci} on a 1-10 scale, n = {summary.n} ratings by {raters} "
            f"rater(s) of this checkpoint's validation images."]


def score_row(job: ExportJob) -> tuple[dict[str, Any] | None, dict[str, str], str]:
    """The step's row of automated scores: from ``evaluation.json`` (with the column descriptions), else from
    ``scores/checkpoints.csv``; ``(None, {}, "")`` when the run has not been scored."""
    evaluation = read_evaluation(job.run_dir) or {}
    for row in evaluation.get("rows", []):
        if row.get("step") == job.step:
            return row, dict(evaluation.get("columns", {})), "evaluation.json"
    from ..evaluation.report import CHECKPOINT_TABLE

    path = layout_of(job.run_dir).scores_csv(CHECKPOINT_TABLE)
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("step") and int(float(row["step"])) == job.step:
                    return row, {}, f"scores/{path.name}"
    return None, {}, ""


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def scores_lines(job: ExportJob) -> list[str]:
    """The automated scores of the checkpoint and 03_evaluate's choice, or "not scored"."""
    row, columns, source = score_row(job)
    if row is None:
        return ["**Automated scores:** not scored (03_evaluate has not scored this run's checkpoints)."]
    skip = {"step", "checkpoint", "n", "mean", "ci_low", "ci_high", "alpha"}
    values = {k: _number(v) for k, v in row.items() if k not in skip}
    shown = [(k, v) for k, v in values.items() if v is not None]
    if not shown:
        return [f"**Automated scores:** not scored (no score of step {job.step} in `{source}`)."]
    lines = [f"**Automated scores** (`{source}`):", "", "| score | value | what it measures |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v:.4g} | {columns.get(k, '')} |" for k, v in shown]
    best = (read_evaluation(job.run_dir) or {}).get("best") or {}
    if best.get("checkpoint") == job.name:
        lines += ["", f"03_evaluate chose this checkpoint as the best ({best.get('rule')}): {best.get('reason')}"]
    elif best.get("checkpoint"):
        lines += ["", f"03_evaluate's best checkpoint is `{best['checkpoint']}` ({best.get('rule')}), not this one."]
    return lines


def _usage_single_file(job: ExportJob, model_file: str) -> list[str]:
    return [
        "```python", "import torch", "from diffusers import StableDiffusionPipeline", "",
        f'pipe = StableDiffusionPipeline.from_single_file("{model_file}", torch_dtype=torch.float16).to("cuda")',
        "```", "",
        "diffusers reads the SD1.5 configuration for the file from the hub; offline, or for a base model other than "
        f"SD1.5, add `config=` with a local copy of the base model (`{job.config.pretrained_model}`).", "",
        f"**AUTOMATIC1111:** copy `{model_file}` into `stable-diffusion-webui/models/Stable-diffusion/`; "
        f"**ComfyUI:** into `ComfyUI/models/checkpoints/` (or `models/Stable-diffusion/` of a shared model folder). "
        "Pick it as the checkpoint and put the trigger phrase in the prompt.",
    ]


def _usage_diffusers(job: ExportJob, model_file: str) -> list[str]:
    return [
        "```python", "import torch", "from diffusers import StableDiffusionPipeline", "",
        'pipe = StableDiffusionPipeline.from_pretrained("path/to/this/folder", torch_dtype=torch.float16).to("cuda")',
        "```", "",
        "AUTOMATIC1111 and ComfyUI load a single file: export the checkpoint again with `--format single-file`.",
    ]


# how to load each format's model (a format without an entry gets a pointer to the files)
USAGE: dict[str, Callable[[ExportJob, str], list[str]]] = {
    "single-file": _usage_single_file, "diffusers": _usage_diffusers,
}


def usage_section(job: ExportJob, model_file: str, prompt: str) -> list[str]:
    lines = USAGE.get(job.fmt, lambda j, f: [f"The model is `{f}` in this folder ({j.fmt} format)."])(job, model_file)
    example = ["", "Then, with the trigger phrase in the prompt:", "", "```python",
               f'image = pipe("{prompt}", num_inference_steps=25, guidance_scale=7.5).images[0]', "```"]
    return ["## How to use", "", *lines, *example, ""]


def licence_section(job: ExportJob, license_id: str) -> list[str]:
    base = job.config.pretrained_model
    if license_id != OPENRAIL_LICENSE:
        return ["## Licence", "",
                f"The base model, `{base}`, is the cartoonify package's own embedded model (MIT), not derived from "
                "Stable Diffusion's weights; this fine-tune is under the same MIT licence. A fine-tune of Stable "
                f"Diffusion v1.5 made by the same code is under the [CreativeML OpenRAIL-M]({LICENSE_URL}) licence.", ""]
    return [
        "## Licence", "",
        f"This model is a fine-tune of Stable Diffusion v1.5 (`{base}`) and, like it, is under the "
        f"[CreativeML OpenRAIL-M]({LICENSE_URL}) licence. The licence's use-based restrictions (its Attachment A) "
        "carry over to this model and to every copy or derivative of it:", "",
        "1. You may not use the model to deliberately produce or share illegal or harmful outputs or content.",
        "2. No rights are claimed on the outputs you generate: you may use them and are accountable for that use, "
        "which must not go against the provisions of the licence.",
        "3. You may redistribute the weights and use the model commercially and/or as a service; if you do, you "
        "must include the same use restrictions as the licence and share a copy of the CreativeML OpenRAIL-M "
        "licence with all your users.", "",
        "The rights in the images it was trained on remain with their owners.", "",
    ]


def write_model_card(run_dir: str | Path, checkpoint: str | Path, out_dir: str | Path, fmt: str, *,
                     model_file: str | None = None, dtype: str = "fp16") -> Path:
    """Write ``README.md`` (and ``samples.png``, the grid of the step's validation images) into ``out_dir`` for
    the export of ``checkpoint`` of a run in format ``fmt``; ``model_file`` is the model's path relative to
    ``out_dir`` (``"."`` for a folder). Returns the card's path."""
    out_dir = Path(out_dir)
    job = ExportJob.of(run_dir, checkpoint, fmt, dtype)
    license_id = base_license(job.config)
    c = job.config
    intro = [f"# {job.run_dir.name}: {job.name}", "",
             f"A DreamBooth fine-tune of `{c.pretrained_model}` that draws a cartoon style, made with cartoonify "
             f"{job.record()['version']} and exported from `{job.name}` (step {job.step}) in the {fmt} format "
             f"(`{model_file or '.'}`, {dtype}).", "",
             "## Trigger phrase", "",
             f"Put **`{c.instance_prompt}`** (the instance prompt it was trained on) in the prompt. The class "
             f"prompt, for prior preservation, was `{c.class_prompt}`.", ""]
    samples = samples_section(job, out_dir)
    judged = ["## Ratings and scores", "", *human_lines(job), "", *scores_lines(job), ""]
    prompt = c.validation_prompt if c.instance_prompt in c.validation_prompt else c.instance_prompt
    text = "\n".join([front_matter(job, license_id), *intro, *samples, *training_section(job), *judged,
                      *usage_section(job, model_file or ".", prompt), *licence_section(job, license_id)])
    return atomic_write_text(out_dir / CARD_FILE, text)
