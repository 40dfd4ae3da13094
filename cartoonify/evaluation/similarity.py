"""Similarity scores on embeddings (pure numpy): CLIP-T, top-k and mean pairwise similarity (the DreamBooth paper's
DINO and CLIP-I), and same-seed paired similarity. Rows are re-normalised, so every score is a cosine."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _matrix(name: str, x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``x`` as a non-empty (N, D) float64 array with unit rows; ``ValueError`` naming ``name`` otherwise."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has embeddings of length {x.shape[1]}, expected {dim}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (N, M) cosine similarities between the rows of ``a`` (N, D) and ``b`` (M, D)."""
    a = _matrix("a", a)
    b = _matrix("b", b, dim=a.shape[1])
    return a @ b.T


def clip_t(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """CLIP-T per image, ``100 * max(cos(image, text), 0)`` as torchmetrics' ``CLIPScore`` defines it.

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (N, D) embeddings of each image's prompt, or (1, D) for one prompt shared by all.

    Returns:
        (N,) scores in [0, 100].
    """
    images = _matrix("image_emb", image_emb)
    texts = _matrix("text_emb", text_emb, dim=images.shape[1])
    if texts.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"text_emb must have 1 or {images.shape[0]} rows (one per image), got {texts.shape[0]}")
    cosine = np.sum(images * texts, axis=1)
    return 100.0 * np.maximum(cosine, 0.0)


def topk_similarity(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """For each query row, the mean of its ``k`` highest cosine similarities to the reference rows.

    ``k`` is clipped to the number of reference rows. Returns an (N,) array.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    sims = cosine_matrix(query, reference)
    k = min(int(k), sims.shape[1])
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, sims.shape[1] - k :]
    return top.mean(axis=1)


def mean_pairwise_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The mean cosine similarity over all pairs of rows of ``a`` (N, D) and ``b`` (M, D)
    (the DreamBooth paper's DINO and CLIP-I scores)."""
    return float(cosine_matrix(a, b).mean())


def paired_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``a`` and ``b``, both (N, D): e.g. same-seed image pairs, for drift."""
    a = _matrix("a", a)
    b = _matrix("b", b, dim=a.shape[1])
    if a.shape != b.shape:
        raise ValueError(f"paired_similarity needs arrays of the same shape, got {a.shape} and {b.shape}")
    return np.sum(a * b, axis=1)
