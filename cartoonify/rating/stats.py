"""Per-group summaries of the ratings: means with percentile-bootstrap confidence intervals, as text, HTML or CSV."""

from __future__ import annotations

import csv
import html
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write_text
from .items import RatingItem, item_sort_key

NO_RATINGS_MESSAGE = "No ratings yet: run the rating widget in Jupyter to rate the images."


@dataclass
class GroupSummary:
    """The ratings of one group pooled over raters and images.

    ``std`` is the sample standard deviation (``ddof=1``, ``nan`` for fewer than two ratings); ``ci_low`` and
    ``ci_high`` bound a percentile-bootstrap confidence interval of the mean at level ``confidence``;
    ``n_excluded`` counts the group's images flagged by the safety checker.
    """

    group: Any
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_excluded: int = 0
    confidence: float = 0.95


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (``numpy.random.default_rng(seed)``).

    Each resample draws ``len(values)`` indices with replacement; the bounds are the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled means. One value gives ``(v, v)``, none ``(nan, nan)``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // x.size)  # bound the memory of the resample index matrix
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(chunk, n_resamples - start), x.size))].mean(axis=1)
            for start in range(0, n_resamples, chunk)
        ]
    )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def _latest_ratings(
    ratings: Mapping[tuple[str, str], int] | Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], float]:
    """Normalise a ``(rater, path) -> value`` dict or a list of store records (the last rating wins)."""
    if isinstance(ratings, Mapping):
        return {(str(r), str(p)): float(v) for (r, p), v in ratings.items()}
    return {(str(rec["rater"]), str(rec["image"])): float(rec["value"]) for rec in ratings}


def summarize(
    items: Iterable[RatingItem],
    ratings: Mapping[tuple[str, str], int] | Iterable[Mapping[str, Any]],
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> list[GroupSummary]:
    """Per-group statistics of ``ratings`` (``store.latest()`` or ``store.records()``) over ``items``, sorted by group.

    Ratings are pooled over raters and images; ratings of excluded images or of paths not among ``items`` are
    ignored. Every group of ``items`` appears, with ``n=0`` when nobody rated it.
    """
    groups: dict[Any, list[RatingItem]] = {}
    for item in sorted(items, key=item_sort_key):
        groups.setdefault(item.group, []).append(item)
    by_path: dict[str, list[float]] = {}
    for (_rater, path), value in _latest_ratings(ratings).items():
        by_path.setdefault(path, []).append(value)
    out: list[GroupSummary] = []
    for group, members in groups.items():
        x = np.asarray([v for i in members if not i.excluded for v in by_path.get(i.path, [])], dtype=float)
        low, high = bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed)
        out.append(
            GroupSummary(
                group=group,
                n=int(x.size),
                mean=float(x.mean()) if x.size else math.nan,
                std=float(x.std(ddof=1)) if x.size > 1 else math.nan,
                ci_low=low,
                ci_high=high,
                n_excluded=sum(1 for i in members if i.excluded),
                confidence=confidence,
            )
        )
    return out


def best_group(summaries: Iterable[GroupSummary]) -> GroupSummary | None:
    """The group with the highest mean among those with ratings (ties go to the earlier group); ``None`` if none."""
    best: GroupSummary | None = None
    for s in summaries:
        if s.n > 0 and (best is None or s.mean > best.mean):
            best = s
    return best


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _ci_label(summaries: Sequence[GroupSummary]) -> str:
    level = summaries[0].confidence if summaries else 0.95
    return f"{100 * level:g}% CI"


def _header(summaries: Sequence[GroupSummary], group_label: str) -> list[str]:
    return [group_label, "n", "mean", "std", _ci_label(summaries), "excluded"]


def _rows(summaries: Sequence[GroupSummary]) -> list[list[str]]:
    return [
        [
            str(s.group),
            str(s.n),
            _fmt(s.mean),
            _fmt(s.std),
            f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]" if s.n else "n/a",
            str(s.n_excluded),
        ]
        for s in summaries
    ]


def summary_table(summaries: Sequence[GroupSummary], group_label: str = "step") -> str:
    """The summaries as a markdown table (the best group marked with ``*``)."""
    summaries = list(summaries)
    best = best_group(summaries)
    header = _header(summaries, group_label)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for s, row in zip(summaries, _rows(summaries)):
        if s is best:
            row[0] = f"**{row[0]}** *"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_html(summaries: Sequence[GroupSummary], group_label: str = "step") -> str:
    """The summaries as a plain HTML table for notebooks (the best group in bold).

    The table only: the sentence naming the best group is :func:`summary_message`'s alone, so that a notebook that
    shows both (``display(HTML(summary_html(s))); print(summary_message(s))``) shows it once.
    """
    summaries = list(summaries)
    best = best_group(summaries)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _header(summaries, group_label))
    body = []
    for s, row in zip(summaries, _rows(summaries)):
        style = " style='font-weight:bold'" if s is best else ""
        cells = "".join(f"<td style='text-align:right'>{html.escape(c)}</td>" for c in row)
        body.append(f"<tr{style}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def summary_message(summaries: Iterable[GroupSummary], group_label: str = "step") -> str:
    """One sentence naming the best group, or :data:`NO_RATINGS_MESSAGE` when nothing is rated yet."""
    summaries = list(summaries)
    best = best_group(summaries)
    if best is None:
        return NO_RATINGS_MESSAGE
    return (
        f"Best {group_label}: {best.group} (mean {best.mean:.2f}, {_ci_label(summaries)} "
        f"[{best.ci_low:.2f}, {best.ci_high:.2f}], n={best.n})"
    )


def write_summary_csv(summaries: Sequence[GroupSummary], path: str | os.PathLike, group_label: str = "step") -> Path:
    """The per-group table (mean, std, n, CI, excluded) as CSV, written atomically; returns the path."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([group_label, "n", "mean", "std", "ci_low", "ci_high", "confidence", "n_excluded"])
    for s in summaries:
        writer.writerow([s.group, s.n, s.mean, s.std, s.ci_low, s.ci_high, s.confidence, s.n_excluded])
    return atomic_write_text(path, buf.getvalue())
