"""The DreamBooth trainer on the embedded tiny model (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cartoonify.runs import list_checkpoints
from cartoonify.training.errors import RunExistsError
from cartoonify.training.logs import read_loss_log
from cartoonify.training.objective import dreambooth_loss, training_step
from cartoonify.training.run import build_trainer, run_training


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_prior_preservation_loss_on_a_fixed_batch():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 4, 8, 8, generator=g)
    target = torch.randn(6, 4, 8, 8, generator=g)
    loss, inst, prior = dreambooth_loss(pred, target, True, prior_loss_weight=0.5)
    p, t = pred.numpy(), target.numpy()
    assert inst.item() == pytest.approx(_mse(p[:3], t[:3]), rel=1e-6)
    assert prior.item() == pytest.approx(_mse(p[3:], t[3:]), rel=1e-6)
    assert loss.item() == pytest.approx(_mse(p[:3], t[:3]) + 0.5 * _mse(p[3:], t[3:]), rel=1e-6)
    loss, inst, prior = dreambooth_loss(pred, target, False)
    assert prior is None and loss.item() == pytest.approx(_mse(p, t), rel=1e-6)


def test_training_step_loss_equals_independent_computation(tiny_model, demo_data):
    """training_step's loss == MSE recomputed by hand from the same random draws."""
    from cartoonify.data.dataset import load_training_image
    from cartoonify.models import load_components

    parts = load_components(str(tiny_model), revision="main", variant=None)
    unet, te, vae, sched = parts["unet"], parts["text_encoder"], parts["vae"], parts["noise_scheduler"]
    images = sorted(Path(demo_data["instance_dir"]).glob("*.png"))[:4]
    pixels = torch.stack([load_training_image(p, 64) for p in images])
    ids = parts["tokenizer"](["a b"] * 2 + ["c"] * 2, padding="max_length", max_length=77, return_tensors="pt").input_ids
    batch = {"pixel_values": pixels, "input_ids": ids}
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        loss, inst, prior = training_step(
            unet, te, vae, sched, batch, gen, with_prior_preservation=True, prior_loss_weight=1.0
        )
        # independent: replay the draws (latent sample, noise, timesteps) and the forward diffusion by hand
        g = torch.Generator().manual_seed(123)
        dist = vae.encode(pixels).latent_dist
        lat = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, 1000, (4,), generator=g)
        abar = torch.cumprod(1 - sched.betas, 0)[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * lat + (1 - abar).sqrt() * noise
        pred = unet(noisy, t, te(ids)[0]).sample.numpy()
    n = noise.numpy()
    assert inst.item() == pytest.approx(_mse(pred[:2], n[:2]), rel=1e-4)
    assert prior.item() == pytest.approx(_mse(pred[2:], n[2:]), rel=1e-4)
    assert loss.item() == pytest.approx(_mse(pred[:2], n[:2]) + _mse(pred[2:], n[2:]), rel=1e-4)


def test_v_prediction_target():
    from diffusers import DDPMScheduler

    from cartoonify.training.objective import noise_target

    s = DDPMScheduler(prediction_type="v_prediction")
    lat, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 900])
    abar = torch.cumprod(1 - s.betas, 0)[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * lat
    torch.testing.assert_close(noise_target(s, lat, noise, t), expected)


def test_unet_and_text_encoder_change_vae_does_not(trained_run):
    tr, initial = trained_run["trainer"], trained_run["initial"]
    unet = tr.unwrap(tr.unet).state_dict()
    te = tr.unwrap(tr.text_encoder).state_dict()
    changed = lambda new, old: sum(not torch.equal(new[k], old[k]) for k in old)  # noqa: E731
    assert changed(unet, initial["unet"]) > 0.9 * len(unet)
    layer_keys = [k for k in initial["text_encoder"] if ".layers." in k]
    assert sum(not torch.equal(te[k], initial["text_encoder"][k]) for k in layer_keys) == len(layer_keys)
    assert changed(tr.vae.state_dict(), initial["vae"]) == 0
    assert all(not p.requires_grad for p in tr.vae.parameters())


def test_optimizer_is_8bit_and_lr_constant(trained_run):
    import bitsandbytes as bnb

    tr = trained_run["trainer"]
    assert isinstance(tr.optimizer.optimizer, bnb.optim.AdamW8bit)
    assert trained_run["result"].optimizer.endswith("AdamW8bitFusedSmall")  # the default fuse_small_adam_updates
    big = [p for g in tr.optimizer.optimizer.param_groups for p in g["params"] if p.numel() >= 4096]
    state = tr.optimizer.optimizer.state[big[0]]
    assert state["state1"].dtype == torch.uint8  # 8-bit moments
    rows = read_loss_log(trained_run["result"].log_csv)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {r["lr"] for r in rows} == {trained_run["config"].learning_rate}
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["loss_prior"]) for r in rows)
    assert all(r["loss"] == pytest.approx(r["loss_instance"] + r["loss_prior"], rel=1e-5) for r in rows)


def test_fallback_to_torch_adamw_when_bitsandbytes_fails(monkeypatch):
    import builtins

    from cartoonify.config import TrainConfig
    from cartoonify.training.optim import build_optimizer

    real_import = builtins.__import__

    def fail(name, *a, **k):
        if name == "bitsandbytes":
            raise ImportError("no native library")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fail)
    with pytest.warns(RuntimeWarning, match="falling back to torch.optim.AdamW"):
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], TrainConfig())
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 1e-6 and opt.defaults["weight_decay"] == 1e-2


def test_checkpoints_at_configured_steps_and_reload(trained_run):
    from cartoonify.sampling import load_trained_modules

    run_dir = Path(trained_run["config"].output_dir)
    ckpts = list_checkpoints(run_dir)
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4"]
    for ckpt in ckpts:
        step = int(ckpt.name.split("-")[1])
        assert (ckpt / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert (ckpt / "text_encoder" / "model.safetensors").is_file()
        resume = ckpt / "resume"
        names = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "optimizer.safetensors",
                 "optimizer.json", "lr_scheduler.json", "grad_scaler.json", "rng_0.safetensors", "rng_0.json",
                 "trainer_state.json")
        for name in names:  # what resume needs, in safetensors and JSON only: the newest checkpoint's alone
            assert (resume / name).is_file() == (step == 4), name
        assert not [p for p in ckpt.rglob("*") if p.suffix in (".bin", ".pkl", ".pt")]
        from cartoonify.runs import verify_checkpoint

        assert verify_checkpoint(ckpt) == []
        marker = json.loads((ckpt / "checkpoint.json").read_text())
        assert marker["global_step"] == step
        modules = load_trained_modules(ckpt)
        snap = trained_run["snapshots"][step]
        for name in ("unet", "text_encoder"):  # fp16 for evaluation
            sd = modules[name].state_dict()
            assert all(torch.equal(sd[k], snap[name][k].half()) for k in snap[name])
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    # validation at every checkpoint, with the NSFW flag recorded per image
    for step in (2, 4):
        vdir = run_dir / "validation" / f"step-{step}"
        meta = json.loads((vdir / "images.json").read_text())
        assert meta["step"] == step and meta["scheduler"] == "PNDMScheduler"
        assert [r["seed"] for r in meta["images"]] == [42, 43]
        assert all((vdir / r["file"]).is_file() and "nsfw" in r for r in meta["images"])
        assert (vdir / "grid.png").is_file()
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved == trained_run["config"].to_dict()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["versions"]["torch"] and info["versions"]["diffusers"] and "commit" in info["git"]


def test_final_pipeline_loads(trained_run):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe_dir = trained_run["result"].pipeline_dir
    stored = load_file(pipe_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}  # final_pipeline_precision="fp16"
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir)
    sd = pipe.unet.state_dict()
    snap = trained_run["snapshots"][4]["unet"]
    assert all(torch.equal(sd[k], snap[k].half().float()) for k in snap)
    te = pipe.text_encoder.state_dict()
    assert all(torch.equal(te[k], v.half().float()) for k, v in trained_run["snapshots"][4]["text_encoder"].items())
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # the model's own sampler, not the DDPM noise one
    out = pipe("a person, Disney style", num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)


def test_existing_run_is_not_overwritten(trained_run):

    with pytest.raises(RunExistsError, match="resume_from_checkpoint"):
        run_training(trained_run["config"], progress=False)


def test_resume_continues_from_latest(small_config, trained_run):
    """2 steps, then a resume to 4: the weights equal the uninterrupted 4-step run's, bit for bit."""
    from cartoonify.config import ConfigError
    from cartoonify.sampling import load_trained_modules

    first = run_training(small_config(max_train_steps=2, num_validation_images=0, save_final_pipeline=False), progress=False)
    assert first.global_step == 2
    second = run_training(
        small_config(max_train_steps=4, num_validation_images=0, resume_from_checkpoint="latest"), progress=False
    )
    assert second.global_step == 4 and second.steps_run == 2
    rows = read_loss_log(second.log_csv)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    straight = read_loss_log(trained_run["result"].log_csv)
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight]
    resumed = load_trained_modules(second.checkpoints[-1] / "resume")  # the fp32 weights, bit for bit
    for name in ("unet", "text_encoder"):
        sd = resumed[name].state_dict()
        assert all(torch.equal(sd[k], v) for k, v in trained_run["snapshots"][4][name].items()), name
    with pytest.raises(ConfigError, match="learning_rate"):
        run_training(small_config(max_train_steps=6, learning_rate=0.5, resume_from_checkpoint="latest"), progress=False)


def test_checkpoints_total_limit(small_config):

    res = run_training(
        small_config(max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=2, num_validation_images=0,
                     save_final_pipeline=False),
        progress=False,
    )
    assert [c.name for c in list_checkpoints(res.output_dir)] == ["checkpoint-4", "checkpoint-6"]


def test_cli_subprocess_and_identical_validation(trained_run, tmp_path):
    """`python -m cartoonify.train` runs the same config; its validation images equal the fixture's."""
    config = trained_run["config"].replace(output_dir=str(tmp_path / "cli"), report_to="none")
    cfg_path = config.save(tmp_path / "config.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cartoonify.train", "--config", str(cfg_path), "--save_final_pipeline", "false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 4 steps" in proc.stdout
    a = Path(trained_run["config"].output_dir) / "validation"
    b = tmp_path / "cli" / "validation"
    for step in ("step-2", "step-4"):
        for name in ("image-00.png", "image-01.png"):
            assert (a / step / name).read_bytes() == (b / step / name).read_bytes()


def test_cli_refuses_bad_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cartoonify.train", "--max_train_step", "3"], capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "max_train_step" in proc.stderr


def test_fp16_falls_back_on_cpu_with_warning():
    from cartoonify.training.setup import resolve_mixed_precision

    with pytest.warns(RuntimeWarning, match="fp16"):
        assert resolve_mixed_precision("fp16", torch.device("cpu")) == "no"
    assert resolve_mixed_precision("bf16", torch.device("cpu")) == "bf16"


def test_validation_records_safety_checker_flags(tmp_path, small_config):
    """With a safety checker that flags everything, validation images are black and marked NSFW."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from cartoonify.models import build_tiny

    model = build_tiny(tmp_path / "tiny_safe", with_safety_checker=True)
    checker = StableDiffusionSafetyChecker.from_pretrained(model / "safety_checker")
    checker.concept_embeds_weights.data.fill_(-10.0)  # every image is over the threshold
    checker.save_pretrained(model / "safety_checker", safe_serialization=True)
    res = run_training(
        small_config(pretrained_model=str(model), max_train_steps=1, checkpointing_steps=1, output_dir=str(tmp_path / "r"),
                     class_dir=str(tmp_path / "cls"), save_final_pipeline=False),
        progress=False,
    )
    vdir = res.validation_dirs[0]
    meta = json.loads((vdir / "images.json").read_text())
    assert [r["nsfw"] for r in meta["images"]] == [True, True]
    from PIL import Image

    assert all(np.asarray(Image.open(vdir / r["file"])).max() == 0 for r in meta["images"])


def test_frozen_text_encoder_accumulation_random_crop_no_prior(small_config, tiny_model):
    """The other branches of the loop: a frozen text encoder, gradient accumulation, random crops, no
    prior preservation, and the default fp16 that falls back to fp32 on CPU with a warning."""
    from cartoonify.models import load_components

    cfg = small_config(
        train_text_encoder=False,
        gradient_accumulation_steps=2,
        center_crop=False,
        with_prior_preservation=False,
        max_train_steps=3,
        checkpointing_steps=2,
        num_validation_images=1,
        mixed_precision="fp16",
    )
    with pytest.warns(RuntimeWarning, match="fp16"):
        trainer = build_trainer(cfg, progress=False)
    assert trainer.accelerator.mixed_precision == "no"
    assert not any(p.requires_grad for p in trainer.text_encoder.parameters())
    res = trainer.run()
    assert trainer.micro_step == 6 and res.global_step == 3
    # the run ends off the checkpoint grid (3 % 2): a final checkpoint and validation are still written
    assert [c.name for c in res.checkpoints] == ["checkpoint-2", "checkpoint-3"]
    assert [d.name for d in res.validation_dirs] == ["step-2", "step-3"]
    assert not (res.checkpoints[-1] / "text_encoder").exists()
    rows = read_loss_log(res.log_csv)
    assert all(np.isnan(r["loss_prior"]) for r in rows)
    assert [r["epoch"] for r in rows] == [0, 0, 1]  # 8 images, batches of 2: 4 micro-batches (2 steps) an epoch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(res.pipeline_dir)
    base = load_components(str(tiny_model), variant=None)["text_encoder"].state_dict()
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v.half().float() if v.is_floating_point() else v)
               for k, v in base.items())  # the frozen base text encoder, in the fp16 pipeline
    assert pipe("x", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


def test_bf16_on_cpu_trains_and_validates(small_config):

    res = run_training(
        small_config(mixed_precision="bf16", max_train_steps=1, checkpointing_steps=1, save_final_pipeline=False),
        progress=False,
    )
    meta = json.loads((res.validation_dirs[0] / "images.json").read_text())
    assert len(meta["images"]) == 2


def test_corrupt_image_stops_before_training(small_config, demo_data, tmp_path):
    import shutil

    from cartoonify.imaging import ImageLoadError

    inst = tmp_path / "inst"
    shutil.copytree(demo_data["instance_dir"], inst)
    (inst / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageLoadError, match="broken.png"):
        run_training(small_config(instance_dir=str(inst), output_dir=str(tmp_path / "r")), progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cli_reports_config_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cartoonify.train", "--resolution", "500", "--output_dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "'resolution'" in proc.stderr and "Traceback" not in proc.stderr


def test_cached_latents_match_per_step_encoding(small_config, tmp_path):
    """The latent cache draws the same posterior samples as encoding every step (diffusers' way)."""

    runs = {}
    for cached in (True, False):
        cfg = small_config(cache_latents=cached, max_train_steps=3, checkpointing_steps=3, num_validation_images=0,
                           save_final_pipeline=False, output_dir=str(tmp_path / f"cached-{cached}"))
        trainer = build_trainer(cfg, progress=False)
        assert (trainer.latent_cache is not None) == cached
        assert ("pixel_values" in next(iter(trainer.dataloader))) == (not cached)
        res = trainer.run()
        runs[cached] = (read_loss_log(res.log_csv), trainer.unwrap(trainer.unet).state_dict())
    (rows_c, unet_c), (rows_u, unet_u) = runs[True], runs[False]
    for a, b in zip(rows_c, rows_u):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for k in unet_u:
        torch.testing.assert_close(unet_c[k], unet_u[k], rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_mixed_precision_on_cuda(small_config):
    """The write-up's precision on a GPU: fp16 autocast with fp32 trainable weights and a grad scaler."""
    trainer = build_trainer(small_config(mixed_precision="fp16", max_train_steps=2, checkpointing_steps=2,
                                         num_validation_images=1, save_final_pipeline=False), progress=False)
    assert trainer.accelerator.mixed_precision == "fp16" and trainer.accelerator.scaler is not None
    assert all(p.dtype == torch.float32 for p in trainer.unwrap(trainer.unet).parameters())
    res = trainer.run()
    rows = read_loss_log(res.log_csv)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert verify_checkpoint_ok(res.checkpoints[-1])


def verify_checkpoint_ok(folder) -> bool:
    from cartoonify.runs import verify_checkpoint

    return verify_checkpoint(folder) == []
