"""Checkpoint choice (sampling), the scheduler comparison and stylization on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import numpy as np

from cartoonify import comparison
from cartoonify.comparison import compare_schedulers, evals_for_steps, read_timing_csv, steps_for_budget
from cartoonify.config import DEFAULT_SCHEDULERS
from cartoonify.imaging import fit_square, open_rgb
from cartoonify.models import image_to_image, make_scheduler
from cartoonify.rating import RatingStore
from cartoonify.sampling import choose_checkpoint, load_run_pipeline
from cartoonify.stylize import stylize_folder, sweep


@pytest.fixture(scope="module")
def run_pipe(trained_run):
    pipe, label = load_run_pipeline(trained_run["config"].output_dir, "latest", device="cpu")
    return pipe, label


def test_choose_checkpoint(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["config"].output_dir, run)
    assert choose_checkpoint(run, "latest")[1] == "checkpoint-4"
    assert choose_checkpoint(run, "best")[1] == "checkpoint-4"  # no ratings yet: the latest
    store = RatingStore(run)
    for rec in json.loads((run / "validation" / "step-2" / "images.json").read_text())["images"]:
        store.add(f"validation/step-2/{rec['file']}", "alice", 9)
    for rec in json.loads((run / "validation" / "step-4" / "images.json").read_text())["images"]:
        store.add(f"validation/step-4/{rec['file']}", "alice", 3)
    assert choose_checkpoint(run, "best") == (run / "checkpoints" / "checkpoint-2", "checkpoint-2")
    assert choose_checkpoint(run, "pipeline")[1] == "pipeline"
    with pytest.raises(FileNotFoundError, match="checkpoint-2, checkpoint-4"):
        choose_checkpoint(run, "checkpoint-3")


def test_steps_for_an_evaluation_budget(run_pipe):
    pipe, _ = run_pipe
    heun = make_scheduler("heun", pipe.scheduler)
    assert evals_for_steps(heun, 10) == 19  # every step but the last evaluates twice
    assert steps_for_budget(heun, 25) == 13 and evals_for_steps(heun, 13) == 25
    assert steps_for_budget(make_scheduler("euler", pipe.scheduler), 25) == 25


def test_comparison_same_noise_timing_and_files(run_pipe, tmp_path, monkeypatch):
    pipe, label = run_pipe
    calls = []  # one entry per sampling call: (scheduler class, seed, first UNet input)
    sample_one = comparison._sample_one

    def watched(pipe_, prompt, latents, seed, steps, guidance_scale):
        calls.append([type(pipe_.scheduler).__name__, seed, None])
        return sample_one(pipe_, prompt, latents, seed, steps, guidance_scale)

    def grab(module, args, kwargs):
        if calls and calls[-1][2] is None:
            calls[-1][2] = args[0].detach().clone()

    monkeypatch.setattr(comparison, "_sample_one", watched)
    handle = pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    seeds = [5, 6]
    try:
        rows = compare_schedulers(
            pipe, DEFAULT_SCHEDULERS, ["a person, Disney style"], seeds, tmp_path, steps=3, budget="evals",
            progress=False, extra={"checkpoint": label},
        )
    finally:
        handle.remove()
    # the calls of the saved images (each scheduler's first call is an untimed warm-up)
    per_scheduler = len(seeds) + 1
    saved = [c for i, c in enumerate(calls) if i % per_scheduler]
    assert len(saved) == len(DEFAULT_SCHEDULERS) * len(seeds)
    # every sampler's first UNet input of a saved image is that seed's noise (up to the sampler's input scaling)
    for seed in seeds:
        inputs = [(name, x[0]) for name, s, x in saved if s == seed]
        ref = inputs[0][1]
        for name, x in inputs[1:]:
            scale = (x.flatten() @ ref.flatten()) / (ref.flatten() @ ref.flatten())
            torch.testing.assert_close(x, scale * ref, rtol=1e-4, atol=1e-5, msg=f"{name}, seed {seed}")
    other = [x[0] for name, s, x in saved if s == seeds[1]][0]
    assert not torch.allclose(other, [x[0] for name, s, x in saved if s == seeds[0]][0])  # seeds differ
    by_name = {r.scheduler: r for r in rows}
    assert by_name["heun"].steps == 2 and by_name["heun"].model_evals_per_image == 3
    assert by_name["ddim"].model_evals_per_image == 3 and by_name["euler"].steps == 3
    assert all(r.seconds_per_image > 0 for r in rows)
    assert [r.scheduler for r in read_timing_csv(tmp_path / "timing.csv")] == DEFAULT_SCHEDULERS
    meta = json.loads((tmp_path / "heun" / "images.json").read_text())
    assert meta["scheduler"] == "heun" and meta["checkpoint"] == label
    assert meta["images"][0] == {"file": "image-00.png", "prompt": "a person, Disney style", "seed": 5, "nsfw": None}
    # the comparison's images are rateable with the same machinery, grouped by scheduler
    from cartoonify.rating import collect_items

    items = collect_items(tmp_path, pattern="*/images.json", group_key="scheduler")
    assert sorted({i.group for i in items}) == sorted(DEFAULT_SCHEDULERS)


def test_stylize_sweep(run_pipe, demo_data, tmp_path):
    """Each img2img output of a folder sweep is the package's img2img of the photo at its strength and seed."""
    pipe, _ = run_pipe
    photos = sorted(Path(demo_data["photos_dir"]).glob("*.png"))[:1]
    result = stylize_folder(pipe, photos, tmp_path, sweep(["img2img"], [0.5, 1.0], []), prompt="a person, Disney style",
                            steps=4, seed=3, progress=False)
    stem = photos[0].stem
    written = [tmp_path / r["file"] for r in result.records]
    assert [p.name for p in written] == ["img2img-s0.50.png", "img2img-s1.00.png"]
    # the input is the photo as the model saw it; each output is img2img of the photo at its strength and seed
    src = open_rgb(photos[0])
    assert np.array_equal(np.asarray(open_rgb(tmp_path / stem / "input.png")), np.asarray(fit_square(src, 64)))
    for path, strength in zip(written, [0.5, 1.0]):
        ref = image_to_image(pipe, src, "a person, Disney style", strength=strength, seed=3, num_inference_steps=4)
        assert np.array_equal(np.asarray(open_rgb(path)), np.asarray(ref.images[0]))
    meta = json.loads((tmp_path / "stylized.json").read_text())
    assert [r["strength"] for r in meta["images"]] == [0.5, 1.0] and meta["seed"] == 3
    assert [tmp_path / r["file"] for r in meta["images"]] == written
