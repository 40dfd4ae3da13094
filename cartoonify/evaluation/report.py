"""The evaluation of a run: one row per checkpoint with the human side (mean, CI, n, the raters' alpha) and
every automated score beside it, the held-out loss, the explicit rule that picks the best checkpoint, and
``evaluation.json``, which 04_compare_schedulers and 05_stylize read.

The rule (:func:`choose_best`): when every checkpoint has at least ``min_ratings`` human ratings, the best
is the one with the highest human mean. Otherwise it is automated: among the checkpoints whose held-out
instance loss is at most ``overfit_tolerance`` above the run's lowest (the overfitting guard; all of them
when there is no held-out loss), the one with the highest style similarity to the instance images (CLIP,
or the weight-free style score when no CLIP model could be loaded).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import EvalConfig
from ..rating import collect_items, krippendorff_alpha, spearman, summarize
from ..runs import checkpoint_step, layout_of, list_checkpoints
from ..utils import write_json
from .drift import drift_image_paths, drift_steps, render_drift_images
from .scores import (
    DRIFT_SCORES,
    IMAGE_SCORES,
    SCORES,
    ImageScorer,
    image_set,
    read_scores_csv,
    run_scorer,
    write_scores_csv,
)

HUMAN_COLUMNS = ("n", "mean", "ci_low", "ci_high", "alpha")
HELDOUT_COLUMNS = ("heldout_instance", "heldout_class")
CHECKPOINT_TABLE = "checkpoints"  # scores/checkpoints.csv


def heldout_by_step(run_dir: str | Path) -> dict[int, dict[str, float]]:
    """The held-out losses of ``logs/heldout_loss.csv`` by step (empty when the run held nothing out)."""
    path = layout_of(run_dir).heldout_log
    if not path.is_file():
        return {}
    return {int(r["step"]): {k: float(r.get(k, math.nan)) for k in HELDOUT_COLUMNS} for r in read_scores_csv(path)}


def checkpoint_scores(run_dir: str | Path, scorer: ImageScorer, progress: bool = True) -> list[dict[str, Any]]:
    """The automated scores of every validation step (its validation images), the drift of its class-prompt
    images against the base model's (where rendered), and its held-out losses. Written to
    ``scores/checkpoints.csv``; returns the rows."""
    from tqdm.auto import tqdm

    layout = layout_of(run_dir)
    heldout = heldout_by_step(run_dir)
    drift = set(drift_steps(run_dir))
    rows = []
    for step in tqdm(layout.validation_steps(), desc="Scoring checkpoints", disable=not progress):
        paths, prompts = image_set(layout.validation_dir(step))
        row: dict[str, Any] = {"step": step, **scorer.image_scores(paths, prompts)}
        if 0 in drift and step in drift:
            row.update(scorer.drift_scores(drift_image_paths(run_dir, step), drift_image_paths(run_dir, 0)))
        else:
            row.update({k: math.nan for k in DRIFT_SCORES})
        row.update(heldout.get(step, {k: math.nan for k in HELDOUT_COLUMNS}))
        rows.append(row)
    write_scores_csv(rows, layout.scores_csv(CHECKPOINT_TABLE))
    return rows


def human_columns(run_dir: str | Path, records: Sequence[dict], n_resamples: int = 10000) -> dict[int, dict[str, float]]:
    """Per step: the human mean, its bootstrap CI, n, and Krippendorff's alpha of that step's images."""
    items = [i for i in collect_items(run_dir) if not i.excluded]
    out = {}
    for s in summarize(items, records, n_resamples=n_resamples):
        paths = {i.path for i in items if i.group == s.group}
        own = [r for r in records if r["image"] in paths]
        out[s.group] = {"n": s.n, "mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high,
                        "alpha": krippendorff_alpha(own) if own else math.nan}
    return out


def evaluation_rows(run_dir: str | Path, score_rows: Sequence[dict], records: Sequence[dict],
                    n_resamples: int = 10000) -> list[dict[str, Any]]:
    """One row per validation step: step, checkpoint (its folder name, or "" if pruned or the base model),
    the human columns, then every automated score and the held-out losses."""
    human = human_columns(run_dir, records, n_resamples)
    ckpts = {checkpoint_step(p): p.name for p in list_checkpoints(run_dir)}
    nan_human = {"n": 0, **{k: math.nan for k in HUMAN_COLUMNS if k != "n"}}
    rows = []
    for score in score_rows:
        step = int(score["step"])
        rest = {k: v for k, v in score.items() if k != "step"}
        rows.append({"step": step, "checkpoint": ckpts.get(step, ""), **human.get(step, nan_human), **rest})
    return rows


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def choose_best(rows: Sequence[dict], min_ratings: int = 8, overfit_tolerance: float = 0.1) -> dict[str, Any]:
    """The best checkpoint by the module's rule: ``{"checkpoint", "step", "rule", "reason"}`` (``rule`` is
    ``"human"``, ``"automated"`` or ``"none"``)."""
    candidates = [r for r in rows if r["checkpoint"]]
    if not candidates:
        return {"checkpoint": None, "step": None, "rule": "none", "reason": "no checkpoint to choose from"}
    short = [r for r in candidates if r["n"] < min_ratings]
    if not short:
        best = max(candidates, key=lambda r: r["mean"])
        return {"checkpoint": best["checkpoint"], "step": best["step"], "rule": "human",
                "reason": f"every checkpoint has at least {min_ratings} ratings; {best['checkpoint']} has the "
                          f"highest human mean ({best['mean']:.2f})"}
    why = f"{short[0]['checkpoint']} has {short[0]['n']} of the {min_ratings} ratings a human choice needs"
    pool, guard = candidates, ""
    losses = [r["heldout_instance"] for r in candidates if _finite(r.get("heldout_instance"))]
    if losses:
        limit = min(losses) * (1 + overfit_tolerance)
        pool = [r for r in candidates if _finite(r.get("heldout_instance")) and r["heldout_instance"] <= limit]
        guard = (f"among the checkpoints whose held-out instance loss is within {overfit_tolerance:.0%} of the "
                 f"lowest ({min(losses):.4f}), ")
    key = "clip_style" if any(_finite(r.get("clip_style")) for r in pool) else "style_score"
    best = max(pool, key=lambda r: r[key] if _finite(r.get(key)) else -math.inf)
    return {"checkpoint": best["checkpoint"], "step": best["step"], "rule": "automated",
            "reason": f"{why}; {guard}{best['checkpoint']} has the highest {key} ({best[key]:.3f})"}


def score_agreement(rows: Sequence[dict]) -> dict[str, float]:
    """Spearman's rank correlation of each automated score with the human mean, over the rated steps."""
    rated = [r for r in rows if r["n"] > 0]
    out = {}
    for key in (*IMAGE_SCORES, *DRIFT_SCORES, *HELDOUT_COLUMNS):
        pairs = [(r["mean"], r[key]) for r in rated if _finite(r.get(key))]
        out[key] = spearman(*zip(*pairs)) if len(pairs) >= 3 else math.nan
    return out


def format_agreement(agreement: dict[str, float]) -> str:
    """:func:`score_agreement` as one line (``n/a`` where fewer than three checkpoints are rated)."""
    return ", ".join(f"{k} {v:+.2f}" if math.isfinite(v) else f"{k} n/a" for k, v in agreement.items())


def write_evaluation(run_dir: str | Path, rows: Sequence[dict], best: dict, *, alpha: float,
                     agreement: dict[str, float], models: dict, notes: Sequence[str], settings: dict) -> Path:
    """``evaluation.json``: the table, the best checkpoint with its rule, the raters' alpha, the scores'
    agreement with the humans, the models that scored, and what could not be loaded."""
    def clean(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    data = {
        "best": best, "alpha": clean(alpha), "settings": settings, "models": models, "notes": list(notes),
        "agreement_with_humans": {k: clean(v) for k, v in agreement.items()},
        "columns": {**SCORES, "heldout_instance": "DreamBooth loss on the held-out instance images",
                    "heldout_class": "DreamBooth loss on the first class images (how well the prior is kept)"},
        "rows": [{k: clean(v) for k, v in r.items()} for r in rows],
    }
    return write_json(layout_of(run_dir).evaluation, data)


def _cell(v: Any, key: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if key in ("step", "n"):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.2f}" if key in ("mean", "ci_low", "ci_high", "clip_t") else f"{v:.3f}"
    return html.escape(str(v))


def evaluation_html(rows: Sequence[dict], best: dict) -> str:
    """The table as HTML: the best checkpoint in bold, the rule under it."""
    cols = ["step", "checkpoint", "n", "mean", "95% CI", "alpha", *IMAGE_SCORES, *DRIFT_SCORES, *HELDOUT_COLUMNS]
    head = "".join(f"<th title='{html.escape(SCORES.get(c, c))}'>{c}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            if c == "95% CI":
                cells.append("–" if not _finite(r.get("ci_low")) else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
            else:
                cells.append(_cell(r.get(c), c))
        bold = " style='font-weight:bold'" if r["checkpoint"] and r["checkpoint"] == best.get("checkpoint") else ""
        body.append(f"<tr{bold}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rule = f"<p><b>Best: {html.escape(str(best.get('checkpoint')))}</b> ({best.get('rule')}): " \
           f"{html.escape(best.get('reason', ''))}</p>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{rule}"


@dataclass
class Evaluation:
    """What :func:`evaluate_run` found: the table, the best checkpoint, the raters' alpha, the scores'
    agreement with the humans, and notes on what could not be scored."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    alpha: float
    agreement: dict[str, float]
    notes: list[str]
    path: Path

    def html(self) -> str:
        return evaluation_html(self.rows, self.best)


def evaluate_run(run_dir: str | Path, config: EvalConfig, records: Sequence[dict], device: str | None = None,
                 progress: bool = True) -> Evaluation:
    """Everything 03_evaluate shows: drift images (rendered once), the automated scores of every
    checkpoint (cached), the human columns from ``records`` (:meth:`RatingStore.records`), the best
    checkpoint by the rule, all written to ``scores/checkpoints.csv`` and ``evaluation.json``."""
    render_drift_images(run_dir, config.drift_images, device=device, progress=progress)
    scorer = run_scorer(run_dir, config, device=device)
    rows = evaluation_rows(run_dir, checkpoint_scores(run_dir, scorer, progress), records, config.bootstrap_resamples)
    best = choose_best(rows, config.min_ratings, config.overfit_tolerance)
    alpha = krippendorff_alpha(records) if records else math.nan
    agreement = score_agreement(rows)
    notes = list(scorer.scorers.notes)
    settings = {k: getattr(config, k) for k in ("style_top_k", "drift_images", "min_ratings", "overfit_tolerance")}
    path = write_evaluation(run_dir, rows, best, alpha=alpha, agreement=agreement, models=scorer.scorers.models,
                            notes=notes, settings=settings)
    return Evaluation(rows, best, alpha, agreement, notes, path)
