"""The ordered notebooks, run headless with papermill, and kept free of outputs in git.

``python -m cartoonify.notebooks configs/demo.yaml`` executes ``notebooks/01_collect`` ... ``05_stylize``
in order, each with the parameters of the file that its ``parameters`` cell declares, and writes the
executed copies to ``<outputs_dir>/<run_name>/notebooks/``. ``make demo`` runs it on the embedded tiny
model. ``python -m cartoonify.notebooks --strip notebooks/*.ipynb`` removes outputs (like nbstripout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import RunConfig, load_mapping, load_parameters, parameter_types, parse_overrides
from .runs import RunLayout

NOTEBOOKS = ("01_collect", "02_train", "03_evaluate", "04_compare_schedulers", "05_stylize")


def project_root() -> Path:
    """The project folder (holding ``notebooks/`` and ``cartoonify/``): the package's parent in a source
    checkout, else the nearest such folder above the working directory, else the working directory."""
    pkg_parent = Path(__file__).resolve().parent.parent
    if (pkg_parent / "notebooks").is_dir():
        return pkg_parent
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "notebooks").is_dir() and (folder / "cartoonify").is_dir():
            return folder
    return Path.cwd()


def enter_project_root() -> Path:
    """Change to the project folder, so that the relative paths of the parameters (``outputs/...``,
    ``data/...``) mean the same in JupyterLab (which starts kernels in ``notebooks/``), Colab, papermill and
    the command line. Returns it."""
    root = project_root()
    os.chdir(root)
    return root


def notebook_path(name: str) -> Path:
    """``notebooks/<name>.ipynb`` of the project."""
    path = project_root() / "notebooks" / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    return path


def declared_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook's ``parameters`` cell declares (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(path))


def run_notebooks(
    parameters: str | Path | dict[str, Any],
    *,
    names: Sequence[str] = NOTEBOOKS,
    overrides: dict[str, Any] | None = None,
    kernel_name: str = "python3",
    log_output: bool = False,
    timeout: int | None = None,
) -> list[Path]:
    """Execute notebooks in order with papermill; each gets the parameters it declares.

    ``parameters`` is a parameters file or dict (checked by :func:`cartoonify.config.load_parameters`);
    ``overrides`` win over it. Returns the executed copies under ``<outputs_dir>/<run_name>/notebooks/``.
    A failing notebook stops the sequence; its executed copy shows the failing cell.
    """
    import papermill

    data = load_mapping(parameters) if not isinstance(parameters, dict) else dict(parameters)
    params = load_parameters({**data, **(overrides or {})})
    root = project_root()
    run_dir = RunConfig.from_parameters(params).run_dir
    out_dir = RunLayout((root / run_dir) if not run_dir.is_absolute() else run_dir).notebooks
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        source = notebook_path(name)
        declared = declared_parameters(source)
        given = {k: v for k, v in params.items() if k in declared}
        target = out_dir / f"{name}.ipynb"
        t0 = time.perf_counter()
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=given,
            kernel_name=kernel_name,
            cwd=str(root),
            progress_bar=False,
            log_output=log_output,
            execution_timeout=timeout,
        )
        print(f"{name}: {time.perf_counter() - t0:.0f} s -> {target}", flush=True)
        written.append(target)
    return written


# ------------------------------------------------------------------------------------------------
# outputs stay out of git
# ------------------------------------------------------------------------------------------------


def cells_with_outputs(path: str | Path) -> list[int]:
    """Indices of code cells that hold outputs or an execution count."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        i
        for i, cell in enumerate(nb.get("cells", []))
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; True if it changed."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
    if changed:
        nbformat.write(nb, str(path))
    return changed


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cartoonify.notebooks",
        description="Run the notebooks headless with papermill, or strip their outputs. Parameters after the "
        "file can be overridden with --key value.",
    )
    parser.add_argument("parameters", nargs="?", help="parameters file, e.g. configs/demo.yaml")
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="run only these notebooks (in order)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    parser.add_argument("--strip", nargs="+", metavar="NOTEBOOK", help="strip outputs of these notebooks")
    args, rest = parser.parse_known_args(argv)
    if args.strip:
        for path in args.strip:
            print(f"{path}: {'stripped' if strip_outputs(path) else 'clean'}")
        return 0
    if not args.parameters:
        parser.error("a parameters file is required (e.g. configs/demo.yaml)")
    from .config import ConfigError

    try:
        overrides = parse_overrides(rest, parameter_types())
        names = [n for n in NOTEBOOKS if n in args.only] if args.only else NOTEBOOKS
        t0 = time.perf_counter()
        written = run_notebooks(args.parameters, names=names, overrides=overrides, log_output=args.log_output)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # papermill's execution error names the notebook cell that failed
        if type(err).__name__ != "PapermillExecutionError":
            raise
        print(f"error: a notebook failed: {err}", file=sys.stderr)
        return 1
    run_dir = written[0].parent.parent
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Outputs of the run are in {run_dir}/:")
    for path in sorted(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        print(f"  {path.name}{'/' if path.is_dir() else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
