"""Offline demo data for the embedded tiny model: drawn style images and two real photos.

The real fine-tuning set (cartoon "Disney style" stills) cannot be shipped, so
:func:`make_style_images` writes a small, deterministic stand-in set drawn by
:mod:`cartoonify.data.drawings`, and :func:`demo_photos` copies two photos that ship
inside scikit-image's wheel, to stylize.

Writing is deterministic (same arguments give byte-identical files) and idempotent:
a file that already holds identical content is left untouched, and a *different*
existing file is never overwritten (:class:`FileExistsError` names it, and nothing
of that call is written).

Command line::

    python -m cartoonify.data.demo OUT_DIR [--size 512] [--n 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..imaging import png_bytes
from ..utils import atomic_write_bytes
from .drawings import STYLE_SUFFIX, render_style_image

__all__ = [
    "STYLE_SUFFIX",
    "PHOTO_NAMES",
    "make_style_images",
    "render_style_image",
    "demo_photos",
    "make_demo_dataset",
    "main",
]

#: scikit-image data file name -> name written by :func:`demo_photos`.
PHOTO_NAMES: dict[str, str] = {
    "astronaut.png": "astronaut.png",
    "camera.png": "camera.png",
}


def _check_writable(path: Path, data: bytes) -> bool:
    """True if ``path`` must be written; False if it already holds ``data``.

    Raises FileExistsError if a different file already exists there.
    """
    if not path.exists():
        return True
    if path.is_file() and path.read_bytes() == data:
        return False
    raise FileExistsError(f"refusing to overwrite different existing file: {path}")


def _write_all(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write ``files`` idempotently: check every target first, then write each atomically.

    Nothing is written if any target conflicts; identical files are not touched (their
    mtime is kept). Each write goes through :func:`cartoonify.utils.atomic_write_bytes`.
    """
    todo = [(p, d) for p, d in files if _check_writable(p, d)]
    for path, data in todo:
        atomic_write_bytes(path, data)


def make_style_images(out_dir: str | os.PathLike[str], n: int = 24, size: int = 512,
                      seed: int = 0, captions: bool = True) -> list[Path]:
    """Draw ``n`` deterministic cartoon style images into ``out_dir``.

    Files are ``style-000.png`` ... plus, if ``captions``, a matching
    ``style-000.txt`` holding the full training prompt (ending with
    ``", Disney style"``).  Returns the image paths in order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = Path(out_dir)
    files: list[tuple[Path, bytes]] = []
    images: list[Path] = []
    for i in range(n):
        img, caption = render_style_image(i, size=size, seed=seed)
        path = out / f"style-{i:03d}.png"
        images.append(path)
        files.append((path, png_bytes(img)))
        if captions:
            files.append((path.with_suffix(".txt"), caption.encode("utf-8")))
    out.mkdir(parents=True, exist_ok=True)
    _write_all(files)
    return images


def _skimage_data_dir() -> Path:
    """Folder of scikit-image's bundled data, without importing skimage if possible."""
    try:
        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ImportError("demo_photos() needs scikit-image's bundled photos; "
                          "install it with `pip install scikit-image`")
    for location in spec.submodule_search_locations or []:
        folder = Path(location) / "data"
        if all((folder / name).is_file() for name in PHOTO_NAMES):
            return folder
    import skimage.data  # fallback: heavier, but knows its own data_dir

    folder = Path(skimage.data.data_dir)
    missing = [name for name in PHOTO_NAMES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-image data files {missing} not found in {folder}")
    return folder


def demo_photos(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Copy scikit-image's astronaut and camera photos to ``out_dir`` as RGB PNGs.

    Returns ``[out_dir/astronaut.png, out_dir/camera.png]``.
    """
    src = _skimage_data_dir()
    out = Path(out_dir)
    files: list[tuple[Path, bytes]] = []
    for name, target in PHOTO_NAMES.items():
        with Image.open(src / name) as im:
            files.append((out / target, png_bytes(im.convert("RGB"))))
    out.mkdir(parents=True, exist_ok=True)
    _write_all(files)
    return [p for p, _ in files]


def make_demo_dataset(root: str | os.PathLike[str], size: int = 512, n: int = 24,
                      seed: int = 0) -> dict[str, Path]:
    """Create ``root/instance`` (captioned style images) and ``root/photos``."""
    root = Path(root)
    instance_dir, photos_dir = root / "instance", root / "photos"
    make_style_images(instance_dir, n=n, size=size, seed=seed, captions=True)
    demo_photos(photos_dir)
    return {"instance_dir": instance_dir, "photos_dir": photos_dir}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the demo data set to OUT_DIR and print what is there."""
    parser = argparse.ArgumentParser(prog="python -m cartoonify.data.demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="root folder for instance/ and photos/")
    parser.add_argument("--size", type=int, default=512, help="style image size in pixels")
    parser.add_argument("--n", type=int, default=24, help="number of style images")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the drawings")
    args = parser.parse_args(argv)
    dirs = make_demo_dataset(args.out_dir, size=args.size, n=args.n, seed=args.seed)
    for key, folder in dirs.items():
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        print(f"{key}: {folder} ({len(names)} files)")
        for name in names:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
