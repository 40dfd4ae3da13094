"""The command line: ``python -m cartoonify.export CHECKPOINT --format single-file|diffusers [--run RUN_DIR]
[--out PATH] [--dtype fp16|fp32] [--overwrite]``.

Its options are :class:`~cartoonify.config.export.ExportConfig`'s fields, with their help texts and defaults
from there (``CHECKPOINT`` the positional one); ``--format`` offers the registered formats
(:data:`~cartoonify.exporting.formats.FORMATS`). Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..config.export import ExportConfig
from ..runs import CONFIG_FILE, CheckpointError, RunLayout
from .formats import FORMATS, export_model
from .job import ExportError

PROG = "python -m cartoonify.export"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _argument(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    """The argument of one ExportConfig field (absent from the namespace unless given)."""
    meta = f.metadata
    text = f"{meta.get('help', '')}; default: {f.default!r}".replace("%", "%%")
    if meta.get("positional"):
        parser.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, metavar=meta.get("metavar"), help=text)
        return
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        choices = tuple(sorted(FORMATS)) if f.name == "format" else meta.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else meta.get("metavar")
        kwargs.update(type=tp, metavar=metavar)
    parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m cartoonify.export`` parser, built from :class:`ExportConfig`'s fields."""
    parser = _Parser(
        prog=PROG,
        description="Export a run's checkpoint as a model file or folder, with a model card (README.md) and a "
        "sample grid (samples.png) beside it.",
    )
    hints = typing.get_type_hints(ExportConfig)
    for f in dataclasses.fields(ExportConfig):
        _argument(parser, f, hints[f.name])
    return parser


def locate(checkpoint: str, run: str) -> tuple[Path, str]:
    """``(run folder, checkpoint)``: with ``run``, the checkpoint as given (a name or a path); without, from the
    checkpoint's path: ``<run>/checkpoints/<name>`` (the grandparent), ``<run>/pipeline``, or a run folder itself
    (its best checkpoint)."""
    if run:
        return Path(run), checkpoint
    path = Path(checkpoint)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return path, "best"
        if path.parent.name == RunLayout(path.parent.parent).checkpoints.name:
            return path.parent.parent, str(path)
        if path == RunLayout(path.parent).pipeline and (path.parent / CONFIG_FILE).is_file():
            return path.parent, "pipeline"
    raise ExportError(
        f"{checkpoint!r} is not a checkpoint folder (outputs/<run>/checkpoints/checkpoint-<step> or "
        "outputs/<run>/pipeline) nor a run folder; to name a checkpoint (best, latest, pipeline, "
        "checkpoint-<step>), give its run with --run RUN_DIR"
    )


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: exit status 0, or 2 (one line on stderr) for bad input."""
    args = vars(build_parser().parse_args(argv))
    try:
        config = ExportConfig.from_dict(args).validate()
        run_dir, checkpoint = locate(config.checkpoint, config.run)
        path = export_model(run_dir, checkpoint, config.format, out=config.out or None, dtype=config.dtype,
                            overwrite=config.overwrite)
    except (ConfigError, ExportError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        # ValueError: SingleFileError (a model the single file cannot hold), unreadable run files; each names it
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    card = (path if path.is_dir() else path.parent) / "README.md"
    print(f"wrote {path} ({_size(path)}, {config.format}, {config.dtype})")
    print(f"model card: {card}")
    return 0
