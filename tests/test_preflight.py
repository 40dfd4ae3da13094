"""The checks before a run: every missing input is one paragraph that says what to do, nothing is written
into the run folder, and no traceback comes from inside diffusers."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cartoonify.config import TrainConfig
from cartoonify.training.preflight import (
    PreflightError,
    check_inputs,
    check_model,
    check_parameters,
    check_photos,
    preflight,
)

ROOT = Path(__file__).resolve().parent.parent
FAKE_HUB_ID = "cartoonify-test/no-such-model"


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (255, 255, 255 - i)).save(folder / f"img{i}.png")
    return folder


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(pretrained_model="embedded:tiny", instance_dir=str(tmp_path / "data" / "images"),
                class_dir=str(tmp_path / "data" / "class"), output_dir=str(tmp_path / "run"), resolution=64,
                holdout_images=0, mixed_precision="no", report_to="none")
    return TrainConfig.from_dict({**base, **overrides})


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """The hub offline, with an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def _fake_snapshot(cache: Path, repo_id: str, files: list[str]) -> Path:
    """A hub cache entry as huggingface_hub writes it: refs/main -> snapshots/<commit>/..."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    for name in files:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text("{}")
    return snapshot


# ------------------------------------------------------------------------------------------------
# the checks, one by one
# ------------------------------------------------------------------------------------------------


def test_missing_instance_dir_names_it_and_how_to_make_it(tmp_path):
    problems = check_inputs(_config(tmp_path))
    assert len(problems) == 1
    text = problems[0]
    assert f"instance_dir '{tmp_path / 'data' / 'images'}' does not exist" in text
    assert "01_collect" in text and f"python -m cartoonify.collect data/raw --out {tmp_path / 'data'} --size 64" in text


def test_empty_instance_dir_and_too_few_for_the_holdout(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "notes.txt").write_text("not an image")
    [text] = check_inputs(_config(tmp_path))
    assert "holds no images" in text and "01_collect" in text
    _images(tmp_path / "data" / "images", 3)
    [text] = check_inputs(_config(tmp_path, holdout_images=3))
    assert "'holdout_images' is 3" in text and "only 3 images" in text
    assert check_inputs(_config(tmp_path, holdout_images=2)) == []


def test_class_dir_may_be_missing_or_empty_but_not_a_file(tmp_path):
    _images(tmp_path / "data" / "images", 2)
    assert check_inputs(_config(tmp_path)) == []  # missing: the class images are generated
    (tmp_path / "data" / "class").mkdir()
    assert check_inputs(_config(tmp_path)) == []  # empty: likewise
    (tmp_path / "data" / "class").rmdir()
    (tmp_path / "data" / "class").write_text("")
    [text] = check_inputs(_config(tmp_path))
    assert "class_dir" in text and "is a file" in text
    assert check_inputs(_config(tmp_path, with_prior_preservation=False)) == []


def test_photos_dir(tmp_path):
    [text] = check_photos(tmp_path / "photos")
    assert f"photos_dir '{tmp_path / 'photos'}' does not exist" in text and "05_stylize" in text
    (tmp_path / "photos").mkdir()
    assert "holds no images" in check_photos(tmp_path / "photos")[0]
    _images(tmp_path / "photos", 1)
    assert check_photos(tmp_path / "photos") == []


def test_embedded_and_local_models(tmp_path, tiny_model):
    assert check_model("embedded:tiny") == [] and check_model("embedded:tiny-random") == []
    assert "no embedded model" in check_model("embedded:huge")[0]
    assert check_model(str(tiny_model)) == []
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    [text] = check_model(str(tmp_path / "half"))
    assert "not a complete diffusers pipeline" in text and "unet/*.safetensors" in text
    assert "does not exist" in check_model("./models/nowhere")[0]


def test_hub_id_not_cached_while_offline(offline_empty_cache):
    [text] = check_model(FAKE_HUB_ID, "main", "fp16")
    assert "not in the local hub cache" in text and str(offline_empty_cache) in text
    assert "HF_HUB_OFFLINE=1" in text and "make" in text and "hf auth login" in text
    assert f'hf download {FAKE_HUB_ID} --include "*.json" --include "*.txt" --include "*.fp16.safetensors"' in text
    assert "--local-dir models/no-such-model" in text and "pretrained_model to 'models/no-such-model'" in text


def test_hub_id_found_in_the_cache(offline_empty_cache):
    parts = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
             "tokenizer/vocab.json", "scheduler/scheduler_config.json"]
    weights = ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
               "text_encoder/model.fp16.safetensors"]
    _fake_snapshot(offline_empty_cache, FAKE_HUB_ID, parts + weights)
    assert check_model(FAKE_HUB_ID, "main", "fp16") == []
    _fake_snapshot(offline_empty_cache, "cartoonify-test/half", parts[:2])
    [text] = check_model("cartoonify-test/half", "main", "fp16")
    assert "only partly in the local hub cache" in text and "vae/config.json" in text


def test_hub_id_is_not_checked_online(monkeypatch):
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert check_model(FAKE_HUB_ID) == []  # downloaded on first use; nothing contacts the hub here


def test_every_problem_at_once(tmp_path, offline_empty_cache):
    config = _config(tmp_path, pretrained_model=FAKE_HUB_ID)
    with pytest.raises(PreflightError) as err:
        preflight(config)
    assert len(err.value.problems) == 2
    message = str(err.value)
    assert message.startswith("training cannot start, 2 problems:") and "\n\n1. instance_dir" in message
    assert "\n\n2. pretrained_model" in message


def test_notebooks_run_checks(tmp_path, offline_empty_cache):
    params = {"run_name": "r", "outputs_dir": str(tmp_path / "out"), "pretrained_model": FAKE_HUB_ID,
              "instance_dir": str(tmp_path / "none"), "photos_dir": str(tmp_path / "photos")}
    problems, notes = check_parameters(params, ["01_collect", "02_train", "05_stylize"])
    assert len(problems) == 1 and "pretrained_model" in problems[0]  # 01_collect makes the instance images
    assert len(notes) == 1 and "photos_dir" in notes[0]
    problems, _ = check_parameters(params, ["02_train"])
    assert [p.split(" ")[0] for p in problems] == ["instance_dir", "pretrained_model"]
    problems, _ = check_parameters(params, ["03_evaluate"])
    assert "holds no trained run" in problems[0] and "02_train" in problems[0]
    demo = {**params, "make_demo_data": True, "pretrained_model": "embedded:tiny"}
    assert check_parameters(demo, ["01_collect", "02_train", "05_stylize"]) == ([], [])  # 01 draws the photos


# ------------------------------------------------------------------------------------------------
# where the checks run: build_trainer, the command line, the notebooks
# ------------------------------------------------------------------------------------------------


def _build_trainer_checks_first() -> bool:
    from cartoonify.training.run import build_trainer

    return "preflight(" in inspect.getsource(build_trainer)


@pytest.mark.skipif(not _build_trainer_checks_first(), reason="build_trainer does not call preflight(config) yet")
@pytest.mark.parametrize("case", ["no instance images", "model not cached"])
def test_run_training_stops_before_writing(case, tmp_path, offline_empty_cache):
    from cartoonify.training.run import run_training

    if case == "model not cached":
        _images(tmp_path / "data" / "images", 3)
    config = _config(tmp_path, pretrained_model=FAKE_HUB_ID)
    with pytest.raises(PreflightError) as err:
        run_training(config, progress=False)
    assert ("pretrained_model" if case == "model not cached" else "instance_dir") in str(err.value)
    frames = [f.filename for f in traceback.extract_tb(err.value.__traceback__)]
    assert not [f for f in frames if "diffusers" in f or "transformers" in f]
    assert not (tmp_path / "run").exists() and not (tmp_path / "data" / "class").exists()


def _offline_env(tmp_path: Path) -> dict:
    (tmp_path / "hf_home").mkdir(exist_ok=True)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
            "PYTHONPATH": str(ROOT)}


def test_train_command_prints_the_paragraphs_and_exits_2(tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump({"run_name": "cli", "outputs_dir": str(tmp_path / "outputs"),
                                      "pretrained_model": FAKE_HUB_ID, "instance_dir": str(tmp_path / "images"),
                                      "class_dir": str(tmp_path / "class")}))
    proc = subprocess.run([sys.executable, "-m", "cartoonify.train", "--config", str(config)], cwd=tmp_path,
                          env=_offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error: training cannot start, 2 problems:" in proc.stderr
    assert f"instance_dir '{tmp_path / 'images'}' does not exist" in proc.stderr
    assert f"pretrained_model '{FAKE_HUB_ID}'" in proc.stderr and "hf auth login" in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "class").exists()


def test_notebooks_command_checks_before_the_first_notebook(tmp_path, capsys, offline_empty_cache):
    from cartoonify.notebooks import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run_name": "nb", "outputs_dir": str(tmp_path / "outputs"),
                                      "pretrained_model": FAKE_HUB_ID, "instance_dir": str(tmp_path / "images")}))
    assert main([str(params), "--only", "02_train", "05_stylize"]) == 2
    err = capsys.readouterr().err
    assert "the notebooks cannot start, 2 problems:" in err and "hf download" in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()  # no notebook ran, nothing was written


def test_collect_notebook_that_keeps_nothing_stops_with_the_reasons(tmp_path, capsys):
    """01_collect under papermill with a source folder of no images: the manifest's reasons and what to do,
    no traceback (before: AttributeError on the missing contact sheet)."""
    from cartoonify.notebooks import main

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "readme.md").write_text("no images here")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run_name": "nb", "outputs_dir": str(tmp_path / "outputs"),
                                      "sources": [str(tmp_path / "raw")], "collect_dir": str(tmp_path / "set"),
                                      "resolution": 64}))
    assert main([str(params), "--only", "01_collect", "--heartbeat", "0"]) == 2
    captured = capsys.readouterr()
    assert "[1/1] 01_collect: started" in captured.out and "01_collect | collect: 1 inputs -> 0 kept" in captured.out
    assert "error: 01_collect stopped in cell" in captured.err
    assert "collect kept no images from 1 input of sources" in captured.err
    assert "rejected (not an image)" in captured.err and f"in {tmp_path / 'raw'}" in captured.err
    assert "Traceback" not in captured.err and "AttributeError" not in captured.err
    assert (tmp_path / "outputs" / "nb" / "notebooks" / "01_collect.ipynb").is_file()
