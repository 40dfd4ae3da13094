"""One collect run: every input through the checks to a verdict, then the manifest and the records.

:func:`collect_dataset` is the entry point; :func:`process_input` turns one input into one manifest row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...config import CollectConfig, ConfigError
from ...imaging import IMAGE_EXTENSIONS, png_bytes
from ...utils import sha256_file
from ..folders import caption_path
from .decode import Decoded, decode_image, describe_bytes, is_multiframe, pillow_limits, read_head, sniff_image
from .errors import OutputError, Reject
from .fetch import Fetch, Originals, make_fetcher
from .manifest import (
    CONTACT_SHEET_NAME,
    MANIFEST_NAME,
    CollectResult,
    ManifestRow,
    check_previous_settings,
    count_reasons,
    count_verdicts,
    read_manifest,
    save_contact_sheet,
    settings_record,
    thumbnail,
    write_manifest,
    write_output,
    write_settings,
)
from .pixels import (
    background_score,
    border_shares,
    center_crop_resize,
    colour_signature,
    hamming,
    pad_square,
    parse_color,
    perceptual_hash,
    scale_to_fit,
    whiten_background,
)
from .sources import SourceInput, check_out_dir, expand_sources

# kept rows carry the most telling of their notes as their code
KEPT_CODE_PRIORITY = ("already collected", "near duplicate", "small", "low background", "animated")
NEAR_DUP_COLOUR_TOLERANCE = 20  # mean difference of the 4x4 colour grids (0..255) of near duplicates


@dataclass
class CollectState:
    """What one run has seen so far, with its settings (colours parsed)."""

    config: CollectConfig
    out_dir: Path
    background: tuple[int, int, int]
    pad_color: tuple[int, int, int] | None  # None: "auto"
    originals: Originals
    previous: dict[str, dict[str, str]]  # the previous manifest's kept rows by sha256
    seen: dict[str, ManifestRow] = field(default_factory=dict)  # sha256 -> first row
    hashes: list[tuple[int, np.ndarray, str]] = field(default_factory=list)  # (dHash, colours, source) kept
    thumbs: list[Image.Image] = field(default_factory=list)

    @property
    def images_dir(self) -> Path:
        return self.out_dir / "images"


# ------------------------------------------------------------------------------------------------
# the checks of one image
# ------------------------------------------------------------------------------------------------


def _pad_color(content: Image.Image, state: CollectState) -> tuple[int, int, int]:
    """The padding colour: explicit, or ("auto") black for a mostly black border, else the background."""
    if state.pad_color is not None:
        return state.pad_color
    c = state.config
    white, black = border_shares(content, c.background_band, c.white_level, c.black_level)
    return (0, 0, 0) if black >= 0.5 and black > white else state.background


def make_square(decoded: Decoded, state: CollectState, notes: list[str]) -> tuple[Image.Image, float]:
    """The output square (pad or crop, optional whitening) and the background score of its content."""
    c = state.config
    img = decoded.image
    content = scale_to_fit(img, c.resolution) if c.fit == "pad" else center_crop_resize(img, c.resolution)
    if c.whiten_background:
        content, changed = whiten_background(content, c.whiten_tolerance, c.background_band)
        if changed:
            notes.append(f"background whitened ({changed:.0%} of pixels)")
    score = background_score(content, c.background_band, c.white_level, c.black_level)
    out = pad_square(content, c.resolution, _pad_color(content, state)) if c.fit == "pad" else content
    return out, score


def check_size(decoded: Decoded, config: CollectConfig, notes: list[str], codes: list[str]) -> None:
    """Reject or flag an image whose shorter side is below ``min_size``."""
    if min(decoded.width, decoded.height) >= config.min_size:
        return
    text = f"small: {decoded.width}x{decoded.height}, shorter side under {config.min_size} px"
    if config.small_policy == "reject":
        raise Reject("too small", text)
    notes.append(text + " (upscaled)")
    codes.append("small")


def check_background(score: float, config: CollectConfig, notes: list[str], codes: list[str]) -> None:
    """Reject or warn when less than ``background_min`` of the border is near white or black."""
    if config.background_policy == "keep" or score >= config.background_min:
        return
    text = f"background: {score:.0%} of the border is near white or black (want {config.background_min:.0%})"
    if config.background_policy == "reject":
        raise Reject("low background", text)
    notes.append(text)
    codes.append("low background")


def check_near_duplicate(
    square: Image.Image, label: str, state: CollectState, notes: list[str], codes: list[str]
) -> int:
    """Note the closest earlier kept image within ``near_dup_threshold`` bits of dHash whose colours
    also agree (4x4 grid within :data:`NEAR_DUP_COLOUR_TOLERANCE`: the grayscale hash alone calls a
    recoloured drawing, or any two flat images, alike); remember this image; return its hash."""
    phash, signature = perceptual_hash(square), colour_signature(square)
    candidates = [
        (hamming(phash, h), src)
        for h, sig, src in state.hashes
        if hamming(phash, h) <= state.config.near_dup_threshold
        and np.abs(sig - signature).mean() <= NEAR_DUP_COLOUR_TOLERANCE
    ]
    if candidates:
        distance, src = min(candidates)
        notes.append(f"near duplicate of {src} (distance {distance})")
        codes.append("near duplicate")
    state.hashes.append((phash, signature, label))
    return phash


def _kept_code(codes: Sequence[str]) -> str:
    """The most telling code of a kept image (:data:`KEPT_CODE_PRIORITY`), else ``ok``."""
    for code in KEPT_CODE_PRIORITY:
        if code in codes:
            return code
    return "ok"


def _name_note(path: Path, fmt: str) -> list[str]:
    """A note when a file's extension disagrees with what its bytes are."""
    suffix = path.suffix.lower()
    jpeg = (".jpg", ".jpeg", ".jpe", ".jfif")
    expected = {"jpeg": jpeg, "mpo": jpeg, "tiff": (".tif", ".tiff")}.get(fmt, (f".{fmt}",))
    if suffix in IMAGE_EXTENSIONS and fmt and suffix not in expected:
        return [f"named {suffix} but is {fmt.upper()}"]
    return []


# ------------------------------------------------------------------------------------------------
# captions, earlier runs, kept rows
# ------------------------------------------------------------------------------------------------


def copy_caption(source: Path | None, output: Path) -> Path | None:
    """Copy the caption beside ``source`` to beside ``output`` (same stem) unless one is there already."""
    if source is None:
        return None
    src, dst = caption_path(source), caption_path(output)
    if dst.is_file():
        return dst
    if not src.is_file():
        return None
    write_output(dst, src.read_bytes())
    return dst


def _adopt_caption(first: ManifestRow, path: Path | None, state: CollectState) -> None:
    """A duplicate's caption goes to the kept copy when that one came without a caption."""
    if first.verdict == "kept" and not first.caption and path is not None and caption_path(path).is_file():
        caption = copy_caption(path, state.out_dir / first.output)
        first.caption = caption.relative_to(state.out_dir).as_posix() if caption else ""


def _fill_from_previous(row: ManifestRow, previous: dict[str, str] | None, path: Path) -> None:
    """An already collected row gets the facts of the previous run's row (or of the file's header)."""
    if previous:
        for name in ("format", "mode"):
            setattr(row, name, previous.get(name, ""))
        for name in ("width", "height", "frames"):
            value = previous.get(name, "")
            setattr(row, name, int(value) if value.isdigit() else None)
        bg = previous.get("background", "")
        row.background = float(bg) if bg else None
        return
    with contextlib.suppress(Exception), pillow_limits(1 << 62), Image.open(path) as img:
        row.format, row.mode, (row.width, row.height) = (img.format or "").lower(), img.mode, img.size


def _previous_notes(previous: dict[str, str] | None) -> list[str]:
    """The notes of the previous run's row, less those this run makes afresh."""
    if not previous:
        return []
    skip = ("already collected", "near duplicate of", "ok")
    return [n for n in previous.get("reason", "").split("; ") if n and not n.startswith(skip)]


def _keep(
    row: ManifestRow,
    path: Path,
    output: Path,
    square: Image.Image,
    notes: list[str],
    codes: list[str],
    state: CollectState,
) -> None:
    """Check for near duplicates, bring the caption along, fill a kept row and remember its thumbnail."""
    phash = check_near_duplicate(square, row.source, state, notes, codes)
    caption = copy_caption(path if row.original == "" else None, output)
    row.verdict, row.code, row.reason = "kept", _kept_code(codes), "; ".join(notes) or "ok"
    row.output = output.relative_to(state.out_dir).as_posix()
    row.caption = caption.relative_to(state.out_dir).as_posix() if caption else ""
    row.dhash = f"{phash:016x}"
    state.thumbs.append(thumbnail(square))


def already_collected(row: ManifestRow, path: Path, output: Path, state: CollectState) -> bool:
    """If ``output`` exists at the right size, fill ``row`` as kept ("already collected") and return True."""
    size = state.config.resolution
    try:
        with Image.open(output) as img:
            if img.size != (size, size):
                return False
            img.load()
            square = img.convert("RGB")
    except Exception:
        return False
    previous = state.previous.get(row.sha256)
    _fill_from_previous(row, previous, path)
    _keep(row, path, output, square, ["already collected"] + _previous_notes(previous), ["already collected"], state)
    return True


# ------------------------------------------------------------------------------------------------
# one input
# ------------------------------------------------------------------------------------------------


def _identify(path: Path, row: ManifestRow, state: CollectState) -> tuple[str | None, int]:
    """Hash the file into ``row`` and sniff its format; refuse empty, unreadable, duplicate and
    non-image files. Returns the sniffed format (None: unknown binary) and the file's size."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise Reject("empty file", "empty file (0 bytes)")
        row.sha256 = sha256_file(path)
        head = read_head(path)
    except OSError as err:
        raise Reject("unreadable", f"cannot read the file: {err.strerror or err}") from err
    first = state.seen.get(row.sha256)
    if first is not None:
        _adopt_caption(first, path if row.original == "" else None, state)
        also = f" (which was {first.verdict}: {first.code})" if first.verdict != "kept" else ""
        raise Reject("exact duplicate", f"exact duplicate of {first.source}{also}", verdict="duplicate")
    state.seen[row.sha256] = row
    kind = sniff_image(head)
    if kind is None:
        what = describe_bytes(head)
        if what == "SVG":
            raise Reject("svg", "SVG (vector) image: rasterise it first")
        if what != "binary":
            raise Reject("not an image", f"not an image: {what} ({size} bytes)")
    return kind, size


def _decode_checked(path: Path, kind: str | None, size: int, state: CollectState) -> Decoded:
    """:func:`decode_image` with this run's limits; unknown binary that Pillow cannot read is "not an image"."""
    if kind == "heic":
        raise Reject("unsupported format", f"{kind.upper()} cannot be read by Pillow without a plugin")
    c = state.config
    try:
        return decode_image(path, c.max_pixels, c.resolution, state.background)
    except Reject as rej:
        if kind is None and rej.code == "corrupt":  # neither a known magic number nor anything Pillow reads
            raise Reject("not an image", f"not an image: unrecognised binary data ({size} bytes)") from rej
        raise


def process_file(path: Path, row: ManifestRow, state: CollectState) -> None:
    """Run one local file (or downloaded original) through every check and fill ``row`` with the verdict."""
    kind, size = _identify(path, row, state)
    output = state.images_dir / f"{row.sha256[:16]}.png"
    if already_collected(row, path, output, state):
        return
    decoded = _decode_checked(path, kind, size, state)
    row.format, row.width, row.height, row.mode, row.frames = (
        decoded.format, decoded.width, decoded.height, decoded.mode, decoded.frames,
    )  # fmt: skip
    notes, codes = _name_note(path, decoded.format) + decoded.notes, []
    if is_multiframe(decoded.format, decoded.frames):
        codes.append("animated")
    check_size(decoded, state.config, notes, codes)
    square, score = make_square(decoded, state, notes)
    row.background = round(score, 4)
    check_background(score, state.config, notes, codes)
    write_output(output, png_bytes(square))
    _keep(row, path, output, square, notes, codes, state)


def process_input(item: SourceInput, state: CollectState) -> ManifestRow:
    """The manifest row of one input; every expected failure becomes a verdict, never an exception."""
    row = ManifestRow(source=item.label)
    try:
        if item.problem:
            raise Reject(*item.problem)
        path = item.path
        if item.url is not None:
            path = state.originals.get(item.url)
            row.original = path.relative_to(state.out_dir).as_posix()
        process_file(path, row, state)
    except Reject as rej:
        row.verdict, row.code, row.reason = rej.verdict, rej.code, rej.reason
        for name, value in rej.facts.items():
            setattr(row, name, value)
    except OutputError:
        raise
    except OSError as err:
        row.verdict, row.code, row.reason = "rejected", "unreadable", f"{type(err).__name__}: {err}"
    except Exception as err:  # anything a strange file makes a decoder raise
        row.verdict, row.code, row.reason = "rejected", "error", f"{type(err).__name__}: {err}"
    return row


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def _colours(config: CollectConfig) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """The parsed background and pad colours (pad None: "auto"); a bad one is a :class:`ConfigError`."""
    parsed = []
    for key in ("background", "pad_color"):
        value = getattr(config, key)
        try:
            parsed.append(None if key == "pad_color" and value == "auto" else parse_color(value))
        except ValueError as err:
            raise ConfigError(f"config key '{key}' must be r,g,b, a colour name or #rrggbb, got {value!r}") from err
    return parsed[0], parsed[1]


def _progress(items: Sequence[SourceInput], enabled: bool):
    """``items`` wrapped in a tqdm progress bar when enabled and installed."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="collect", unit="file")


def collect_dataset(config: CollectConfig, *, fetch: Fetch | None = None, progress: bool = True) -> CollectResult:
    """Turn image folders and URL lists into a square RGB training set in ``collect_dir/images``.

    ``config.sources``: folders (searched recursively; hidden entries skipped; symlink loops entered
    once), text files of URLs (``.txt``/``.urls``, one per line, ``#`` comments), single image files or
    http(s) URLs. Each image is EXIF-oriented, made RGB (transparency composited on ``background``,
    16-bit scaled), then made ``resolution`` x ``resolution`` with LANCZOS: ``fit="pad"`` keeps the whole
    image on a ``pad_color`` canvas ("auto": black for a mostly black border, else ``background``),
    ``fit="crop"`` center-crops as the write-up did.

    Checks: images with a shorter side under ``min_size`` are rejected or flagged (``small_policy``);
    over ``max_pixels`` they are refused from the header, before decoding; the share of the border band
    (``background_band`` of the side) that is near white (all channels >= ``white_level``) or near black
    (<= ``black_level``) is the background score, and under ``background_min`` it is ``warn``-ed,
    ``reject``-ed or ``keep``-t silently (``background_policy``). ``whiten_background`` first flood-fills
    a near-uniform border colour (within ``whiten_tolerance``) white. Exact duplicates (same bytes) get
    the verdict ``duplicate``; near duplicates (dHash within ``near_dup_threshold`` bits of an earlier
    kept image) are kept and noted.

    URLs: http/https only, ``url_timeout`` seconds per connect/read, at most ``url_max_bytes`` and
    ``url_max_redirects``; the bytes must be an image by their magic number; transient failures are
    retried ``url_retries`` times (waiting ``url_retry_wait`` s, doubling). ``fetch(url) -> bytes``
    replaces the downloader. Originals are stored as ``originals/<sha256><ext>``.

    Writes ``manifest.csv`` (one row per input), ``contact_sheet.png`` and ``collect.json``; with
    ``progress`` shows a progress bar and prints the summary. Rerunning skips what is already collected.
    Bad settings raise :class:`~cartoonify.config.ConfigError`; an ``out_dir`` that is a source, ValueError.
    """
    config.validate()
    out_dir = Path(config.collect_dir)
    sources = [config.sources] if isinstance(config.sources, (str, Path)) else list(config.sources)
    background, pad_color = _colours(config)
    record = settings_record(config, background, pad_color)
    check_out_dir(sources, out_dir)
    check_previous_settings(out_dir, record)
    fetch = fetch or make_fetcher(config.url_timeout, config.url_max_bytes, config.url_max_redirects)
    state = CollectState(
        config=config,
        out_dir=out_dir,
        background=background,
        pad_color=pad_color,
        originals=Originals(out_dir, fetch, config.url_retries, config.url_retry_wait, config.url_max_bytes),
        previous={r.get("sha256", ""): r for r in read_manifest(out_dir / MANIFEST_NAME) if r.get("verdict") == "kept"},
    )
    inputs = expand_sources(sources, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [process_input(item, state) for item in _progress(inputs, progress)]
    return _finish(rows, state, record, progress, [str(s) for s in sources])


def _finish(rows: list[ManifestRow], state: CollectState, record: dict, progress: bool,
            sources: list[str] | None = None) -> CollectResult:
    """Write the manifest, the contact sheet, the URL index and the settings; print the summary."""
    out_dir = state.out_dir
    manifest = write_manifest(out_dir / MANIFEST_NAME, rows)
    sheet = save_contact_sheet(state.thumbs, out_dir / CONTACT_SHEET_NAME)
    state.originals.save_index()
    write_settings(out_dir, record, rows)
    result = CollectResult(
        out_dir=out_dir,
        rows=rows,
        counts=count_verdicts(rows),
        reasons=count_reasons(rows),
        kept=[out_dir / r.output for r in rows if r.verdict == "kept"],
        manifest_path=manifest,
        contact_sheet_path=sheet,
        settings=record,
        sources=sources or [],
    )
    if progress:
        print(result.summary())
    return result
