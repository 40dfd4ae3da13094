"""Sources: folders (walked recursively), URL list files, single files and URLs become a list of inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .decode import read_head, sniff_image

URL_LIST_SUFFIXES = (".txt", ".urls", ".list", ".lst")
URL_SCHEMES = ("http", "https")


@dataclass
class SourceInput:
    """One thing to process: a local file, a URL, or a note about a source that yielded nothing."""

    label: str
    path: Path | None = None
    url: str | None = None
    problem: tuple[str, str] | None = None  # (code, reason) for a source that cannot be used


def _is_hidden(name: str) -> bool:
    """Dot-files and dot-folders (and the temporary files of atomic writes) are not inputs."""
    return name.startswith(".")


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def _caption_files(names: Sequence[str]) -> set[str]:
    """The ``.txt`` files among one folder's ``names`` that are captions: a sibling with the same stem exists."""
    stems = {Path(n).stem for n in names if Path(n).suffix.lower() != ".txt"}
    return {n for n in names if Path(n).suffix.lower() == ".txt" and Path(n).stem in stems}


def walk_folder(folder: Path, skip: Sequence[Path] = ()) -> Iterator[Path]:
    """Files under ``folder``, recursively and sorted, without hidden entries, caption ``.txt`` files
    and the folders in ``skip``. Symlinked folders are followed once: a folder whose real path was
    already visited (a symlink loop) is not entered again."""
    skip_real = {Path(os.path.realpath(s)) for s in skip}
    visited: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited or Path(real) in skip_real:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(
            d for d in dirs if not _is_hidden(d) and os.path.realpath(os.path.join(root, d)) not in visited
        )
        names = sorted(f for f in files if not _is_hidden(f))
        captions = _caption_files(names)
        for name in names:
            if name not in captions:
                yield Path(root) / name


def read_url_list(path: str | Path) -> list[str]:
    """The URLs in a text file: one per line; blank lines and ``#`` comments (whole lines, or after
    whitespace at the end of a line) are skipped."""
    urls = []
    for line in Path(path).read_text(encoding="utf-8-sig", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for marker in (" #", "\t#"):
            if marker in line:
                line = line.split(marker, 1)[0].strip()
        if line:
            urls.append(line)
    return urls


def is_url_list(path: Path) -> bool:
    """A file source is a URL list if its name says so and its bytes are not an image."""
    if path.suffix.lower() not in URL_LIST_SUFFIXES:
        return False
    try:
        return sniff_image(read_head(path, 64)) is None
    except OSError:
        return True


def looks_like_url(source: str | Path) -> bool:
    """Whether a source is a URL (a string with a scheme) rather than a path."""
    return (
        isinstance(source, str)
        and "://" in source
        and urlsplit(source).scheme.lower() in (*URL_SCHEMES, "ftp", "file", "data")
    )


def _expand_path(text: str, path: Path, out_dir: Path) -> list[SourceInput]:
    """The inputs of one local source: a folder's files, a URL list's URLs, or the file itself."""
    if path.is_dir():
        found = [SourceInput(label=str(p), path=p) for p in walk_folder(path, skip=[out_dir])]
        return found or [SourceInput(label=text, problem=("empty source", f"source folder holds no files: {text}"))]
    if path.is_file() and is_url_list(path):
        urls = read_url_list(path)
        return [SourceInput(label=u, url=u) for u in urls] or [
            SourceInput(label=text, problem=("empty source", f"URL list holds no URLs: {text}"))
        ]
    if path.is_file() or path.is_symlink():
        return [SourceInput(label=text, path=path)]
    return [SourceInput(label=text, problem=("missing source", f"source does not exist: {text}"))]


def expand_sources(sources: Sequence[str | Path], out_dir: Path) -> list[SourceInput]:
    """Every input of ``sources`` in order; a missing or empty source becomes one problem input."""
    inputs: list[SourceInput] = []
    for source in sources:
        text = str(source)
        if looks_like_url(source):
            inputs.append(SourceInput(label=text, url=text))
        else:
            inputs += _expand_path(text, Path(source).expanduser(), out_dir)
    return inputs


def check_out_dir(sources: Sequence[str | Path], out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a source folder, or whose outputs a source would be read from."""
    out_real = Path(os.path.realpath(out_dir))
    written = [out_real / "images", out_real / "originals"]
    for source in sources:
        if looks_like_url(source):
            continue
        real = Path(os.path.realpath(Path(source).expanduser()))
        if real == out_real or any(_is_within(real, w) for w in written):
            raise ValueError(f"out_dir {out_dir} must not be a source or hold one in its outputs: {source}")
