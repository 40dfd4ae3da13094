"""Collect a training set from real-world image folders and URL lists.

:func:`collect` turns folders (searched recursively) and text files of URLs into a clean training set
of square RGB PNGs and says what it did with every input in ``out_dir/manifest.csv``::

    out_dir/
        images/<hash16>.png        the training images (plus <hash16>.txt where a caption came along)
        originals/<sha256>.<ext>   downloaded originals, named by content hash and by what the bytes are
        originals/urls.json        which URL gave which original (a rerun downloads nothing twice)
        manifest.csv               one row per input: source, hash, size, mode, verdict, reason, output
        contact_sheet.png          thumbnails of the kept images
        collect.json               the settings and counts of the last run

Every input gets a verdict: ``kept``, ``rejected`` or ``duplicate`` (the same bytes as an earlier input),
with a short ``code`` (counted in the summary) and a readable ``reason``. Originals are only ever opened
for reading; outputs are written atomically and named by the hash of the original's bytes, so a rerun
skips what it already made ("already collected") and changes nothing already kept. Point training at
``out_dir/images``.

Command line: ``python -m cartoonify.collect SOURCE [SOURCE ...] --out OUT_DIR [--size 512] [--fit pad|crop]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageColor, ImageFile, ImageOps

from .data import IMAGE_EXTENSIONS, caption_path, crop_square, resize_shorter_side
from .utils import atomic_write_bytes

__all__ = [
    "CollectResult",
    "FetchError",
    "ManifestRow",
    "background_score",
    "collect",
    "describe_bytes",
    "fetch_url",
    "main",
    "make_fetcher",
    "perceptual_hash",
    "read_url_list",
    "sniff_image",
    "whiten_background",
]

VERDICTS = ("kept", "rejected", "duplicate")
MANIFEST_NAME = "manifest.csv"
CONTACT_SHEET_NAME = "contact_sheet.png"
SETTINGS_NAME = "collect.json"
URL_LIST_SUFFIXES = (".txt", ".urls", ".list", ".lst")
URL_SCHEMES = ("http", "https")
USER_AGENT = "Mozilla/5.0 (compatible; cartoonify-collect/0.1)"
HASH_CHUNK = 1 << 20
SNIFF_BYTES = 4096
THUMB_SIZE = 128
CONTACT_SHEET_LIMIT = 400
WHITEN_MIN_SHARE = 0.5  # the border's dominant colour must cover this share for a background to be "uniform"
# kept rows carry the most telling of their notes as their code
KEPT_CODE_PRIORITY = ("already collected", "near duplicate", "small", "low background", "animated")
# settings that change what an output image looks like (compared against the previous run's)
STILL_MULTIFRAME = ("mpo",)  # camera JPEGs with extra pictures (depth maps, previews) are still images
NEAR_DUP_COLOUR_TOLERANCE = 20  # mean difference of the 4x4 colour grids (0..255) of near duplicates
IMAGE_SETTINGS = ("size", "fit", "background", "pad_color", "whiten_background", "whiten_tolerance")

Fetch = Callable[[str], bytes]


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


@dataclass
class ManifestRow:
    """What :func:`collect` did with one input (a file, a URL or a source that yielded nothing).

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
    """The outcome of :func:`collect`: every row, the counts, the kept images and the files written."""

    out_dir: Path
    rows: list[ManifestRow]
    counts: dict[str, int]  # by verdict
    reasons: dict[str, int]  # by "verdict: code"
    kept: list[Path]  # the kept output images, in input order
    manifest_path: Path
    contact_sheet_path: Path | None
    settings: dict = field(default_factory=dict)

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

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.counts.get(v, 0)} {v}" for v in VERDICTS)
        return f"CollectResult({len(self.rows)} inputs: {counts}; out_dir={str(self.out_dir)!r})"


class FetchError(Exception):
    """A download failed; ``transient`` errors (timeouts, refused connections, 5xx) are worth retrying."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class OutputError(RuntimeError):
    """Writing into ``out_dir`` failed (disk full, permissions): an error of the run, not a verdict."""


class _Reject(Exception):
    """Internal: stop processing an input with a verdict (normally ``rejected``), a code and a reason."""

    def __init__(self, code: str, reason: str, verdict: str = "rejected", facts: dict | None = None):
        super().__init__(reason)
        self.code, self.reason, self.verdict, self.facts = code, reason, verdict, facts or {}


@dataclass
class _Settings:
    """The processing parameters of one :func:`collect` call."""

    size: int
    fit: str
    background: tuple[int, int, int]
    pad_color: str | tuple[int, int, int]
    min_size: int
    small_policy: str
    background_min: float
    background_policy: str
    background_band: float
    white_level: int
    black_level: int
    whiten_background: bool
    whiten_tolerance: int
    near_dup_threshold: int
    max_pixels: int
    url_max_bytes: int
    url_retries: int
    url_retry_wait: float


@dataclass
class _State:
    """What one :func:`collect` call has seen so far."""

    out_dir: Path
    settings: _Settings
    fetch: Fetch
    previous: dict[str, dict[str, str]]  # previous manifest rows by sha256
    url_index: dict[str, str]  # URL -> originals/<file>
    seen: dict[str, ManifestRow] = field(default_factory=dict)  # sha256 -> first row
    hashes: list[tuple[int, np.ndarray, str]] = field(default_factory=list)  # (dHash, colours, source) kept
    thumbs: list[Image.Image] = field(default_factory=list)

    @property
    def images_dir(self) -> Path:
        return self.out_dir / "images"

    @property
    def originals_dir(self) -> Path:
        return self.out_dir / "originals"


# ------------------------------------------------------------------------------------------------
# bytes: magic numbers, hashes
# ------------------------------------------------------------------------------------------------


def sniff_image(head: bytes) -> str | None:
    """The image format the leading bytes say (``png``, ``jpeg``, ``gif``, ``webp``, ``bmp``, ``tiff``,
    ``avif``, ``heic``) or None. Names and servers' content types are not consulted."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "heic"
    return None


FORMAT_EXTENSIONS = {
    "png": ".png",
    "jpeg": ".jpg",
    "gif": ".gif",
    "webp": ".webp",
    "tiff": ".tif",
    "bmp": ".bmp",
    "avif": ".avif",
    "heic": ".heic",
}


def describe_bytes(head: bytes) -> str:
    """A short name for what non-image leading bytes look like: ``empty``, ``SVG``, ``HTML``, ``XML``,
    ``PDF``, ``JSON``, ``MP4/ISO media``, ``ZIP``, ``text`` or ``binary``."""
    if not head:
        return "empty"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf"):
        return "PDF"
    if b"<svg" in text[:2048]:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:1024]:
        return "HTML"
    if text.startswith(b"<?xml"):
        return "XML"
    if head[4:8] == b"ftyp":
        return "MP4/ISO media"
    if head.startswith(b"PK\x03\x04"):
        return "ZIP"
    if text.startswith((b"{", b"[")):
        return "JSON"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        # a cut in the middle of a multi-byte character at the end is still text
        try:
            head[:-3].decode("utf-8")
            return "text" if len(head) > 3 else "binary"
        except UnicodeDecodeError:
            return "binary"


def hash_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks (the file is only opened for reading)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes of a file."""
    with open(path, "rb") as fh:
        return fh.read(n)


# ------------------------------------------------------------------------------------------------
# sources: folders, URL lists, single files
# ------------------------------------------------------------------------------------------------


@dataclass
class _Input:
    """One thing to process: a local file, a URL, or a note about a source that yielded nothing."""

    label: str
    path: Path | None = None
    url: str | None = None
    problem: tuple[str, str] | None = None  # (code, reason) for a source that cannot be used


def _is_hidden(name: str) -> bool:
    """Dot-files and dot-folders (and our own temporary files) are not inputs."""
    return name.startswith(".")


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def _caption_files(folder: Path, names: Sequence[str]) -> set[str]:
    """The ``.txt`` files in one folder that are captions: a sibling with the same stem exists."""
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
        captions = _caption_files(Path(root), names)
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


def _is_url_list(path: Path) -> bool:
    """A file source is a URL list if its name says so and its bytes are not an image."""
    if path.suffix.lower() not in URL_LIST_SUFFIXES:
        return False
    try:
        return sniff_image(read_head(path, 64)) is None
    except OSError:
        return True


def _looks_like_url(source: str) -> bool:
    """Whether a source string is a URL rather than a path."""
    return "://" in source and urlsplit(source).scheme.lower() in (*URL_SCHEMES, "ftp", "file", "data")


def expand_sources(sources: Sequence[str | Path], out_dir: Path) -> list[_Input]:
    """Every input of ``sources`` in order; a missing or empty source becomes one problem input."""
    inputs: list[_Input] = []
    for source in sources:
        text = str(source)
        if isinstance(source, str) and _looks_like_url(source):
            inputs.append(_Input(label=text, url=text))
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            found = [_Input(label=str(p), path=p) for p in walk_folder(path, skip=[out_dir])]
            inputs += found or [_Input(label=text, problem=("empty source", f"source folder holds no files: {text}"))]
        elif path.is_file() and _is_url_list(path):
            urls = read_url_list(path)
            inputs += [_Input(label=u, url=u) for u in urls] or [
                _Input(label=text, problem=("empty source", f"URL list holds no URLs: {text}"))
            ]
        elif path.is_file() or path.is_symlink():
            inputs.append(_Input(label=text, path=path))
        else:
            inputs.append(_Input(label=text, problem=("missing source", f"source does not exist: {text}")))
    return inputs


def check_out_dir(sources: Sequence[str | Path], out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a source folder, or whose outputs a source would be read from."""
    out_real = Path(os.path.realpath(out_dir))
    written = [out_real / "images", out_real / "originals"]
    for source in sources:
        if isinstance(source, str) and _looks_like_url(source):
            continue
        real = Path(os.path.realpath(Path(source).expanduser()))
        if real == out_real or any(_is_within(real, w) for w in written):
            raise ValueError(f"out_dir {out_dir} must not be a source or hold one in its outputs: {source}")


# ------------------------------------------------------------------------------------------------
# downloads
# ------------------------------------------------------------------------------------------------


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirects`` redirects, and only to http(s) URLs."""

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirects = max_redirects
        self.max_redirections = max_redirects + 1  # urllib's own loop guard stays out of the way

    @staticmethod
    def _refuse_scheme(fp, url: str) -> None:
        """Raise :class:`FetchError` (closing the response) for a URL that is not http(s)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme and scheme not in URL_SCHEMES:
            fp.close()
            raise FetchError(f"redirect to a {scheme} URL is not allowed: {url}")

    def http_error_302(self, req, fp, code, msg, headers):
        """Refuse a redirect to a non-http(s) scheme before urllib looks at it."""
        self._refuse_scheme(fp, headers.get("location") or headers.get("uri") or "")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        """The next request of a redirect, counted; past ``max_redirects`` a :class:`FetchError`."""
        count = getattr(req, "redirect_count", 0) + 1
        self._refuse_scheme(fp, newurl)
        if count > self.max_redirects:
            fp.close()
            raise FetchError(f"more than {self.max_redirects} redirects")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.redirect_count = count
        return new


def _read_capped(resp, max_bytes: int, deadline: float) -> bytes:
    """The response body, refusing more than ``max_bytes`` or a transfer past ``deadline``."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise FetchError(f"too large: the server declares {int(declared)} bytes (cap {max_bytes})")
    chunks, total = [], 0
    while True:
        chunk = resp.read(min(1 << 16, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"too large: more than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError("timed out while reading the body", transient=True)


def fetch_url(url: str, timeout: float = 10, max_bytes: int = 30_000_000, max_redirects: int = 3) -> bytes:
    """Download ``url`` (http/https only) with a timeout per connect and read (and ``10 * timeout`` for
    the whole body), a size cap and a redirect limit. Raises :class:`FetchError`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FetchError(f"unsupported URL scheme {scheme!r} (http and https only)")
    opener = urllib.request.build_opener(_LimitedRedirects(max_redirects))
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    deadline = time.monotonic() + 10 * timeout
    try:
        with opener.open(request, timeout=timeout) as resp:
            return _read_capped(resp, max_bytes, deadline)
    except FetchError:
        raise
    except urllib.error.HTTPError as err:
        err.close()
        transient = err.code >= 500 or err.code in (408, 429)
        raise FetchError(f"HTTP {err.code} {err.reason}", transient=transient) from err
    except urllib.error.URLError as err:
        raise FetchError(f"cannot reach the server: {err.reason}", transient=True) from err
    except TimeoutError as err:
        raise FetchError("timed out", transient=True) from err
    except (OSError, ValueError) as err:  # connection resets, bad status lines, malformed URLs
        raise FetchError(f"download failed: {type(err).__name__}: {err}", transient=isinstance(err, OSError)) from err
    except Exception as err:  # http.client.HTTPException (IncompleteRead, ...) and the like
        raise FetchError(f"download failed: {type(err).__name__}: {err}", transient=True) from err


def make_fetcher(timeout: float = 10, max_bytes: int = 30_000_000, max_redirects: int = 3) -> Fetch:
    """A ``fetch(url) -> bytes`` function: :func:`fetch_url` with these limits."""

    def fetch(url: str) -> bytes:
        return fetch_url(url, timeout=timeout, max_bytes=max_bytes, max_redirects=max_redirects)

    return fetch


def download(url: str, fetch: Fetch, retries: int, wait: float) -> bytes:
    """``fetch(url)`` with up to ``retries`` more attempts after transient errors (waits double)."""
    for attempt in range(retries + 1):
        try:
            return fetch(url)
        except Exception as err:
            transient = getattr(err, "transient", isinstance(err, OSError))
            if not transient or attempt == retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise _Reject("download failed", f"download failed{tries}: {err}") from err
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


def _load_url_index(originals_dir: Path) -> dict[str, str]:
    """The URL -> original index of earlier runs (empty if there is none or it is unreadable)."""
    path = originals_dir / "urls.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def fetch_original(url: str, state: _State) -> tuple[Path, bool]:
    """The local original of ``url`` under ``originals/`` and whether it was downloaded now.

    A URL downloaded by an earlier run is not downloaded again. The bytes must be an image by their
    magic number; the file is named ``<sha256><ext>`` after what the bytes are.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise _Reject("bad url", f"unsupported URL scheme {scheme!r} (http and https only)")
    known = state.url_index.get(url)
    if known and (state.out_dir / known).is_file():
        return state.out_dir / known, False
    s = state.settings
    data = download(url, state.fetch, s.url_retries, s.url_retry_wait)
    if len(data) > s.url_max_bytes:
        raise _Reject("download failed", f"too large: {len(data)} bytes (cap {s.url_max_bytes})")
    kind = sniff_image(data[:SNIFF_BYTES])
    if kind is None:
        what = describe_bytes(data[:SNIFF_BYTES])
        code = "svg" if what == "SVG" else "not an image"
        raise _Reject(code, f"not an image: the URL returned {what} ({len(data)} bytes)")
    name = hashlib.sha256(data).hexdigest() + FORMAT_EXTENSIONS[kind]
    path = state.originals_dir / name
    if not path.is_file():
        write_output(path, data)
    state.url_index[url] = f"originals/{name}"
    return path, True


# ------------------------------------------------------------------------------------------------
# decoding: limits, modes, orientation
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def pillow_limits(max_pixels: int) -> Iterator[None]:
    """Pillow refuses images over ``max_pixels`` (a warning becomes an error) and truncated files.

    Sets Pillow's module-level limits for the duration (restored after): not for concurrent threads.
    """
    old_pixels, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_pixels, old_truncated


def to_8bit_gray(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit grayscale image (modes ``I;16*``, ``I``, ``F``) scaled, not clipped, to ``L``."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.size and arr.max() > 255):
        arr = arr / 257.0
    elif img.mode == "F" and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _has_alpha(img: Image.Image) -> bool:
    """Whether the image has an alpha channel or a transparent colour."""
    return img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info


def _icc_to_srgb(img: Image.Image) -> Image.Image | None:
    """``img`` converted to sRGB through its embedded ICC profile, or None (no profile or no LittleCMS)."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK", "L"):
        return None
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # a broken profile or no LittleCMS: plain conversion instead
        return None


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, list[str]]:
    """``img`` as RGB and notes on what that took: 16-bit scaled to 8 bits, transparency composited
    onto ``background``, CMYK or other modes converted (through the ICC profile where there is one)."""
    notes = []
    if img.mode.startswith("I") or img.mode == "F":
        img = to_8bit_gray(img)
        notes.append("16-bit scaled to 8-bit")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        notes.append(f"transparency composited on {_color_name(background)}")
        return Image.alpha_composite(base, rgba).convert("RGB"), notes
    if img.mode != "RGB":
        notes.append({"L": "grayscale", "1": "black and white", "P": "palette"}.get(img.mode, img.mode) + " to RGB")
    converted = _icc_to_srgb(img) if img.mode in ("RGB", "CMYK", "L") else None
    if converted is not None and img.mode == "CMYK":
        notes[-1] = "CMYK to RGB through its ICC profile"
    return (converted if converted is not None else img.convert("RGB")), notes


@dataclass
class _Decoded:
    """An opened image: RGB pixels plus what the file said about itself."""

    image: Image.Image
    format: str
    width: int
    height: int
    mode: str
    frames: int
    notes: list[str]


def _header_facts(path: Path) -> dict:
    """Format, mode and size from the header alone (no pixel limit: nothing is decoded), or {}."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            return {"format": (img.format or "").lower(), "mode": img.mode, "width": img.width, "height": img.height}
    except Exception:
        return {}
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _bomb(path: Path, max_pixels: int, detail: str = "") -> _Reject:
    """The rejection of an image over the pixel cap, with its size from the header."""
    facts = _header_facts(path)
    if "width" in facts:
        w, h = facts["width"], facts["height"]
        detail = f"{w}x{h} = {w * h} px over the cap of {max_pixels}"
    return _Reject("decompression bomb", f"refused before decoding: {detail}", facts=facts)


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """``Image.open`` (the header only) with the pixel cap checked before anything is decoded."""
    try:
        img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _bomb(path, max_pixels, str(err)) from err
    except Exception as err:
        raise _Reject("corrupt", f"cannot identify the image: {err}") from err
    if img.width * img.height > max_pixels:
        img.close()
        raise _bomb(path, max_pixels)
    return img


def decode(path: Path, settings: _Settings) -> _Decoded:
    """Open, check and decode one image file: first frame, EXIF orientation applied, RGB."""
    with pillow_limits(settings.max_pixels):
        img = _open_checked(path, settings.max_pixels)
        with img:
            fmt, mode, (w, h) = (img.format or "").lower(), img.mode, img.size
            frames = int(getattr(img, "n_frames", 1) or 1)
            notes = [_frames_note(fmt, frames)] if frames > 1 and fmt not in STILL_MULTIFRAME else []
            if fmt in ("jpeg", "mpo"):
                img.draft(None, (settings.size, settings.size))  # decode big JPEGs at a reduced scale
            try:
                img.load()
                oriented = _exif_transpose(img, notes)
                rgb, mode_notes = to_rgb(oriented, settings.background)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise _Reject("decompression bomb", f"refused: {err}") from err
            except MemoryError as err:
                raise _Reject("decompression bomb", "not enough memory to decode it") from err
            except Exception as err:
                raise _Reject("corrupt", f"truncated or corrupt {fmt.upper() or 'image'}: {err}") from err
    return _Decoded(rgb, fmt, w, h, mode, frames, notes + mode_notes)


def _frames_note(fmt: str, frames: int) -> str:
    """The note on a multi-frame file."""
    kind = "multi-page" if fmt == "tiff" else "animated"
    return f"{kind} ({frames} frames): first frame used"


def _exif_transpose(img: Image.Image, notes: list[str]) -> Image.Image:
    """``img`` turned upright per its EXIF orientation (a broken EXIF block is ignored)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return img
    if orientation in (None, 1):
        return img
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:
        return img
    notes.append(f"EXIF orientation {orientation} applied")
    return upright


# ------------------------------------------------------------------------------------------------
# pixels: square fit, background score, whitening, perceptual hash
# ------------------------------------------------------------------------------------------------


def scale_to_fit(img: Image.Image, size: int) -> Image.Image:
    """Resize (LANCZOS) so that the longer side is ``size``."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if new == img.size else img.resize(new, Image.LANCZOS, reducing_gap=3.0)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The centered square of side ``min(w, h)``, resized (LANCZOS) to ``size`` x ``size``."""
    square = crop_square(img, min(img.size))
    return resize_shorter_side(square, size, Image.LANCZOS)


def pad_square(img: Image.Image, size: int, color: tuple[int, int, int]) -> Image.Image:
    """``img`` (at most ``size`` on each side) centered on a ``size`` x ``size`` canvas of ``color``."""
    if img.size == (size, size):
        return img
    canvas = Image.new("RGB", (size, size), color)
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def border_mask(shape: tuple[int, int], band: float) -> np.ndarray:
    """A boolean (H, W) mask of the band of ``band`` x the shorter side (at least 1 px) around the edge."""
    h, w = shape
    b = max(1, round(band * min(h, w)))
    mask = np.zeros((h, w), dtype=bool)
    mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = True, True, True, True
    return mask


def border_shares(img: Image.Image, band: float = 0.02, white: int = 235, black: int = 20) -> tuple[float, float]:
    """The shares of the border band whose pixels are near white (all channels >= ``white``) and near
    black (all channels <= ``black``)."""
    arr = np.asarray(img.convert("RGB"))
    px = arr[border_mask(arr.shape[:2], band)]
    return float(np.all(px >= white, axis=1).mean()), float(np.all(px <= black, axis=1).mean())


def background_score(img: Image.Image, band: float = 0.02, white: int = 235, black: int = 20) -> float:
    """The share of the image's border band that is near white or near black (0..1)."""
    w_share, b_share = border_shares(img, band, white, black)
    return w_share + b_share


def dominant_border_color(arr: np.ndarray, band: float) -> tuple[np.ndarray, float]:
    """The border band's most common colour (mean of its 16-level bin) and the share of that bin."""
    px = arr[border_mask(arr.shape[:2], band)].astype(np.int64)
    bins = (px // 16) @ np.array([256, 16, 1])
    values, counts = np.unique(bins, return_counts=True)
    top = values[np.argmax(counts)]
    members = px[bins == top]
    return members.mean(axis=0), float(len(members) / len(px))


def _spread_along_rows(flood: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Grow ``flood`` to whole horizontal runs of ``allowed`` pixels that it touches."""
    h, w = allowed.shape
    starts = allowed.copy()
    starts[:, 1:] &= ~allowed[:, :-1]
    run_id = np.cumsum(starts.ravel()).reshape(h, w) * allowed
    touched = np.zeros(int(run_id.max()) + 1, dtype=bool)
    touched[run_id[flood & allowed]] = True
    touched[0] = False
    return touched[run_id] | flood


def flood_from_border(allowed: np.ndarray) -> np.ndarray:
    """The ``allowed`` pixels connected (4-neighbourhood) to the image's outermost ring."""
    flood = np.zeros_like(allowed)
    flood[0], flood[-1], flood[:, 0], flood[:, -1] = allowed[0], allowed[-1], allowed[:, 0], allowed[:, -1]
    while True:
        grown = _spread_along_rows(flood, allowed)
        grown = _spread_along_rows(grown.T, allowed.T).T
        if np.array_equal(grown, flood):
            return flood
        flood = grown


def whiten_background(
    img: Image.Image, tolerance: int = 32, band: float = 0.02, min_share: float = WHITEN_MIN_SHARE
) -> tuple[Image.Image, float]:
    """Set a near-uniform background to pure white; returns the image and the share of pixels changed.

    The background colour is the dominant colour of the border band; if it covers less than
    ``min_share`` of the band the image is returned unchanged. Pixels within ``tolerance`` (per channel)
    of that colour and connected to the edge are flood-filled white. Pure numpy; no model.
    """
    arr = np.asarray(img.convert("RGB"))
    color, share = dominant_border_color(arr, band)
    if share < min_share:
        return img, 0.0
    close = np.all(np.abs(arr.astype(np.int16) - color.astype(np.int16)) <= tolerance, axis=2)
    flood = flood_from_border(close)
    out = arr.copy()
    out[flood] = 255
    return Image.fromarray(out), float(flood.mean())


def perceptual_hash(img: Image.Image) -> int:
    """A 64-bit difference hash (dHash): the image in grayscale at 9x8 (LANCZOS), one bit per pair of
    horizontal neighbours, set where the left one is brighter. Robust to re-encoding, resizing and
    small colour shifts, and stable on the flat backgrounds of drawings (equal neighbours give 0)."""
    gray = np.asarray(img.convert("L").resize((9, 8), Image.LANCZOS), dtype=np.int16)
    bits = (gray[:, :-1] > gray[:, 1:]).ravel()
    return int(np.packbits(bits, bitorder="little").view("<u8")[0])


def hamming(a: int, b: int) -> int:
    """The number of differing bits."""
    return (a ^ b).bit_count()


# ------------------------------------------------------------------------------------------------
# one input
# ------------------------------------------------------------------------------------------------


def _color_name(color: tuple[int, int, int]) -> str:
    """``white``, ``black`` or ``rgb(r, g, b)``."""
    return {(255, 255, 255): "white", (0, 0, 0): "black"}.get(tuple(color), "rgb" + str(tuple(color)))


def _pad_color(content: Image.Image, s: _Settings) -> tuple[int, int, int]:
    """The padding colour: explicit, or ("auto") black for a mostly black border, else ``background``."""
    if s.pad_color != "auto":
        return s.pad_color  # type: ignore[return-value]
    white, black = border_shares(content, s.background_band, s.white_level, s.black_level)
    return (0, 0, 0) if black >= 0.5 and black > white else s.background


def make_square(decoded: _Decoded, s: _Settings, notes: list[str]) -> tuple[Image.Image, float]:
    """The output square (pad or crop, optional whitening) and the background score of its content."""
    img = decoded.image
    content = scale_to_fit(img, s.size) if s.fit == "pad" else center_crop_resize(img, s.size)
    if s.whiten_background:
        content, changed = whiten_background(content, s.whiten_tolerance, s.background_band)
        if changed:
            notes.append(f"background whitened ({changed:.0%} of pixels)")
    score = background_score(content, s.background_band, s.white_level, s.black_level)
    out = pad_square(content, s.size, _pad_color(content, s)) if s.fit == "pad" else content
    return out, score


def check_size(decoded: _Decoded, s: _Settings, notes: list[str], codes: list[str]) -> None:
    """Reject or flag an image whose shorter side is below ``min_size``."""
    short = min(decoded.width, decoded.height)
    if short >= s.min_size:
        return
    text = f"small: {decoded.width}x{decoded.height}, shorter side under {s.min_size} px"
    if s.small_policy == "reject":
        raise _Reject("too small", text)
    notes.append(text + " (upscaled)")
    codes.append("small")


def check_background(score: float, s: _Settings, notes: list[str], codes: list[str]) -> None:
    """Reject or warn when less than ``background_min`` of the border is near white or black."""
    if s.background_policy == "keep" or score >= s.background_min:
        return
    text = f"background: {score:.0%} of the border is near white or black (want {s.background_min:.0%})"
    if s.background_policy == "reject":
        raise _Reject("low background", text)
    notes.append(text)
    codes.append("low background")


def colour_signature(img: Image.Image) -> np.ndarray:
    """The image's mean colours on a 4x4 grid (int16, for differences)."""
    return np.asarray(img.convert("RGB").resize((4, 4), Image.BOX), dtype=np.int16)


def check_near_duplicate(
    square: Image.Image, label: str, state: _State, notes: list[str], codes: list[str]
) -> int:
    """Note the closest earlier kept image within ``near_dup_threshold`` bits of dHash whose colours
    also agree (4x4 grid within :data:`NEAR_DUP_COLOUR_TOLERANCE`: the grayscale hash alone calls a
    recoloured drawing, or any two flat images, alike); remember this image; return its hash."""
    phash, signature = perceptual_hash(square), colour_signature(square)
    candidates = [
        (hamming(phash, h), src)
        for h, sig, src in state.hashes
        if hamming(phash, h) <= state.settings.near_dup_threshold
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


def _thumb(img: Image.Image) -> Image.Image:
    """The contact sheet thumbnail of an output square."""
    return img.resize((THUMB_SIZE, THUMB_SIZE), Image.LANCZOS) if img.size != (THUMB_SIZE, THUMB_SIZE) else img


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


def _png_bytes(img: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def copy_caption(source: Path | None, output: Path) -> Path | None:
    """Copy the caption beside ``source`` to beside ``output`` (same stem) unless one is there already."""
    if source is None:
        return None
    src = caption_path(source)
    dst = caption_path(output)
    if dst.is_file():
        return dst
    if not src.is_file():
        return None
    write_output(dst, src.read_bytes())
    return dst


def _adopt_caption(first: ManifestRow, path: Path | None, state: _State) -> None:
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


def already_collected(row: ManifestRow, path: Path, output: Path, state: _State) -> bool:
    """If ``output`` exists at the right size, fill ``row`` as kept ("already collected") and return True."""
    try:
        with Image.open(output) as img:
            if img.size != (state.settings.size, state.settings.size):
                return False
            img.load()
            square = img.convert("RGB")
    except Exception:
        return False
    previous = state.previous.get(row.sha256)
    _fill_from_previous(row, previous, path)
    notes, codes = ["already collected"] + _previous_notes(previous), ["already collected"]
    phash = check_near_duplicate(square, row.source, state, notes, codes)
    caption = copy_caption(path if row.original == "" else None, output)
    _keep(row, output, caption, phash, notes, codes, state, square)
    return True


def _keep(row, output, caption, phash, notes, codes, state: _State, square: Image.Image) -> None:
    """Fill a kept row and remember its thumbnail."""
    row.verdict, row.code, row.reason = "kept", _kept_code(codes), "; ".join(notes) or "ok"
    row.output = output.relative_to(state.out_dir).as_posix()
    row.caption = caption.relative_to(state.out_dir).as_posix() if caption else ""
    row.dhash = f"{phash:016x}"
    state.thumbs.append(_thumb(square))


def _name_note(path: Path, fmt: str) -> list[str]:
    """A note when a file's extension disagrees with what its bytes are."""
    suffix = path.suffix.lower()
    jpeg = (".jpg", ".jpeg", ".jpe", ".jfif")
    expected = {"jpeg": jpeg, "mpo": jpeg, "tiff": (".tif", ".tiff")}.get(fmt, (f".{fmt}",))
    if suffix in IMAGE_EXTENSIONS and fmt and suffix not in expected:
        return [f"named {suffix} but is {fmt.upper()}"]
    return []


def process_file(path: Path, row: ManifestRow, state: _State) -> None:
    """Run one local file (or downloaded original) through every check and fill ``row`` with the verdict."""
    s = state.settings
    try:
        size = path.stat().st_size
        if size == 0:
            raise _Reject("empty file", "empty file (0 bytes)")
        row.sha256 = hash_file(path)
        head = read_head(path)
    except OSError as err:
        raise _Reject("unreadable", f"cannot read the file: {err.strerror or err}") from err
    first = state.seen.get(row.sha256)
    if first is not None:
        _adopt_caption(first, path if row.original == "" else None, state)
        also = f" (which was {first.verdict}: {first.code})" if first.verdict != "kept" else ""
        raise _Reject("exact duplicate", f"exact duplicate of {first.source}{also}", verdict="duplicate")
    state.seen[row.sha256] = row
    kind = sniff_image(head)
    if kind is None:
        what = describe_bytes(head)
        if what in ("SVG",):
            raise _Reject("svg", "SVG (vector) image: rasterise it first")
        if what != "binary":
            raise _Reject("not an image", f"not an image: {what} ({size} bytes)")
    output = state.images_dir / f"{row.sha256[:16]}.png"
    if already_collected(row, path, output, state):
        return
    if kind in ("heic",):
        raise _Reject("unsupported format", f"{kind.upper()} cannot be read by Pillow without a plugin")
    try:
        decoded = decode(path, s)
    except _Reject as rej:
        if kind is None and rej.code == "corrupt":  # neither a known magic number nor anything Pillow reads
            raise _Reject("not an image", f"not an image: unrecognised binary data ({size} bytes)") from rej
        raise
    row.format, row.width, row.height, row.mode, row.frames = (
        decoded.format, decoded.width, decoded.height, decoded.mode, decoded.frames,
    )
    notes, codes = _name_note(path, decoded.format) + decoded.notes, []
    if decoded.frames > 1 and decoded.format not in STILL_MULTIFRAME:
        codes.append("animated")
    check_size(decoded, s, notes, codes)
    square, score = make_square(decoded, s, notes)
    row.background = round(score, 4)
    check_background(score, s, notes, codes)
    phash = check_near_duplicate(square, row.source, state, notes, codes)
    write_output(output, _png_bytes(square))
    caption = copy_caption(path if row.original == "" else None, output)
    _keep(row, output, caption, phash, notes, codes, state, square)


def process_input(item: _Input, state: _State) -> ManifestRow:
    """The manifest row of one input; every expected failure becomes a verdict, never an exception."""
    row = ManifestRow(source=item.label)
    try:
        if item.problem:
            raise _Reject(*item.problem)
        path = item.path
        if item.url is not None:
            path, _ = fetch_original(item.url, state)
            row.original = path.relative_to(state.out_dir).as_posix()
        process_file(path, row, state)
    except _Reject as rej:
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
# manifest, summary, contact sheet, settings
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


def save_contact_sheet(thumbs: Sequence[Image.Image], path: Path, cols: int = 10) -> Path | None:
    """Thumbnails of the kept images (at most :data:`CONTACT_SHEET_LIMIT`) as one PNG, or None if none."""
    if not thumbs:
        return None
    from .sample import image_grid

    thumbs = list(thumbs[:CONTACT_SHEET_LIMIT])
    grid = image_grid(thumbs, cols=min(cols, len(thumbs)))
    return write_if_changed(path, _png_bytes(grid))


def _settings_record(s: _Settings) -> dict:
    """The settings as JSON-ready values (as saved in ``collect.json``)."""
    record = asdict(s)
    record["background"] = list(s.background)
    if s.pad_color != "auto":
        record["pad_color"] = list(s.pad_color)
    return record


def check_previous_settings(out_dir: Path, s: _Settings) -> None:
    """Warn when ``out_dir`` was collected with other image settings (its images are not remade)."""
    try:
        previous = json.loads((out_dir / SETTINGS_NAME).read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return
    current = _settings_record(s)
    changed = [k for k in IMAGE_SETTINGS if k in previous and previous[k] != current[k]]
    if changed:
        warnings.warn(
            f"{out_dir} was collected with other settings ({', '.join(changed)}); images already there are "
            "kept as they are (a different size is remade). Use a new out_dir for a clean set.",
            RuntimeWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------------


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """An RGB triple from ``(r, g, b)``, ``"r,g,b"``, a colour name or ``#rrggbb``."""
    if isinstance(color, str):
        if "," in color:
            color = [int(c) for c in color.split(",")]
        else:
            color = ImageColor.getrgb(color)[:3]
    rgb = tuple(int(c) for c in color)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"not an RGB colour: {color!r}")
    return rgb  # type: ignore[return-value]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ValueError naming the parameter when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _make_settings(**kw) -> _Settings:
    """Validated settings."""
    _check_choice("fit", kw["fit"], ("pad", "crop"))
    _check_choice("small_policy", kw["small_policy"], ("reject", "flag"))
    _check_choice("background_policy", kw["background_policy"], ("warn", "reject", "keep"))
    if kw["size"] < 8:
        raise ValueError(f"size must be >= 8, got {kw['size']}")
    kw["background"] = parse_color(kw["background"])
    if kw["pad_color"] != "auto":
        kw["pad_color"] = parse_color(kw["pad_color"])
    return _Settings(**kw)


def _progress(items: Sequence[_Input], enabled: bool):
    """``items`` wrapped in a tqdm progress bar when enabled and installed."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="collect", unit="file")


def collect(
    sources: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    size: int = 512,
    fit: str = "pad",
    background: str | Sequence[int] = (255, 255, 255),
    pad_color: str | Sequence[int] = "auto",
    min_size: int = 64,
    small_policy: str = "reject",
    background_min: float = 0.6,
    background_policy: str = "warn",
    background_band: float = 0.02,
    white_level: int = 235,
    black_level: int = 20,
    whiten_background: bool = False,
    whiten_tolerance: int = 32,
    near_dup_threshold: int = 5,
    max_pixels: int = 64_000_000,
    url_timeout: float = 10,
    url_max_bytes: int = 30_000_000,
    url_max_redirects: int = 3,
    url_retries: int = 2,
    url_retry_wait: float = 1.0,
    fetch: Fetch | None = None,
    progress: bool = True,
) -> CollectResult:
    """Turn image folders and URL lists into a square RGB training set in ``out_dir/images``.

    ``sources``: folders (searched recursively; hidden entries skipped; symlink loops entered once),
    text files of URLs (``.txt``/``.urls``, one per line, ``#`` comments), single image files or
    http(s) URLs. Each image is EXIF-oriented, made RGB (transparency composited on ``background``,
    16-bit scaled), then made ``size`` x ``size`` with LANCZOS: ``fit="pad"`` keeps the whole image on
    a ``pad_color`` canvas ("auto": black for a mostly black border, else ``background``),
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
    """
    out_dir = Path(out_dir)
    source_list = [sources] if isinstance(sources, (str, Path)) else list(sources)
    settings = _make_settings(
        size=size, fit=fit, background=background, pad_color=pad_color, min_size=min_size,
        small_policy=small_policy, background_min=background_min, background_policy=background_policy,
        background_band=background_band, white_level=white_level, black_level=black_level,
        whiten_background=whiten_background, whiten_tolerance=whiten_tolerance,
        near_dup_threshold=near_dup_threshold, max_pixels=max_pixels, url_max_bytes=url_max_bytes,
        url_retries=url_retries, url_retry_wait=url_retry_wait,
    )  # fmt: skip
    check_out_dir(source_list, out_dir)
    check_previous_settings(out_dir, settings)
    state = _State(
        out_dir=out_dir,
        settings=settings,
        fetch=fetch or make_fetcher(url_timeout, url_max_bytes, url_max_redirects),
        previous={r.get("sha256", ""): r for r in read_manifest(out_dir / MANIFEST_NAME) if r.get("verdict") == "kept"},
        url_index=_load_url_index(out_dir / "originals"),
    )
    inputs = expand_sources(source_list, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [process_input(item, state) for item in _progress(inputs, progress)]
    return _finish(rows, state, progress)


def _finish(rows: list[ManifestRow], state: _State, progress: bool) -> CollectResult:
    """Write the manifest, the contact sheet, the URL index and the settings; print the summary."""
    out_dir = state.out_dir
    manifest = write_manifest(out_dir / MANIFEST_NAME, rows)
    sheet = save_contact_sheet(state.thumbs, out_dir / CONTACT_SHEET_NAME)
    if state.url_index:
        index = json.dumps(dict(sorted(state.url_index.items())), indent=2) + "\n"
        write_if_changed(state.originals_dir / "urls.json", index.encode("utf-8"))
    counts, reasons = count_verdicts(rows), count_reasons(rows)
    record = {"settings": _settings_record(state.settings), "counts": counts, "reasons": reasons}
    write_if_changed(out_dir / SETTINGS_NAME, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    result = CollectResult(
        out_dir=out_dir,
        rows=rows,
        counts=counts,
        reasons=reasons,
        kept=[out_dir / r.output for r in rows if r.verdict == "kept"],
        manifest_path=manifest,
        contact_sheet_path=sheet,
        settings=record["settings"],
    )
    if progress:
        print(result.summary())
    return result


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m cartoonify.collect`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m cartoonify.collect",
        description="Turn image folders and URL lists into a square RGB training set; "
        "writes OUT/images, OUT/manifest.csv and OUT/contact_sheet.png.",
    )
    p.add_argument("sources", nargs="+", help="folders, URL list files (.txt), image files or http(s) URLs")
    p.add_argument("--out", required=True, help="output folder (train on OUT/images)")
    p.add_argument("--size", type=int, default=512, help="side of the square images (default 512)")
    p.add_argument("--fit", choices=("pad", "crop"), default="pad", help="pad (default) or center-crop")
    p.add_argument("--background", default="255,255,255", help="colour under transparency: r,g,b or a name")
    p.add_argument("--pad-color", default="auto", help="padding colour: auto (default), r,g,b or a name")
    p.add_argument("--min-size", type=int, default=64, help="smallest acceptable shorter side (px)")
    p.add_argument("--small-policy", choices=("reject", "flag"), default="reject")
    p.add_argument("--background-min", type=float, default=0.6, help="share of the border to be white/black")
    p.add_argument("--background-policy", choices=("warn", "reject", "keep"), default="warn")
    p.add_argument("--whiten-background", action="store_true", help="flood-fill a uniform background white")
    p.add_argument("--near-dup-threshold", type=int, default=5, help="dHash Hamming distance of near duplicates")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="refuse larger images (decompression bombs)")
    p.add_argument("--url-timeout", type=float, default=10)
    p.add_argument("--url-max-bytes", type=int, default=30_000_000)
    p.add_argument("--url-max-redirects", type=int, default=3)
    p.add_argument("--url-retries", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints the summary. Exit status 0, or 2 for bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = collect(
            args.sources, args.out, size=args.size, fit=args.fit, background=args.background,
            pad_color=args.pad_color, min_size=args.min_size, small_policy=args.small_policy,
            background_min=args.background_min, background_policy=args.background_policy,
            whiten_background=args.whiten_background, near_dup_threshold=args.near_dup_threshold,
            max_pixels=args.max_pixels, url_timeout=args.url_timeout, url_max_bytes=args.url_max_bytes,
            url_max_redirects=args.url_max_redirects, url_retries=args.url_retries, progress=not args.quiet,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    if args.quiet:
        print(result.summary())
    print(f"manifest: {result.manifest_path}")
    if result.contact_sheet_path:
        print(f"contact sheet: {result.contact_sheet_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
