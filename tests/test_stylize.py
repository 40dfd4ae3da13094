"""Stylizing folders of photos: img2img and ControlNet-guided img2img (through from_pipe), bad files with a
verdict, reruns that write nothing, records, the sweep's summary and its recommended setting."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cartoonify.stylize import (
    MANIFEST_FILE,
    RECORD_FILE,
    Controls,
    Setting,
    controlnet,
    controlnet_pipeline,
    frontier,
    img2img,
    recommend,
    setting_summary,
    stylize_folder,
    sweep,
)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from cartoonify.models import load_pipeline

    p = load_pipeline(str(tiny_model), safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def random_controlnet(pipe, tmp_path_factory):
    """A ControlNet for the tiny model with its zero convolutions randomised (an untrained one is a no-op),
    saved to a folder and loaded back through the package's loader."""
    from diffusers import ControlNetModel

    from cartoonify.models import load_controlnet

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name \
                    or "conv_out" in name:
                p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("controlnet") / "net"
    net.save_pretrained(folder)
    return load_controlnet(str(folder))


def _photo(seed: int = 0, size: int = 96) -> Image.Image:
    import skimage.data

    src = [skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea][seed % 3]()
    return Image.fromarray(src).resize((size, size))


def test_sweep_orders_settings_and_refuses_bad_ones():
    settings = sweep(["controlnet", "img2img"], [0.3, 0.6], [0.5, 1.0])
    assert [s.label for s in settings] == ["img2img-s0.30", "img2img-s0.60", "controlnet-s0.30-c0.50",
                                           "controlnet-s0.30-c1.00", "controlnet-s0.60-c0.50", "controlnet-s0.60-c1.00"]
    with pytest.raises(ValueError, match="unknown stylize method 'sdedit'"):
        sweep(["sdedit"], [0.5], [1.0])
    with pytest.raises(ValueError, match="strength"):
        Setting("img2img", 0.0)
    with pytest.raises(ValueError, match="conditioning_scale"):
        Setting("controlnet", 0.5)


def test_from_pipe_shares_the_fine_tuned_modules(pipe, random_controlnet):
    cn = controlnet_pipeline(pipe, random_controlnet)
    assert cn.unet is pipe.unet and cn.text_encoder is pipe.text_encoder and cn.vae is pipe.vae
    ptrs = {p.data_ptr() for p in pipe.unet.parameters()}
    assert all(p.data_ptr() in ptrs for p in cn.unet.parameters())


def test_conditioning_scale_zero_is_img2img(pipe, random_controlnet):
    from cartoonify.edgemaps import canny_map
    from cartoonify.imaging import fit_square

    photo = fit_square(_photo(), 64)
    cn = controlnet_pipeline(pipe, random_controlnet)
    kw = dict(seed=3, steps=6, guidance_scale=5.0)
    plain = np.asarray(img2img(pipe, photo, "a person", Setting("img2img", 0.6), **kw), dtype=float)
    zero = np.asarray(controlnet(cn, photo, [canny_map(photo)], "a person", Setting("controlnet", 0.6, 0.0), **kw),
                      dtype=float)
    full = np.asarray(controlnet(cn, photo, [canny_map(photo)], "a person", Setting("controlnet", 0.6, 1.0), **kw),
                      dtype=float)
    assert np.abs(plain - zero).max() <= 1  # up to float rounding (8-bit output)
    assert np.abs(plain - full).mean() > 1  # the (randomised) ControlNet does act at scale 1


def _bad_folder(root):
    """A corrupt file, a CMYK JPEG, an EXIF-rotated photo (orientation 6) and a PNG with alpha."""
    root.mkdir()
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    _photo(0).convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    wide = _photo(1).resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    wide.save(root / "rotated.jpg", "JPEG", exif=exif.tobytes())
    rgba = _photo(2).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    rgba.save(root / "alpha.png")
    return root


def test_a_folder_gets_one_verdict_per_file_and_a_rerun_writes_nothing(pipe, random_controlnet, tmp_path):
    photos = _bad_folder(tmp_path / "photos")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    controls = Controls(controlnet_pipeline(pipe, random_controlnet), ["random"], [("canny", None)])
    settings = sweep(["img2img", "controlnet"], [0.5], [1.0])
    out = tmp_path / "out"
    result = stylize_folder(pipe, photos, out, settings, prompt="a person", seed=1, steps=3, guidance_scale=5.0,
                            controls=controls, progress=False)
    rows = {r["file"]: r for r in csv.DictReader(io.StringIO((out / MANIFEST_FILE).read_text()))}
    assert set(rows) == {"broken.jpg", "cmyk.jpg", "rotated.jpg", "alpha.png"}
    assert rows["broken.jpg"]["verdict"] == "rejected" and "corrupt" in rows["broken.jpg"]["reason"]
    assert {rows[f]["verdict"] for f in ("cmyk.jpg", "rotated.jpg", "alpha.png")} == {"stylized"}
    assert "EXIF orientation 6" in rows["rotated.jpg"]["notes"]
    assert sorted(result.photos) == ["alpha", "cmyk", "rotated"] and result.written == 6
    for stem in result.photos:
        assert {p.name for p in (out / stem).iterdir()} == {"input.png", "control-0-canny.png", "img2img-s0.50.png",
                                                           "controlnet-s0.50-c1.00.png"}
    record = json.loads((out / RECORD_FILE).read_text())
    assert len(record["images"]) == 6
    first = record["images"][0]
    assert first["seed"] if "seed" in first else first["params"]["seed"] == 1
    assert {"edge_f1", "ssim", "style_score", "faces_photo"} <= set(first["scores"])
    assert record["controls"][0]["preprocessor"] == "canny" and record["controls"][0]["sigma"] == 1.0
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # the photos are never written to
    # a rerun: nothing generated, no file touched
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = stylize_folder(pipe, photos, out, settings, prompt="a person", seed=1, steps=3, guidance_scale=5.0,
                           controls=controls, progress=False)
    assert (again.written, again.skipped) == (0, 6)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    # another seed is another output: made again
    third = stylize_folder(pipe, photos, out, settings[:1], prompt="a person", seed=2, steps=3, guidance_scale=5.0,
                           progress=False)
    assert third.written == 3


def test_summary_frontier_and_recommendation():
    def rec(label, method, strength, f1, style, scale=None):
        return {"label": label, "method": method, "strength": strength, "conditioning_scale": scale,
                "scores": {"edge_f1": f1, "style_score": style}}

    records = [rec("a", "img2img", 0.3, 0.8, 0.1), rec("a", "img2img", 0.3, 0.6, 0.3),
               rec("b", "img2img", 0.9, 0.1, 0.9), rec("c", "controlnet", 0.9, 0.5, 0.7, 1.0),
               rec("d", "controlnet", 0.6, 0.4, 0.5, 1.0)]
    rows = setting_summary(records)
    by = {r["label"]: r for r in rows}
    assert by["a"]["photos"] == 2 and by["a"]["edge_f1"] == pytest.approx(0.7) and by["a"]["style_score"] == pytest.approx(0.2)
    assert frontier(rows) == ["b", "c", "a"]  # d is beaten by c on both
    best = recommend(rows, min_edge_f1=0.3)
    assert best["label"] == "c" and "style_score" in best["reason"]
    assert recommend(rows, min_edge_f1=0.95)["rule"] == "most structure"
    assert recommend([], 0.3)["label"] is None
