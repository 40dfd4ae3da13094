"""The five notebooks: thin, parameterised, free of outputs in git, and runnable headless with papermill."""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from cartoonify.config import PARAMETER_CONFIGS, load_parameters, parameter_types
from cartoonify.notebooks import (
    COLAB_CELL,
    COLAB_TAG,
    NOTEBOOKS,
    Heartbeat,
    NotebookEcho,
    Terminal,
    cells_with_outputs,
    declared_parameters,
    failure_message,
    notebook_path,
    run_notebooks,
    set_colab_cell,
    strip_outputs,
)

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 600  # seconds a notebook cell may run under papermill


def _defaults() -> dict:
    out = {}
    for cls in PARAMETER_CONFIGS:
        inst = cls()
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, getattr(inst, f.name))
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_thin_clean_and_parameterised(name):
    path = notebook_path(name)
    nb = nbformat.read(str(path), as_version=4)
    assert cells_with_outputs(path) == [], "committed notebooks carry no outputs"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    # first the Colab install cell (does nothing elsewhere), then the one parameters cell
    assert code[0].source == COLAB_CELL.rstrip("\n") and code[0].metadata.get("tags") == [COLAB_TAG], (
        "the first code cell is the Colab install cell: python -m cartoonify.notebooks --colab-cell notebooks/*.ipynb")
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and code[1] is tagged[0], "one parameters cell, right after the Colab cell"
    for cell in code:
        tree = ast.parse(cell.source)
        banned = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not banned, f"{name}: definitions belong in the library"
    # every parameter is a typed, commented literal whose default is the real run's (the dataclass default)
    types_, defaults = parameter_types(), _defaults()
    lines = [l for l in tagged[0].source.splitlines() if l and not l.startswith(("#", "from ", "import "))]
    for line in lines:
        assert "  # " in line, f"uncommented parameter: {line}"
        node = ast.parse(line).body[0]
        assert isinstance(node, ast.AnnAssign), line
        key = node.target.id
        assert key in types_, f"{name}: {key} is no config field"
        assert ast.literal_eval(node.value) == defaults[key], f"{name}: default of {key}"
    # papermill sees every parameter (a line its parser cannot read, e.g. "= x" in the comment, is silently
    # left out: the parameters file's value would never reach the notebook)
    unseen = sorted(set(_declared(name)) - set(declared_parameters(path)))
    assert not unseen, f"{name}: papermill cannot parse the lines of {unseen}"
    # the cell after the parameters derives values, then a few library calls
    assert "from_parameters(globals()" in code[2].source
    assert declared_parameters_cell_index(path) == nb.cells.index(code[1])


def declared_parameters_cell_index(path) -> int:
    """The cell papermill takes for the parameters cell (it injects the given values after it)."""
    from papermill.iorw import load_notebook_node
    from papermill.utils import find_first_tagged_cell_index

    return find_first_tagged_cell_index(load_notebook_node(str(path)), "parameters")


def _run_colab_cell(namespace: dict) -> dict:
    exec(compile(COLAB_CELL, "colab-cell", "exec"), namespace)
    return namespace


def test_colab_cell_does_nothing_off_colab(monkeypatch):
    import subprocess

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: pytest.fail("pip ran outside Colab"))
    namespace = _run_colab_cell({})
    assert "clones" not in namespace


def test_colab_cell_installs_the_clone_on_colab(monkeypatch, tmp_path):
    """On Colab, with the package not importable: ``pip install -e`` of the clone found above the working
    folder; with no clone anywhere, an error that says to clone first."""
    import importlib.util
    import subprocess
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, **k: calls.append(cmd))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cartoonify" else real_find_spec(name, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(ROOT / "notebooks")
    namespace = _run_colab_cell({})
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "-e", str(ROOT)]]
    assert sys.path[0] == str(ROOT) and namespace["clones"][0] == ROOT
    monkeypatch.chdir(tmp_path)
    if not any(Path(base).is_dir() for base in ("/content", "/content/drive/MyDrive")):
        with pytest.raises(RuntimeError, match="Clone the repository first"):
            _run_colab_cell({})


def test_set_colab_cell_inserts_once(tmp_path):
    copy = tmp_path / "nb.ipynb"
    nb = nbformat.read(str(notebook_path("01_collect")), as_version=4)
    nb.cells = [c for c in nb.cells if COLAB_TAG not in c.metadata.get("tags", [])]
    nbformat.write(nb, str(copy))
    assert set_colab_cell(copy) is True and set_colab_cell(copy) is False
    code = [c for c in nbformat.read(str(copy), as_version=4).cells if c.cell_type == "code"]
    assert code[0].source == COLAB_CELL.rstrip("\n") and "parameters" in code[1].metadata["tags"]


@pytest.mark.parametrize("name, configs", [
    ("02_train", ["TrainConfig"]),
    ("03_evaluate", ["EvalConfig"]),
])
def test_notebook_declares_every_setting_of_its_configs(name, configs):
    """A setting missing from a notebook's parameters cell would be silently dropped by papermill."""
    import cartoonify.config as config_module

    declared = set(_declared(name))
    for cls_name in configs:
        fields = {f.name for f in dataclasses.fields(getattr(config_module, cls_name))}
        missing = sorted(fields - declared - {"output_dir"})  # output_dir is derived from run_name
        assert not missing, f"{name} does not declare {missing}"


def _declared(name: str) -> list[str]:
    nb = nbformat.read(str(notebook_path(name)), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [n.target.id for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)]


def test_parameter_files_are_valid_and_disney_is_the_writeup():
    demo = load_parameters(ROOT / "configs" / "demo.yaml")
    assert demo["pretrained_model"] == "embedded:tiny" and demo["interactive"] is False
    disney = load_parameters(ROOT / "configs" / "disney.yaml")
    defaults = _defaults()
    assert all(disney[k] == defaults[k] for k in disney if k != "run_name"), "disney.yaml spells out the defaults"


def test_unknown_parameter_is_named(tmp_path):
    from cartoonify.config import ConfigError

    bad = tmp_path / "p.yaml"
    bad.write_text("run_name: x\ncompare_stepz: 3\n")
    with pytest.raises(ConfigError, match="compare_stepz.*compare_steps"):
        load_parameters(bad)
    with pytest.raises(ConfigError, match="'compare_steps'"):
        load_parameters({"compare_steps": "many"})


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_echo_prefixes_lines_and_cuts_long_printouts():
    out = io.StringIO()
    echo = NotebookEcho("02_train", Terminal(out), max_lines=4)
    echo.write("step 1/4  loss 0.5\npart")
    echo.write("ial line\n")
    echo.write("bar 10%\rbar 100%\n\n")
    echo.write("".join(f"yaml {i}\n" for i in range(10)))
    echo.write("no newline at the end")
    echo.close()
    assert out.getvalue().splitlines() == [
        "  02_train | step 1/4  loss 0.5", "  02_train | partial line", "  02_train | bar 100%",
        "  02_train | yaml 0", "  02_train | yaml 1", "  02_train | yaml 2",
        "  02_train | ... (7 more lines in the executed notebook)", "  02_train | no newline at the end",
    ]


def test_heartbeat_after_silence_only():
    clock, out = _Clock(), io.StringIO()
    terminal = Terminal(out, clock=clock)
    beat = Heartbeat("[2/5] 02_train", terminal, every=30)
    clock.now = 29
    assert beat.beat() is False
    clock.now = 95
    assert beat.beat() is True
    clock.now = 110
    terminal.line("  02_train | step 3/4")
    clock.now = 130
    assert beat.beat() is False  # 20 s since the last line
    assert out.getvalue().splitlines() == ["[2/5] 02_train: running, 1 min 35 s so far", "  02_train | step 3/4"]


def test_failure_message_explains_or_shows_the_traceback():
    from papermill.exceptions import PapermillExecutionError

    err = PapermillExecutionError(4, 3, "src", "PreflightError", "training cannot start:\n\ninstance_dir ...",
                                  ["Traceback ...", "diffusers/pipeline.py line 1"])
    err.notebook, err.executed = "02_train", Path("outputs/x/notebooks/02_train.ipynb")
    message, status = failure_message(err)
    assert status == 2 and "Traceback" not in message and "diffusers" not in message
    assert message.strip().startswith("error: 02_train stopped in cell [3]: training cannot start:\n\ninstance_dir")
    assert message.endswith("The executed notebook, with the failing cell: outputs/x/notebooks/02_train.ipynb")
    err.ename = "OSError"
    message, status = failure_message(err)
    assert status == 1 and "Traceback" in message and "error: 02_train failed in cell [3]: OSError:" in message


def test_strip_outputs(tmp_path, notebook_run):
    copy = tmp_path / "executed.ipynb"
    shutil.copy(notebook_run["run_dir"] / "notebooks" / "02_train.ipynb", copy)
    assert cells_with_outputs(copy)
    assert strip_outputs(copy) is True
    assert cells_with_outputs(copy) == [] and strip_outputs(copy) is False


def _controlnet_for(model_dir, folder):
    """An (untrained) ControlNet shaped for the random tiny model, saved where a hub id would be downloaded."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def notebook_run(tiny_model, tmp_path_factory):
    """All five notebooks under papermill on the tiny model, with a short run."""
    base = tmp_path_factory.mktemp("nbrun")
    data = base / "data"
    params = {
        **load_parameters(ROOT / "configs" / "demo.yaml"),
        "run_name": "nbtest",
        "outputs_dir": str(base / "outputs"),
        "sources": [str(data / "raw")],
        "collect_dir": str(data / "collected"),
        "instance_dir": str(data / "collected" / "images"),
        "photos_dir": str(data / "photos"),
        "class_dir": str(data / "class"),
        "pretrained_model": str(tiny_model),
        "demo_images": 6,
        "num_class_images": 4,
        "sample_batch_size": 4,
        "class_inference_steps": 3,
        "train_batch_size": 2,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "num_validation_images": 2,
        "validation_inference_steps": 3,
        "compare_schedulers": ["pndm", "euler_a", "heun"],
        "compare_prompts": ["a person, Disney style"],
        "compare_seeds": [0],
        "compare_steps": 3,
        "stylize_strengths": [0.5, 0.9],
        "conditioning_scales": [1.0],
        "controlnet_models": [_controlnet_for(tiny_model, base / "controlnet")],
        "stylize_steps": 4,
        "validate_at_start": False,
        "holdout_images": 0,  # 6 demo images: too few to hold 8 out
    }
    written = run_notebooks(params, timeout=CELL_TIMEOUT)
    return {"params": params, "run_dir": base / "outputs" / "nbtest", "written": written}


def _stdout(path: Path) -> str:
    """Everything a notebook printed or displayed as text or HTML."""
    nb = json.loads(path.read_text())
    out = []
    for c in nb["cells"]:
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            out.append("".join(o.get("text", "")))
            out.append("".join(o.get("data", {}).get("text/html", "")))
    return "".join(out)


def _has_image_output(path: Path) -> bool:
    nb = json.loads(path.read_text())
    return any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_notebooks_run_headless_and_leave_their_files(notebook_run):
    run = notebook_run["run_dir"]
    assert [p.name for p in notebook_run["written"]] == [f"{n}.ipynb" for n in NOTEBOOKS]
    # 01_collect: imported training set and contact sheet
    assert len(list(Path(notebook_run["params"]["instance_dir"]).glob("*.png"))) == 6
    assert "6 inputs -> 6 kept" in _stdout(run / "notebooks" / "01_collect.ipynb")
    assert (Path(notebook_run["params"]["collect_dir"]) / "manifest.csv").is_file()
    # 02_train: checkpoints, validation, loss curve and validation grid shown inline as images
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert _has_image_output(run / "notebooks" / "02_train.ipynb")
    train_out = _stdout(run / "notebooks" / "02_train.ipynb")  # TrainingProgress, through the callbacks
    assert "training: 4 steps" in train_out  # checkpoints are written in the background: saved at step 2 or after
    assert re.search(r"step [234]/4  checkpoint-2 saved", train_out) and "checkpoint-4 saved" in train_out
    assert "training done: step 4/4" in train_out
    # 03_evaluate: no ratings under papermill, said once; scores of every step beside them, best by the scores
    out = _stdout(run / "notebooks" / "03_evaluate.ipynb")
    assert out.count("No ratings yet") == 1
    with (run / "figures" / "rating_summary.csv").open() as fh:
        assert [r["n"] for r in csv.DictReader(fh)] == ["0", "0"]
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert [r["step"] for r in evaluation["rows"]] == [2, 4]
    assert all(r["clip_t"] is not None and r["dino"] is not None for r in evaluation["rows"])
    assert evaluation["best"]["rule"] == "automated" and "random weights" in " ".join(evaluation["notes"])
    assert f"best checkpoint: {evaluation['best']['checkpoint']} (automated)" in out
    # 04: one folder per scheduler, timing with model evaluations
    with (run / "schedulers" / "checkpoint-4" / "timing.csv").open() as fh:
        rows = {r["scheduler"]: r for r in csv.DictReader(fh)}
    # equal model evaluations (3): Heun takes 2 steps (3 evaluations), the others 3
    assert set(rows) == {"pndm", "euler_a", "heun"} and float(rows["heun"]["model_evals_per_image"]) == 3
    with (run / "scores" / "schedulers-checkpoint-4.csv").open() as fh:
        assert [r["scheduler"] for r in csv.DictReader(fh)] == ["pndm", "euler_a", "heun"]
    # 05: method x strength sweep per photo, a verdict per file, the trade-off and the contact sheet
    for photo in ("astronaut", "camera"):
        for name in ("img2img-s0.90.png", "controlnet-s0.90-c1.00.png", "control-0-canny.png"):
            assert (run / "stylized" / "checkpoint-4" / photo / name).is_file()
    with (run / "stylized" / "checkpoint-4" / "manifest.csv").open() as fh:
        assert {r["file"]: r["verdict"] for r in csv.DictReader(fh)} == {"astronaut.png": "stylized",
                                                                         "camera.png": "stylized"}
    assert "Recommended:" in _stdout(run / "notebooks" / "05_stylize.ipynb")
    expected = {
        "training_set.png", "loss.png", "style.png", "validation.png", "rating_summary.csv", "evaluation.png",
        "scheduler_grid.png", "scheduler_timing.png", "scheduler_scores.png", "stylize-astronaut.png",
        "stylize-camera.png", "stylize_tradeoff.png", "stylize_contact_sheet.png",
    }
    assert expected <= {p.name for p in (run / "figures").iterdir()}


def test_evaluate_summarises_saved_ratings_on_rerun(notebook_run, tmp_path):
    from cartoonify.rating import RatingStore, collect_items

    run = tmp_path / "outputs" / "rated"  # a copy: the shared run stays unrated for the other tests
    shutil.copytree(notebook_run["run_dir"], run)
    store = RatingStore(run)
    for item in collect_items(run):
        store.add(item.path, "alice", 4 if item.group == 2 else 8)
    params = {**notebook_run["params"], "outputs_dir": str(tmp_path / "outputs"), "run_name": "rated",
              "min_ratings": 2}
    run_notebooks(params, names=["03_evaluate"], timeout=CELL_TIMEOUT)
    out = _stdout(run / "notebooks" / "03_evaluate.ipynb")
    assert "Best step: 4 (mean 8.00" in out
    assert "best checkpoint: checkpoint-4 (human)" in out
    assert json.loads((run / "evaluation.json").read_text())["best"]["checkpoint"] == "checkpoint-4"
    with (run / "figures" / "rating_summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["n"], float(r["mean"])) for r in rows] == [("2", "2", 4.0), ("4", "2", 8.0)]
