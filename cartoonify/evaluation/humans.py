"""The human side of an evaluation in one place for the notebooks: the rating widget of the chosen mode
(one image at a time, a group's images side by side, or pairwise) and the summary of what the raters said
(per-group means, Krippendorff's alpha, each rater's mean and count, Bradley-Terry strengths)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

from ..config import EvalConfig
from ..rating import (
    PairwiseStore,
    RatingItem,
    RatingStore,
    comparisons_from_records,
    krippendorff_alpha,
    pairwise_html,
    pairwise_session,
    pairwise_summary,
    rater_summary,
    rater_table_html,
    rating_session,
    summarize,
    summary_html,
    summary_message,
    write_summary_csv,
)
from ..rating.items import group_sort_key
from ..runs import layout_of

RATING_SUMMARY_FILE = "rating_summary.csv"  # in the run's figures/


def rating_widget(run_dir: str | Path, config: EvalConfig, items: Sequence[RatingItem], group_label: str = "step"):
    """The widget of ``config.rating_mode`` over ``items``, saving each answer the moment it is given:
    ``"image"`` and ``"grid"`` rate 1-10 into ``ratings.csv``; ``"pairwise"`` shows two images of the same
    prompt and seed from two groups (steps or schedulers), blind and in random sides, into ``pairwise.csv``.
    The rater box is prefilled with ``config.rater`` or else the most recent rater of that file."""
    if config.rating_mode == "pairwise":
        return pairwise_session(run_dir, items=items, rater=config.rater, seed=config.rating_seed,
                                display_size=config.display_size)
    return rating_session(run_dir, items=items, rater=config.rater, blind=config.blind, seed=config.rating_seed,
                          mode=config.rating_mode, display_size=config.display_size, group_label=group_label)


def human_summary(run_dir: str | Path, items: Sequence[RatingItem], config: EvalConfig,
                  group_label: str = "step") -> dict[str, Any]:
    """What the raters said about ``items``: per-group summaries (also written to
    ``figures/rating_summary.csv`` for validation steps), alpha across raters, per-rater counts and means, and
    the pairwise strengths (``None`` without pairwise choices)."""
    ratings = RatingStore(run_dir).records()
    paths = {i.path for i in items}
    ratings = [r for r in ratings if r["image"] in paths]
    summaries = summarize(items, ratings, n_resamples=config.bootstrap_resamples)
    if group_label == "step":
        write_summary_csv(summaries, layout_of(run_dir).figure(RATING_SUMMARY_FILE))
    comparisons = comparisons_from_records(PairwiseStore(run_dir).records(), items)
    groups = sorted({i.group for i in items}, key=group_sort_key)
    pairwise = pairwise_summary(comparisons, groups, seed=config.rating_seed) if comparisons else None
    return {"summaries": summaries, "alpha": krippendorff_alpha(ratings) if ratings else math.nan,
            "raters": rater_summary(ratings), "pairwise": pairwise, "n_ratings": len(ratings),
            "group_label": group_label}


def human_summary_html(summary: dict[str, Any]) -> str:
    """:func:`human_summary` as HTML: the group table (with its one summary sentence), the raters' table with
    alpha, and the pairwise strengths when there are any."""
    label = summary["group_label"]
    sentence = html.escape(summary_message(summary["summaries"], group_label=label))
    parts = [f"<p>{sentence}</p>", summary_html(summary["summaries"], group_label=label)]
    if summary["raters"]:
        parts.append(rater_table_html(summary["raters"], alpha=summary["alpha"]))
    if summary["pairwise"]:
        parts.append(pairwise_html(summary["pairwise"], group_label=label))
    else:
        parts.append(f"<p>No pairwise choices yet (set <code>rating_mode = {html.escape(repr('pairwise'))}</code> "
                     "to compare two images side by side).</p>")
    return "".join(parts)
