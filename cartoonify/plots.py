"""Figures of a run: loss curve, validation grids, ratings against steps, scheduler comparison, stylize.

Each function returns a matplotlib ``Figure`` (displayed inline by notebooks) and writes nothing;
:func:`save_figure` writes one under the run's ``figures/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .rating import best_group
from .runs import checkpoint_step, layout_of, list_checkpoints, read_images_json
from .training.logs import read_loss_log


def _plt():
    """pyplot, imported on first use (matplotlib picks a headless backend where there is no display)."""
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is so far)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(len(v)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def plot_loss(ax, run_dir: str | Path, window: int | None = None) -> None:
    """Loss per step (light) and its moving average on ``ax``; checkpoint steps as dotted lines."""
    rows = read_loss_log(layout_of(run_dir).train_log)
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    window = window or max(1, len(rows) // 20)
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(steps, moving_average(loss, window), color="tab:blue", label=f"mean of {window}")
    if rows and not math.isnan(rows[0].get("loss_prior", float("nan"))):
        ax.plot(steps, moving_average([r["loss_prior"] for r in rows], window), color="tab:orange",
                label="prior loss (mean)")
    for ckpt in list_checkpoints(run_dir):
        ax.axvline(checkpoint_step(ckpt), color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title("training loss")
    ax.legend(loc="upper right", fontsize="small")


def loss_figure(run_dir: str | Path, window: int | None = None):
    """The loss curve of a run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    plot_loss(ax, run_dir, window)
    fig.tight_layout()
    return fig


def validation_figure(run_dir: str | Path, steps: Sequence[int] | None = None, size: float = 1.8):
    """Every checkpoint's validation images: one row per step; flagged (NSFW) images are marked."""
    plt = _plt()
    layout = layout_of(run_dir)
    steps = list(steps) if steps is not None else layout.validation_steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir} has no validation images yet")
    metas = [read_images_json(layout.validation_dir(s)) for s in steps]
    cols = max(len(m["images"]) for m in metas)
    fig, axes = plt.subplots(len(steps), cols, figsize=(size * cols, size * len(steps)), squeeze=False)
    for r, (step, meta) in enumerate(zip(steps, metas)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(meta["images"]):
                ax.axis("off")
                continue
            rec = meta["images"][c]
            ax.imshow(Image.open(layout.validation_dir(step) / rec["file"]))
            if rec.get("nsfw"):
                ax.set_title("flagged: excluded", fontsize="small", color="red")
            elif r == 0:
                ax.set_title(f"seed {rec['seed']}", fontsize="small")
            if c == 0:
                ax.set_ylabel(f"step {step}")
    fig.suptitle(metas[0].get("prompt", ""), fontsize="medium")
    fig.tight_layout()
    return fig


def validation_style_scores(run_dir: str | Path) -> dict[int, list[float]]:
    """The weight-free style score (:func:`cartoonify.style.style_score`) of every validation image, by step."""
    from .style import style_score

    layout = layout_of(run_dir)
    return {
        step: [style_score(Image.open(layout.validation_dir(step) / r["file"]))
               for r in read_images_json(layout.validation_dir(step))["images"]]
        for step in layout.validation_steps()
    }


def plot_style(ax, run_dir: str | Path) -> dict[int, list[float]]:
    """Mean style score of the validation images against the step, each image a dot; returns the scores."""
    scores = validation_style_scores(run_dir)
    steps = sorted(scores)
    for step in steps:
        ax.scatter([step] * len(scores[step]), scores[step], color="tab:purple", alpha=0.35, s=12)
    ax.plot(steps, [float(np.mean(scores[s])) for s in steps], marker="o", color="tab:purple", label="mean")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("style score (0 photo, 1 cartoon)")
    ax.set_title("style of the validation images")
    ax.legend(loc="lower right", fontsize="small")
    return scores


def style_figure(run_dir: str | Path):
    """The style score of the validation images against the step, beside the loss curve."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    plot_style(left, run_dir)
    plot_loss(right, run_dir)
    fig.tight_layout()
    return fig


def plot_ratings(ax, summaries, group_label: str = "step") -> None:
    """Mean rating per group with its 95% bootstrap interval; the best group highlighted."""
    rated = [s for s in summaries if s.n > 0]
    ax.set_xlabel(group_label)
    ax.set_ylabel("rating (1-10)")
    ax.set_ylim(0.5, 10.5)
    ax.set_title("human rating")
    if not rated:
        ax.text(0.5, 0.5, "no ratings yet", ha="center", va="center", transform=ax.transAxes)
        return
    x = [s.group for s in rated]
    y = [s.mean for s in rated]
    err = np.array([[s.mean - s.ci_low for s in rated], [s.ci_high - s.mean for s in rated]])
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color="tab:green", label="mean, 95% CI")
    best = best_group(summaries)
    ax.scatter([best.group], [best.mean], s=150, facecolors="none", edgecolors="red", zorder=3,
               label=f"best: {best.group}")
    ax.legend(loc="lower right", fontsize="small")


def rating_figure(run_dir: str | Path, summaries):
    """Rating against step, beside the loss curve."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    plot_ratings(left, summaries)
    plot_loss(right, run_dir)
    fig.tight_layout()
    return fig


def scheduler_grid_figure(out_dir: str | Path, timings, size: float = 1.6):
    """Rows: schedulers; columns: prompt x seed, from the same initial noise per seed."""
    from .comparison import comparison_images

    plt = _plt()
    rows = comparison_images(out_dir, [t.scheduler for t in timings])
    meta = read_images_json(Path(out_dir) / timings[0].scheduler)["images"]
    cols = len(rows[0])
    fig, axes = plt.subplots(len(rows), cols, figsize=(size * cols, size * len(rows)), squeeze=False)
    for r, (t, images) in enumerate(zip(timings, rows)):
        for c, img in enumerate(images):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{meta[c]['prompt'][:24]}\nseed {meta[c]['seed']}", fontsize="x-small")
            if c == 0:
                ax.set_ylabel(f"{t.label}\n{t.steps} steps", fontsize="small")
    fig.tight_layout()
    return fig


def scheduler_bar_figure(timings):
    """Seconds per image and model evaluations per image, per scheduler."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    labels = [t.label for t in timings]
    left.bar(labels, [t.seconds_per_image for t in timings], color="tab:blue")
    left.set_ylabel("seconds / image")
    left.set_title("time per image")
    right.bar(labels, [t.model_evals_per_image for t in timings], color="tab:orange")
    right.set_ylabel("UNet evaluations / image")
    right.set_title("model evaluations per image")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def stylize_sweep_figure(out_dir: str | Path, photo: str, size: float = 1.9):
    """One photo's sweep from one seed: rows are img2img and ControlNet at each conditioning scale, columns
    the strengths; under each image its edge F1 and SSIM to the photo (structure) and its style score."""
    from .stylize import INPUT_FILE, read_stylized

    plt = _plt()
    records = [r for r in read_stylized(out_dir)["images"] if r["photo"] == photo]
    rows = sorted({(r["method"], r.get("conditioning_scale") or 0.0) for r in records}, key=lambda m: (m[0] != "img2img", m[1]))
    strengths = sorted({r["strength"] for r in records})
    by = {(r["method"], r.get("conditioning_scale") or 0.0, r["strength"]): r for r in records}
    fig, axes = plt.subplots(len(rows), len(strengths) + 1, figsize=(size * (len(strengths) + 1), (size + 0.5) * len(rows)),
                             squeeze=False)
    for i, (method, scale) in enumerate(rows):
        axes[i][0].imshow(Image.open(Path(out_dir) / photo / INPUT_FILE))
        axes[i][0].set_title("photo", fontsize="small")
        axes[i][0].set_ylabel(method if method == "img2img" else f"ControlNet\nscale {scale:g}", fontsize="small")
        for j, strength in enumerate(strengths):
            ax = axes[i][j + 1]
            r = by.get((method, scale, strength))
            if r is not None:
                ax.imshow(Image.open(Path(out_dir) / r["file"]))
                s = r["scores"]
                ax.set_title(f"strength {strength:g}\nF1 {s['edge_f1']:.2f} SSIM {s['ssim']:.2f}\n"
                             f"style {s['style_score']:.2f}", fontsize="x-small")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(photo, fontsize="medium")
    fig.tight_layout()
    return fig


def stylize_tradeoff_figure(rows: Sequence[dict], recommended: dict | None = None):
    """Style against structure over the settings (means over the photos): img2img and ControlNet points,
    the trade-off frontier as a line, the recommended setting circled."""
    from .stylize import frontier, style_key

    plt = _plt()
    y = style_key(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, marker in (("img2img", "o"), ("controlnet", "s")):
        pts = [r for r in rows if r["method"] == method]
        if pts:
            ax.scatter([r["edge_f1"] for r in pts], [r[y] for r in pts], marker=marker, label=method, s=40)
            for r in pts:
                ax.annotate(f"{r['strength']:g}" + (f"/{r['conditioning_scale']:g}" if r.get("conditioning_scale") is not None else ""),
                            (r["edge_f1"], r[y]), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    front = {r["label"]: r for r in rows}
    line = [front[label] for label in frontier(rows, y=y)]
    if line:
        ax.plot([r["edge_f1"] for r in line], [r[y] for r in line], color="gray", linestyle="--", label="frontier")
    if recommended and recommended.get("label") in front:
        r = front[recommended["label"]]
        ax.scatter([r["edge_f1"]], [r[y]], s=220, facecolors="none", edgecolors="red", label="recommended")
    ax.set_xlabel("structure kept: edge F1 to the photo")
    ax.set_ylabel(f"style: {y}")
    ax.set_title("style vs structure (labels: strength/scale)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


# panels of the evaluation figure: (title, [(column, label)], y label)
EVALUATION_PANELS = (
    ("prompt fidelity", [("clip_t", "CLIP-T")], "100 x cosine"),
    ("similarity to the instance images", [("clip_style", "CLIP top-k"), ("dino", "DINO")], "cosine"),
    ("weight-free style score", [("style_score", "style score")], "0 photo, 1 cartoon"),
    ("drift from the base model (class prompt)", [("drift_clip", "CLIP"), ("drift_dino", "DINO"),
                                                  ("drift_ssim", "1 - SSIM")], "distance"),
    ("held-out loss", [("heldout_instance", "held-out instance"), ("heldout_class", "class")], "DreamBooth loss"),
)


def _plot_columns(ax, rows: Sequence[dict], columns, title: str, ylabel: str) -> None:
    drawn = False
    for key, label in columns:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
            drawn = True
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize="x-small")
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def evaluation_figure(rows: Sequence[dict], best: dict | None = None):
    """One panel per view of the checkpoints against the step: the human mean with its CI, prompt
    fidelity, similarity to the instance images, the weight-free style score, drift, and the held-out loss;
    the best checkpoint marked in every panel."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    axes = axes.ravel()
    rated = [r for r in rows if r.get("n")]
    ax = axes[0]
    if rated:
        err = np.array([[r["mean"] - r["ci_low"] for r in rated], [r["ci_high"] - r["mean"] for r in rated]])
        ax.errorbar([r["step"] for r in rated], [r["mean"] for r in rated], yerr=err, marker="o", capsize=3,
                    color="tab:green", label="mean, 95% CI")
        ax.legend(fontsize="x-small")
    else:
        ax.text(0.5, 0.5, "no ratings yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0.5, 10.5)
    ax.set_title("human rating (1-10)", fontsize="medium")
    ax.set_xlabel("step")
    for ax, (title, columns, ylabel) in zip(axes[1:], EVALUATION_PANELS):
        _plot_columns(ax, rows, columns, title, ylabel)
    if best and best.get("step") is not None:
        for ax in axes:
            ax.axvline(best["step"], color="red", linestyle=":", linewidth=1)
        fig.suptitle(f"best: {best['checkpoint']} ({best['rule']}; red line)", fontsize="medium")
    fig.tight_layout()
    return fig


def scheduler_scores_figure(score_rows: Sequence[dict]):
    """The automated scores of each scheduler's images, one bar chart per score."""
    plt = _plt()
    keys = [("clip_t", "CLIP-T"), ("clip_style", "CLIP top-k similarity"), ("dino", "DINO similarity"),
            ("style_score", "style score")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    labels = [r["scheduler"] for r in score_rows]
    for ax, (key, title) in zip(axes, keys):
        values = [r.get(key, math.nan) for r in score_rows]
        if all(not (isinstance(v, float) and math.isfinite(v)) for v in values):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.bar(labels, [0 if not math.isfinite(v) else v for v in values], color="tab:purple")
        ax.set_title(title, fontsize="medium")
        ax.tick_params(axis="x", rotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.tight_layout()
    return fig
