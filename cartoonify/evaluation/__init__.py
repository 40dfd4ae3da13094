"""Automated scores beside the human ratings, the overfitting signal, and the best-checkpoint rule.

* :mod:`.encoders`: :func:`load_encoder`, the one loader of every evaluation model (CLIP, DINO) from a hub id
  or a local folder; :class:`EvalModelUnavailable` says which model is missing and how to get it.
* :mod:`.tinymodels`: tiny random CLIP and DINO copies the package builds (tests and the demo download nothing).
* :mod:`.cache`: :class:`EmbeddingCache`, embeddings per image file (by content), so a rerun does no work twice.
* :mod:`.similarity`: CLIP-T, top-k and pairwise cosine similarities, as pure functions.
* :mod:`.drift`: the class prompt rendered by the base model and every checkpoint at the same seeds.
* :mod:`.scores`: the scores of image sets (per checkpoint, per scheduler) with a run's caches.
* :mod:`.humans`: the rating widget of the chosen mode and the raters' summary (alpha, per rater, pairwise).
* :mod:`.report`: the per-checkpoint table, the best-checkpoint rule, ``evaluation.json``.
"""

from .cache import EmbeddingCache
from .drift import drift_image_paths, drift_seeds, drift_steps, render_drift_images
from .encoders import KINDS, Encoder, EvalModelUnavailable, load_encoder, try_load_encoder
from .humans import human_summary, human_summary_html, rating_widget
from .report import (
    Evaluation,
    checkpoint_scores,
    choose_best,
    evaluate_run,
    evaluation_html,
    evaluation_rows,
    format_agreement,
    heldout_by_step,
    human_columns,
    score_agreement,
    write_evaluation,
)
from .scores import (
    DRIFT_SCORES,
    IMAGE_SCORES,
    SCORES,
    ImageScorer,
    Scorers,
    image_set,
    instance_images,
    load_scorers,
    read_scores_csv,
    run_scorer,
    scheduler_scores,
    write_scores_csv,
)
from .similarity import clip_t, mean_pairwise_similarity, paired_similarity, topk_similarity
from .tinymodels import build_tiny_clip, build_tiny_dino, resolve_eval_model, tiny_eval_model_path

__all__ = [n for n in dir() if not n.startswith("_")]
