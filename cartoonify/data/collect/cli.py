"""The command line: ``python -m cartoonify.collect SOURCE [SOURCE ...] --out OUT [--size 512] [--fit pad|crop]``.

Its options are :class:`~cartoonify.config.CollectConfig`'s fields (all but those whose metadata says
``cli=False``), with their help texts, alias flags and defaults from there: ``--field-name`` for each, a
list field as the positional arguments, a bool as ``--flag``/``--no-flag``. Values are checked by the
config; ``--quiet`` (no progress bar) is the one option that is not a setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from typing import Any

from ...config import CollectConfig
from .manifest import nothing_kept_message
from .run import collect_dataset

PROG = "python -m cartoonify.collect"


def _default(f: dataclasses.Field) -> Any:
    """A field's default value."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _help(f: dataclasses.Field) -> str:
    """The help text of a field: its description and, unless required, its default (``%`` escaped)."""
    text = f.metadata.get("help", "")
    if not f.metadata.get("required"):
        text += f"; default: {_default(f)}"
    return text.replace("%", "%%")


def add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    """Add the argument of one config field to ``parser`` (absent from the namespace unless given)."""
    meta = f.metadata
    if typing.get_origin(tp) is list:
        parser.add_argument(f.name, nargs="+", metavar=meta.get("metavar"), help=_help(f))
        return
    flags = [*meta.get("flags", ()), "--" + f.name.replace("_", "-")]
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        choices = meta.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else meta.get("metavar")
        kwargs.update(type=tp, metavar=metavar, required=meta.get("required", False))
    parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m cartoonify.collect`` argument parser, built from :class:`CollectConfig`'s fields."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Turn image folders and URL lists into a square RGB training set; "
        "writes OUT/images, OUT/manifest.csv and OUT/contact_sheet.png.",
    )
    hints = typing.get_type_hints(CollectConfig)
    for f in dataclasses.fields(CollectConfig):
        if f.metadata.get("cli", True):
            add_field(parser, f, hints[f.name])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints the summary. Exit status 0, 1 when no image was kept (the reasons
    are printed), 2 for bad arguments."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    quiet = args.pop("quiet")
    try:
        result = collect_dataset(CollectConfig.from_dict(args), progress=not quiet)
    except ValueError as err:  # a bad setting (ConfigError), or an out_dir that is a source
        parser.error(str(err))
    if quiet:
        print(result.summary())
    print(f"manifest: {result.manifest_path}")
    if result.contact_sheet_path:
        print(f"contact sheet: {result.contact_sheet_path}")
    if not result.kept:
        print(f"error: {nothing_kept_message(result)}", file=sys.stderr)
        return 1
    return 0
