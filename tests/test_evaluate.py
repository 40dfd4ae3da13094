"""Checkpoint choice, the scheduler comparison and stylization on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cartoonify.evaluate import (
    compare_schedulers,
    evals_for_steps,
    load_run_pipeline,
    read_timing_csv,
    resolve_checkpoint,
    steps_for_budget,
    stylize_photos,
)
from cartoonify.rating import RatingStore
from cartoonify.schedulers import make_scheduler


@pytest.fixture(scope="module")
def run_pipe(trained_run):
    pipe, label = load_run_pipeline(trained_run["config"].output_dir, "latest", device="cpu")
    return pipe, label


def test_resolve_checkpoint(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["config"].output_dir, run)
    assert resolve_checkpoint(run, "latest")[1] == "checkpoint-4"
    assert resolve_checkpoint(run, "best")[1] == "checkpoint-4"  # no ratings yet: the latest
    store = RatingStore(run)
    for rec in json.loads((run / "validation" / "step-2" / "images.json").read_text())["images"]:
        store.add(f"validation/step-2/{rec['file']}", "alice", 9)
    for rec in json.loads((run / "validation" / "step-4" / "images.json").read_text())["images"]:
        store.add(f"validation/step-4/{rec['file']}", "alice", 3)
    assert resolve_checkpoint(run, "best") == (run / "checkpoints" / "checkpoint-2", "checkpoint-2")
    assert resolve_checkpoint(run, "pipeline")[1] == "pipeline"
    with pytest.raises(FileNotFoundError, match="checkpoint-2, checkpoint-4"):
        resolve_checkpoint(run, "checkpoint-3")


def test_steps_for_an_evaluation_budget(run_pipe):
    pipe, _ = run_pipe
    heun = make_scheduler("heun", pipe.scheduler)
    assert evals_for_steps(heun, 10) == 19  # every step but the last evaluates twice
    assert steps_for_budget(heun, 25) == 13 and evals_for_steps(heun, 13) == 25
    assert steps_for_budget(make_scheduler("euler", pipe.scheduler), 25) == 25


def test_comparison_same_noise_timing_and_files(run_pipe, tmp_path):
    pipe, label = run_pipe
    first_inputs = {}

    def grab(module, args, kwargs):
        first_inputs.setdefault(type(pipe.scheduler).__name__, args[0].detach().clone())

    handle = pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        rows = compare_schedulers(
            pipe, ["ddim", "euler", "heun"], ["a person, Disney style"], [5], tmp_path, steps=3, budget="evals",
            progress=False, extra={"checkpoint": label},
        )
    finally:
        handle.remove()
    # the first UNet input of each sampler is the same seed-5 noise (up to each sampler's input scaling)
    ref = first_inputs["DDIMScheduler"][0]
    for name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler"):
        x = first_inputs[name][0]
        scale = (x.flatten() @ ref.flatten()) / (ref.flatten() @ ref.flatten())
        torch.testing.assert_close(x, scale * ref, rtol=1e-4, atol=1e-5)
    by_name = {r.scheduler: r for r in rows}
    assert by_name["heun"].steps == 2 and by_name["heun"].model_evals_per_image == 3
    assert by_name["ddim"].model_evals_per_image == 3 and by_name["euler"].steps == 3
    assert all(r.seconds_per_image > 0 for r in rows)
    assert [r.scheduler for r in read_timing_csv(tmp_path / "timing.csv")] == ["ddim", "euler", "heun"]
    meta = json.loads((tmp_path / "heun" / "images.json").read_text())
    assert meta["scheduler"] == "heun" and meta["checkpoint"] == label
    assert meta["images"] == [{"file": "image-00.png", "prompt": "a person, Disney style", "seed": 5, "nsfw": None}]
    # the comparison's images are rateable with the same machinery, grouped by scheduler
    from cartoonify.rating import collect_items

    items = collect_items(tmp_path, pattern="*/images.json", group_key="scheduler")
    assert sorted({i.group for i in items}) == ["ddim", "euler", "heun"]


def test_stylize_sweep(run_pipe, demo_data, tmp_path):
    pipe, _ = run_pipe
    photos = sorted(Path(demo_data["photos_dir"]).glob("*.png"))[:1]
    written = stylize_photos(pipe, photos, tmp_path, prompt="a person, Disney style", strengths=[0.5, 1.0], steps=4)
    stem = photos[0].stem
    assert [p.name for p in written[stem]] == ["strength-0.50.png", "strength-1.00.png"]
    assert (tmp_path / stem / "input.png").is_file()
    meta = json.loads((tmp_path / "stylized.json").read_text())
    assert [r["strength"] for r in meta["images"]] == [0.5, 1.0]
