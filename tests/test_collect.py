"""Collect: real-world folders and URL lists become a clean training set with a verdict for every input.

Every file here is made by the test; URLs are served from a local http.server on 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import dataclasses
import http.server
import io
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image, ImageFile

from cartoonify.config import CollectConfig, ConfigError
from cartoonify.data.collect import (
    MANIFEST_COLUMNS,
    FetchError,
    background_score,
    build_parser,
    collect_dataset,
    describe_bytes,
    fetch_url,
    hamming,
    main,
    perceptual_hash,
    read_url_list,
    sniff_image,
    whiten_background,
)

SIZE = 64


# ------------------------------------------------------------------------------------------------
# helpers: images and files the tests make
# ------------------------------------------------------------------------------------------------


def smooth_image(seed: int, size=(96, 80)) -> Image.Image:
    """A smooth random RGB image (distinct seeds give distinct perceptual hashes)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


def character(size=(80, 96), bg=(255, 255, 255), fg=(200, 40, 40)) -> Image.Image:
    """A filled ellipse on a plain background."""
    from PIL import ImageDraw

    img = Image.new("RGB", size, bg)
    ImageDraw.Draw(img).ellipse((size[0] // 5, size[1] // 5, 4 * size[0] // 5, 4 * size[1] // 5), fill=fg)
    return img


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side x side pixels (400 Mpx) in a ~50 kB file: all-zero rows, compressed."""
    comp = zlib.compressobj(9)
    zeros, left, parts = b"\0" * (1 << 20), (1 + side // 8) * side, []
    while left > 0:
        parts.append(comp.compress(zeros[: min(left, len(zeros))]))
        left -= len(zeros)
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def config(sources, out, **kw) -> CollectConfig:
    """A :class:`CollectConfig` at 64 px with a small minimum size unless a test sets them."""
    kw.setdefault("resolution", SIZE)
    kw.setdefault("min_size", 16)
    sources = [sources] if isinstance(sources, (str, Path)) else sources
    return CollectConfig(sources=[str(s) for s in sources], collect_dir=str(out), **kw)


def run(sources, out, *, fetch=None, progress=False, **kw):
    """:func:`collect_dataset` of :func:`config`, quiet unless a test asks for the progress bar."""
    return collect_dataset(config(sources, out, **kw), fetch=fetch, progress=progress)


def only_row(result):
    assert len(result.rows) == 1, result.rows
    return result.rows[0]


def out_pixels(result, row) -> np.ndarray:
    with Image.open(result.out_dir / row.output) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def image_info(path: Path) -> tuple[str, tuple[int, int]]:
    with Image.open(path) as img:
        return img.mode, img.size


def colour_of(pixel) -> str:
    """``red``, ``green`` or ``blue`` for a pixel close to one of them, else ``other``."""
    names = ("red", "green", "blue")
    strong = [c > 200 for c in pixel]
    weak = [c < 60 for c in pixel]
    for i, name in enumerate(names):
        if strong[i] and all(weak[j] for j in range(3) if j != i):
            return name
    return "other"


def manifest_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (links not followed): its bytes and mtime."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------------
# bad input, one file each: a clear verdict, a manifest row, no crash
# ------------------------------------------------------------------------------------------------


def _zero_byte(d: Path) -> Path:
    (d / "empty.jpg").write_bytes(b"")
    return d / "empty.jpg"


def _truncated_jpeg(d: Path) -> Path:
    buf = io.BytesIO()
    smooth_image(1, (200, 160)).save(buf, format="JPEG", quality=95)
    (d / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return d / "cut.jpg"


def _html_named_jpg(d: Path) -> Path:
    (d / "page.jpg").write_text("<!DOCTYPE html><html><body>Access denied</body></html>\n")
    return d / "page.jpg"


def _text_named_jpg(d: Path) -> Path:
    (d / "note.jpg").write_text("this is not a picture\n")
    return d / "note.jpg"


def _binary_named_png(d: Path) -> Path:
    (d / "blob.png").write_bytes(bytes(range(256)) * 4)
    return d / "blob.png"


def _zip_named_jpg(d: Path) -> Path:
    (d / "archive.jpg").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    return d / "archive.jpg"


def _svg(d: Path) -> Path:
    (d / "logo.svg").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>\n')
    return d / "logo.svg"


def _small(d: Path) -> Path:
    smooth_image(2, (40, 30)).save(d / "tiny.png")
    return d / "tiny.png"


BAD_INPUTS = {
    "zero-byte": (_zero_byte, "rejected", "empty file", "0 bytes"),
    "truncated-jpeg": (_truncated_jpeg, "rejected", "corrupt", "truncated"),
    "html-named-jpg": (_html_named_jpg, "rejected", "not an image", "HTML"),
    "text-named-jpg": (_text_named_jpg, "rejected", "not an image", "text"),
    "svg": (_svg, "rejected", "svg", "SVG"),
    "binary-named-png": (_binary_named_png, "rejected", "not an image", "unrecognised binary"),
    "zip-named-jpg": (_zip_named_jpg, "rejected", "not an image", "ZIP"),
    "small": (_small, "rejected", "too small", "40x30"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_file_gets_a_verdict(case, tmp_path):
    make, verdict, code, text = BAD_INPUTS[case]
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    result = run(src, tmp_path / "out", min_size=64)
    row = only_row(result)
    assert (row.verdict, row.code) == (verdict, code) and text in row.reason
    assert row.source == str(path) and not row.output
    assert [r["source"] for r in manifest_rows(result.manifest_path)] == [str(path)]
    assert result.kept == [] and result.contact_sheet_path is None


def test_small_image_flagged_instead_of_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _small(src)
    row = only_row(run(src, tmp_path / "out", min_size=64, small_policy="flag"))
    assert (row.verdict, row.code) == ("kept", "small") and "40x30" in row.reason


def test_animated_gif_and_webp_use_the_first_frame(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = [Image.new("RGB", (80, 80), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    result = run(src, tmp_path / "out", background_policy="keep", near_dup_threshold=-1)
    assert [(r.format, r.verdict, r.code, r.frames) for r in result.rows] == [
        ("gif", "kept", "animated", 3),
        ("webp", "kept", "animated", 3),
    ]
    for row in result.rows:
        r, g, b = out_pixels(result, row)[32, 32]
        assert r > 200 and g < 40 and b < 40, row


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(src / "print.jpg", quality=95)  # red ink
    result = run(src, tmp_path / "out", background_policy="keep")
    row = only_row(result)
    assert (row.verdict, row.mode) == ("kept", "CMYK")
    r, g, b = out_pixels(result, row)[32, 32]
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (80, 1))
    Image.fromarray(ramp).save(src / "deep.png")
    assert image_info(src / "deep.png")[0] == "I;16"
    result = run(src, tmp_path / "out", background_policy="keep")
    row = only_row(result)
    assert (row.verdict, row.mode) == ("kept", "I;16") and "16-bit" in row.reason
    px = out_pixels(result, row)
    assert abs(px[32, 32, 0] - 128) <= 6 and px[32, 2, 0] < 12 and px[32, 61, 0] > 243
    assert (px[..., 0] == px[..., 2]).all()


def test_palette_png_transparency_goes_onto_the_background(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    img = Image.new("P", (80, 80), 0)
    img.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)  # 0: green (transparent), 1: blue
    img.paste(1, (20, 20, 60, 60))
    img.save(src / "sprite.png", transparency=0)
    result = run(src, tmp_path / "out")
    row = only_row(result)
    assert (row.verdict, row.code, row.mode) == ("kept", "ok", "P") and "transparency" in row.reason
    px = out_pixels(result, row)
    assert (px[2, 2] == 255).all() and (px[32, 32] == (0, 0, 255)).all()
    assert row.background == 1.0


def test_alpha_is_composited_on_a_chosen_background(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    img = Image.new("RGBA", (80, 80), (0, 255, 0, 0))
    img.paste((250, 0, 0, 255), (20, 20, 60, 60))
    img.save(src / "rgba.png")
    result = run(src, tmp_path / "out", background="black")
    px = out_pixels(result, only_row(result))
    assert (px[2, 2] == 0).all() and px[32, 32, 0] > 240


def test_grayscale_becomes_rgb(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.tile(np.arange(0, 240, 3, dtype=np.uint8), (80, 1))).save(src / "gray.png")
    result = run(src, tmp_path / "out", background_policy="keep")
    row = only_row(result)
    assert (row.verdict, row.mode) == ("kept", "L")
    px = out_pixels(result, row)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all() and px.std() > 10


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    bomb = write_bomb_png(src / "bomb.png")
    assert bomb.stat().st_size < 200_000
    loaded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    row = only_row(run(src, tmp_path / "out", max_pixels=8000 * 8000))
    assert (row.verdict, row.code) == ("rejected", "decompression bomb") and "20000" in row.reason
    assert (row.width, row.height, row.format) == (20000, 20000, "png")  # the size comes from the header ...
    assert all(w * h <= 8000 * 8000 for w, h in loaded)  # ... and nothing that large was ever decoded
    # a cap below Pillow's own: the header's size is checked against ours
    smooth_image(3, (200, 200)).save(src / "big.png")
    result = run(src, tmp_path / "out2", max_pixels=100 * 100)
    assert Counter(r.code for r in result.rows) == {"decompression bomb": 2}


@pytest.mark.parametrize(
    "orientation, top, bottom, marker",
    [
        (6, "red", "blue", "top right"),  # shown turned 90 degrees clockwise
        (8, "blue", "red", "bottom left"),  # shown turned 90 degrees counter-clockwise
    ],
    ids=["clockwise", "counter-clockwise"],
)
def test_exif_rotated_photo_is_turned_upright(orientation, top, bottom, marker, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    img = Image.new("RGB", (80, 40), (250, 0, 0))
    img.paste((0, 0, 250), (40, 0, 80, 40))  # stored: red left, blue right ...
    img.paste((0, 250, 0), (0, 0, 12, 12))  # ... and a green marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(src / "phone.jpg", exif=exif, quality=95)
    result = run(src, tmp_path / "out", background_policy="keep")
    row = only_row(result)
    assert f"EXIF orientation {orientation}" in row.reason and (row.width, row.height) == (80, 40)
    px = out_pixels(result, row)  # upright: 32 x 64 px of picture in columns 16..47, padded at the sides
    assert (colour_of(px[20, 32]), colour_of(px[44, 32])) == (top, bottom)
    corners = {"top left": px[4, 20], "top right": px[4, 43], "bottom left": px[59, 20], "bottom right": px[59, 43]}
    assert [name for name, p in corners.items() if colour_of(p) == "green"] == [marker]
    assert (px[32, 2] > 240).all() and (px[32, 61] > 240).all()  # padded at the sides (a tall picture)


def test_unicode_and_spaces_in_file_names(tmp_path):
    src = tmp_path / "Disney Bilder"
    src.mkdir()
    name = "Schneewittchen café 白雪 #1.png"
    character().save(src / name)
    (src / "Schneewittchen café 白雪 #1.txt").write_text("Schneewittchen, Disney-Stil", encoding="utf-8")
    result = run(src, tmp_path / "out")
    row = only_row(result)
    assert row.verdict == "kept" and row.source == str(src / name)
    assert (result.out_dir / row.caption).read_text(encoding="utf-8") == "Schneewittchen, Disney-Stil"
    rows = manifest_rows(result.manifest_path)
    assert rows[0]["source"] == str(src / name)


def test_symlink_loops_do_not_recurse_forever(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    character().save(src / "sub" / "a.png")
    os.symlink(src, src / "sub" / "loop")  # a folder linking to its ancestor
    os.symlink(src / "x.png", src / "y.png")  # two file links pointing at each other
    os.symlink(src / "y.png", src / "x.png")
    result = run(src, tmp_path / "out")
    assert sorted((Path(r.source).name, r.verdict, r.code) for r in result.rows) == [
        ("a.png", "kept", "ok"),
        ("x.png", "rejected", "unreadable"),
        ("y.png", "rejected", "unreadable"),
    ]


def test_missing_and_empty_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "urls.txt").write_text("# nothing yet\n\n")
    result = run([tmp_path / "nope", tmp_path / "empty", tmp_path / "urls.txt"], tmp_path / "out")
    assert [(r.verdict, r.code) for r in result.rows] == [
        ("rejected", "missing source"),
        ("rejected", "empty source"),
        ("rejected", "empty source"),
    ]
    assert result.counts == {"kept": 0, "rejected": 3, "duplicate": 0}


# ------------------------------------------------------------------------------------------------
# geometry, background, duplicates
# ------------------------------------------------------------------------------------------------


def test_pad_keeps_the_whole_image_and_crop_cuts_the_center(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    wide = Image.new("RGB", (160, 80), (250, 250, 250))
    wide.paste((0, 0, 250), (0, 0, 20, 80))  # a blue stripe at the far left
    wide.paste((250, 0, 0), (60, 20, 100, 60))  # a red box in the middle
    wide.save(src / "wide.png")
    pad = run(src, tmp_path / "pad", fit="pad")
    crop = run(src, tmp_path / "crop", fit="crop")
    p, c = out_pixels(pad, pad.rows[0]), out_pixels(crop, crop.rows[0])
    assert p.shape == c.shape == (SIZE, SIZE, 3)
    assert (p[2, 32] == 255).all() and p[32, 2, 2] > 200  # white pad above, the stripe kept at the left
    assert c[32, 2, 2] > 200 and c[32, 2, 0] > 200  # the stripe is cut off: near-white at the left edge
    assert c[32, 32, 0] > 200 and c[32, 32, 1] < 60


def test_pad_colour_follows_a_black_background(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character(size=(120, 60), bg=(0, 0, 0)).save(src / "night.png")
    result = run(src, tmp_path / "out")
    px = out_pixels(result, only_row(result))
    assert (px[2, 32] == 0).all()
    result = run(src, tmp_path / "out2", pad_color="white")
    assert (out_pixels(result, only_row(result))[2, 32] == 255).all()


def test_background_score_and_policies(tmp_path):
    assert background_score(character()) == 1.0
    assert background_score(character(bg=(5, 5, 5))) == 1.0
    assert background_score(smooth_image(4)) < 0.2
    src = tmp_path / "src"
    src.mkdir()
    smooth_image(4).save(src / "busy.png")
    character().save(src / "clean.png")
    warn = run(src, tmp_path / "warn")
    assert [(r.verdict, r.code) for r in warn.rows] == [("kept", "low background"), ("kept", "ok")]
    assert "border" in warn.rows[0].reason and warn.rows[0].background < 0.6
    reject = run(src, tmp_path / "reject", background_policy="reject")
    assert [(r.verdict, r.code) for r in reject.rows] == [("rejected", "low background"), ("kept", "ok")]
    keep = run(src, tmp_path / "keep", background_policy="keep")
    assert [r.code for r in keep.rows] == ["ok", "ok"] and keep.rows[0].background is not None


def test_whiten_background_floods_from_the_border_only(tmp_path):
    from PIL import ImageDraw

    img = Image.new("RGB", (100, 100), (190, 200, 185))  # a greyish-green backdrop
    draw = ImageDraw.Draw(img)
    draw.rectangle((25, 25, 75, 75), outline=(20, 20, 120), width=4)  # a closed frame ...
    draw.rectangle((40, 40, 60, 60), fill=(200, 40, 40))
    out, changed = whiten_background(img)
    px = np.asarray(out)
    assert (px[5, 5] == 255).all() and (px[95, 50] == 255).all()
    assert tuple(px[33, 33]) == (190, 200, 185)  # ... whose inside is not reached
    assert tuple(px[50, 50]) == (200, 40, 40) and 0.6 < changed < 0.8
    noisy, changed = whiten_background(smooth_image(5, (100, 100)))
    assert changed == 0.0  # no uniform background: unchanged

    src = tmp_path / "src"
    src.mkdir()
    img.save(src / "backdrop.png")
    result = run(src, tmp_path / "out", whiten_background=True)
    row = only_row(result)
    assert (row.verdict, row.code, row.background) == ("kept", "ok", 1.0) and "whitened" in row.reason


def test_exact_and_near_duplicates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = smooth_image(6, (120, 120))
    base.save(src / "a.png")
    (src / "b copy.png").write_bytes((src / "a.png").read_bytes())
    base.save(src / "c.jpg", quality=80)  # the same picture re-encoded
    smooth_image(7, (120, 120)).save(src / "d.png")
    result = run(src, tmp_path / "out", background_policy="keep")
    a, b, c, d = result.rows
    assert (a.verdict, a.code) == ("kept", "ok")
    assert (b.verdict, b.code) == ("duplicate", "exact duplicate") and str(src / "a.png") in b.reason
    assert b.sha256 == a.sha256 and not b.output
    assert (c.verdict, c.code) == ("kept", "near duplicate") and f"near duplicate of {src / 'a.png'}" in c.reason
    assert (d.verdict, d.code) == ("kept", "ok")
    assert result.counts == {"kept": 3, "rejected": 0, "duplicate": 1}


def test_near_duplicate_drawings_on_white(tmp_path):
    """Flat drawings (the use case) re-encoded as JPEG still hash alike; a different drawing does not."""
    src = tmp_path / "src"
    src.mkdir()
    lion = character(size=(300, 200), fg=(200, 150, 30))
    lion.save(src / "a lion.png")
    lion.save(src / "b lion.jpg", quality=70)
    character(size=(200, 300), fg=(40, 40, 200)).save(src / "c tall.png")
    character(size=(300, 200), fg=(40, 150, 200)).save(src / "d recoloured.png")  # same shape, other colour
    Image.new("RGB", (100, 100), (250, 0, 0)).save(src / "e red.png")  # flat images all have dHash 0 ...
    Image.new("RGB", (100, 100), (0, 0, 250)).save(src / "f blue.png")  # ... but differ in colour
    result = run(src, tmp_path / "out", background_policy="keep")
    assert [r.code for r in result.rows] == ["ok", "near duplicate", "ok", "ok", "ok", "ok"]
    assert result.rows[4].dhash == result.rows[5].dhash == "0" * 16
    assert all(len(r.dhash) == 16 for r in result.rows)


def test_perceptual_hash_distances():
    a = smooth_image(8, (200, 150))
    assert hamming(perceptual_hash(a), perceptual_hash(a.resize((100, 75), Image.LANCZOS))) <= 3
    others = [hamming(perceptual_hash(a), perceptual_hash(smooth_image(s, (200, 150)))) for s in range(9, 14)]
    assert min(others) > 10
    assert 0 <= perceptual_hash(a) < 2**64


# ------------------------------------------------------------------------------------------------
# manifest, summary, contact sheet, captions, idempotence, originals untouched
# ------------------------------------------------------------------------------------------------


def make_mixed_folder(root: Path) -> Path:
    src = root / "raw"
    (src / "animals").mkdir(parents=True)
    character().save(src / "fox.png")
    (src / "fox.txt").write_text("a cartoon fox")
    character(fg=(40, 160, 40), bg=(0, 0, 0)).save(src / "animals" / "frog.jpg", quality=95)
    smooth_image(9).save(src / "animals" / "busy.png")
    (src / "animals" / "frog copy.jpg").write_bytes((src / "animals" / "frog.jpg").read_bytes())
    (src / "broken.jpg").write_bytes(b"")
    return src


def test_manifest_summary_and_contact_sheet(tmp_path, capsys):
    src = make_mixed_folder(tmp_path)
    result = run(src, tmp_path / "out", min_size=64, progress=True)
    printed = capsys.readouterr().out
    assert "5 inputs -> 3 kept, 1 rejected, 1 duplicate" in printed and "rejected: empty file" in printed
    assert result.summary() in printed
    assert result.counts == {"kept": 3, "rejected": 1, "duplicate": 1}
    assert result.reasons == {"kept: ok": 2, "kept: low background": 1, "rejected: empty file": 1,
                              "duplicate: exact duplicate": 1}  # fmt: skip
    rows = manifest_rows(result.manifest_path)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [r["source"] for r in rows] == [r.source for r in result.rows] and len(rows) == 5
    for col in ("source", "sha256", "width", "height", "mode", "verdict", "reason", "output", "background"):
        assert col in MANIFEST_COLUMNS
    kept = [r for r in rows if r["verdict"] == "kept"]
    assert all(r["output"].startswith("images/") and len(Path(r["output"]).stem) == 16 for r in kept)
    assert result.kept == [result.out_dir / r["output"] for r in kept] and all(p.is_file() for p in result.kept)
    assert result.contact_sheet_path == tmp_path / "out" / "contact_sheet.png"
    assert image_info(result.contact_sheet_path)[1][0] > 3 * 100
    fox = next(r for r in result.rows if r.source.endswith("fox.png"))
    assert (result.out_dir / fox.caption).read_text() == "a cartoon fox" and fox.caption.endswith(".txt")
    assert Path(fox.caption).stem == Path(fox.output).stem


def test_rerun_does_nothing_twice_and_never_touches_originals(tmp_path):
    src = make_mixed_folder(tmp_path)
    before = snapshot(src)
    calls = []

    def fetch(url):
        calls.append(url)
        return png_bytes(character(fg=(40, 40, 200)))

    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.invalid/blue.png\n")
    first = run([src, urls], tmp_path / "out", fetch=fetch)
    outputs = snapshot(tmp_path / "out" / "images")
    originals = snapshot(tmp_path / "out" / "originals")
    time.sleep(0.01)
    second = run([src, urls], tmp_path / "out", fetch=fetch)
    assert calls == ["https://example.invalid/blue.png"]  # not downloaded again
    assert [(r.source, r.verdict, r.sha256, r.output) for r in first.rows] == [
        (r.source, r.verdict, r.sha256, r.output) for r in second.rows
    ]
    assert {r.code for r in second.rows if r.verdict == "kept"} == {"already collected"}
    assert snapshot(tmp_path / "out" / "images") == outputs
    assert snapshot(tmp_path / "out" / "originals") == originals
    assert snapshot(src) == before  # originals: same bytes, same mtimes, nothing added
    old = next(r for r in first.rows if r.source.endswith("busy.png"))
    new = next(r for r in second.rows if r.source.endswith("busy.png"))
    assert (new.width, new.height, new.background) == (old.width, old.height, old.background)
    assert new.reason == "already collected; " + old.reason and "border" in old.reason


def test_out_dir_inside_a_source_is_not_ingested(tmp_path):
    src = make_mixed_folder(tmp_path)
    first = run(src, src / "collected")
    second = run(src, src / "collected")
    assert len(first.rows) == len(second.rows) == 5
    assert all("collected" not in Path(r.source).relative_to(src).parts for r in second.rows)


def test_out_dir_that_is_a_source_is_refused(tmp_path):
    src = make_mixed_folder(tmp_path)
    with pytest.raises(ValueError, match="must not be a source"):
        run(src, src)
    run(src, tmp_path / "out")
    with pytest.raises(ValueError, match="must not be a source"):
        run(tmp_path / "out" / "images", tmp_path / "out")


def test_changed_settings_warn_and_a_new_size_is_remade(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character().save(src / "a.png")
    first = run(src, tmp_path / "out")
    with pytest.warns(RuntimeWarning, match="fit"):
        same = run(src, tmp_path / "out", fit="crop")
    assert only_row(same).code == "already collected"
    with pytest.warns(RuntimeWarning, match="size"):
        bigger = run(src, tmp_path / "out", resolution=96)
    assert only_row(bigger).code == "ok" and only_row(bigger).output == only_row(first).output
    assert image_info(bigger.kept[0])[1] == (96, 96)


def test_duplicate_brings_its_caption_to_the_kept_copy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character().save(src / "a.png")
    (src / "b.png").write_bytes((src / "a.png").read_bytes())
    (src / "b.txt").write_text("a cartoon apple")
    result = run(src, tmp_path / "out")
    kept, dup = result.rows
    assert dup.verdict == "duplicate" and (result.out_dir / kept.caption).read_text() == "a cartoon apple"
    assert [r["caption"] for r in manifest_rows(result.manifest_path)] == [kept.caption, ""]


def test_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="fit"):
        run(tmp_path, tmp_path / "out", fit="stretch")
    with pytest.raises(ConfigError, match="background_policy"):
        run(tmp_path, tmp_path / "out", background_policy="maybe")
    with pytest.raises(ConfigError, match="pad_color"):
        run(tmp_path, tmp_path / "out", pad_color="not a colour")
    with pytest.raises(ConfigError, match="resolution"):
        run(tmp_path, tmp_path / "out", resolution=4)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# bytes and URL lists
# ------------------------------------------------------------------------------------------------


def test_sniffing_uses_bytes_not_names():
    assert sniff_image(png_bytes(character())) == "png"
    buf = io.BytesIO()
    character().save(buf, format="JPEG")
    assert sniff_image(buf.getvalue()) == "jpeg"
    assert sniff_image(b"GIF89a....") == "gif" and sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert sniff_image(b"<html>") is None and sniff_image(b"") is None
    assert describe_bytes(b"<!doctype html><html>") == "HTML"
    assert describe_bytes(b"<svg xmlns='x'/>") == "SVG" and describe_bytes(b"") == "empty"
    assert describe_bytes("plain text ü".encode()) == "text"


def test_url_list_parsing(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("# my list\n\nhttps://a.example/x.png   # a fox\n  http://b.example/y.jpg#frag\n#gone\n")
    assert read_url_list(path) == ["https://a.example/x.png", "http://b.example/y.jpg#frag"]


# ------------------------------------------------------------------------------------------------
# downloads from a local server (127.0.0.1 only)
# ------------------------------------------------------------------------------------------------

IMAGE = png_bytes(character(fg=(40, 40, 200)))
CAP = 50_000
SLOW_LIMIT = 30.0  # /slow answers only after this many seconds, unless the client hangs up first


class _Handler(http.server.BaseHTTPRequestHandler):
    """The routes of the tests' server; it counts the requests it gets and the clients that gave up."""

    hits: ClassVar[Counter] = Counter()  # requests by path
    hung_up: ClassVar[Counter] = Counter()  # requests by path whose client closed the connection unanswered

    def log_message(self, *args):
        pass

    def _client_hangs_up(self, limit: float) -> bool:
        """Wait (at most ``limit`` s) for the client to close the connection without reading an answer."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.connection], [], [], 0.05)
            try:
                if ready and not self.connection.recv(1, socket.MSG_PEEK):
                    return True
            except ConnectionResetError:
                return True
        return False

    def _send(self, code: int, body: bytes, ctype: str = "application/octet-stream", **headers):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if "length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            if key != "length":
                self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.hits[self.path] += 1
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self):
        path = self.path
        if path == "/img.png":
            self._send(200, IMAGE, "text/html")  # the server's word is wrong; the bytes are right
        elif path == "/page.png":
            self._send(200, b"<!DOCTYPE html><html><body>not found</body></html>", "image/png")
        elif path.startswith("/hop/"):
            n = int(path.rsplit("/", 1)[1])
            if n == 0:
                self._send(200, IMAGE, "image/png")
            else:
                self._send(302, b"", Location=f"/hop/{n - 1}")
        elif path == "/huge":  # no Content-Length: the cap is enforced while reading
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(IMAGE[:16] + b"\0" * (4 * CAP))
        elif path == "/huge-declared":
            self._send(200, IMAGE, "image/png", **{"Content-Length": 10**9, "length": False})
        elif path == "/slow":  # answers only a client that waits SLOW_LIMIT seconds
            if self._client_hangs_up(SLOW_LIMIT):
                self.hung_up[path] += 1
            else:
                self._send(200, IMAGE, "image/png")
        elif path == "/flaky":
            if self.hits[path] == 1:
                self._send(503, b"busy")
            else:
                self._send(200, IMAGE, "image/png")
        elif path == "/to-file":
            self._send(302, b"", Location="file:///etc/hostname")
        else:
            self._send(404, b"no such thing", "text/plain")


@pytest.fixture(scope="module")
def http_server():
    """A local HTTP server on 127.0.0.1 (loopback only) in a thread; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(http_server):
    """The local server's base URL, its counters cleared: each test counts only its own requests."""
    _Handler.hits.clear()
    _Handler.hung_up.clear()
    yield http_server
    _Handler.hits.clear()
    _Handler.hung_up.clear()


def eventually(condition, limit: float = SLOW_LIMIT) -> bool:
    """Whether ``condition()`` becomes true within ``limit`` seconds (the server's threads run on their own)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_list_downloads(server, tmp_path):
    port = closed_port()
    urls = tmp_path / "urls.txt"
    lines = ["img.png", "page.png", "missing.png", "hop/2", "hop/5", "huge", "huge-declared", "slow", "flaky",
             "to-file"]  # fmt: skip
    urls.write_text(
        "# test list\n" + "".join(f"{server}/{p}\n" for p in lines)
        + f"http://127.0.0.1:{port}/x.png\nftp://127.0.0.1/x.png\n"
    )  # fmt: skip
    result = run(urls, tmp_path / "out", url_timeout=0.3, url_max_bytes=CAP, url_max_redirects=3, url_retries=1,
                 url_retry_wait=0)  # fmt: skip
    got = {r.source.replace(server + "/", ""): r for r in result.rows}
    expect = {
        "img.png": ("kept", "ok", ""),
        "page.png": ("rejected", "not an image", "HTML"),
        "missing.png": ("rejected", "download failed", "HTTP 404"),
        "hop/2": ("duplicate", "exact duplicate", "img.png"),
        "hop/5": ("rejected", "download failed", "more than 3 redirects"),
        "huge": ("rejected", "download failed", "too large"),
        "huge-declared": ("rejected", "download failed", "declares 1000000000 bytes"),
        "slow": ("rejected", "download failed", "timed out"),
        "flaky": ("duplicate", "exact duplicate", "img.png"),
        "to-file": ("rejected", "download failed", "redirect to a file URL is not allowed"),
        f"http://127.0.0.1:{port}/x.png": ("rejected", "download failed", "after 2 attempts"),
        "ftp://127.0.0.1/x.png": ("rejected", "bad url", "http and https only"),
    }
    assert set(got) == set(expect)
    for key, (verdict, code, text) in expect.items():
        row = got[key]
        assert (row.verdict, row.code) == (verdict, code) and text in row.reason, (key, row)
    hits = _Handler.hits
    assert hits["/missing.png"] == 1 and hits["/flaky"] == 2 and hits["/slow"] == 2  # retries: transient only
    assert hits["/hop/1"] == 1 and "/hop/0" in hits and "/hop/2" in hits  # the chain of 5 stops after 3
    img = got["img.png"]
    sha = img.sha256
    assert img.original == f"originals/{sha}.png" and (tmp_path / "out" / img.original).read_bytes() == IMAGE
    assert sorted(p.name for p in (tmp_path / "out" / "originals").iterdir()) == [f"{sha}.png", "urls.json"]
    # the timeout was the client's: it hung up on /slow both times, before the server ever answered
    assert eventually(lambda: _Handler.hung_up["/slow"] == 2), dict(_Handler.hung_up)
    before = dict(hits)
    again = run(urls, tmp_path / "out", url_timeout=0.3, url_max_bytes=CAP, url_retries=0)
    assert got["img.png"].output == again.rows[0].output and again.rows[0].code == "already collected"
    assert _Handler.hits["/img.png"] == before["/img.png"]  # kept URLs are not downloaded again


def test_fetch_url_limits(server):
    assert fetch_url(f"{server}/img.png", timeout=2) == IMAGE
    with pytest.raises(FetchError, match="more than 1 redirects"):
        fetch_url(f"{server}/hop/2", timeout=2, max_redirects=1)
    with pytest.raises(FetchError, match="http and https only"):
        fetch_url("file:///etc/hostname")
    with pytest.raises(FetchError) as err:
        fetch_url(f"http://127.0.0.1:{closed_port()}/x.png", timeout=1)
    assert err.value.transient


def test_direct_url_and_injected_fetch(tmp_path):
    served = {"https://example.invalid/a.png": png_bytes(character()), "https://example.invalid/b.jpg": b"<html>"}

    def fetch(url):
        if url not in served:
            raise FetchError("HTTP 404 Not Found")
        return served[url]

    result = run(list(served) + ["https://example.invalid/c.png"], tmp_path / "out", fetch=fetch)
    assert [(r.verdict, r.code) for r in result.rows] == [
        ("kept", "ok"), ("rejected", "not an image"), ("rejected", "download failed")
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def test_command_line(tmp_path, capsys):
    src = make_mixed_folder(tmp_path)
    assert main([str(src), "--out", str(tmp_path / "out"), "--size", "64", "--fit", "crop", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "5 inputs -> 3 kept, 1 rejected, 1 duplicate" in out and "manifest.csv" in out
    assert image_info(next((tmp_path / "out" / "images").glob("*.png")))[1] == (64, 64)
    with pytest.raises(SystemExit) as exit_:
        main([str(src), "--out", str(tmp_path / "out"), "--fit", "stretch"])
    assert exit_.value.code == 2


def test_command_line_options_are_the_config_fields(tmp_path):
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    settings = [f.name for f in dataclasses.fields(CollectConfig) if f.metadata.get("cli", True)]
    assert set(settings) <= dests and not {"photos_dir", "make_demo_data", "demo_images"} & dests
    for f in dataclasses.fields(CollectConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"
    src = tmp_path / "src"
    src.mkdir()
    character().save(src / "a.png")
    args = ["--resolution", "48", "--collect-dir", str(tmp_path / "a"), "--no-whiten-background", "--quiet"]
    assert main([str(src), *args]) == 0
    assert main([str(src), "--size", "48", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    made = [next((tmp_path / out / "images").glob("*.png")) for out in ("a", "b")]
    assert image_info(made[0]) == ("RGB", (48, 48)) and made[0].read_bytes() == made[1].read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main([str(src), "--out", str(tmp_path / "c"), "--pad-color", "no such colour"])
    assert exit_.value.code == 2 and not (tmp_path / "c").exists()


def test_collect_imports_no_torch():
    code = "import sys, cartoonify.data.collect, cartoonify.collect; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_module_is_runnable():
    proc = subprocess.run(
        [sys.executable, "-m", "cartoonify.collect", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--fit" in proc.stdout and "SOURCE" in proc.stdout.upper()


def test_nothing_kept_says_why_and_what_to_do(tmp_path, capsys):
    """A run that keeps nothing: the notebook's check raises with the manifest's reasons; the command line
    exits 1 with them."""
    from cartoonify.data.collect import NothingCollectedError

    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.md").write_text("not an image")
    (src / "also.md").write_text("nor this")
    result = run([str(src), str(tmp_path / "missing")], tmp_path / "out", resolution=64)
    with pytest.raises(NothingCollectedError) as err:
        result.check_kept()
    text = str(err.value)
    assert "collect kept no images from 3 inputs" in text and str(result.manifest_path) in text
    assert "rejected (not an image): not an image: text" in text and "; and 1 more like it" in text
    assert f"rejected (missing source): source does not exist: {tmp_path / 'missing'}" in text
    assert f"python -m cartoonify.collect {src} {tmp_path / 'missing'} --out {tmp_path / 'out'} --size 64" in text
    assert main([str(src), "--out", str(tmp_path / "out2"), "--quiet"]) == 1
    assert "collect kept no images" in capsys.readouterr().err
    kept = run([str(make_mixed_folder(tmp_path))], tmp_path / "out3")
    assert kept.check_kept() is kept
