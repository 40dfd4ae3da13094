"""The benchmark harness runs from the repository root and writes its results (no timing is asserted);
the torchvision stand-in of the reference run transforms images as cartoonify's trainer does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_tiny_benchmark_runs_and_writes_results(tmp_path, cartoonify_home):
    from cartoonify.training.objective import REGIONS

    out = tmp_path / "results"
    committed = REPO_ROOT / "benchmarks" / "results" / "tiny.json"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "tiny", "--warmup", "1", "--steps", "2", "--repeats", "1",
         "--rounds", "1", "--profile", "--only", "default", "--work", str(tmp_path / "work"), "--out", str(out)],
        check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO_ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "tiny.json").read_text())
    row = results["training"][0]
    assert [r["variant"] for r in results["training"]] == ["default"]
    assert "error" not in row, row
    assert row["steps_per_s"] > 0 and row["images_per_s"] > 0 and row["peak_memory_bytes"] > 0
    assert len(row["steps_per_s_repeats"]) == 1 and row["steps_per_s_repeats"][0] > 0
    assert len(row["step_seconds"]) == 2 and row["steps_per_s"] == pytest.approx(2 / sum(row["step_seconds"]))
    assert row["images_per_s"] == pytest.approx(row["steps_per_s"] * 8)  # batch 4 + 4 class images
    assert results["environment"]["versions"]["torch"] and results["settings"]["train_batch_size"] == 4
    assert results["settings"]["instance_dir"] == "<work>/instance"  # no machine paths in the results
    md = (out / "tiny.md").read_text()
    assert "| default |" in md
    # the profile splits a step into the trainer's regions (named by REGIONS), and names the operators
    regions = {r["region"]: r["cpu_ms"] for r in results["profile"]["regions"]}
    assert set(regions) <= set(REGIONS.values()) | {"other"}
    assert {REGIONS["unet"], REGIONS["backward"], REGIONS["optimizer"], "other"} <= set(regions)
    assert regions[REGIONS["backward"]] > 0 and results["profile"]["top_ops"]
    assert f"| {REGIONS['backward']} |" in md
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before  # --out was honoured


def test_torchvision_standin_matches_the_trainers_transforms(tmp_path):
    from benchmarks.standin.torchvision import transforms
    from cartoonify.data.dataset import load_training_image

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(97, 73), (50, 120), (64, 64)]):
        path = tmp_path / f"image-{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        # as diffusers' train_dreambooth.py builds them (--center_crop)
        pipeline = transforms.Compose([
            transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(64), transforms.ToTensor(), transforms.Normalize([0.5], [0.5]),
        ])
        ours = load_training_image(path, 64, center_crop=True)
        theirs = pipeline(Image.open(path).convert("RGB"))
        assert theirs.shape == ours.shape == (3, 64, 64) and theirs.dtype == torch.float32
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    assert transforms.RandomCrop(32)(Image.new("RGB", (50, 40))).size == (32, 32)

    # the launcher runs a script with the stand-in importable, after diffusers and transformers found none
    script = tmp_path / "script.py"
    script.write_text(
        "import json, sys\nfrom torchvision import transforms\n"
        "import torchvision, diffusers.utils, transformers.utils\n"
        "json.dump({'file': torchvision.__file__, 'argv': sys.argv[1:], 'resize': transforms.Resize.__module__,\n"
        "           'diffusers': diffusers.utils.is_torchvision_available(),\n"
        "           'transformers': transformers.utils.is_torchvision_available()}, open(sys.argv[1], 'w'))\n"
    )
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.standin.launch", str(script), str(report)],
                          check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(report.read_text())
    assert Path(seen["file"]).parent == REPO_ROOT / "benchmarks" / "standin" / "torchvision"
    assert seen["argv"] == [str(report)] and seen["resize"] == "torchvision.transforms"
    assert seen["diffusers"] is False and seen["transformers"] is False


def test_results_are_written_as_they_come_and_the_budget_stops_cleanly(tmp_path):
    """The recorder rewrites the JSON and table after every update; once the budget is spent, nothing more
    starts and what was skipped is recorded (a fake clock: no waiting)."""
    from benchmarks.record import BUDGET_MARGIN, Recorder

    now = [0.0]
    rec = Recorder(tmp_path, "run", budget=60, clock=lambda: now[0])
    rec.update(config="tiny", settings={"steps": 2, "warmup": 1, "repeats": 1}, training=[],
               environment={"machine": {}, "versions": {}})
    assert json.loads((tmp_path / "run.json").read_text())["training"] == []
    row = {"variant": "default", "steps_per_s": 2.0, "images_per_s": 16.0, "peak_memory_bytes": 2**20}
    rec.update(training=[row])
    assert json.loads((tmp_path / "run.json").read_text())["training"] == [row]  # on disk before the next one
    assert "| default | 2.00 |" in (tmp_path / "run.md").read_text()
    now[0] = 60 - BUDGET_MARGIN - 1
    assert not rec.skip("validation") and rec.remaining() == pytest.approx(1)
    now[0] = 60 - BUDGET_MARGIN
    assert rec.skip("validation") and rec.skip("profile")
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["skipped_for_budget"] == ["validation", "profile"] and saved["budget_s"] == 60
    assert "validation; profile" in (tmp_path / "run.md").read_text()


def test_a_measurement_past_the_budget_is_stopped_and_marked(tmp_path):
    import argparse

    from benchmarks.workers import run_worker
    from cartoonify.config import TrainConfig

    args = argparse.Namespace(warmup=1, steps=1, repeats=1)
    row = run_worker("train", "default", TrainConfig(output_dir=str(tmp_path / "x")), {}, args, timeout=0.5)
    assert row["variant"] == "default" and "stopped at the budget" in row["error"]


def test_recipe_extrapolation_scales_each_stage_by_its_count():
    from benchmarks.recipe import FULL, extrapolate

    stages = {"class_images": {"seconds": 32.0, "count": 64}, "setup": {"seconds": 5.0},
              "training_steps": {"seconds": 40.0, "count": 200}, "checkpoint_saves": {"seconds": 6.0, "count": 2},
              "validation": {"seconds": 8.0, "count": 2}, "final_pipeline": {"seconds": 3.0}}
    full = extrapolate(stages)
    expected = {"class_images": 0.5 * FULL["class_images"], "setup": 5.0, "training_steps": 0.2 * FULL["steps"],
                "checkpoint_saves": 3.0 * FULL["checkpoints"], "validation": 4.0 * FULL["validations"],
                "final_pipeline": 3.0}
    assert full["seconds"] == pytest.approx(expected)
    assert full["total_seconds"] == pytest.approx(sum(expected.values()))
    assert sum(full["share"].values()) == pytest.approx(1.0)


def test_stage_clock_times_saves_and_validations_through_the_callbacks(small_config):
    from benchmarks.recipe import StageClock
    from cartoonify.training.run import build_trainer

    clock = StageClock()
    config = small_config(max_train_steps=4, checkpointing_steps=2, num_validation_images=1,
                          validation_inference_steps=2, save_final_pipeline=True)
    build_trainer(config, progress=False, callbacks=[clock]).run()
    assert len(clock.saves) == 2 and len(clock.validations) == 2
    assert all(s > 0 for s in clock.saves + clock.validations) and clock.final > 0


def test_gpu_script_names_only_known_variants_and_fits_its_budgets():
    """A typo in benchmarks/gpu.sh would cost a device lease: every --only name is an sd15 variant, each sd15
    variant is run by one of its calls, and the budgets add up to the 8 minutes it promises."""
    import re
    import shlex

    from benchmarks.suite import SD15_VARIANTS

    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh").read_text()
    commands = [shlex.split(c.replace("\\\n", " ")) for c in re.findall(r"python3 -m benchmarks\.bench (?:.|\\\n)*?(?<!\\)\n",
                                                                          script)]
    named = []
    for argv in commands:
        if "--only" in argv:
            i = argv.index("--only") + 1
            while i < len(argv) and not argv[i].startswith("-"):
                named.append(argv[i])
                i += 1
    assert named and all(n in SD15_VARIANTS for n in named), [n for n in named if n not in SD15_VARIANTS]
    assert sorted(named) == sorted(SD15_VARIANTS)  # each once
    fixed = [float(argv[argv.index("--budget") + 1]) for argv in commands if argv[argv.index("--budget") + 1].isdigit()]
    assert sum(fixed) <= 470 and re.search(r"left=\$\(\( 470 - ", script)
