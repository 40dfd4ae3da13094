"""Stylizing a folder of photos: each photo opened as collect opens images (EXIF orientation, RGB, alpha on
white, the pixel cap), center-cropped to the model's size, swept over the settings from one seed, and
scored; every file gets a verdict in ``manifest.csv`` and every output its settings, seed and scores in
``stylized.json``. The photos themselves are never written to.

A rerun skips an output whose file exists and whose record holds the same settings, and rewrites neither
file when nothing changed. Layout of ``stylized/<checkpoint>/``::

    manifest.csv, stylized.json
    <photo>/input.png               the photo as the model saw it
    <photo>/control-<i>-<kind>.png  the control image of ControlNet i
    <photo>/<setting label>.png     one output per setting (img2img-s0.60.png, controlnet-s0.60-c1.00.png)
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..config import CollectConfig
from ..data.collect.decode import decode_image
from ..data.collect.errors import Reject
from ..data.folders import list_images
from ..edgemaps import control_image, settings_record, structure_f1
from ..imaging import fit_square, gray_ssim, open_rgb, save_png
from ..models import img2img_pipeline
from ..style import style_score
from ..utils import atomic_write_text
from .methods import Setting, controlnet, img2img

INPUT_FILE = "input.png"
RECORD_FILE = "stylized.json"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ("file", "verdict", "reason", "notes", "outputs")


@dataclass
class Controls:
    """The ControlNet side of a stylization: its pipeline (:func:`~.methods.controlnet_pipeline`), the
    ControlNets' names, and one preprocessor per ControlNet: ``(kind, settings)``."""

    pipe: Any
    models: list[str]
    preprocessors: list[tuple[str, Any]]

    def images(self, photo: Image.Image) -> list[Image.Image]:
        return [control_image(photo, kind, settings) for kind, settings in self.preprocessors]

    def record(self) -> list[dict]:
        return [{"controlnet": m, **settings_record(k, s)} for m, (k, s) in zip(self.models, self.preprocessors)]


@dataclass
class StylizeResult:
    """What :func:`stylize_folder` did: the records of every output, the manifest rows, and how many
    outputs it wrote and skipped as already done."""

    out_dir: Path
    records: list[dict] = field(default_factory=list)
    manifest: list[dict] = field(default_factory=list)
    written: int = 0
    skipped: int = 0

    @property
    def photos(self) -> list[str]:
        return [Path(r["file"]).stem for r in self.manifest if r["verdict"] == "stylized"]


def read_stylized(out_dir: str | Path) -> dict[str, Any]:
    """The ``stylized.json`` of a folder of stylized photos (``{"images": []}`` if there is none yet)."""
    path = Path(out_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {"images": []}


def open_photo(path: Path, size: int) -> tuple[Image.Image, list[str]]:
    """A photo as collect opens it (first frame, EXIF orientation, RGB with transparency on white, the pixel
    cap), center-cropped to a ``size`` square; raises :class:`Reject` with the reason for a bad file."""
    defaults = CollectConfig()
    decoded = decode_image(path, defaults.max_pixels, size, (255, 255, 255))
    return fit_square(decoded.image, size), decoded.notes


def score_output(photo: Image.Image, output: Image.Image, out_path: Path, scorer=None) -> dict[str, Any]:
    """Structure (edge F1 of the Canny maps, grayscale SSIM), style (weight-free score; with a ``scorer``
    (:class:`~cartoonify.evaluation.ImageScorer`) the CLIP top-k similarity to the instance images and DINO's
    similarity to them) and the identity proxy (:mod:`cartoonify.faces`: faces found before and after, and
    with an encoder the embedding cosine of the photo's face region) of one output against its photo."""
    from ..faces import detect_faces, face_report

    scores: dict[str, Any] = {"edge_f1": round(structure_f1(photo, output), 4),
                              "ssim": round(gray_ssim(photo, output), 4), "style_score": round(style_score(output), 4)}
    encoder = None
    if scorer is not None:
        measured = scorer.image_scores([out_path], [""])
        scores.update({k: measured[k] for k in ("clip_style", "dino")})
        encoder = scorer.scorers.dino or scorer.scorers.clip
    if encoder is not None:
        report = face_report(photo, output, encoder)
        scores.update(faces_photo=len(report.photo_faces), faces_output=len(report.output_faces),
                      face_kept=report.face_kept, identity=report.similarity)
    else:
        scores.update(faces_photo=len(detect_faces(photo)), faces_output=len(detect_faces(output)))
    return scores


@dataclass
class _Sweep:
    """One stylization call's fixed parts: the pipelines, the generation settings, what is already done."""

    pipe: Any  # an img2img pipeline over the fine-tuned modules
    controls: Controls | None
    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    common: dict
    done: dict
    scorer: Any
    result: StylizeResult

    def photo(self, path: Path, photo: Image.Image, settings: Sequence[Setting]) -> int:
        """Every setting of one photo; returns the number of outputs."""
        folder = self.result.out_dir / path.stem
        _save_if_changed(photo, folder / INPUT_FILE)
        controls = self._control_images(photo, folder, settings)
        for setting in settings:
            self.result.records.append(self.output(path, photo, folder, setting, controls))
        return len(settings)

    def _control_images(self, photo: Image.Image, folder: Path, settings) -> list[Image.Image]:
        if self.controls is None or not any(s.method == "controlnet" for s in settings):
            return []
        images = self.controls.images(photo)
        for i, (img, (kind, _)) in enumerate(zip(images, self.controls.preprocessors)):
            _save_if_changed(img, folder / f"control-{i}-{kind}.png")
        return images

    def output(self, path: Path, photo: Image.Image, folder: Path, setting: Setting, controls) -> dict:
        """One output: skipped if its file and record are there with the same settings, else made and scored."""
        uses_control = setting.method == "controlnet"
        params = {**self.common, "controls": self.controls.record() if uses_control else None, **setting.record()}
        out_path = folder / f"{setting.label}.png"
        old = self.done.get((path.stem, setting.label))
        if old is not None and old.get("params") == params and out_path.is_file():
            self.result.skipped += 1
            return old
        kw = dict(seed=self.seed, steps=self.steps, guidance_scale=self.guidance_scale)
        image = (controlnet(self.controls.pipe, photo, controls, self.prompt, setting, **kw) if uses_control
                 else img2img(self.pipe, photo, self.prompt, setting, **kw))
        save_png(image, out_path)
        self.result.written += 1
        record = {"photo": path.stem, "source": path.name, "label": setting.label,
                  "file": out_path.relative_to(self.result.out_dir).as_posix(), **setting.record(), "params": params}
        record["scores"] = score_output(photo, open_rgb(out_path), out_path, self.scorer)
        record["scores"]["photo_style_score"] = round(style_score(photo), 4)
        return record


def stylize_folder(pipe, photos: str | Path | Sequence[str | Path], out_dir: str | Path, settings: Sequence[Setting], *,
                   prompt: str, seed: int = 0, steps: int = 50, guidance_scale: float = 7.5,
                   controls: Controls | None = None, scorer=None, extra: dict | None = None,
                   progress: bool = True) -> StylizeResult:
    """Stylize every photo (a folder, or a list of files) at every setting from ``seed``; see the module."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    paths = list_images(photos, "photos_dir") if isinstance(photos, (str, Path)) else [Path(p) for p in photos]
    if any(s.method == "controlnet" for s in settings) and controls is None:
        raise ValueError("controlnet settings need controls (the ControlNet pipeline and preprocessors)")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    common = {"prompt": prompt, "seed": int(seed), "steps": int(steps), "guidance_scale": float(guidance_scale),
              "scheduler": type(pipe.scheduler).__name__, **(extra or {})}
    before = read_stylized(out_dir)
    result = StylizeResult(out_dir)
    job = _Sweep(img2img_pipeline(pipe), controls, prompt, seed, steps, guidance_scale, common,
                 {(r["photo"], r["label"]): r for r in before["images"]}, scorer, result)
    bar = tqdm(total=len(paths) * len(settings), desc="Stylizing", disable=not progress)
    seen: set[str] = set()
    for path in paths:
        row = {"file": path.name, "verdict": "stylized", "reason": "", "notes": "", "outputs": 0}
        try:
            if path.stem in seen:
                raise Reject("duplicate", f"another photo is also named {path.stem!r} (its outputs would collide)")
            seen.add(path.stem)
            photo, notes = open_photo(path, size)
            row.update(notes="; ".join(notes), outputs=job.photo(path, photo, settings))
        except Reject as err:
            row.update(verdict=err.verdict, reason=f"{err.code}: {err.reason}")
        result.manifest.append(row)
        bar.update(len(settings))
    bar.close()
    _write_records(out_dir, common, controls, before, result.records)
    _write_manifest(out_dir / MANIFEST_FILE, result.manifest)
    return result


def _save_if_changed(image: Image.Image, path: Path) -> None:
    """Write ``image`` unless the file already holds the same pixels (a rerun writes nothing)."""
    if path.is_file():
        try:
            with Image.open(path) as old:
                if old.size == image.size and old.convert("RGB").tobytes() == image.convert("RGB").tobytes():
                    return
        except OSError:
            pass
    save_png(image, path)


def _write_records(out_dir: Path, common: dict, controls: Controls | None, before: dict, records: list[dict]) -> None:
    kept = {(r["photo"], r["label"]) for r in records}
    others = [r for r in before["images"] if (r["photo"], r["label"]) not in kept]  # earlier sweeps' outputs
    data = {**common, "controls": controls.record() if controls else None, "images": others + records}
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    path = out_dir / RECORD_FILE
    if not (path.is_file() and path.read_bytes() == text.encode()):
        atomic_write_text(path, text)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    if not (path.is_file() and path.read_bytes() == buf.getvalue().encode()):
        atomic_write_text(path, buf.getvalue())
