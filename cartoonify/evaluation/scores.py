"""Automated scores of image sets: prompt fidelity, similarity to the instance images, drift, the weight-free
style score; per checkpoint (its validation images) and per scheduler (a comparison's images).

Every score is a mean over a set's images. Embeddings come through :class:`EmbeddingCache`, one file per
evaluation model in the run's ``scores/cache/``, so a rerun embeds nothing twice. A model that cannot be
loaded leaves its columns empty (``nan``) and a note saying which model and how to get it; the other
scores are still computed.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..data.folders import list_images
from ..imaging import gray_ssim, open_rgb
from ..config import TINY_CLIP_MODEL, TINY_DINO_MODEL, EvalConfig
from ..runs import layout_of, load_config, read_images_json
from ..style import style_score
from ..utils import atomic_write_text
from .cache import EmbeddingCache
from .encoders import Encoder, try_load_encoder
from .similarity import clip_t, mean_pairwise_similarity, paired_similarity, topk_similarity

#: Every automated score, with what it measures (the tables' legend).
SCORES = {
    "clip_t": "CLIP-T: prompt-image similarity, 100 x cosine of the CLIP image and text embeddings",
    "clip_style": "style similarity: mean of the top-k CLIP image cosine similarities to the instance images",
    "dino": "DINO: mean cosine similarity to the instance images (DreamBooth paper)",
    "style_score": "weight-free style score: white page, flat colours, outlines (0 photo, 1 demo cartoon)",
    "drift_clip": "drift: 1 - CLIP image cosine of the class prompt's images to the base model's, same seeds",
    "drift_dino": "drift: 1 - DINO cosine of the class prompt's images to the base model's, same seeds",
    "drift_ssim": "drift: 1 - grayscale SSIM of the class prompt's images to the base model's, same seeds",
}
IMAGE_SCORES = ("clip_t", "clip_style", "dino", "style_score")
DRIFT_SCORES = ("drift_clip", "drift_dino", "drift_ssim")


@dataclass
class Scorers:
    """The loaded evaluation models (``None`` where weights are missing) and the notes saying what is
    missing and how to get it."""

    clip: Encoder | None = None
    dino: Encoder | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def models(self) -> dict[str, str | None]:
        return {"clip": self.clip.name if self.clip else None, "dino": self.dino.name if self.dino else None}


def load_scorers(clip_model: str | None, dino_model: str | None, device: str | None = None) -> Scorers:
    """Load the CLIP and DINO models (hub ids or local folders; ``None`` or ``""`` skips one)."""
    out = Scorers()
    for kind, name in (("clip", clip_model), ("dino", dino_model)):
        if not name:
            continue
        encoder, message = try_load_encoder(kind, name, device=device)
        setattr(out, kind, encoder)
        if message:
            out.notes.append(message)
        elif name in (TINY_CLIP_MODEL, TINY_DINO_MODEL):
            out.notes.append(f"{kind}: {name} has random weights; its scores exercise the code and react to colour "
                             "and layout, not to meaning (use the real model for a real run)")
    return out


class ImageScorer:
    """Scores image sets of one run against its instance images, with the run's embedding caches."""

    def __init__(self, run_dir: str | Path, scorers: Scorers, reference: Sequence[str | Path],
                 top_k: int = 5, batch_size: int = 16):
        self.layout = layout_of(run_dir)
        self.scorers = scorers
        self.reference = [Path(p) for p in reference]
        self.top_k = top_k
        self.batch_size = batch_size
        self.caches = {kind: EmbeddingCache(self.layout.score_cache(enc.slug))
                       for kind, enc in (("clip", scorers.clip), ("dino", scorers.dino)) if enc is not None}
        self._reference: dict[str, np.ndarray] = {}

    def embed(self, kind: str, paths: Sequence[Path]) -> np.ndarray | None:
        encoder = getattr(self.scorers, kind)
        if encoder is None:
            return None
        return self.caches[kind].embed_files(encoder, list(paths), batch_size=self.batch_size)

    def reference_embeddings(self, kind: str) -> np.ndarray | None:
        if kind not in self._reference:
            emb = self.embed(kind, self.reference) if self.reference else None
            if emb is None:
                return None
            self._reference[kind] = emb
        return self._reference[kind]

    def image_scores(self, paths: Sequence[str | Path], prompts: Sequence[str]) -> dict[str, float]:
        """Means over ``paths`` (each generated from the prompt at the same index) of every image score."""
        paths = [Path(p) for p in paths]
        out = {k: math.nan for k in IMAGE_SCORES}
        if not paths:
            return out
        out["style_score"] = float(np.mean([style_score(Image.open(p)) for p in paths]))
        clip = self.embed("clip", paths)
        if clip is not None:
            text = self.caches["clip"].embed_texts(self.scorers.clip, list(prompts))
            out["clip_t"] = float(np.mean(clip_t(clip, text)))
            ref = self.reference_embeddings("clip")
            if ref is not None:
                out["clip_style"] = float(np.mean(topk_similarity(clip, ref, self.top_k)))
        dino, ref = self.embed("dino", paths), self.reference_embeddings("dino")
        if dino is not None and ref is not None:
            out["dino"] = float(mean_pairwise_similarity(dino, ref))
        return out

    def drift_scores(self, paths: Sequence[str | Path], base_paths: Sequence[str | Path]) -> dict[str, float]:
        """How far images are from the base model's images of the same seeds (pairs in order)."""
        paths, base_paths = [Path(p) for p in paths], [Path(p) for p in base_paths]
        if len(paths) != len(base_paths):
            raise ValueError(f"drift needs image pairs: {len(paths)} images against {len(base_paths)} of the base")
        out = {k: math.nan for k in DRIFT_SCORES}
        if not paths:
            return out
        out["drift_ssim"] = float(np.mean([1 - gray_ssim(open_rgb(b), open_rgb(a)) for a, b in zip(paths, base_paths)]))
        for kind in ("clip", "dino"):
            a, b = self.embed(kind, paths), self.embed(kind, base_paths)
            if a is not None:
                out[f"drift_{kind}"] = float(np.mean(1 - paired_similarity(a, b)))
        return out


def run_scorer(run_dir: str | Path, config: EvalConfig, device: str | None = None) -> ImageScorer:
    """An :class:`ImageScorer` for a run: ``config``'s CLIP and DINO models (what cannot be loaded is noted in
    ``scorer.scorers.notes``), the run's instance images as the reference, its top-k and batch size."""
    scorers = load_scorers(config.clip_model, config.dino_model, device=device)
    reference = instance_images(load_config(run_dir).instance_dir)
    if not reference:
        scorers.notes.append(f"no instance images in {load_config(run_dir).instance_dir}: no similarity to them")
    return ImageScorer(run_dir, scorers, reference, config.style_top_k, config.score_batch_size)


def instance_images(instance_dir: str | Path) -> list[Path]:
    """The instance images a run's style is compared with (empty if the folder is gone)."""
    folder = Path(instance_dir)
    return list_images(folder) if folder.is_dir() else []


def image_set(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The image files of an ``images.json`` folder and the prompt of each (per image, else the folder's)."""
    meta = read_images_json(folder)
    paths = [Path(folder) / r["file"] for r in meta["images"] if r.get("nsfw") is not True]
    prompts = [r.get("prompt", meta.get("prompt", "")) for r in meta["images"] if r.get("nsfw") is not True]
    return paths, prompts


def write_scores_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A table of score rows as CSV (columns in first-seen order; ``nan`` written as an empty cell)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def read_scores_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of :func:`write_scores_csv`; numbers as floats (empty cells as ``nan``), the rest as text."""

    def value(v: str) -> Any:
        if v == "":
            return math.nan
        try:
            return float(v)
        except ValueError:
            return v

    with Path(path).open(newline="") as fh:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def scheduler_scores(run_dir: str | Path, out_dir: str | Path, schedulers: Sequence[str],
                     scorer: ImageScorer) -> list[dict[str, Any]]:
    """The image scores of each scheduler's images in a comparison folder (``schedulers/<checkpoint>/``),
    written to ``scores/schedulers-<checkpoint>.csv``; returns the rows."""
    out_dir = Path(out_dir)
    rows = []
    for name in schedulers:
        paths, prompts = image_set(out_dir / name)
        rows.append({"scheduler": name, **scorer.image_scores(paths, prompts)})
    write_scores_csv(rows, layout_of(run_dir).scores_csv(f"schedulers-{out_dir.name}"))
    return rows
