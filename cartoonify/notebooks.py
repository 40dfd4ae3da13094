"""The ordered notebooks, run headless with papermill, and kept free of outputs in git.

``python -m cartoonify.notebooks configs/demo.yaml`` executes ``notebooks/01_collect`` ... ``05_stylize``
in order, each with the parameters of the file that its ``parameters`` cell declares, and writes the
executed copies to ``<outputs_dir>/<run_name>/notebooks/``. ``make demo`` runs it on the embedded tiny
model. ``python -m cartoonify.notebooks --strip notebooks/*.ipynb`` removes outputs (like nbstripout).

While it runs, the terminal shows which notebook runs and for how long: a line when each starts and ends, a
heartbeat after :data:`HEARTBEAT_SECONDS` of silence, and the lines the notebooks print, prefixed with the
notebook's name (papermill's ``stdout_file``), among them 02_train's training progress (step, loss, rate:
:class:`cartoonify.training.progress.TrainingProgress`). Before the first notebook starts, the inputs are
checked (:func:`cartoonify.training.preflight.check_parameters`); a notebook that stops on a problem of its
inputs ends the run with that problem's paragraphs rather than a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from .config import RunConfig, load_mapping, load_parameters, parameter_types, parse_overrides
from .runs import RunLayout

NOTEBOOKS = ("01_collect", "02_train", "03_evaluate", "04_compare_schedulers", "05_stylize")
HEARTBEAT_SECONDS = 30.0  # a "still running" line after this long without a printed line
ECHO_MAX_LINES = 12  # lines of one printout shown on the terminal; the rest stays in the executed notebook
# errors whose message says what is wrong and what to do: shown without their traceback
EXPLAINED_ERRORS = (
    "PreflightError", "NothingCollectedError", "ConfigError", "DataFolderError", "RunExistsError", "ImageLoadError",
    "NonFiniteLossError", "TrainingOutOfMemoryError", "InsufficientDiskError", "CheckpointSaveError",
    "CheckpointError",
)

# The first code cell of every notebook: on Colab it installs the package from the clone of its repository
# (pyproject.toml declares no repository URL to install from); elsewhere it does nothing.
# `python -m cartoonify.notebooks --colab-cell notebooks/*.ipynb` writes it into the notebooks.
COLAB_CELL = """\
# Colab only: install this package from a clone of its repository (elsewhere, or once installed, this does nothing)
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

on_colab = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
if on_colab and importlib.util.find_spec("cartoonify") is None:
    places = [Path.cwd(), *Path.cwd().parents] + [
        p.parent for base in ("/content", "/content/drive/MyDrive")
        for pattern in ("*/pyproject.toml", "*/*/pyproject.toml") for p in sorted(Path(base).glob(pattern))
    ]
    clones = [p for p in places if (p / "notebooks").is_dir() and (p / "pyproject.toml").is_file()
              and 'name = "cartoonify"' in (p / "pyproject.toml").read_text()]
    if not clones:
        raise RuntimeError(
            "cartoonify is not installed and no clone of its repository was found (in the working folder or "
            "above it, in /content/* or in /content/drive/MyDrive/*). Clone the repository first, in a cell: "
            "!git clone <its URL> /content/cartoonify (or open this notebook from a clone in Google Drive), "
            "then run this cell again.")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(clones[0])])
    sys.path.insert(0, str(clones[0]))  # importable now, without restarting the session
    importlib.invalidate_caches()
    print(f"installed cartoonify from {clones[0]} (pip install -e)")
"""
COLAB_TAG = "colab-install"


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


# ------------------------------------------------------------------------------------------------
# what the terminal shows while papermill runs
# ------------------------------------------------------------------------------------------------


def format_elapsed(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Terminal:
    """The run's lines on the terminal (one lock: papermill's output and the heartbeat thread share it)."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.clock = clock
        self.lock = threading.Lock()
        self.last_line = clock()

    def line(self, text: str) -> None:
        with self.lock:
            stream = self.stream or sys.stdout
            stream.write(text + "\n")
            stream.flush()
            self.last_line = self.clock()


class NotebookEcho:
    """papermill's ``stdout_file``: what a notebook prints, on the terminal as it comes, each line prefixed
    with the notebook's name. Carriage-return redraws keep their last state; a printout of more than
    ``max_lines`` lines is cut and blank lines are dropped (all of it is in the executed notebook)."""

    def __init__(self, name: str, terminal: Terminal, max_lines: int = ECHO_MAX_LINES):
        self.prefix = f"  {name} | "
        self.terminal = terminal
        self.max_lines = max_lines
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        complete, sep, self.pending = self.pending.rpartition("\n")
        if sep:
            self._show(complete.split("\n"))
        return len(text)

    def _show(self, lines: list[str]) -> None:
        lines = [line.rsplit("\r", 1)[-1].rstrip() for line in lines]
        lines = [line for line in lines if line]  # blank lines stay in the notebook
        if len(lines) > self.max_lines:
            cut = len(lines) - self.max_lines + 1
            lines = lines[: self.max_lines - 1] + [f"... ({cut} more lines in the executed notebook)"]
        for line in lines:
            self.terminal.line(self.prefix + line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.pending:
            self._show([self.pending])
            self.pending = ""


class Heartbeat:
    """While a notebook runs, a line with its elapsed time after every ``every`` seconds of silence."""

    def __init__(self, label: str, terminal: Terminal, every: float = HEARTBEAT_SECONDS):
        self.label, self.terminal, self.every = label, terminal, every
        self.started = terminal.clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {label}", daemon=True)

    def beat(self) -> bool:
        """Print the heartbeat line if the terminal has been silent for ``every`` seconds; True if printed."""
        now = self.terminal.clock()
        if now - self.terminal.last_line < self.every:
            return False
        self.terminal.line(f"{self.label}: running, {format_elapsed(now - self.started)} so far")
        return True

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        if self.every and self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _failed_cell(err: Exception) -> str:
    index = getattr(err, "exec_count", None)
    return f" in cell [{index}]" if index is not None else ""


def run_notebooks(
    parameters: str | Path | dict[str, Any],
    *,
    names: Sequence[str] = NOTEBOOKS,
    overrides: dict[str, Any] | None = None,
    kernel_name: str = "python3",
    log_output: bool = False,
    timeout: int | None = None,
    echo: bool = True,
    heartbeat: float = HEARTBEAT_SECONDS,
    check: bool = True,
    stream: TextIO | None = None,
) -> list[Path]:
    """Execute notebooks in order with papermill; each gets the parameters it declares.

    ``parameters`` is a parameters file or dict (checked by :func:`cartoonify.config.load_parameters`);
    ``overrides`` win over it. Returns the executed copies under ``<outputs_dir>/<run_name>/notebooks/``.

    ``check``: first check the inputs (:func:`cartoonify.training.preflight.check_parameters`); a problem
    raises :class:`~cartoonify.training.preflight.PreflightError` before anything runs or is written. On
    ``stream`` (default: stdout) a line says when each notebook starts and ends, ``heartbeat`` seconds of
    silence bring a line with the elapsed time (0: none), and with ``echo`` what the notebooks print is
    shown as it comes. ``log_output`` is papermill's (every output to its logger).

    A failing notebook stops the sequence: papermill's ``PapermillExecutionError`` is raised with two more
    attributes, ``notebook`` (its name) and ``executed`` (the executed copy, which shows the failing cell).
    """
    data = load_mapping(parameters) if not isinstance(parameters, dict) else dict(parameters)
    params = load_parameters({**data, **(overrides or {})})
    root = project_root()
    terminal = Terminal(stream)
    if check:
        from .training.preflight import check_parameters, require

        problems, notes = check_parameters(params, names, base=root)
        for note in notes:
            terminal.line(f"note: {note}")
        require(problems, "the notebooks")
    run_dir = RunConfig.from_parameters(params).run_dir
    out_dir = RunLayout((root / run_dir) if not run_dir.is_absolute() else run_dir).notebooks
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, name in enumerate(names, 1):
        source = notebook_path(name)
        declared = declared_parameters(source)
        papermill_kwargs = dict(parameters={k: v for k, v in params.items() if k in declared}, kernel_name=kernel_name,
                                cwd=str(root), progress_bar=False, log_output=log_output, execution_timeout=timeout)
        label = f"[{i}/{len(names)}] {name}"
        written.append(_execute(name, label, out_dir / f"{name}.ipynb", terminal, echo, heartbeat, papermill_kwargs))
    return written


def _execute(name: str, label: str, target: Path, terminal: Terminal, echo: bool, heartbeat: float,
             papermill_kwargs: dict[str, Any]) -> Path:
    """One notebook under papermill, its start, end (or failing cell) and heartbeats on the terminal, what it
    prints echoed; a ``PapermillExecutionError`` gets ``notebook`` and ``executed`` attributes."""
    import papermill

    terminal.line(f"{label}: started at {time.strftime('%H:%M:%S')}")
    t0 = time.perf_counter()
    out = NotebookEcho(name, terminal) if echo else None
    try:
        with Heartbeat(label, terminal, heartbeat):
            papermill.execute_notebook(str(notebook_path(name)), str(target), stdout_file=out, **papermill_kwargs)
    except Exception as err:
        if type(err).__name__ == "PapermillExecutionError":
            err.notebook, err.executed = name, target
            terminal.line(f"{label}: stopped{_failed_cell(err)} after {format_elapsed(time.perf_counter() - t0)} "
                          f"-> {target}")
        raise
    finally:
        if out is not None:
            out.close()
    terminal.line(f"{label}: done in {format_elapsed(time.perf_counter() - t0)} -> {target}")
    return target


def failure_message(err: Exception) -> tuple[str, int]:
    """What the command line prints for a notebook that failed, and its exit status: for an error that
    explains itself (:data:`EXPLAINED_ERRORS`) its message alone (status 2); otherwise papermill's
    traceback, then the error and where the executed notebook is (status 1)."""
    name = getattr(err, "notebook", "a notebook")
    executed = getattr(err, "executed", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f"\nThe executed notebook, with the failing cell: {executed}" if executed else ""
    if ename in EXPLAINED_ERRORS:
        return f"\nerror: {name} stopped{_failed_cell(err)}: {evalue}{where}", 2
    return f"{err}\nerror: {name} failed{_failed_cell(err)}: {ename}: {evalue}{where}", 1


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


def set_colab_cell(path: str | Path) -> bool:
    """Make :data:`COLAB_CELL` the first code cell of a notebook (inserted before the first code cell, or
    replacing an older install cell tagged :data:`COLAB_TAG`); True if it changed."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    first = nb.cells[code[0]] if code else None
    if first is not None and COLAB_TAG in first.metadata.get("tags", []):
        if first.source == COLAB_CELL.rstrip("\n"):
            return False
        first.source = COLAB_CELL.rstrip("\n")
    else:
        cell = nbformat.v4.new_code_cell(COLAB_CELL.rstrip("\n"), metadata={"tags": [COLAB_TAG]})
        cell.id = f"{Path(path).stem.split('_')[0]}-colab"  # the notebooks' ids: "<number>-<what>"
        nb.cells.insert(code[0] if code else len(nb.cells), cell)
    nbformat.write(nb, str(path))
    return True


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
    parser.add_argument("--log-output", action="store_true", help="also pass every output to papermill's logger")
    parser.add_argument("--quiet", action="store_true",
                        help="show only when each notebook starts and ends (and the heartbeat), not what it prints")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                        help=f"a line with the elapsed time after this long without output (0: none; "
                        f"default {HEARTBEAT_SECONDS:g})")
    parser.add_argument("--strip", nargs="+", metavar="NOTEBOOK", help="strip outputs of these notebooks")
    parser.add_argument("--colab-cell", nargs="+", metavar="NOTEBOOK",
                        help="write the Colab install cell into these notebooks (first code cell)")
    args, rest = parser.parse_known_args(argv)
    if args.strip or args.colab_cell:
        for path in args.colab_cell or []:
            print(f"{path}: {'Colab cell written' if set_colab_cell(path) else 'Colab cell up to date'}")
        for path in args.strip or []:
            print(f"{path}: {'stripped' if strip_outputs(path) else 'clean'}")
        return 0
    if not args.parameters:
        parser.error("a parameters file is required (e.g. configs/demo.yaml)")
    from .config import ConfigError

    try:
        overrides = parse_overrides(rest, parameter_types())
        names = [n for n in NOTEBOOKS if n in args.only] if args.only else NOTEBOOKS
        t0 = time.perf_counter()
        written = run_notebooks(args.parameters, names=names, overrides=overrides, log_output=args.log_output,
                                echo=not args.quiet, heartbeat=args.heartbeat)
    except (ConfigError, FileNotFoundError) as err:  # a PreflightError is a ConfigError
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # papermill's execution error names the notebook cell that failed
        if type(err).__name__ != "PapermillExecutionError":
            raise
        message, status = failure_message(err)
        print(message, file=sys.stderr)
        return status
    run_dir = written[0].parent.parent
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Outputs of the run are in {run_dir}/:")
    for path in sorted(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        print(f"  {path.name}{'/' if path.is_dir() else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
