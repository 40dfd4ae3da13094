"""Image folders and caption files (no torch): what a training or photo folder holds."""

from __future__ import annotations

from pathlib import Path

from ..imaging import IMAGE_EXTENSIONS


class DataFolderError(FileNotFoundError):
    """A data folder is missing or holds no images; the message names the folder and its role."""


def list_images(folder: str | Path, role: str = "image folder") -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path.

    Raises :class:`DataFolderError` naming ``role`` and the folder when it is missing or not a folder; an
    empty folder gives an empty list (:func:`require_images` refuses that too).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFolderError(f"{role} does not exist or is not a folder: {folder}")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return files


def require_images(folder: str | Path, role: str) -> list[Path]:
    """:func:`list_images`, but an empty folder is an error too."""
    files = list_images(folder, role)
    if not files:
        raise DataFolderError(f"{role} holds no images ({', '.join(IMAGE_EXTENSIONS)}): {folder}")
    return files


def caption_path(image_path: str | Path) -> Path:
    """The optional caption file beside an image: ``photo.png`` -> ``photo.txt``."""
    return Path(image_path).with_suffix(".txt")


def read_caption(image_path: str | Path, default: str) -> str:
    """The image's caption (its ``.txt`` beside it, stripped) or ``default`` if there is none or it is empty.

    A caption is used verbatim as the image's whole training prompt, replacing the instance prompt.
    """
    path = caption_path(image_path)
    if path.is_file():
        text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
        if text:
            return text
    return default
