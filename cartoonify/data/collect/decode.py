"""Bytes and decoding: magic numbers, Pillow's limits, RGB conversion and EXIF orientation."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import Reject
from .pixels import color_name

SNIFF_BYTES = 4096
STILL_MULTIFRAME = ("mpo",)  # camera JPEGs with extra pictures (depth maps, previews) are still images

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


# ------------------------------------------------------------------------------------------------
# bytes: magic numbers
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


def read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes of a file."""
    with open(path, "rb") as fh:
        return fh.read(n)


# ------------------------------------------------------------------------------------------------
# limits and modes
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
        notes.append(f"transparency composited on {color_name(background)}")
        return Image.alpha_composite(base, rgba).convert("RGB"), notes
    if img.mode != "RGB":
        notes.append({"L": "grayscale", "1": "black and white", "P": "palette"}.get(img.mode, img.mode) + " to RGB")
    converted = _icc_to_srgb(img) if img.mode in ("RGB", "CMYK", "L") else None
    if converted is not None and img.mode == "CMYK":
        notes[-1] = "CMYK to RGB through its ICC profile"
    return (converted if converted is not None else img.convert("RGB")), notes


# ------------------------------------------------------------------------------------------------
# decoding one file
# ------------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """An opened image: RGB pixels plus what the file said about itself."""

    image: Image.Image
    format: str
    width: int
    height: int
    mode: str
    frames: int
    notes: list[str]


def header_facts(path: Path) -> dict:
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


def _bomb(path: Path, max_pixels: int, detail: str = "") -> Reject:
    """The rejection of an image over the pixel cap, with its size from the header."""
    facts = header_facts(path)
    if "width" in facts:
        w, h = facts["width"], facts["height"]
        detail = f"{w}x{h} = {w * h} px over the cap of {max_pixels}"
    return Reject("decompression bomb", f"refused before decoding: {detail}", facts=facts)


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """``Image.open`` (the header only) with the pixel cap checked before anything is decoded."""
    try:
        img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _bomb(path, max_pixels, str(err)) from err
    except Exception as err:
        raise Reject("corrupt", f"cannot identify the image: {err}") from err
    if img.width * img.height > max_pixels:
        img.close()
        raise _bomb(path, max_pixels)
    return img


def decode_image(path: Path, max_pixels: int, size: int, background: tuple[int, int, int]) -> Decoded:
    """Open, check and decode one image file: first frame, EXIF orientation applied, RGB (transparency
    on ``background``). JPEGs are decoded at a reduced scale when that still gives ``size`` px."""
    with pillow_limits(max_pixels):
        img = _open_checked(path, max_pixels)
        with img:
            fmt, mode, (w, h) = (img.format or "").lower(), img.mode, img.size
            frames = int(getattr(img, "n_frames", 1) or 1)
            notes = [_frames_note(fmt, frames)] if is_multiframe(fmt, frames) else []
            if fmt in ("jpeg", "mpo"):
                img.draft(None, (size, size))
            try:
                img.load()
                oriented = _exif_transpose(img, notes)
                rgb, mode_notes = to_rgb(oriented, background)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise Reject("decompression bomb", f"refused: {err}") from err
            except MemoryError as err:
                raise Reject("decompression bomb", "not enough memory to decode it") from err
            except Exception as err:
                raise Reject("corrupt", f"truncated or corrupt {fmt.upper() or 'image'}: {err}") from err
    return Decoded(rgb, fmt, w, h, mode, frames, notes + mode_notes)


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


def is_multiframe(fmt: str, frames: int) -> bool:
    """Whether a file holds an animation or several pages (not a camera's extra pictures)."""
    return frames > 1 and fmt not in STILL_MULTIFRAME
