"""Crash safety: SIGKILL and resume bit for bit, partial saves, NaN, OOM, full disk, unsafe or mismatched
checkpoints."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cartoonify.runs import CheckpointError, list_checkpoints, verify_checkpoint, write_marker
from cartoonify.training.callbacks import TrainerCallback
from cartoonify.training.checkpoint import CheckpointSaveError
from cartoonify.training.disk import InsufficientDiskError
from cartoonify.training.errors import NonFiniteLossError, TrainingOutOfMemoryError
from cartoonify.training.logs import read_loss_log
from cartoonify.training.run import build_trainer

DRIVER = Path(__file__).resolve().parent / "kill_driver.py"
STEPS = 6


class Hook(TrainerCallback):
    """One hook point of the callback protocol, from a plain function (fault injection)."""

    def __init__(self, point: str, fn):
        self.point, self.fn = point, fn

    def transform_loss(self, trainer, loss):
        return self.fn(trainer, loss) if self.point == "transform_loss" else loss

    def on_after_backward(self, trainer):
        if self.point == "on_after_backward":
            self.fn(trainer)

    def on_checkpoint_file(self, trainer, path):
        if self.point == "on_checkpoint_file":
            self.fn(trainer, path)


def _trainer(config, *callbacks):
    return build_trainer(config, progress=False, callbacks=callbacks)


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of the trained weights (fp16 for evaluation, fp32 for resuming), optimizer state and random
    generators of a checkpoint."""
    names = ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
             "resume/unet/diffusion_pytorch_model.safetensors", "resume/text_encoder/model.safetensors",
             "resume/optimizer.safetensors", "resume/optimizer.json", "resume/lr_scheduler.json",
             "resume/rng_0.safetensors", "resume/rng_0.json"]
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
            num_validation_images=0, save_final_pipeline=False, report_to="tensorboard", holdout_images=0,
            keep_resume_at_end=True,  # the final checkpoint's resume state is compared bit for bit
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


def _logged_steps(run: Path) -> list[int]:
    return [int(r["step"]) for r in read_loss_log(run / "logs" / "train_log.csv")]


def _kill(config, *mode) -> Path:
    killed = _drive(config, *mode)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-1500:]}"
    return Path(config.output_dir)


def _resume_and_compare(config, uninterrupted) -> None:
    """Resume a killed run, then check it against the uninterrupted one: the final checkpoint bit for bit,
    and the CSV log and TensorBoard events with every step exactly once and the same losses."""
    resumed = _drive(config.replace(resume_from_checkpoint="latest"), "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = Path(config.output_dir)
    assert _digest(run / "checkpoints" / f"checkpoint-{STEPS}") == uninterrupted["digest"]
    log = read_loss_log(run / "logs" / "train_log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, STEPS + 1))  # no duplicated or missing step
    assert [r["loss"] for r in log] == [r["loss"] for r in uninterrupted["log"]]
    assert _tb_steps(run) == list(range(1, STEPS + 1))  # TensorBoard purged the killed run's steps past the checkpoint


# Kill points: each leaves logged steps beyond the last checkpoint, which the resumed run logs again. Without
# the log truncation (LossLog) the CSV repeats them; without TensorBoard's purge_step the events do.
@pytest.mark.parametrize("step", [4])
def test_sigkill_mid_step_then_resume_is_bit_identical(kill_config, uninterrupted, step):
    config = kill_config(f"mid{step}")
    run = _kill(config, "mid_step", step)
    ckpts = [p.name for p in list_checkpoints(run)]
    assert ckpts == [f"checkpoint-{s}" for s in range(2, step, 2)]
    assert _logged_steps(run) == list(range(1, step))  # steps past the last checkpoint were logged
    assert _tb_steps(run) == list(range(1, step))
    assert max(_logged_steps(run)) > int(ckpts[-1].split("-")[1])
    _resume_and_compare(config, uninterrupted)


def test_sigkill_during_a_checkpoint_write(kill_config, uninterrupted):
    config = kill_config("insave", background_saves=False)
    run = _kill(config, "in_save", 4, 2)  # after unet/ and text_encoder/ of checkpoint-4
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]  # the partial save is not a checkpoint
    assert (run / "checkpoints" / ".tmp-checkpoint-4").is_dir()
    assert _logged_steps(run) == [1, 2, 3, 4] and _tb_steps(run) == [1, 2, 3, 4]
    _resume_and_compare(config, uninterrupted)
    assert not (run / "checkpoints" / ".tmp-checkpoint-4").exists()


@pytest.mark.parametrize("after", [2, pytest.param(5, marks=pytest.mark.slow)])  # after unet/ and text_encoder/; after the optimizer's files
def test_sigkill_during_a_background_checkpoint_write(kill_config, uninterrupted, after):
    """The writer thread is killed while training has already gone on to step 5: checkpoint-4 is not a
    checkpoint (its temporary folder is), and the resumed run is bit-identical to the uninterrupted one."""
    config = kill_config(f"inbackground{after}")
    run = _kill(config, "in_background_save", 4, after)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]
    assert (run / "checkpoints" / ".tmp-checkpoint-4").is_dir()
    assert _logged_steps(run) in ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6])  # trained on while checkpoint-4 was written
    _resume_and_compare(config, uninterrupted)
    assert not (run / "checkpoints" / ".tmp-checkpoint-4").exists()


@pytest.mark.slow
@pytest.mark.parametrize("step", [1, 2, 3, 5, 6])
def test_more_kill_points(kill_config, uninterrupted, step):
    config = kill_config(f"mid{step}")
    _kill(config, "mid_step", step)
    _resume_and_compare(config, uninterrupted)


def test_damaged_checkpoint_is_skipped_on_resume(kill_config):
    config = kill_config("damaged", max_train_steps=4, keep_resume_states=2)
    _trainer(config).run()
    run = Path(config.output_dir)
    victim = run / "checkpoints" / "checkpoint-4" / "resume" / "optimizer.safetensors"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert "resume/optimizer.safetensors does not match its checksum" in verify_checkpoint(victim.parent.parent)
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint"):
        trainer = _trainer(config.replace(resume_from_checkpoint="latest", max_train_steps=6))
    assert trainer.resumed_from.name == "checkpoint-2" and trainer.global_step == 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(kill_config):
    config = kill_config("nan", max_train_steps=5)

    def poison(trainer, loss):
        return loss * float("nan") if trainer.global_step + 1 == 3 else loss

    with pytest.raises(NonFiniteLossError, match=r"step 3.*learning_rate.*fp16.*checkpoint-2"):
        _trainer(config, Hook("transform_loss", poison)).run()
    ckpts = list_checkpoints(config.output_dir)
    assert [c.name for c in ckpts] == ["checkpoint-2"] and verify_checkpoint(ckpts[0]) == []


def test_out_of_memory_names_the_memory_settings(kill_config):
    config = kill_config("oom", max_train_steps=5)

    def oom(trainer):
        if trainer.global_step + 1 == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingOutOfMemoryError, match=r"after step 2.*gradient_checkpointing=True.*use_8bit_adam=True.*train_batch_size.*train_text_encoder=False"):
        _trainer(config, Hook("on_after_backward", oom)).run()
    assert verify_checkpoint(list_checkpoints(config.output_dir)[-1]) == []


@pytest.mark.parametrize("kind,background", [("oserror", True), ("safetensors", True), ("oserror", False)])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(kill_config, kind, background):
    """In the background the error surfaces when the trainer next waits for the writer (here: the save at the
    end of the run, step 5), with the same message."""
    from safetensors import SafetensorError

    config = kill_config(f"full-{kind}-{background}", max_train_steps=5, background_saves=background)

    def full(trainer, path):
        if "checkpoint-4" in str(path):
            if kind == "safetensors":  # how safetensors reports ENOSPC
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointSaveError, match=r"checkpoint-4.*disk full.*checkpoint-2 is intact"):
        _trainer(config, Hook("on_checkpoint_file", full)).run()
    run = Path(config.output_dir)
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-2"]
    assert not list((run / "checkpoints").glob(".tmp-*")) and verify_checkpoint(run / "checkpoints" / "checkpoint-2") == []


def test_background_and_synchronous_saves_write_the_same_files(kill_config, uninterrupted):
    """The uninterrupted run saved in the background (the default); the same run saving synchronously writes
    every checkpoint file bit for bit the same."""
    config = kill_config("synchronous", background_saves=False)
    _trainer(config).run()
    run = Path(config.output_dir)
    assert _digest(run / "checkpoints" / f"checkpoint-{STEPS}") == uninterrupted["digest"]
    straight = Path(kill_config("straight").output_dir)
    for step in (2, 4):
        a, b = run / "checkpoints" / f"checkpoint-{step}", straight / "checkpoints" / f"checkpoint-{step}"
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        for f in files:
            if f.name != "checkpoint.json":  # the marker records the saving run's own optimizer name etc.
                assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_not_enough_disk_is_refused_before_training(kill_config, monkeypatch):
    config = kill_config("nodisk")
    real = shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(InsufficientDiskError, match="free"):
        _trainer(config).run()
    assert not list_checkpoints(config.output_dir)
    with pytest.warns(RuntimeWarning, match="needs about"):
        _trainer(config.replace(output_dir=config.output_dir + "-warn", disk_check="warn", max_train_steps=1)).run()


class _Trap:
    """Unpickling this creates the sentinel file: a stand-in for code a malicious pickle would run."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def _plant_pickle(folder: Path, name: str, sentinel: Path) -> None:
    """Replace the safetensors weights of ``folder`` by a pickle file ``name`` that would run code."""
    import pickle

    for st in folder.glob("*.safetensors"):
        st.unlink()
    (folder / name).write_bytes(pickle.dumps({"weights": _Trap(sentinel)}))


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt"])
def test_pickle_checkpoints_are_refused(trained_run, tmp_path, suffix):
    from cartoonify.sampling import load_finetuned

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(trained_run["result"].checkpoints[0], ckpt)
    sentinel = tmp_path / "pickle-ran"
    _plant_pickle(ckpt / "unet", f"diffusion_pytorch_model{suffix}", sentinel)
    base = str(trained_run["config"].pretrained_model)
    with pytest.raises(CheckpointError, match=rf"pickle.*diffusion_pytorch_model\{suffix}.*allow_pickle=True"):
        load_finetuned(base, ckpt, device="cpu")
    assert not sentinel.exists()  # refused before anything was unpickled


def test_pickle_base_model_is_refused(tiny_model, tmp_path):
    from cartoonify.models import load_pipeline

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    sentinel = tmp_path / "pickle-ran"
    _plant_pickle(base / "unet", "diffusion_pytorch_model.bin", sentinel)
    with pytest.raises(CheckpointError, match=r"base.*pickle.*unet/diffusion_pytorch_model.bin"):
        load_pipeline(str(base))
    assert not sentinel.exists()


def test_allow_pickle_loads_a_trusted_pickle(trained_run, tmp_path):
    from safetensors.torch import load_file

    from cartoonify.sampling import load_finetuned

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(trained_run["result"].checkpoints[0], ckpt)
    unet = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(unet)
    torch.save(weights, ckpt / "unet" / "diffusion_pytorch_model.bin")
    unet.unlink()
    pipe = load_finetuned(str(trained_run["config"].pretrained_model), ckpt, device="cpu", allow_pickle=True)
    name, value = next(iter(weights.items()))
    assert torch.equal(pipe.unet.state_dict()[name], value)  # the flag loads the file's weights


def test_mismatched_checkpoint_is_refused_with_both_named(trained_run, tmp_path):
    from diffusers import UNet2DConditionModel

    from cartoonify.models.tiny import tiny_unet_config
    from cartoonify.sampling import load_finetuned

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
            p = next(trainer.unwrap(trainer.unet).parameters())
            p.grad.fill_(float("inf"))
            seen["param"], seen["before"] = p, p.detach().clone()
            seen["state"] = {k: v.clone() for k, v in trainer.optimizer.optimizer.state[p].items()
                             if torch.is_tensor(v)}

    trainer = _trainer(config, Hook("on_after_backward", inf_grad))
    with pytest.raises(NonFiniteLossError, match="gradient norm is .* at step 4"):
        trainer.run()
    assert [c.name for c in list_checkpoints(config.output_dir)] == ["checkpoint-2"]
    p = seen["param"]
    assert torch.equal(p.detach(), seen["before"])  # the weights never saw the update
    assert torch.isfinite(p.detach()).all()
    state = trainer.optimizer.optimizer.state[p]
    assert seen["state"] and all(torch.equal(state[k], v) for k, v in seen["state"].items())  # nor did Adam


def test_resume_refuses_pickle_weights(kill_config):
    config = kill_config("resume-pickle", max_train_steps=2)
    _trainer(config).run()
    ckpt = Path(config.output_dir) / "checkpoints" / "checkpoint-2"
    st = ckpt / "resume" / "unet" / "diffusion_pytorch_model.safetensors"  # the weights resuming reads
    from safetensors.torch import load_file

    torch.save(load_file(st), st.parent / "diffusion_pytorch_model.bin")
    st.unlink()
    write_marker(ckpt, json.loads((ckpt / "checkpoint.json").read_text()))
    with pytest.raises(CheckpointError, match="allow_pickle"):
        _trainer(config.replace(resume_from_checkpoint="latest", max_train_steps=4))
