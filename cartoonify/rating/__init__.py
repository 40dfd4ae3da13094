"""Blind human rating of generated images, in pieces that meet only in :func:`rating_session`.

* :mod:`~cartoonify.rating.items`: :func:`collect_items` reads the ``images.json`` records a run wrote (validation
  images per step, or any other image set laid out the same way) into :class:`RatingItem` s.
* :mod:`~cartoonify.rating.store`: :class:`RatingStore` is the storage, one append-only ``ratings.csv`` per run,
  one row per rating, written and ``fsync``-ed the moment the rating is given, so that a crash or a kernel restart
  loses nothing.
* :mod:`~cartoonify.rating.widget`: :class:`RatingWidget` is the ipywidgets UI; it only emits
  ``(path, rater, value)`` to its callbacks.
* :mod:`~cartoonify.rating.stats`: :func:`summarize` and friends turn the ratings into per-group means with
  bootstrap confidence intervals.
"""

from .items import VALIDATION_PATTERN, RatingItem, collect_items, group_sort_key, item_sort_key
from .stats import (
    NO_RATINGS_MESSAGE,
    GroupSummary,
    best_group,
    bootstrap_ci,
    summarize,
    summary_html,
    summary_message,
    summary_table,
    write_summary_csv,
)
from .store import CSV_HEADER, MAX_RATING, MIN_RATING, RatingStore, check_rater, check_rating, parse_row
from .widget import EXCLUDED_LABEL, RatingCallback, RatingWidget, parse_key, rating_order, rating_session

__all__ = [
    "CSV_HEADER",
    "EXCLUDED_LABEL",
    "MAX_RATING",
    "MIN_RATING",
    "NO_RATINGS_MESSAGE",
    "VALIDATION_PATTERN",
    "GroupSummary",
    "RatingCallback",
    "RatingItem",
    "RatingStore",
    "RatingWidget",
    "best_group",
    "bootstrap_ci",
    "check_rater",
    "check_rating",
    "collect_items",
    "group_sort_key",
    "item_sort_key",
    "parse_key",
    "parse_row",
    "rating_order",
    "rating_session",
    "summarize",
    "summary_html",
    "summary_message",
    "summary_table",
    "write_summary_csv",
]

# agreement between raters, and pairwise comparisons with Bradley-Terry strengths
from .agreement import (
    LEVELS,
    RaterSummary,
    alpha_from_units,
    average_ranks,
    coincidence_matrix,
    krippendorff_alpha,
    latest_ratings,
    rater_summary,
    rater_table_html,
    reliability_units,
    spearman,
)
from .pairwise import (
    CHOICES,
    PAIRWISE_FILE,
    PAIRWISE_HEADER,
    Comparison,
    Pair,
    PairwiseStore,
    PairwiseSummary,
    bradley_terry,
    bradley_terry_ci,
    check_choice,
    comparisons_from_records,
    make_pairs,
    pair_key,
    pairwise_html,
    pairwise_summary,
    parse_pairwise_row,
)
from .pairwise_widget import KEYS, ChoiceCallback, PairwiseWidget, pairwise_session, parse_pair_key

__all__ += [
    "CHOICES",
    "KEYS",
    "LEVELS",
    "PAIRWISE_FILE",
    "PAIRWISE_HEADER",
    "ChoiceCallback",
    "Comparison",
    "Pair",
    "PairwiseStore",
    "PairwiseSummary",
    "PairwiseWidget",
    "RaterSummary",
    "alpha_from_units",
    "average_ranks",
    "bradley_terry",
    "bradley_terry_ci",
    "check_choice",
    "coincidence_matrix",
    "comparisons_from_records",
    "krippendorff_alpha",
    "latest_ratings",
    "make_pairs",
    "pair_key",
    "pairwise_html",
    "pairwise_session",
    "pairwise_summary",
    "parse_pair_key",
    "parse_pairwise_row",
    "rater_summary",
    "rater_table_html",
    "reliability_units",
    "spearman",
]
