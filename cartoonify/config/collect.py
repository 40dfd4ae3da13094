"""01_collect's settings: what :func:`cartoonify.data.collect.collect_dataset` takes.

Every collect setting is declared once, here: its type, its default (the write-up's where it had one), a
help text, and for the command line (``python -m cartoonify.collect``, built from these fields) its alias
flags and allowed choices. Fields marked ``cli=False`` belong to the notebook only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .core import ConfigBase, ConfigError, check_choice


def setting(
    default: Any,
    text: str,
    *,
    flags: tuple[str, ...] = (),
    choices: tuple = (),
    cli: bool = True,
    required: bool = False,
    metavar: str | None = None,
):
    """A collect setting: a dataclass field whose metadata carries its help ``text``, its command-line alias
    ``flags``, its ``choices`` (checked by :meth:`CollectConfig.validate`), whether the command line has it
    (``cli``), requires it (``required``) and how its usage names the value (``metavar``)."""
    metadata = {"help": text, "flags": flags, "choices": choices, "cli": cli, "required": required, "metavar": metavar}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class CollectConfig(ConfigBase):
    """01_collect: every setting of :func:`~cartoonify.data.collect.collect_dataset`, and the notebook's paths."""

    # where from, where to
    sources: list[str] = setting(
        ["data/raw"], "folders (searched recursively), URL list files (.txt), image files or http(s) URLs",
        required=True, metavar="SOURCE",
    )  # fmt: skip
    collect_dir: str = setting(
        "data/disney", "output folder: images/ (the training set), originals/, manifest.csv, contact_sheet.png",
        flags=("--out",), required=True, metavar="OUT",
    )  # fmt: skip
    # the output images
    resolution: int = setting(512, "side of the square images in px (the write-up: 512)", flags=("--size",))
    fit: str = setting("pad", "pad: whole image on the pad colour; crop: center crop", choices=("pad", "crop"))
    background: str = setting("255,255,255", "colour under transparency: r,g,b, a colour name or #rrggbb")
    pad_color: str = setting("auto", "padding colour: auto (black for a mostly black border, else the background)")
    whiten_background: bool = setting(False, "flood-fill a near-uniform background colour white")
    whiten_tolerance: int = setting(32, "per-channel distance from the background colour that is whitened")
    # checks
    min_size: int = setting(64, "smallest acceptable shorter side in px")
    small_policy: str = setting("reject", "what to do with a smaller image", choices=("reject", "flag"))
    background_min: float = setting(0.6, "share of the border that must be near white or near black")
    background_policy: str = setting("warn", "what to do below background_min", choices=("keep", "warn", "reject"))
    background_band: float = setting(0.02, "width of the border band, as a share of the shorter side")
    white_level: int = setting(235, "near white: every channel at least this")
    black_level: int = setting(20, "near black: every channel at most this")
    near_dup_threshold: int = setting(5, "dHash Hamming distance of near duplicates (-1: none)")
    max_pixels: int = setting(64_000_000, "refuse larger images before decoding (decompression bombs)")
    # downloads
    url_timeout: float = setting(10.0, "seconds per connect and per read (the whole body: 10x)")
    url_max_bytes: int = setting(30_000_000, "largest download in bytes")
    url_max_redirects: int = setting(3, "most redirects followed")
    url_retries: int = setting(2, "retries after a transient failure (timeouts, refused connections, 5xx)")
    url_retry_wait: float = setting(1.0, "seconds before the first retry (doubling)")
    # the notebook only
    photos_dir: str = setting("data/photos", "photos of people to stylize (05_stylize)", cli=False)
    make_demo_data: bool = setting(False, "draw the package's demo images into the first source first", cli=False)
    demo_images: int = setting(24, "how many demo images to draw", cli=False)

    def validate(self):
        """Check the choices, ``resolution >= 8`` and that there is a source; returns self."""
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        if self.resolution < 8:
            raise ConfigError(f"config key 'resolution' must be >= 8, got {self.resolution}")
        if not self.sources:
            raise ConfigError("config key 'sources' must name at least one folder or URL list")
        return self
