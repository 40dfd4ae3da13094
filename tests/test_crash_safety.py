"""Crash safety: SIGKILL and resume bit for bit, partial saves, NaN, OOM, full disk, unsafe or mismatched
checkpoints."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cartoonify.checkpoint import CheckpointError, verify_checkpoint
from cartoonify.train import (
    CheckpointSaveError,
    DreamBoothTrainer,
    InsufficientDiskError,
    NonFiniteLossError,
    TrainingOutOfMemoryError,
    list_checkpoints,
    read_loss_log,
)

DRIVER = Path(__file__).resolve().parent / "kill_driver.py"
STEPS = 6


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of the trained weights and optimizer state of a checkpoint."""
    names = ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "optimizer.safetensors",
             "optimizer.json", "lr_scheduler.json"]
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def _drive(config, *mode) -> subprocess.CompletedProcess:
    path = Path(config.output_dir).parent / f"{Path(config.output_dir).name}-config.json"
    config.save(path)
    return subprocess.run(
        [sys.executable, str(DRIVER), str(path), *map(str, mode)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )


def _tb_steps(run_dir: Path, tag: str = "loss") -> list[int]:
    """The steps TensorBoard shows for ``tag`` (it honours purge_step after a resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "logs" / "dreambooth"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def kill_config(tiny_model, demo_data, tmp_path_factory):
    from cartoonify.config import TrainConfig

    root = tmp_path_factory.mktemp("kill")

    def make(name: str, **overrides):
        base = dict(
            pretrained_model=str(tiny_model), instance_dir=str(demo_data["instance_dir"]),
            class_dir=str(root / "class"), output_dir=str(root / name), resolution=64, num_class_images=4,
            sample_batch_size=4, class_inference_steps=3, train_batch_size=2, max_train_steps=STEPS,
            checkpointing_steps=2, learning_rate=1e-3, mixed_precision="no", prior_generation_precision="fp32",
            num_validation_images=0, save_final_pipeline=False, report_to="tensorboard",
        )
        return TrainConfig.from_dict({**base, **overrides})

    return make


@pytest.fixture(scope="module")
def uninterrupted(kill_config):
    config = kill_config("straight")
    proc = _drive(config, "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = Path(config.output_dir)
    return {"digest": _digest(run / "checkpoints" / f"checkpoint-{STEPS}"), "log": read_loss_log(run / "logs" / "train_log.csv")}


def _kill_and_resume(kill_config, name, *mode):
    config = kill_config(name)
    killed = _drive(config, *mode)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-1500:]}"
    run = Path(config.output_dir)
    before = [p.name for p in list_checkpoints(run)]
    resumed = _drive(config.replace(resume_from_checkpoint="latest"), "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return run, before


def test_sigkill_mid_step_then_resume_is_bit_identical(kill_config, uninterrupted):
    step = random.Random(7).randint(3, STEPS)  # the kill point, chosen by the test
    run, before = _kill_and_resume(kill_config, "mid", "mid_step", step)
    assert before == [f"checkpoint-{s}" for s in range(2, step, 2)]
    assert _digest(run / "checkpoints" / f"checkpoint-{STEPS}") == uninterrupted["digest"]
    log = read_loss_log(run / "logs" / "train_log.csv")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))  # no duplicated or missing step
    assert [r["loss"] for r in log] == [r["loss"] for r in uninterrupted["log"]]
    assert sorted(set(_tb_steps(run))) == list(range(1, STEPS + 1))
    assert len(_tb_steps(run)) == STEPS  # TensorBoard drops the killed run's steps past the checkpoint


def test_sigkill_during_a_checkpoint_write(kill_config, uninterrupted):
    config = kill_config("insave")
    killed = _drive(config, "in_save", 4, 2)  # after unet/ and text_encoder/ of checkpoint-4
    assert killed.returncode == -9
    run = Path(config.output_dir)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]  # the partial save is not a checkpoint
    assert (run / "checkpoints" / ".tmp-checkpoint-4").is_dir()
    resumed = _drive(config.replace(resume_from_checkpoint="latest"), "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (run / "checkpoints" / ".tmp-checkpoint-4").exists()
    assert _digest(run / "checkpoints" / f"checkpoint-{STEPS}") == uninterrupted["digest"]


@pytest.mark.slow
@pytest.mark.parametrize("step", [1, 2, 5])
def test_more_kill_points(kill_config, uninterrupted, step):
    run, _ = _kill_and_resume(kill_config, f"mid{step}", "mid_step", step)
    assert _digest(run / "checkpoints" / f"checkpoint-{STEPS}") == uninterrupted["digest"]


def test_damaged_checkpoint_is_skipped_on_resume(kill_config):
    config = kill_config("damaged", max_train_steps=4)
    DreamBoothTrainer(config, progress=False).run()
    run = Path(config.output_dir)
    victim = run / "checkpoints" / "checkpoint-4" / "optimizer.safetensors"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert "optimizer.safetensors does not match its checksum" in verify_checkpoint(victim.parent)
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint"):
        trainer = DreamBoothTrainer(config.replace(resume_from_checkpoint="latest", max_train_steps=6), progress=False)
    assert trainer.resumed_from.name == "checkpoint-2" and trainer.global_step == 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(kill_config):
    config = kill_config("nan", max_train_steps=5)

    def poison(trainer, loss):
        return loss * float("nan") if trainer.global_step + 1 == 3 else loss

    with pytest.raises(NonFiniteLossError, match=r"step 3.*learning_rate.*fp16.*checkpoint-2"):
        DreamBoothTrainer(config, progress=False, hooks={"loss": poison}).run()
    ckpts = list_checkpoints(config.output_dir)
    assert [c.name for c in ckpts] == ["checkpoint-2"] and verify_checkpoint(ckpts[0]) == []


def test_out_of_memory_names_the_memory_settings(kill_config):
    config = kill_config("oom", max_train_steps=5)

    def oom(trainer):
        if trainer.global_step + 1 == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingOutOfMemoryError, match=r"after step 2.*gradient_checkpointing=True.*use_8bit_adam=True.*train_batch_size.*train_text_encoder=False"):
        DreamBoothTrainer(config, progress=False, hooks={"after_backward": oom}).run()
    assert verify_checkpoint(list_checkpoints(config.output_dir)[-1]) == []


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(kill_config, kind):
    from safetensors import SafetensorError

    config = kill_config(f"full-{kind}", max_train_steps=5)

    def full(trainer, path):
        if trainer.global_step == 4:
            if kind == "safetensors":  # how safetensors reports ENOSPC
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointSaveError, match=r"checkpoint-4.*disk full.*checkpoint-2 is intact"):
        DreamBoothTrainer(config, progress=False, hooks={"checkpoint_file": full}).run()
    run = Path(config.output_dir)
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-2"]
    assert not list((run / "checkpoints").glob(".tmp-*")) and verify_checkpoint(run / "checkpoints" / "checkpoint-2") == []


def test_not_enough_disk_is_refused_before_training(kill_config, monkeypatch):
    config = kill_config("nodisk")
    real = shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(InsufficientDiskError, match="free"):
        DreamBoothTrainer(config, progress=False).run()
    assert not list_checkpoints(config.output_dir)
    with pytest.warns(RuntimeWarning, match="needs about"):
        DreamBoothTrainer(config.replace(output_dir=config.output_dir + "-warn", disk_check="warn", max_train_steps=1),
                          progress=False).run()


def test_pickle_checkpoints_are_refused(trained_run, tmp_path):
    from cartoonify.sample import load_finetuned

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(trained_run["result"].checkpoints[0], ckpt)
    unet = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(unet), ckpt / "unet" / "diffusion_pytorch_model.bin")
    unet.unlink()
    base = str(trained_run["config"].pretrained_model)
    with pytest.raises(CheckpointError, match=r"pickle.*diffusion_pytorch_model.bin.*allow_pickle=True"):
        load_finetuned(base, ckpt, device="cpu")
    pipe = load_finetuned(base, ckpt, device="cpu", allow_pickle=True)  # the explicit flag
    assert pipe.unet is not None


def test_mismatched_checkpoint_is_refused_with_both_named(trained_run, tmp_path):
    from diffusers import UNet2DConditionModel

    from cartoonify.models import tiny_unet_config
    from cartoonify.sample import load_finetuned

    ckpt = tmp_path / "checkpoint-x"
    shutil.copytree(trained_run["result"].checkpoints[0], ckpt)
    other = UNet2DConditionModel(**{**tiny_unet_config(64), "block_out_channels": (32, 32)})
    shutil.rmtree(ckpt / "unet")
    other.save_pretrained(ckpt / "unet")
    with pytest.raises(CheckpointError, match=r"unet.*block_out_channels: checkpoint \[32, 32\], base \[32, 64\]"):
        load_finetuned(str(trained_run["config"].pretrained_model), ckpt, device="cpu")


def test_nonfinite_gradient_is_not_applied(kill_config):
    """fp32 has no grad scaler to skip an inf gradient: the run stops before the update reaches the weights."""
    config = kill_config("infgrad", max_train_steps=4)
    seen = {}

    def inf_grad(trainer):
        if trainer.global_step + 1 == 4:
            p = next(trainer._unwrap(trainer.unet).parameters())
            p.grad.fill_(float("inf"))
            seen["before"] = p.detach().clone()

    with pytest.raises(NonFiniteLossError, match="gradient norm is .* at step 4"):
        trainer = DreamBoothTrainer(config, progress=False, hooks={"after_backward": inf_grad})
        trainer.run()
    assert [c.name for c in list_checkpoints(config.output_dir)] == ["checkpoint-2"]


def test_resume_refuses_pickle_weights(kill_config):
    config = kill_config("resume-pickle", max_train_steps=2)
    DreamBoothTrainer(config, progress=False).run()
    ckpt = Path(config.output_dir) / "checkpoints" / "checkpoint-2"
    st = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(st), ckpt / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    from cartoonify.checkpoint import write_marker

    write_marker(ckpt, json.loads((ckpt / "checkpoint.json").read_text()))
    with pytest.raises(CheckpointError, match="allow_pickle"):
        DreamBoothTrainer(config.replace(resume_from_checkpoint="latest", max_train_steps=4), progress=False)
