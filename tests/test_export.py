"""Exporting a checkpoint (``cartoonify.exporting``, ``python -m cartoonify.export``): the single file of a mappable
model round-trips through diffusers with its metadata, the tiny model is refused before anything is written, the
diffusers folder reloads with the checkpoint's weights, the model card beside every export, overwriting, the
format registry and the command line."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_single_file import MINI_UNET_CONFIG, MINI_VAE_CONFIG

import cartoonify
from cartoonify.exporting import FORMATS, export_model, write_model_card
from cartoonify.exporting.cli import build_parser, locate, main
from cartoonify.models.single_file import SingleFileError

ROOT = Path(__file__).resolve().parent.parent
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
TEXT_FILE = "text_encoder/model.safetensors"
VAE_FILE = "vae/diffusion_pytorch_model.safetensors"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _text_keys(state: dict) -> dict:
    """A CLIP text encoder's state with transformers' optional ``text_model.`` level and position ids left out."""
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def _assert_same(got: dict, expected: dict, what: str) -> None:
    assert set(got) == set(expected), what
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), (what, key)


def _mini_modules(seed: int, vocab_size: int) -> dict:
    """Mini SD1.5 modules: SD1.5's block layout at small widths, so that the single file can hold them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cartoonify.models.tiny import tiny_text_encoder_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {"unet": UNet2DConditionModel(**MINI_UNET_CONFIG), "vae": AutoencoderKL(**MINI_VAE_CONFIG),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(vocab_size)))}


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> dict:
    """A run on a mini SD1.5 base model, written with the trainer's own writers (training it would only cost time
    here; the tiny run below is trained): its config, ``checkpoint-2`` (fp16 UNet and text encoder of other
    weights than the base's, the marker) and the validation images of step 2."""
    from diffusers import PNDMScheduler

    from cartoonify.config import TrainConfig
    from cartoonify.imaging import save_png
    from cartoonify.models.pipeline import pipeline_from_modules
    from cartoonify.models.sd15 import SD15_SCHEDULER_CONFIG
    from cartoonify.models.tokenizer import write_bpe_files, write_tiny_tokenizer
    from cartoonify.runs import RunLayout, write_images_json, write_marker
    from cartoonify.training.checkpoint import EVALUATION_DTYPE, save_module

    root = tmp_path_factory.mktemp("export_mini")
    base, run = root / "base", root / "run"
    tokenizer = write_tiny_tokenizer(base / "tokenizer")
    modules = _mini_modules(3, len(tokenizer))
    pipe = pipeline_from_modules(modules["unet"], modules["text_encoder"], modules["vae"], tokenizer,
                                 PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG))
    pipe.save_pretrained(base, safe_serialization=True)
    write_bpe_files(base / "tokenizer")
    config = TrainConfig(pretrained_model=str(base), output_dir=str(run), resolution=64, max_train_steps=2,
                         checkpointing_steps=2, learning_rate=1e-3, seed=7, instance_prompt="sks cartoon style",
                         class_prompt="a cartoon")
    layout = RunLayout.of(config)
    config.save(layout.config)
    trained = _mini_modules(4, len(tokenizer))
    ckpt = layout.checkpoint(2)
    for name in ("unet", "text_encoder"):
        save_module(trained[name], ckpt / name, EVALUATION_DTYPE)
    write_marker(ckpt, {"global_step": 2, "resume_state": None})
    rng = np.random.default_rng(0)
    records = []
    for i, seed in enumerate((7, 8)):
        image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        save_png(image, layout.validation_dir(2) / f"image-0{i}.png")
        records.append({"file": f"image-0{i}.png", "seed": seed, "nsfw": None})
    write_images_json(layout.validation_dir(2), {"prompt": "a person, sks cartoon style", "num_inference_steps": 25,
                                                 "guidance_scale": 7.5, "scheduler": "PNDMScheduler", "step": 2}, records)
    return {"base": base, "run": run}


@pytest.fixture(scope="module")
def tiny(trained_run, tmp_path_factory) -> dict:
    """A copy of the shared tiny run (random tiny model, checkpoints 2 and 4, validation images, pipeline) that
    these tests export into; ``snapshots`` holds the trainer's weights at every step."""
    run = tmp_path_factory.mktemp("export_tiny") / "run"
    shutil.copytree(trained_run["result"].output_dir, run)
    return {"run": run, "snapshots": trained_run["snapshots"], "base": Path(trained_run["config"].pretrained_model)}


# --------------------------------------------------------------------------------------------------------------------
# single file
# --------------------------------------------------------------------------------------------------------------------


def test_single_file_export_round_trips_with_its_metadata(mini, tmp_path):
    from diffusers import StableDiffusionPipeline

    run, base = mini["run"], mini["base"]
    path = export_model(run, "checkpoint-2", "single-file")
    assert path == run / "exports" / "checkpoint-2-single-file" / "run-checkpoint-2.safetensors"
    assert _files(path.parent) == {"run-checkpoint-2.safetensors", "README.md", "samples.png", "export.json"}
    assert _files(run / "exports") == {"checkpoint-2-single-file", *(f"checkpoint-2-single-file/{f}"
                                                                    for f in _files(path.parent))}
    saved = json.loads((run / "config.json").read_text())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["modelspec.trigger_phrase"] == meta["cartoonify.instance_prompt"] == saved["instance_prompt"]
    assert saved["instance_prompt"] == "sks cartoon style" and meta["cartoonify.class_prompt"] == "a cartoon"
    assert (meta["cartoonify.step"], meta["cartoonify.seed"]) == ("2", "7")
    assert meta["cartoonify.base_model"] == str(base) and meta["cartoonify.checkpoint"] == "checkpoint-2"
    assert float(meta["cartoonify.learning_rate"]) == saved["learning_rate"] == 1e-3
    assert meta["cartoonify.version"] == cartoonify.__version__
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["cartoonify.dtype"] == "fp16"
    # diffusers loads the file back (configs from a weight-free copy of the base): the checkpoint's UNet and text
    # encoder, the base's VAE, every tensor exactly
    config_only = shutil.copytree(base, tmp_path / "config", ignore=shutil.ignore_patterns("*.safetensors"))
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(config_only), local_files_only=True,
                                                      torch_dtype=torch.float16)
    ckpt = run / "checkpoints" / "checkpoint-2"
    _assert_same(loaded.unet.state_dict(), load_file(ckpt / UNET_FILE), "unet")
    _assert_same(_text_keys(loaded.text_encoder.state_dict()), _text_keys(load_file(ckpt / TEXT_FILE)), "text")
    _assert_same(loaded.vae.state_dict(), {k: v.half() for k, v in load_file(base / VAE_FILE).items()}, "vae")
    base_unet = load_file(base / UNET_FILE)
    assert any(not torch.equal(v.half(), loaded.unet.state_dict()[k]) for k, v in base_unet.items()), "trained"
    # fp32: the same tensors at full width
    wide = export_model(run, "checkpoint-2", "single-file", out=tmp_path / "fp32", dtype="fp32")
    narrow, full = load_file(path), load_file(wide)
    assert set(full) == set(narrow) and len(full) > 100
    assert all(full[k].dtype == torch.float32 and torch.equal(full[k].half(), narrow[k]) for k in narrow)
    with safe_open(str(wide), framework="pt") as f:
        assert f.metadata()["cartoonify.dtype"] == "fp32"


def test_single_file_refuses_the_tiny_model_before_writing_anything(tiny, tmp_path):
    run = tiny["run"]
    before = _files(run)
    with pytest.raises(SingleFileError, match="cannot export to the original Stable Diffusion single-file layout"
                                              ".*the UNet has 2 down blocks"):
        export_model(run, "latest", "single-file")
    with pytest.raises(SingleFileError, match="2 down blocks"):
        export_model(run, "checkpoint-2", "single-file", out=tmp_path / "deeper" / "export")
    assert _files(run) == before and not any(tmp_path.iterdir())
    assert main(["checkpoint-2", "--run", str(run), "--format", "single-file"]) == 2
    assert _files(run) == before


# --------------------------------------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------------------------------------


def test_diffusers_export_reloads_with_the_checkpoint_weights(tiny):
    from diffusers import StableDiffusionPipeline

    run = tiny["run"]
    path = export_model(run, "checkpoint-4", "diffusers")
    assert path == run / "exports" / "checkpoint-4-diffusers"
    assert {"model_index.json", "README.md", "samples.png", "export.json", UNET_FILE, TEXT_FILE} <= _files(path)
    with safe_open(str(path / UNET_FILE), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    assert load_file(path / UNET_FILE).keys() == load_file(run / "checkpoints" / "checkpoint-4" / UNET_FILE).keys()
    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)  # fp32 unless asked
    trained = tiny["snapshots"][4]  # the trainer's fp32 weights after step 4, as they were in memory
    _assert_same(pipe.unet.state_dict(), {k: v.half().float() for k, v in trained["unet"].items()}, "unet")
    _assert_same(_text_keys(pipe.text_encoder.state_dict()),
                 _text_keys({k: v.half().float() for k, v in trained["text_encoder"].items()}), "text")
    base_vae = load_file(tiny["base"] / VAE_FILE)
    _assert_same(pipe.vae.state_dict(), {k: v.half().float() for k, v in base_vae.items()}, "vae")
    card = (path / "README.md").read_text()
    assert "checkpoint-4" in card and "step 4" in card and "from_pretrained" in card


def test_the_final_pipeline_exports_as_the_last_step(tiny):
    run = tiny["run"]
    path = export_model(run, "pipeline", "diffusers")
    assert path == run / "exports" / "pipeline-diffusers"
    record = json.loads((path / "export.json").read_text())
    assert (record["checkpoint"], record["step"]) == ("pipeline", 4)
    for name in (UNET_FILE, TEXT_FILE, VAE_FILE):  # the fp16 pipeline as the run saved it
        _assert_same(load_file(path / name), load_file(run / "pipeline" / name), name)
    assert "`pipeline` (step 4)" in (path / "README.md").read_text() and (path / "samples.png").is_file()


def test_checkpoints_resolve_as_sampling_resolves_them(tiny, tmp_path):
    from cartoonify.exporting import ExportJob
    from cartoonify.utils import write_json

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run, ignore=shutil.ignore_patterns("exports"))
    assert ExportJob.of(run, "best", "diffusers").name == "checkpoint-4"  # not evaluated, not rated: the latest
    write_json(run / "evaluation.json", {"best": {"checkpoint": "checkpoint-2", "step": 2, "rule": "automated"}})
    job = ExportJob.of(run, "best", "diffusers")
    assert (job.name, job.step, job.checkpoint) == ("checkpoint-2", 2, run / "checkpoints" / "checkpoint-2")
    assert ExportJob.of(run, "latest", "diffusers").step == 4
    assert ExportJob.of(run, str(run / "checkpoints" / "checkpoint-4"), "diffusers").name == "checkpoint-4"
    pipe = ExportJob.of(run, "pipeline", "diffusers")
    assert (pipe.name, pipe.step, pipe.checkpoint) == ("pipeline", 4, run / "pipeline")
    with pytest.raises(FileNotFoundError, match="no checkpoint 'checkpoint-7'"):
        ExportJob.of(run, "checkpoint-7", "diffusers")
    with pytest.raises(FileNotFoundError, match="not a training run"):
        ExportJob.of(tmp_path / "elsewhere", "best", "diffusers")


# --------------------------------------------------------------------------------------------------------------------
# the model card
# --------------------------------------------------------------------------------------------------------------------


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_names_the_model_its_samples_and_licence(tiny, tmp_path):
    run = tiny["run"]
    config = json.loads((run / "config.json").read_text())
    card_path = write_model_card(run, "checkpoint-4", tmp_path, "diffusers")
    card = card_path.read_text()
    assert card_path == tmp_path / "README.md"
    meta = _front_matter(card)
    assert meta["license"] == "creativeml-openrail-m" and meta["base_model"] == config["pretrained_model"]
    assert {"stable-diffusion", "dreambooth", "text-to-image"} <= set(meta["tags"])
    assert meta["instance_prompt"] == config["instance_prompt"] and meta["library_name"] == "diffusers"
    assert f"**`{config['instance_prompt']}`**" in card and f"`{config['class_prompt']}`" in card
    assert "`checkpoint-4` (step 4)" in card and f"| seed | {config['seed']} |" in card
    assert f"| learning rate | {config['learning_rate']:g} " in card
    assert "CreativeML OpenRAIL-M" in card and "use-based restrictions" in card
    assert "not rated" in card and "not scored" in card
    # the samples: the step's validation images, in order, as the run made them (read independently)
    record = json.loads((run / "validation" / "step-4" / "images.json").read_text())
    seeds = ", ".join(str(r["seed"]) for r in record["images"])
    assert (f"sampler {record['scheduler']}, {record['num_inference_steps']} steps, CFG {record['guidance_scale']}, "
            f"seeds {seeds}") in card
    assert "](samples.png)" in card
    grid = Image.open(tmp_path / "samples.png").convert("RGB")
    tiles = [Image.open(run / "validation" / "step-4" / r["file"]).convert("RGB") for r in record["images"]]
    w, h = tiles[0].size
    assert grid.size == (len(tiles) * w + (len(tiles) - 1) * 2, h)
    for i, tile in enumerate(tiles):
        assert grid.crop((i * (w + 2), 0, i * (w + 2) + w, h)).tobytes() == tile.tobytes()


def test_model_card_gives_the_ratings_and_scores_of_its_checkpoint(tiny, tmp_path):
    from cartoonify.evaluation.report import write_evaluation
    from cartoonify.rating import RatingStore, collect_items

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run, ignore=shutil.ignore_patterns("exports"))
    store = RatingStore(run)
    step4 = [i.path for i in collect_items(run) if i.group == 4]
    for rater, path, value in [("alice", step4[0], 6), ("alice", step4[1], 8), ("bob", step4[0], 10)]:
        store.add(path, rater, value)
    nan = math.nan
    rows = [{"step": s, "checkpoint": f"checkpoint-{s}", "n": n, "mean": m, "ci_low": nan, "ci_high": nan,
             "alpha": nan, "clip_style": c, "style_score": 0.25, "heldout_instance": nan}
            for s, n, m, c in [(2, 0, nan, 0.1234), (4, 3, 8.0, 0.4321)]]
    best = {"checkpoint": "checkpoint-4", "step": 4, "rule": "human", "reason": "the highest human mean (8.00)"}
    write_evaluation(run, rows, best, alpha=nan, agreement={}, models={}, notes=[], settings={})
    card = write_model_card(run, "checkpoint-4", tmp_path / "c4", "single-file", model_file="m.safetensors").read_text()
    assert "mean 8.00" in card and "n = 3 ratings by 2 rater(s)" in card and "not rated" not in card
    assert re.search(r"\| clip_style \| 0\.4321 \| .+ \|", card) and "| style_score | 0.25 |" in card
    assert "heldout_instance" not in card  # no value, no row
    assert "chose this checkpoint as the best (human): the highest human mean (8.00)" in card
    assert "models/Stable-diffusion" in card and 'from_single_file("m.safetensors"' in card
    other = write_model_card(run, "checkpoint-2", tmp_path / "c2", "single-file").read_text()
    assert "not rated" in other and "| clip_style | 0.1234 |" in other
    assert "best checkpoint is `checkpoint-4`" in other


def test_a_fine_tune_of_the_embedded_model_is_not_called_an_sd_derivative(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run, ignore=shutil.ignore_patterns("exports"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "pretrained_model": "embedded:tiny"}))
    card = write_model_card(run, "checkpoint-2", tmp_path / "card", "diffusers").read_text()
    assert _front_matter(card)["license"] == "mit" and _front_matter(card)["base_model"] == "embedded:tiny"
    assert "not derived from Stable Diffusion's weights" in card and "Attachment A" not in card


# --------------------------------------------------------------------------------------------------------------------
# where exports go: overwriting, atomic writes, the registry
# --------------------------------------------------------------------------------------------------------------------


def test_an_export_is_not_overwritten_unless_asked(tiny, tmp_path):
    run, out = tiny["run"], tmp_path / "export"
    export_model(run, "checkpoint-2", "diffusers", out=out)
    first = (out / UNET_FILE).read_bytes()
    with pytest.raises(FileExistsError, match=re.escape(str(out)) + ".*overwrite"):
        export_model(run, "checkpoint-4", "diffusers", out=out)
    assert json.loads((out / "export.json").read_text())["checkpoint"] == "checkpoint-2"
    assert (out / UNET_FILE).read_bytes() == first
    export_model(run, "checkpoint-4", "diffusers", out=out, overwrite=True)
    assert json.loads((out / "export.json").read_text())["step"] == 4
    assert (out / UNET_FILE).read_bytes() == (run / "checkpoints" / "checkpoint-4" / UNET_FILE).read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # nothing left aside
    models = tmp_path / "models"  # a folder that is no export is never replaced, overwrite or not
    models.mkdir()
    (models / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an export"):
        export_model(run, "checkpoint-4", "diffusers", out=models, overwrite=True)
    assert _files(models) == {"keep.txt"}


def test_a_registered_format_is_offered_and_a_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    def broken(job, folder):
        folder.mkdir(parents=True)
        (folder / "half.bin").write_bytes(b"\0" * 10)
        raise OSError("disk full")

    monkeypatch.setitem(FORMATS, "broken", broken)
    assert "{broken,diffusers,lora,single-file}" in build_parser().format_help()
    with pytest.raises(OSError, match="disk full"):
        export_model(tiny["run"], "checkpoint-2", "broken", out=tmp_path / "x")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------------------------


def test_locate_finds_the_run_of_a_checkpoint_path(tiny):
    run = tiny["run"]
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert locate(str(ckpt), "") == (run, str(ckpt))
    assert locate(str(run / "pipeline"), "") == (run, "pipeline")
    assert locate(str(run), "") == (run, "best")
    assert locate("latest", str(run)) == (run, "latest")


def test_cli_exports_and_refuses_bad_input_in_one_line(tiny, tmp_path, capsys):
    run = tiny["run"]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "cartoonify.export", str(run / "checkpoints" / "checkpoint-2"), "--format", "diffusers",
         "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert f"wrote {out} ({size / 1e6:.1f} MB, diffusers, fp16)" in proc.stdout
    assert json.loads((out / "export.json").read_text())["checkpoint"] == "checkpoint-2"
    assert "`checkpoint-2` (step 2)" in (out / "README.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "cartoonify.export", "checkpoint-99", "--run", str(run), "--format", "diffusers"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ},
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint 'checkpoint-99'") and "checkpoint-2, checkpoint-4" in last
    capsys.readouterr()
    for argv, expected in [
        (["checkpoint-2", "--run", str(run), "--format", "ckpt"], "unknown export format 'ckpt'"),
        (["checkpoint-2", "--run", str(run), "--format", "lora"], "holds full weights, not a LoRA adapter"),
        (["--run", str(tmp_path / "nowhere"), "--format", "diffusers"], "is not a training run"),
        (["checkpoint-2", "--format", "diffusers"], "give its run with --run"),
        (["checkpoint-2", "--run", str(run), "--dtype", "bf16"], "config key 'dtype'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err
    with pytest.raises(SystemExit) as info:
        main(["checkpoint-2", "--bogus", "1"])
    assert info.value.code == 2 and "--bogus" in capsys.readouterr().err
