"""The held-out loss: images held out of training, their DreamBooth loss at step 0 and every checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cartoonify.config import ConfigError
from cartoonify.training.heldout import (
    HELDOUT_TIMESTEPS,
    HeldoutInputs,
    choose_holdout,
    heldout_loss,
    read_heldout_log,
)
from cartoonify.training.logs import read_loss_log
from cartoonify.training.run import build_trainer, run_training


def _quick(small_config, **overrides):
    """Checkpoints every 2 steps, no validation images or final pipeline: only the held-out loss."""
    base = {"holdout_images": 2, "max_train_steps": 4, "checkpointing_steps": 2, "num_validation_images": 0,
            "save_final_pipeline": False}
    return small_config(**{**base, **overrides})


def test_choice_is_deterministic_excluded_and_listed(small_config, demo_data):
    paths = sorted(Path(demo_data["instance_dir"]).glob("*.png"))
    chosen = choose_holdout(paths, 2, 42)
    assert chosen == choose_holdout(list(reversed(paths)), 2, 42) and len(set(chosen)) == 2
    assert choose_holdout(paths, 2, 7) != chosen or choose_holdout(paths, 2, 8) != chosen  # the seed chooses
    trainer = build_trainer(_quick(small_config), progress=False)
    assert not set(chosen) & set(trainer.dataset.instance_paths)
    assert len(trainer.dataset.instance_paths) == len(paths) - 2
    listed = json.loads(trainer.layout.holdout.read_text())
    assert listed["seed"] == 42 and listed["count"] == 2 and listed["timesteps"] == list(HELDOUT_TIMESTEPS)
    assert listed["images"] == [p.name for p in chosen]
    klass = sorted(p.name for p in Path(trainer.config.class_dir).iterdir() if p.suffix == ".png")
    assert listed["class_images"] == klass[:2]  # the first class images, sorted


def test_too_large_holdout_is_refused_before_anything_is_written(small_config, demo_data):
    config = _quick(small_config, holdout_images=8)
    with pytest.raises(ConfigError, match=r"'holdout_images'.*8.*images") as err:
        build_trainer(config, progress=False)
    assert str(demo_data["instance_dir"]) in str(err.value)
    assert not Path(config.output_dir).exists()
    with pytest.raises(ConfigError, match="holdout_images"):
        small_config(holdout_images=-1).validate()


def _recompute(model: Path, ckpt: Path | None, config, listed: dict) -> tuple[float, float]:
    """The held-out losses, written out independently: the VAE posterior mean, diffusers' add_noise at the
    fixed timesteps, the noise from torch.Generator().manual_seed(seed) (instance, then class), MSE."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = ckpt if ckpt is not None else model
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet").eval()
    te = CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    gen = torch.Generator().manual_seed(listed["seed"])
    t = torch.tensor(listed["timesteps"])
    out = []
    for folder, names, default in ((config.instance_dir, listed["images"], None),
                                   (config.class_dir, listed["class_images"], config.class_prompt)):
        paths = [Path(folder) / n for n in names]
        pixels = []
        for p in paths:  # the demo images are square at the training resolution: no resize or crop
            arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
            assert arr.shape == (config.resolution, config.resolution, 3)
            pixels.append(torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1))
        captions = [p.with_suffix(".txt") for p in paths]
        prompts = [default or (" ".join(c.read_text().split()) if c.is_file() else config.instance_prompt)
                   for c in captions]
        with torch.no_grad():
            lat = vae.encode(torch.stack(pixels)).latent_dist.mean * vae.config.scaling_factor
            noise = torch.randn((len(paths), len(t), *lat.shape[1:]), generator=gen)
            preds, targets = [], []
            for i in range(len(paths)):
                ids = tok([prompts[i]], padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
                hidden = te(ids)[0].expand(len(t), -1, -1)
                noisy = sched.add_noise(lat[i : i + 1].expand(len(t), -1, -1, -1), noise[i], t)
                preds.append(unet(noisy, t, hidden).sample)
                targets.append(noise[i])
        out.append(F.mse_loss(torch.cat(preds), torch.cat(targets)).item())
    return out[0], out[1]


def test_heldout_loss_equals_an_independent_recomputation(small_config, tiny_model):
    config = _quick(small_config, max_train_steps=2)
    res = run_training(config, progress=False)
    rows = {int(r["step"]): r for r in read_heldout_log(res.heldout_log)}
    assert sorted(rows) == [0, 2]
    listed = json.loads((Path(config.output_dir) / "holdout.json").read_text())
    for step, ckpt in ((0, None), (2, res.checkpoints[-1])):
        inst, klass = _recompute(tiny_model, ckpt, config, listed)
        assert rows[step]["heldout_instance"] == pytest.approx(inst, rel=1e-5)
        assert rows[step]["heldout_class"] == pytest.approx(klass, rel=1e-5)
    assert rows[2]["heldout_instance"] != rows[0]["heldout_instance"]  # training moved it
    assert (res.heldout_instance, res.heldout_class) == (rows[2]["heldout_instance"], rows[2]["heldout_class"])


def test_rows_at_step_0_and_every_checkpoint_and_a_resume_repeats_none(small_config, tmp_path):
    straight = run_training(_quick(small_config, output_dir=str(tmp_path / "straight")), progress=False)
    ref = read_heldout_log(straight.heldout_log)
    assert [r["step"] for r in ref] == [0, 2, 4]
    with Path(straight.heldout_log).open() as fh:
        assert next(csv.reader(fh)) == ["step", "heldout_instance", "heldout_class"]

    first = run_training(_quick(small_config, max_train_steps=2), progress=False)
    log = Path(first.heldout_log)
    assert [r["step"] for r in read_heldout_log(log)] == [0, 2]
    # a kill between the checkpoint and its held-out row: the resumed run measures the checkpoint again
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    second = run_training(_quick(small_config, resume_from_checkpoint="latest"), progress=False)
    rows = read_heldout_log(second.heldout_log)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows == ref  # the same losses: measuring them leaves training bit for bit as it was
    assert [r["loss"] for r in read_loss_log(second.log_csv)] == [r["loss"] for r in read_loss_log(straight.log_csv)]
    third = run_training(_quick(small_config, max_train_steps=6, resume_from_checkpoint="latest"), progress=False)
    assert [r["step"] for r in read_heldout_log(third.heldout_log)] == [0, 2, 4, 6]


def test_resume_uses_the_saved_list_and_names_a_missing_image(small_config, demo_data, tmp_path):
    inst = tmp_path / "inst"
    shutil.copytree(demo_data["instance_dir"], inst)
    config = _quick(small_config, instance_dir=str(inst), max_train_steps=2)
    run_training(config, progress=False)
    holdout = Path(config.output_dir) / "holdout.json"
    listed = json.loads(holdout.read_text())
    others = sorted(p.name for p in inst.glob("*.png") if p.name not in listed["images"])
    listed["images"] = others[:2]  # as if another list had been chosen when the run started
    holdout.write_text(json.dumps(listed))
    trainer = build_trainer(config.replace(max_train_steps=4, resume_from_checkpoint="latest"), progress=False)
    assert {p.name for p in trainer.dataset.instance_paths} == {p.name for p in inst.glob("*.png")} - set(others[:2])
    (inst / others[0]).unlink()
    with pytest.raises(FileNotFoundError, match=others[0]):
        build_trainer(config.replace(max_train_steps=4, resume_from_checkpoint="latest"), progress=False)


def test_holdout_0_writes_neither_list_nor_log(small_config):
    res = run_training(_quick(small_config, holdout_images=0, max_train_steps=2), progress=False)
    assert res.heldout_log is None and res.heldout_instance is None
    assert not (Path(res.output_dir) / "holdout.json").exists()
    assert not (Path(res.output_dir) / "logs" / "heldout_loss.csv").exists()


def test_heldout_loss_is_batch_free_keeps_modes_and_global_rng(tiny_model):
    """The loss does not depend on how many images go through at once, restores train mode, and draws
    nothing from the global RNGs."""
    from cartoonify.models import load_components
    from cartoonify.training.heldout import HeldoutSets, heldout_losses

    parts = load_components(str(tiny_model), variant=None)
    unet, te, sched = parts["unet"], parts["text_encoder"], parts["noise_scheduler"]
    g = torch.Generator().manual_seed(0)
    inputs = HeldoutInputs(torch.randn(3, 4, 8, 8, generator=g), torch.randint(0, 100, (3, 77), generator=g),
                           torch.randn(3, len(HELDOUT_TIMESTEPS), 4, 8, 8, generator=g))
    unet.train(), te.train()
    state = torch.get_rng_state()
    inst, klass = heldout_losses(unet, te, sched, HeldoutSets(inputs, None, batch_size=7))
    assert torch.equal(state, torch.get_rng_state())
    assert unet.training and te.training and klass is None
    unet.eval(), te.eval()
    one = heldout_loss(unet, te, sched, inputs, batch_size=1)
    assert one == pytest.approx(inst, rel=1e-5)
    bf16 = heldout_loss(unet, te, sched, inputs, autocast_dtype=torch.bfloat16)  # the mixed-precision path
    assert bf16 == pytest.approx(inst, rel=5e-2)
