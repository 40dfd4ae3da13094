"""Exporting a run's checkpoint: the formats (a registry of writers) and :func:`export_model`, which resolves the
checkpoint, has the format's writer fill a temporary folder, writes the model card and ``export.json`` beside the
model, and renames the folder into place.

A writer is ``write(job, folder) -> Path``: it gets the :class:`~cartoonify.exporting.job.ExportJob` and a folder
that does not exist yet, creates it, writes the model into it and returns the model's path (a file, or the folder).
A model the format cannot hold must be refused *before* the folder is created. Another format is added with
:func:`register_format` (``python -m cartoonify.export --format`` offers every registered name).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..runs import layout_of
from ..utils import read_marker_file, write_json
from .card import write_model_card
from .job import ExportError, ExportJob, quiet

EXPORT_RECORD = "export.json"  # written last into every export: what it holds; marks the folder as an export

Writer = Callable[[ExportJob, Path], Path]


def write_single_file(job: ExportJob, folder: Path) -> Path:
    """``<run>-<checkpoint>.safetensors`` in the original Stable Diffusion layout (AUTOMATIC1111, ComfyUI,
    ``from_single_file``), with the job's metadata. A model that layout cannot hold is refused with
    :class:`~cartoonify.models.single_file.SingleFileError` before anything is written."""
    from ..models.single_file import check_mappable, to_single_file

    pipe = job.load_pipeline(safety_checker=False)
    check_mappable(pipe.unet.config, pipe.vae.config)
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    folder.mkdir(parents=True)
    return to_single_file(pipe.unet, pipe.text_encoder, pipe.vae, folder / f"{job.stem}.safetensors",
                          dtype=job.torch_dtype, metadata=job.metadata(prediction))


def write_diffusers(job: ExportJob, folder: Path) -> Path:
    """The pipeline folder (``save_pretrained``, safetensors), the base model's safety checker included where it
    has one. fp16 weights record fp32 in their configs, as the hub's fp16 variants do, so that
    ``from_pretrained`` without a dtype loads every module in fp32."""
    import torch

    from ..training.checkpoint import record_default_dtype

    pipe = job.load_pipeline(safety_checker=True)
    folder.mkdir(parents=True)
    with quiet():
        pipe.save_pretrained(str(folder), safe_serialization=True)
    if job.torch_dtype != torch.float32:
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                record_default_dtype(folder / name)
    return folder


FORMATS: dict[str, Writer] = {"single-file": write_single_file, "diffusers": write_diffusers}


def register_format(name: str, writer: Writer) -> None:
    """Add (or replace) an export format: ``writer(job, folder) -> Path`` (see the module's docstring)."""
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"an export format needs a plain name, got {name!r}")
    FORMATS[name] = writer


def check_format(fmt: str) -> Writer:
    """The writer of a registered format; an unknown one is refused naming the registered ones."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(sorted(FORMATS))}")
    return FORMATS[fmt]


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing ``out`` unless ``overwrite``, and even then anything that is not an export
    (a folder without ``export.json``): ``--out`` pointing at a models folder must never delete it."""
    if out.suffix == ".safetensors":
        raise ExportError(f"--out is the export's folder (the model and its card go in it), not a file: {out}")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if not out.is_dir() or read_marker_file(out / EXPORT_RECORD) is None:
        raise FileExistsError(f"{out} exists and is not an export (no {EXPORT_RECORD}); it is left alone: "
                              "remove it yourself or choose another output folder")


def place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an earlier export there is moved aside first, removed after. The
    files get the permissions of the process's umask (the atomic writes create them private), as an export is
    meant to be copied and shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
    if out.exists():
        old = out.parent / f".old-{out.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def export_model(run_dir: str | Path, checkpoint: str | Path = "best", fmt: str = "single-file",
                 out: str | Path | None = None, dtype: str = "fp16", overwrite: bool = False) -> Path:
    """Export a run's checkpoint in format ``fmt`` with its model card (``README.md``, ``samples.png``) and
    ``export.json`` beside it; returns the model's path (the ``.safetensors`` file, or the pipeline folder).

    ``checkpoint``: ``"best"`` (03_evaluate's choice, as sampling resolves it), ``"latest"``, ``"pipeline"``,
    ``checkpoint-<step>`` or a checkpoint folder. ``out``: the export's folder (default
    ``outputs/<run>/exports/<checkpoint>-<fmt>/``); an existing one is refused unless ``overwrite``. The export is
    written into a temporary folder beside ``out`` and renamed into place, so a crash leaves no half export.
    """
    writer = check_format(fmt)
    job = ExportJob.of(run_dir, checkpoint, fmt, dtype)
    out = Path(out) if out else layout_of(job.run_dir).export_dir(job.name, fmt)
    check_destination(out, overwrite)
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # what a crashed export left
    try:
        model = writer(job, tmp)
        rel = model.relative_to(tmp).as_posix()
        card = write_model_card(job.run_dir, job.checkpoint, tmp, fmt, model_file=rel, dtype=dtype)
        write_json(tmp / EXPORT_RECORD, {**job.record(), "model": rel, "card": card.name})
        place(tmp, out)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / model.relative_to(tmp)
