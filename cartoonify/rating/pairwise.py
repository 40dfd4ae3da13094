"""Pairwise comparisons: the pairs to judge, an append-only store of choices, and Bradley-Terry strengths.

A rater sees two images made from the same seed (and prompt) by two groups (two checkpoints, two schedulers)
and picks the better one, or calls a tie. :class:`PairwiseStore` keeps every choice in ``pairwise.csv``;
:func:`bradley_terry` turns the choices into one strength per group.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import PAIRWISE_FILE, RunLayout  # noqa: F401  (PAIRWISE_FILE re-exported)
from .items import RatingItem, group_sort_key
from .store import append_row, check_rater, read_rows

PAIRWISE_HEADER = ("time", "rater", "left", "right", "choice")
CHOICES = ("left", "right", "tie")
DEFAULT_PRIOR = 0.1

_HEADER_LINE = (",".join(PAIRWISE_HEADER) + "\n").encode("utf-8")

Comparison = tuple[Any, Any, str]  # (left group, right group, "left" | "right" | "tie")


# ----------------------------------------------------------------------------------------------------------------
# Store
# ----------------------------------------------------------------------------------------------------------------


def check_choice(choice: Any) -> str:
    """Return ``choice`` if it is ``"left"``, ``"right"`` or ``"tie"``, else raise ``ValueError`` naming it."""
    if not isinstance(choice, str) or choice not in CHOICES:
        raise ValueError(f"a choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    return choice


def _check_path(path: Any) -> str:
    text = Path(path).as_posix() if isinstance(path, os.PathLike) else str(path)
    if not text or "\n" in text or "\r" in text:
        raise ValueError(f"an image path must be a non-empty single line, got {path!r}")
    return text


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The order-free key of the pair of image paths ``a`` and ``b`` (the two paths sorted)."""
    return (a, b) if a <= b else (b, a)


def parse_pairwise_row(line: str) -> dict[str, Any] | None:
    """Parse one CSV line into a choice record, or ``None`` when it is not a well-formed row."""
    try:
        fields = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None
    if len(fields) != len(PAIRWISE_HEADER):
        return None
    time, rater, left, right, choice = fields
    if not time or not rater.strip() or not left or not right or left == right or choice not in CHOICES:
        return None
    return {"time": time, "rater": rater.strip(), "left": left, "right": right, "choice": choice}


class PairwiseStore:
    """Append-only pairwise choices of one run in a CSV with the columns ``time,rater,left,right,choice``.

    The file is ``<run_dir>/pairwise.csv`` (:data:`PAIRWISE_FILE`), or ``<run_dir>/<filename>``. Every
    :meth:`add` appends one row in a single write followed by ``flush`` and ``os.fsync``; the file is never
    rewritten. Reading ignores an unfinished last line (a process killed mid-write) and skips, with a warning,
    malformed lines elsewhere.
    """

    def __init__(self, run_dir: str | os.PathLike, filename: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = RunLayout(self.run_dir).pairwise if filename is None else self.run_dir / filename

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.run_dir)!r}, filename={self.path.name!r})"

    def add(self, left: str | os.PathLike, right: str | os.PathLike, rater: str, choice: str) -> dict[str, Any]:
        """Append ``rater``'s ``choice`` (``"left"``, ``"right"`` or ``"tie"``) between the images ``left`` and
        ``right`` (paths relative to the run), as shown. Returns the record written.

        An unfinished last line (an earlier write cut short) is removed first, with a warning.
        """
        choice, rater = check_choice(choice), check_rater(rater)
        left, right = _check_path(left), _check_path(right)
        if left == right:
            raise ValueError(f"a pair needs two different images, got {left!r} twice")
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "rater": rater,
            "left": left,
            "right": right,
            "choice": choice,
        }
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([record[k] for k in PAIRWISE_HEADER])
        append_row(self.path, _HEADER_LINE, buf.getvalue().encode("utf-8"))
        return record

    def records(self) -> list[dict[str, Any]]:
        """All choices in file order as dicts with the keys ``time``, ``rater``, ``left``, ``right``, ``choice``.

        A missing file has no records. An unfinished last line is never counted; any other malformed line is
        skipped with a warning that names its line number.
        """
        out, unfinished = read_rows(self.path, PAIRWISE_HEADER, parse_pairwise_row)
        if unfinished.strip():
            warnings.warn(f"{self.path}: ignoring the unfinished last line {unfinished[:80]!r}", stacklevel=2)
        return out

    def latest(self) -> dict[tuple[str, tuple[str, str]], dict[str, Any]]:
        """``(rater, pair_key(left, right)) -> record`` of each rater's last choice on each pair."""
        return {(r["rater"], pair_key(r["left"], r["right"])): r for r in self.records()}

    def judged_by(self, rater: str) -> set[tuple[str, str]]:
        """The :func:`pair_key` s of the pairs ``rater`` has judged (an empty set for an empty name)."""
        name = rater.strip() if isinstance(rater, str) else ""
        return {key for (who, key) in self.latest() if who == name} if name else set()

    def raters(self) -> list[str]:
        """The names of everyone who judged a pair, sorted."""
        return sorted({r["rater"] for r in self.records()})

    def last_rater(self) -> str | None:
        """The rater of the most recent choice (the last row of the file, which is append-only), or ``None`` when
        there is none (a missing or empty file)."""
        records = self.records()
        return records[-1]["rater"] if records else None


# ----------------------------------------------------------------------------------------------------------------
# Pairs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two images to compare, as shown: ``left`` and ``right``."""

    left: RatingItem
    right: RatingItem

    @property
    def key(self) -> tuple[str, str]:
        """The order-free key of the pair (:func:`pair_key` of the two paths)."""
        return pair_key(self.left.path, self.right.path)


def _attr(item: RatingItem, name: str) -> Any:
    """``item.group`` for ``"group"``, the item's seed for ``"seed"``, else ``item.meta.get(name)``."""
    if name == "group":
        return item.group
    if name == "seed" and item.seed is not None:
        return item.seed
    return item.meta.get(name)


def make_pairs(
    items: Iterable[RatingItem],
    by: str = "group",
    seed: int = 0,
    match: Sequence[str] = ("prompt", "seed"),
    shuffle: bool = True,
) -> list[Pair]:
    """The pairs to compare: two images that agree on every ``match`` key and differ in ``by``.

    Items are binned by their ``match`` values (the item's ``seed`` and its ``meta`` keys, e.g. ``prompt``;
    a missing key counts as ``None``), so a checkpoint comparison (``by="group"`` over validation images) pairs
    the images of one seed at two steps, and a scheduler comparison the images of one prompt and seed under two
    schedulers. Within a bin every unordered pair of ``by`` values is paired (every image of one with every
    image of the other). Excluded items and repeated paths (after the first) are left out. The order of the
    pairs and which image is on the left are drawn with ``numpy.random.default_rng(seed)``; ``shuffle=False``
    keeps the canonical order (by bin, then group). Deterministic for a given ``seed``.
    """
    unique: dict[str, RatingItem] = {}
    for item in items:
        if not item.excluded:
            unique.setdefault(item.path, item)
    bins: dict[tuple, dict[Any, list[RatingItem]]] = {}
    for item in unique.values():
        key = tuple(repr(_attr(item, m)) for m in match)
        bins.setdefault(key, {}).setdefault(_attr(item, by), []).append(item)
    canonical: list[tuple[RatingItem, RatingItem]] = []
    for key in sorted(bins):
        groups = bins[key]
        for ga, gb in combinations(sorted(groups, key=group_sort_key), 2):
            for a in sorted(groups[ga], key=lambda i: i.path):
                canonical.extend((a, b) for b in sorted(groups[gb], key=lambda i: i.path))
    rng = np.random.default_rng(seed)
    flips = rng.random(len(canonical)) < 0.5
    pairs = [Pair(b, a) if flip else Pair(a, b) for (a, b), flip in zip(canonical, flips)]
    if shuffle:
        pairs = [pairs[k] for k in rng.permutation(len(pairs))]
    return pairs


def comparisons_from_records(
    records: Iterable[Mapping[str, Any]], items: Iterable[RatingItem], by: str = "group"
) -> list[Comparison]:
    """``(left group, right group, choice)`` of each rater's latest choice on each pair (records in file order).

    Paths are mapped to groups through ``items`` (their ``by`` value); choices on an image not among ``items``,
    or between two images of the same group, are left out.
    """
    group_of = {item.path: _attr(item, by) for item in items}
    latest: dict[tuple[str, tuple[str, str]], Mapping[str, Any]] = {}
    for r in records:
        latest[(r["rater"], pair_key(r["left"], r["right"]))] = r
    out: list[Comparison] = []
    for r in latest.values():
        if r["left"] in group_of and r["right"] in group_of:
            a, b = group_of[r["left"]], group_of[r["right"]]
            if a != b:
                out.append((a, b, check_choice(r["choice"])))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Bradley-Terry
# ----------------------------------------------------------------------------------------------------------------


def _encode(comparisons: Iterable[Comparison], groups: Sequence[Any] | None) -> tuple[list, np.ndarray, np.ndarray]:
    """The groups, and each comparison as indices ``(i, j)`` and the score of ``i`` (1 win, 0.5 tie, 0 loss)."""
    comparisons = list(comparisons)
    if groups is None:
        groups = sorted({g for a, b, _ in comparisons for g in (a, b)}, key=group_sort_key)
    groups = list(groups)
    index = {g: k for k, g in enumerate(groups)}
    if len(index) != len(groups):
        raise ValueError(f"groups must be distinct, got {groups!r}")
    ij = np.zeros((len(comparisons), 2), dtype=int)
    score = np.zeros(len(comparisons))
    for k, (a, b, choice) in enumerate(comparisons):
        for g in (a, b):
            if g not in index:
                raise ValueError(f"group {g!r} of comparison {k} is not among the groups {groups!r}")
        if a == b:
            raise ValueError(f"comparison {k} sets group {a!r} against itself")
        ij[k] = index[a], index[b]
        score[k] = {"left": 1.0, "right": 0.0, "tie": 0.5}[check_choice(choice)]
    return groups, ij, score


def _win_matrix(k: int, ij: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """``w[i, j]``: the (weighted) score of ``i`` against ``j``; a tie is half a win for each side."""
    weight = np.ones(len(score)) if weight is None else weight
    flat = np.bincount(ij[:, 0] * k + ij[:, 1], weights=weight * score, minlength=k * k)
    flat += np.bincount(ij[:, 1] * k + ij[:, 0], weights=weight * (1 - score), minlength=k * k)
    return flat.reshape(k, k)


def _fit(w: np.ndarray, prior: float, max_iter: int, tol: float, start: np.ndarray | None = None) -> np.ndarray:
    """Log strengths (mean 0) of the win matrix ``w`` plus ``prior`` virtual ties between every two groups, by the
    MM iterations of Hunter (2004): ``gamma_i <- W_i / sum_j n_ij / (gamma_i + gamma_j)``, then rescaled to a
    geometric mean of 1 (the likelihood depends only on ratios)."""
    k = w.shape[0]
    if k < 2:
        return np.zeros(k)
    w = w + prior / 2 * (1 - np.eye(k))
    n = w + w.T
    wins = w.sum(axis=1)
    played = n.sum(axis=1)
    if np.any(wins <= 0) or np.any(wins >= played):
        raise ValueError("without a prior every group needs a win and a loss (ties count half of each)")
    log_gamma = np.zeros(k) if start is None else np.array(start, dtype=float)
    for _ in range(max_iter):
        gamma = np.exp(log_gamma)
        new = np.log(wins) - np.log((n / (gamma[:, None] + gamma[None, :])).sum(axis=1))
        new -= new.mean()
        step = np.max(np.abs(new - log_gamma))
        log_gamma = new
        if step < tol:
            break
    return log_gamma


def bradley_terry(
    comparisons: Iterable[Comparison],
    groups: Sequence[Any] | None = None,
    prior: float = DEFAULT_PRIOR,
    max_iter: int = 100_000,
    tol: float = 1e-10,
) -> dict[Any, float]:
    """Bradley-Terry strengths ``group -> log strength`` (centred at mean 0) from ``(a, b, choice)`` comparisons.

    ``P(a beats b) = 1 / (1 + exp(s_b - s_a))``. The estimate maximises the likelihood by the MM algorithm of
    Hunter (2004), a tie counting as half a win for each side. ``prior`` is a weak regularisation: ``prior``
    virtual ties between every two groups (``prior / 2`` virtual wins each way), which shrinks the strengths
    slightly towards each other, keeps an undefeated (or winless) group finite and ties groups that were never
    compared to the rest. ``prior=0`` gives the plain maximum-likelihood estimate, which exists only when every
    group has a win and a loss and the comparisons connect all groups both ways. ``groups`` fixes the groups and
    their order (default: those in ``comparisons``, sorted); a single group gets 0.
    """
    if prior < 0:
        raise ValueError(f"prior must be non-negative, got {prior}")
    groups, ij, score = _encode(comparisons, groups)
    if not groups:
        return {}
    logs = _fit(_win_matrix(len(groups), ij, score), prior, max_iter, tol)
    return {g: float(s) for g, s in zip(groups, logs)}


def bradley_terry_ci(
    comparisons: Iterable[Comparison],
    groups: Sequence[Any] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    prior: float = DEFAULT_PRIOR,
    tol: float = 1e-8,
) -> dict[Any, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals of the :func:`bradley_terry` strengths.

    Each resample draws as many comparisons as there are, with replacement (``numpy.random.default_rng(seed)``),
    and refits; the bounds are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of each
    group's refitted strength. No comparisons give ``(nan, nan)``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if prior <= 0:
        raise ValueError(f"the bootstrap needs a positive prior (a resample may leave a group undefeated): {prior}")
    groups, ij, score = _encode(comparisons, groups)
    if len(score) == 0:
        return {g: (math.nan, math.nan) for g in groups}
    k, m = len(groups), len(score)
    start = _fit(_win_matrix(k, ij, score), prior, 100_000, tol)
    rng = np.random.default_rng(seed)
    fits = np.empty((n_resamples, k))
    for r in range(n_resamples):
        weight = np.bincount(rng.integers(0, m, size=m), minlength=m).astype(float)
        fits[r] = _fit(_win_matrix(k, ij, score, weight), prior, 100_000, tol, start=start)
    tail = (1 - confidence) / 2
    low, high = np.quantile(fits, [tail, 1 - tail], axis=0)
    return {g: (float(lo), float(hi)) for g, lo, hi in zip(groups, low, high)}


@dataclass
class PairwiseSummary:
    """One group's Bradley-Terry strength (log scale, centred at 0) with its bootstrap interval, and its record
    in the comparisons: ``wins``, ``losses`` and ``ties`` out of ``n``."""

    group: Any
    strength: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    n: int
    confidence: float = 0.95


def pairwise_summary(
    comparisons: Iterable[Comparison],
    groups: Sequence[Any] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    prior: float = DEFAULT_PRIOR,
) -> list[PairwiseSummary]:
    """Per-group strengths, bootstrap intervals and win/loss/tie counts, in the order of ``groups``."""
    comparisons = list(comparisons)
    groups, ij, score = _encode(comparisons, groups)
    strengths = bradley_terry(comparisons, groups, prior=prior)
    cis = bradley_terry_ci(comparisons, groups, confidence, n_resamples, seed, prior=prior)
    out = []
    for k, g in enumerate(groups):
        own = np.where(ij[:, 0] == k, score, np.where(ij[:, 1] == k, 1 - score, np.nan))
        own = own[~np.isnan(own)]
        wins, losses = int(np.sum(own == 1)), int(np.sum(own == 0))
        out.append(
            PairwiseSummary(
                g, strengths[g], *cis[g], wins, losses, int(own.size) - wins - losses, int(own.size), confidence
            )
        )
    return out


def pairwise_html(rows: Sequence[PairwiseSummary], group_label: str = "step") -> str:
    """The summary rows as an HTML table, strongest group in bold."""
    rows = list(rows)
    best = max((r for r in rows if r.n), key=lambda r: r.strength, default=None)
    level = f"{100 * rows[0].confidence:g}% CI" if rows else "95% CI"
    header = [group_label, "strength", level, "wins", "losses", "ties", "n"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.n else "n/a"
        cells = [str(r.group), f"{r.strength:+.2f}", ci, str(r.wins), str(r.losses), str(r.ties), str(r.n)]
        style = " style='font-weight:bold'" if r is best else ""
        tds = "".join(f"<td style='text-align:right'>{html.escape(c)}</td>" for c in cells)
        body.append(f"<tr{style}>{tds}</tr>")
    note = "<p>Bradley-Terry log strengths (centred at 0; a tie counts as half a win for each side).</p>"
    return f"{note}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
