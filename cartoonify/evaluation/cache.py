"""Embeddings computed once per image file (keyed by the file's sha256) and once per text, in one ``.npz`` file per
evaluation model; a rerun of the evaluation embeds only what it has not seen."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..imaging import open_rgb
from ..utils import atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    from .encoders import Encoder

logger = logging.getLogger(__name__)

IMAGE_PREFIX = "image:"
TEXT_PREFIX = "text:"
# Errors that mean a cache file cannot be used (it is then rebuilt).
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def text_key(text: str) -> str:
    """The cache key of a text: its UTF-8 sha256, behind the text prefix."""
    return TEXT_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_key(path: str | os.PathLike) -> str:
    """The cache key of an image file: the sha256 of its bytes (so a renamed copy hits), behind the image prefix."""
    return IMAGE_PREFIX + sha256_file(path)


def _read_npz(path: Path) -> tuple[str | None, dict[str, np.ndarray]]:
    """The encoder slug and the ``{key: vector}`` entries stored in ``path`` (raises on an unreadable file)."""
    with np.load(path, allow_pickle=False) as data:
        keys = [str(k) for k in data["keys"]]
        vectors = np.asarray(data["vectors"], dtype=np.float32)
        slug = str(data["encoder"]) if "encoder" in data.files else None
    if vectors.ndim != 2 or len(keys) != len(vectors):
        raise ValueError(f"keys ({len(keys)}) and vectors {vectors.shape} do not match")
    return slug, dict(zip(keys, vectors))


class EmbeddingCache:
    """The embeddings of one encoder, stored in the ``.npz`` file ``path`` (in a run:
    ``RunLayout.score_cache(encoder.slug)``).

    Images are keyed by the sha256 of the file's bytes, texts by the sha256 of the text. ``computed`` counts the
    embeddings this object had to compute. A cache file that is unreadable, belongs to another encoder or holds
    vectors of another length is ignored with a logged warning and rebuilt.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.computed = 0
        self._entries: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._entries or {})

    def _read_valid(self, encoder: Encoder, warn: bool) -> dict[str, np.ndarray]:
        """The entries of the file on disk if it is usable for ``encoder``, else ``{}`` (warning if ``warn``)."""
        if not self.path.exists():
            return {}
        try:
            slug, entries = _read_npz(self.path)
        except _UNREADABLE as err:
            problem = f"it is unreadable ({type(err).__name__}: {err})"
        else:
            dims = {len(v) for v in entries.values()}
            if slug is not None and slug != encoder.slug:
                problem = f"it belongs to encoder {slug!r}, not {encoder.slug!r}"
            elif dims and dims != {encoder.dim}:
                problem = f"its vectors have length {sorted(dims)}, not {encoder.dim}"
            else:
                return entries
        if warn:
            logger.warning("ignoring the embedding cache %s and rebuilding it: %s", self.path, problem)
        return {}

    def _entries_for(self, encoder: Encoder) -> dict[str, np.ndarray]:
        """The in-memory entries, read from disk on first use (and dropped if their length is not ``encoder``'s)."""
        if self._entries is not None and any(len(v) != encoder.dim for v in self._entries.values()):
            logger.warning("dropping cached embeddings of another length than %s's %d", encoder.slug, encoder.dim)
            self._entries = None
        if self._entries is None:
            self._entries = self._read_valid(encoder, warn=True)
        return self._entries

    def _save(self, encoder: Encoder) -> None:
        """Writes the entries atomically, merged with what another process may have written meanwhile."""
        entries = {**self._read_valid(encoder, warn=False), **(self._entries or {})}
        self._entries = entries
        keys = sorted(entries)
        vectors = np.stack([entries[k] for k in keys]) if keys else np.zeros((0, encoder.dim), np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(keys, dtype=str), vectors=vectors.astype(np.float32), encoder=encoder.slug)
        atomic_write_bytes(self.path, buffer.getvalue())

    def embed_files(self, encoder: Encoder, paths: Sequence[str | os.PathLike], batch_size: int = 16) -> np.ndarray:
        """Embeddings of the image files ``paths`` in their order, shape (N, D); only unseen contents are computed."""
        keys = [image_key(p) for p in paths]
        entries = self._entries_for(encoder)
        missing: dict[str, Path] = {}
        for key, path in zip(keys, paths):
            if key not in entries and key not in missing:
                missing[key] = Path(path)
        todo = list(missing.items())
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = [open_rgb(path) for _, path in chunk]
            for (key, _), vector in zip(chunk, encoder.embed_images(images, batch_size=batch_size)):
                entries[key] = vector
            self.computed += len(chunk)
        if missing:
            self._save(encoder)
        return self._stack(keys, encoder.dim)

    def embed_texts(self, encoder: Encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Text embeddings of ``texts`` in their order, shape (N, D); only unseen texts are computed."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        keys = [text_key(t) for t in texts]
        entries = self._entries_for(encoder)
        missing = {key: text for key, text in zip(keys, texts) if key not in entries}
        if missing:
            vectors = encoder.embed_texts(list(missing.values()), batch_size=batch_size)
            entries.update(zip(missing.keys(), vectors))
            self.computed += len(missing)
            self._save(encoder)
        return self._stack(keys, encoder.dim)

    def _stack(self, keys: list[str], dim: int) -> np.ndarray:
        """The vectors of ``keys`` as one (N, D) float32 array."""
        entries = self._entries or {}
        if not keys:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([entries[k] for k in keys]).astype(np.float32, copy=False)
