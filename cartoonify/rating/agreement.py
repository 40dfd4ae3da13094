"""Agreement between raters: Krippendorff's alpha, per-rater summaries, and Spearman's rank correlation."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")

Ratings = Mapping[tuple[str, str], float] | Iterable[Mapping[str, Any]]


def latest_ratings(ratings: Ratings) -> dict[tuple[str, str], float]:
    """``(rater, image) -> value`` of each rater's last rating of each image.

    ``ratings`` is a ``(rater, image) -> value`` mapping (:meth:`RatingStore.latest`) or a sequence of records
    in file order (:meth:`RatingStore.records`: dicts with ``rater``, ``image`` (or ``path``) and ``value``), in
    which a later rating of the same image by the same rater replaces the earlier one.
    """
    if isinstance(ratings, Mapping):
        return {(str(r), str(p)): float(v) for (r, p), v in ratings.items()}
    out: dict[tuple[str, str], float] = {}
    for rec in ratings:
        image = rec["image"] if "image" in rec else rec["path"]
        out[(str(rec["rater"]), str(image))] = float(rec["value"])
    return out


def reliability_units(ratings: Ratings) -> dict[str, list[float]]:
    """``image -> values``: the latest rating of each rater, per image (the units of Krippendorff's alpha)."""
    units: dict[str, list[float]] = {}
    for (_rater, image), value in latest_ratings(ratings).items():
        units.setdefault(image, []).append(value)
    return units


def _metric(values: np.ndarray, totals: np.ndarray, level: str) -> np.ndarray:
    """The squared difference function ``delta[c, k]`` between the distinct ``values`` (sorted) at ``level``;
    ``totals`` are the values' marginal counts in the coincidence matrix (used by the ordinal metric)."""
    c, k = values[:, None], values[None, :]
    if level == "nominal":
        return (c != k).astype(float)
    if level == "interval":
        return (c - k) ** 2
    if level == "ratio":
        with np.errstate(invalid="ignore", divide="ignore"):
            d = ((c - k) / (c + k)) ** 2
        return np.nan_to_num(d, nan=0.0)  # 0/0 only where c == k == 0
    # ordinal: (sum of the totals from rank c to rank k, less half of the two ends)^2
    idx = np.arange(values.size)
    lo, hi = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
    cum = np.concatenate([[0.0], np.cumsum(totals)])
    between = cum[hi + 1] - cum[lo]  # the totals of the ranks lo..hi
    return (between - (totals[:, None] + totals[None, :]) / 2) ** 2


def coincidence_matrix(units: Iterable[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values and the coincidence matrix ``o[c, k]`` of the pairable units (two values or more).

    ``o[c, k] = sum over units u of (number of ordered pairs of values (c, k) in u) / (m_u - 1)``, where ``m_u``
    is the number of values in ``u``; ``NaN`` values count as missing.
    """
    pairable = []
    for unit in units:
        u = np.asarray(list(unit), dtype=float)
        u = u[~np.isnan(u)]
        if u.size >= 2:
            pairable.append(u)
    if not pairable:
        return np.zeros(0), np.zeros((0, 0))
    values = np.unique(np.concatenate(pairable))
    o = np.zeros((values.size, values.size))
    for u in pairable:
        counts = np.bincount(np.searchsorted(values, u), minlength=values.size).astype(float)
        o += (np.outer(counts, counts) - np.diag(counts)) / (u.size - 1)
    return values, o


def alpha_from_units(units: Iterable[Sequence[float]], level: str = "interval") -> float:
    """Krippendorff's alpha of ``units`` (each a sequence of the values the raters gave one unit).

    ``alpha = 1 - D_o / D_e`` from the coincidence matrix ``o`` with marginals ``n_c`` and ``n = sum n_c``:
    ``D_o = sum o[c, k] delta[c, k] / n`` and ``D_e = sum n_c n_k delta[c, k] / (n (n - 1))``. Units with fewer
    than two values are dropped; with fewer than two pairable units, or no variation at all (``D_e = 0``),
    alpha is undefined and ``nan`` is returned.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    units = [list(u) for u in units]
    n_pairable = sum(1 for u in units if np.sum(~np.isnan(np.asarray(u, dtype=float))) >= 2)
    if n_pairable < 2:
        return math.nan
    values, o = coincidence_matrix(units)
    totals = o.sum(axis=1)
    n = totals.sum()
    delta = _metric(values, totals, level)
    observed = (o * delta).sum() / n
    expected = (np.outer(totals, totals) * delta).sum() / (n * (n - 1))
    if expected <= 0:
        return math.nan
    return float(1.0 - observed / expected)


def krippendorff_alpha(ratings: Ratings, level: str = "interval") -> float:
    """Krippendorff's alpha across raters of the ratings (records or a ``(rater, image) -> value`` mapping).

    Each image is a unit, holding each rater's latest rating of it; ``level`` is ``"interval"`` (the 1-10 scale
    read as numbers), ``"ordinal"``, ``"nominal"`` or ``"ratio"``. 1 means perfect agreement, 0 agreement at
    chance level. ``nan`` when fewer than two images were rated by two raters or more (see
    :func:`alpha_from_units`).
    """
    return alpha_from_units(reliability_units(ratings).values(), level=level)


@dataclass
class RaterSummary:
    """One rater's latest ratings: how many, their mean and sample standard deviation (``nan`` below two)."""

    rater: str
    n: int
    mean: float
    std: float


def rater_summary(ratings: Ratings) -> list[RaterSummary]:
    """Per-rater count, mean and standard deviation of their latest ratings, sorted by rater."""
    by_rater: dict[str, list[float]] = {}
    for (rater, _image), value in latest_ratings(ratings).items():
        by_rater.setdefault(rater, []).append(value)
    out = []
    for rater in sorted(by_rater):
        x = np.asarray(by_rater[rater], dtype=float)
        out.append(RaterSummary(rater, int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan))
    return out


def _fmt(x: float) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.2f}"


def rater_table_html(rows: Sequence[RaterSummary], alpha: float | None = None, level: str = "interval") -> str:
    """The per-rater rows as an HTML table, preceded by Krippendorff's alpha when it is given."""
    head = "".join(f"<th>{h}</th>" for h in ("rater", "n", "mean", "std"))
    body = "".join(
        f"<tr><td>{html.escape(r.rater)}</td><td style='text-align:right'>{r.n}</td>"
        f"<td style='text-align:right'>{_fmt(r.mean)}</td><td style='text-align:right'>{_fmt(r.std)}</td></tr>"
        for r in rows
    )
    intro = "" if alpha is None else f"<p>Krippendorff's alpha ({html.escape(level)}): {_fmt(float(alpha))}</p>"
    return f"{intro}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def average_ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """The ranks (1 = smallest) of ``x``, tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    sorted_x = x[order]
    start = 0
    for end in range(1, x.size + 1):
        if end == x.size or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of the ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of ``x`` and ``y``.

    Pairs with a ``nan`` on either side are dropped; ``nan`` when fewer than two pairs remain or either side is
    constant.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be two sequences of the same length, got shapes {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return math.nan if denom == 0 else float((rx * ry).sum() / denom)
