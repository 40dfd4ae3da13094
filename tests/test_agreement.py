"""Agreement between raters: Krippendorff's alpha against a published example, per-rater summaries, Spearman."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from cartoonify.rating import (
    RaterSummary,
    RatingStore,
    alpha_from_units,
    average_ranks,
    krippendorff_alpha,
    rater_summary,
    rater_table_html,
    spearman,
)

NAN = math.nan

# Krippendorff, K. (2011). Computing Krippendorff's Alpha-Reliability. Section C: four observers, twelve units,
# values 1-5, missing data (unit 12 has one value only and is not pairable). Published: nominal 0.743,
# ordinal 0.815, interval 0.849, ratio 0.797.
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    "C": [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
}
PUBLISHED = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849, "ratio": 0.797}


def _records(table: dict[str, list[float]]) -> list[dict]:
    """The table as rating records: one per rater and rated unit (the image is the unit's number)."""
    return [
        {"time": "t", "rater": rater, "image": f"unit-{u + 1:02d}.png", "value": v}
        for rater, row in table.items()
        for u, v in enumerate(row)
        if not math.isnan(v)
    ]


@pytest.mark.parametrize("level", sorted(PUBLISHED))
def test_alpha_matches_the_published_example(level):
    assert round(krippendorff_alpha(_records(KRIPPENDORFF_2011), level=level), 3) == PUBLISHED[level]
    units = list(zip(*KRIPPENDORFF_2011.values()))
    assert alpha_from_units(units, level) == pytest.approx(krippendorff_alpha(_records(KRIPPENDORFF_2011), level))


def test_alpha_uses_each_raters_latest_rating(tmp_path):
    store = RatingStore(tmp_path)
    for record in _records(KRIPPENDORFF_2011):
        store.add(record["image"], record["rater"], 10)  # replaced by the re-rating below
        store.add(record["image"], record["rater"], int(record["value"]))
    assert round(krippendorff_alpha(store.records()), 3) == 0.849
    assert krippendorff_alpha(store.latest()) == pytest.approx(krippendorff_alpha(store.records()))


def test_perfect_agreement_is_one():
    records = [
        {"rater": r, "image": f"{k}.png", "value": v}
        for r in ("alice", "bob", "carol")
        for k, v in enumerate([3, 7, 9])
    ]
    records.append({"rater": "dave", "image": "0.png", "value": 3})
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert krippendorff_alpha(records, level=level) == 1.0


def test_alpha_is_nan_without_two_pairable_units():
    assert math.isnan(krippendorff_alpha([]))
    one_rater = [{"rater": "alice", "image": f"{k}.png", "value": k + 1} for k in range(5)]
    assert math.isnan(krippendorff_alpha(one_rater))  # no image rated twice
    one_unit = one_rater + [{"rater": "bob", "image": "0.png", "value": 4}]
    assert math.isnan(krippendorff_alpha(one_unit))  # one pairable image
    constant = [{"rater": r, "image": f"{k}.png", "value": 5} for r in ("alice", "bob") for k in range(3)]
    assert math.isnan(krippendorff_alpha(constant))  # no variation: alpha is 0/0
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(one_unit, level="cardinal")


def _brute_force_interval_alpha(units: list[list[float]]) -> float:
    """Alpha as 1 - D_o / D_e with the disagreements summed over every ordered pair of values directly."""
    units = [[v for v in u if not math.isnan(v)] for u in units]
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    observed = sum(sum((a - b) ** 2 for a, b in permutations(u, 2)) / (len(u) - 1) for u in units) / n
    expected = sum((a - b) ** 2 for a, b in permutations(values, 2)) / (n * (n - 1))
    return 1 - observed / expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_matches_a_brute_force_computation(seed):
    rng = np.random.default_rng(seed)
    n_raters, n_units = 4, 15
    quality = rng.integers(1, 11, size=n_units)
    table = np.clip(quality[None, :] + rng.integers(-2, 3, size=(n_raters, n_units)), 1, 10).astype(float)
    table[rng.random(table.shape) < 0.3] = np.nan  # missing ratings
    units = [list(col) for col in table.T]
    expected = _brute_force_interval_alpha(units)
    assert alpha_from_units(units, "interval") == pytest.approx(expected, rel=1e-12)
    records = _records({f"r{k}": list(row) for k, row in enumerate(table)})
    assert krippendorff_alpha(records) == pytest.approx(expected, rel=1e-12)
    assert 0.3 < expected < 1  # the raters agree well above chance


def test_rater_summary_and_table():
    records = [
        {"rater": "bob", "image": "a.png", "value": 4},
        {"rater": "alice", "image": "a.png", "value": 2},
        {"rater": "alice", "image": "a.png", "value": 6},  # replaces the 2
        {"rater": "alice", "image": "b.png", "value": 8},
    ]
    rows = rater_summary(records)
    assert [(r.rater, r.n, r.mean) for r in rows] == [("alice", 2, 7.0), ("bob", 1, 4.0)]
    assert rows[0].std == pytest.approx(math.sqrt(2)) and math.isnan(rows[1].std)  # sd of 6 and 8; one rating
    assert isinstance(rows[0], RaterSummary)
    page = rater_table_html(rows, alpha=0.8491)
    assert "Krippendorff's alpha (interval): 0.85" in page and page.count("<tr>") == 3 and "n/a" in page
    assert "alpha" not in rater_table_html(rows)
    assert rater_summary([]) == []


def test_average_ranks_share_ties():
    assert list(average_ranks([10, 20, 20, 5, 20])) == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_by_hand_with_ties():
    # x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] ranks [1, 3, 2, 4]; centred (mean 2.5):
    # rx = [-1.5, 0, 0, 1.5], ry = [-1.5, 0.5, -0.5, 1.5]; sum rx*ry = 4.5, sum rx^2 = 4.5, sum ry^2 = 5
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # any increasing relation
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, NAN, 3], [2, 4, 5, 1]) == pytest.approx(spearman([1, 2, 3], [2, 4, 1]))  # NaN pairs dropped
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])
