"""What a collect run says about itself: the manifest rows, the result, the summary, the contact sheet
and the settings record, and the writes into ``out_dir``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from PIL import Image

from ...config import CollectConfig
from ...imaging import image_grid, png_bytes
from ...utils import atomic_write_bytes
from .errors import NothingCollectedError, OutputError

VERDICTS = ("kept", "rejected", "duplicate")
MANIFEST_NAME = "manifest.csv"
CONTACT_SHEET_NAME = "contact_sheet.png"
SETTINGS_NAME = "collect.json"
THUMB_SIZE = 128
CONTACT_SHEET_LIMIT = 400
# settings that change what an output image looks like (compared against the previous run's)
IMAGE_SETTINGS = ("resolution", "fit", "background", "pad_color", "whiten_background", "whiten_tolerance")
RECORD_SKIP = ("sources", "collect_dir")  # where from and to, not how: left out of the settings record
LEGACY_KEYS = {"size": "resolution"}  # older settings records' names


@dataclass
class ManifestRow:
    """What :func:`~cartoonify.data.collect.collect_dataset` did with one input (a file, a URL or a source
    that yielded nothing).

    ``output``, ``caption`` and ``original`` are relative to ``out_dir``; ``background`` is the share of
    the image's border that is near white or near black; ``dhash`` the 64-bit perceptual hash
    (dHash) of the output in hex.
    """

    source: str
    verdict: str = ""
    code: str = ""
    reason: str = ""
    sha256: str = ""
    format: str = ""
    width: int | None = None
    height: int | None = None
    mode: str = ""
    frames: int | None = None
    output: str = ""
    caption: str = ""
    original: str = ""
    background: float | None = None
    dhash: str = ""


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))


@dataclass
class CollectResult:
    """The outcome of a collect run: every row, the counts, the kept images and the files written."""

    out_dir: Path
    rows: list[ManifestRow]
    counts: dict[str, int]  # by verdict
    reasons: dict[str, int]  # by "verdict: code"
    kept: list[Path]  # the kept output images, in input order
    manifest_path: Path
    contact_sheet_path: Path | None
    settings: dict = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # as given (folders, URL lists, files, URLs)

    @property
    def images_dir(self) -> Path:
        """The training set folder (``out_dir/images``)."""
        return self.out_dir / "images"

    def by_verdict(self, verdict: str) -> list[ManifestRow]:
        """The rows with ``verdict`` (kept, rejected or duplicate)."""
        return [r for r in self.rows if r.verdict == verdict]

    def summary(self) -> str:
        """A few lines: totals by verdict, then counts by reason code."""
        return format_summary(self.rows, self.out_dir)

    def check_kept(self) -> "CollectResult":
        """Raise :class:`NothingCollectedError` (the manifest's reasons, and what to do) if no image was
        kept; else return the result."""
        if not self.kept:
            raise NothingCollectedError(nothing_kept_message(self))
        return self

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.counts.get(v, 0)} {v}" for v in VERDICTS)
        return f"CollectResult({len(self.rows)} inputs: {counts}; out_dir={str(self.out_dir)!r})"


# ------------------------------------------------------------------------------------------------
# writes into out_dir
# ------------------------------------------------------------------------------------------------


def write_output(path: Path, data: bytes) -> Path:
    """:func:`atomic_write_bytes` into ``out_dir``; a failure raises :class:`OutputError`."""
    try:
        return atomic_write_bytes(path, data)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err}") from err


def write_if_changed(path: Path, data: bytes) -> Path:
    """Atomically write ``data`` unless ``path`` already holds exactly these bytes (a rerun leaves
    unchanged records untouched, mtimes included)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------------------------
# manifest and summary
# ------------------------------------------------------------------------------------------------


def _csv_value(value) -> str:
    """A manifest cell: empty for None."""
    return "" if value is None else str(value)


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> Path:
    """Write the rows as CSV (UTF-8; undecodable bytes of file names escaped)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(getattr(row, c)) for c in MANIFEST_COLUMNS])
    return write_if_changed(path, buf.getvalue().encode("utf-8", errors="backslashreplace"))


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a manifest as dicts of strings (empty if there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return list(csv.DictReader(fh))


def count_reasons(rows: Iterable[ManifestRow]) -> dict[str, int]:
    """Counts by ``"verdict: code"``, most common first."""
    return dict(Counter(f"{r.verdict}: {r.code}" for r in rows).most_common())


def count_verdicts(rows: Iterable[ManifestRow]) -> dict[str, int]:
    """Counts by verdict (every verdict present, zeros included)."""
    counts = Counter(r.verdict for r in rows)
    return {v: counts.get(v, 0) for v in VERDICTS}


def format_summary(rows: Sequence[ManifestRow], out_dir: Path | str = "") -> str:
    """The printed summary: totals by verdict, then counts by reason code."""
    counts = count_verdicts(rows)
    head = f"collect: {len(rows)} inputs -> " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    lines = [head + (f" ({out_dir})" if out_dir else "")]
    for key, n in sorted(count_reasons(rows).items(), key=lambda kv: (VERDICTS.index(kv[0].split(":")[0]), -kv[1])):
        lines.append(f"  {key:<36} {n:>5}")
    return "\n".join(lines)


REASON_GROUPS_SHOWN = 8  # reason codes listed by nothing_kept_message (the rest: in the manifest)


def nothing_kept_message(result: CollectResult) -> str:
    """Why a collect run kept nothing: the inputs' reasons grouped by code (count, first example), and what
    to put where, with the command that collects it."""
    rows = result.rows
    sources = [str(s) for s in result.sources] or sorted({r.source for r in rows if r.code.endswith("source")})
    shown = " ".join(sources) or "data/raw"
    where = sources[0] if len(sources) == 1 else f"the source folders ({', '.join(sources) or 'data/raw'})"
    size = result.settings.get("resolution", 512)
    groups: dict[str, list[ManifestRow]] = {}
    for row in rows:
        groups.setdefault(f"{row.verdict}: {row.code}", []).append(row)
    head = (f"collect kept no images from {len(rows)} input{'s' if len(rows) != 1 else ''} of sources {sources}, "
            f"so there is nothing to train on. The reasons, from {result.manifest_path}:")
    lines = [head]
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    for _, members in ordered[:REASON_GROUPS_SHOWN]:
        example = members[0]
        more = f"; and {len(members) - 1} more like it" if len(members) > 1 else ""
        lines.append(f"  {example.verdict} ({example.code}): {example.reason or example.source}{more}")
    if len(ordered) > REASON_GROUPS_SHOWN:
        lines.append(f"  ... {len(ordered) - REASON_GROUPS_SHOWN} more reasons in the manifest")
    lines.append(
        f"Put the style images (about 200, {size}² or larger, on white or black backgrounds; a caption .txt "
        f"beside an image is optional) in {where}, or list their URLs in a .txt file there, then run 01_collect "
        f"again; from the command line: `python -m cartoonify.collect {shown} --out {result.out_dir} --size {size}`."
        f" (make_demo_data: true draws the package's demo images into the first source instead.)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# contact sheet
# ------------------------------------------------------------------------------------------------


def thumbnail(img: Image.Image) -> Image.Image:
    """The contact sheet thumbnail of an output square."""
    return img.resize((THUMB_SIZE, THUMB_SIZE), Image.LANCZOS) if img.size != (THUMB_SIZE, THUMB_SIZE) else img


def save_contact_sheet(thumbs: Sequence[Image.Image], path: Path, cols: int = 10) -> Path | None:
    """Thumbnails of the kept images (at most :data:`CONTACT_SHEET_LIMIT`) as one PNG, or None if none."""
    if not thumbs:
        return None
    thumbs = list(thumbs[:CONTACT_SHEET_LIMIT])
    grid = image_grid(thumbs, cols=min(cols, len(thumbs)))
    return write_if_changed(path, png_bytes(grid))


# ------------------------------------------------------------------------------------------------
# settings record (collect.json)
# ------------------------------------------------------------------------------------------------


def settings_record(
    config: CollectConfig, background: tuple[int, int, int], pad_color: tuple[int, int, int] | None
) -> dict:
    """The processing settings as JSON-ready values (as saved in ``collect.json``): every command-line
    setting but the sources and the output folder, colours as ``[r, g, b]`` (``pad_color`` None: "auto")."""
    record = {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.metadata.get("cli", True) and f.name not in RECORD_SKIP
    }
    record["background"] = list(background)
    record["pad_color"] = "auto" if pad_color is None else list(pad_color)
    return record


def check_previous_settings(out_dir: Path, record: dict) -> None:
    """Warn when ``out_dir`` was collected with other image settings (its images are not remade)."""
    try:
        previous = json.loads((out_dir / SETTINGS_NAME).read_text(encoding="utf-8")).get("settings", {})
        previous = {LEGACY_KEYS.get(k, k): v for k, v in previous.items()}
    except (OSError, ValueError, AttributeError):
        return
    changed = [k for k in IMAGE_SETTINGS if k in previous and previous[k] != record[k]]
    if changed:
        warnings.warn(
            f"{out_dir} was collected with other settings ({', '.join(changed)}); images already there are "
            "kept as they are (a different size is remade). Use a new out_dir for a clean set.",
            RuntimeWarning,
            stacklevel=3,
        )


def write_settings(out_dir: Path, record: dict, rows: Sequence[ManifestRow]) -> Path:
    """Write ``collect.json``: the settings, the counts by verdict and by reason."""
    data = {"settings": record, "counts": count_verdicts(rows), "reasons": count_reasons(rows)}
    return write_if_changed(out_dir / SETTINGS_NAME, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
