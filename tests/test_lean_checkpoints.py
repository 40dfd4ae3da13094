"""Lean checkpoints: fp16 weights for evaluation in every checkpoint, the full resume state (fp32 weights,
optimizer, RNG, data position) in ``resume/`` of the newest ``keep_resume_states`` only; resuming stays
exact; checkpoints of the earlier layout still load and resume; the disk plan of the write-up's run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_crash_safety as crash_safety
import torch
from safetensors.torch import load_file

from cartoonify.runs import CheckpointError, list_checkpoints, read_marker, verify_checkpoint, write_marker
from cartoonify.training.run import build_trainer

# the crash-safety harness: its run configs, its uninterrupted reference run, its kill and resume
kill_config, uninterrupted = crash_safety.kill_config, crash_safety.uninterrupted
_kill, _resume_and_compare = crash_safety._kill, crash_safety._resume_and_compare

RESUME_FILES = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "optimizer.safetensors",
                "optimizer.json", "lr_scheduler.json", "grad_scaler.json", "rng_0.safetensors", "rng_0.json",
                "trainer_state.json")


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _run(config) -> tuple[dict, object]:
    """Train ``config`` in this process; returns the fp32 weights at every step and the result."""
    snapshots = {}

    def snapshot(trainer, row):
        snapshots[trainer.global_step] = {"unet": _state(trainer.unwrap(trainer.unet)),
                                          "text_encoder": _state(trainer.unwrap(trainer.text_encoder))}

    result = build_trainer(config, progress=False, callbacks=[snapshot]).run()
    return snapshots, result


@pytest.fixture(scope="module")
def lean_run(kill_config):
    """6 steps, a checkpoint every 2, the default keep_resume_states=1."""
    snapshots, result = _run(kill_config("lean"))
    return {"snapshots": snapshots, "result": result, "run": Path(result.output_dir)}


@pytest.fixture(scope="module")
def keep_two_run(kill_config):
    """The same run with keep_resume_states=2 and an fp32 final pipeline."""
    config = kill_config("keep2", keep_resume_states=2, save_final_pipeline=True, final_pipeline_precision="fp32")
    snapshots, result = _run(config)
    return {"config": config, "snapshots": snapshots, "result": result, "run": Path(result.output_dir)}


def test_only_the_newest_checkpoint_keeps_the_resume_state(lean_run):
    ckpts = list_checkpoints(lean_run["run"])
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for ckpt in ckpts:
        newest = ckpt.name == "checkpoint-6"
        assert (ckpt / "resume").is_dir() == newest
        assert all((ckpt / "resume" / name).is_file() == newest for name in RESUME_FILES)
        assert sorted(p.name for p in ckpt.iterdir()) == sorted(["checkpoint.json", "text_encoder", "unet",
                                                                 *(["resume"] if newest else [])])
        marker = read_marker(ckpt)
        assert marker["resume_state"] == ("resume" if newest else None)
        assert any(f.startswith("resume/") for f in marker["files"]) == newest
        assert verify_checkpoint(ckpt) == []


def test_every_checkpoint_loads_fp16_weights_equal_to_the_training_weights(lean_run):
    from cartoonify.sampling import load_trained_modules

    for step in (2, 4, 6):
        ckpt = lean_run["run"] / "checkpoints" / f"checkpoint-{step}"
        stored = load_file(ckpt / "unet" / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in stored.values()} == {torch.float16}
        modules = load_trained_modules(ckpt)
        for name in ("unet", "text_encoder"):
            sd, snap = modules[name].state_dict(), lean_run["snapshots"][step][name]
            floats = [k for k, v in snap.items() if v.is_floating_point()]
            assert floats and all(sd[k].dtype == torch.float16 for k in floats)
            assert all(torch.equal(sd[k], snap[k].to(torch.float16)) for k in floats), (step, name)
    resume = lean_run["run"] / "checkpoints" / "checkpoint-6" / "resume"
    fp32 = load_file(resume / "unet" / "diffusion_pytorch_model.safetensors")  # what resuming reads
    assert all(torch.equal(fp32[k], v) for k, v in lean_run["snapshots"][6]["unet"].items())


def test_a_finished_run_keeps_no_resume_state_by_default(kill_config):
    """keep_resume_at_end false (the default): the last checkpoint drops its resume state once the run is
    done; extending the run is refused with what to do."""
    config = kill_config("lean-end", max_train_steps=4, keep_resume_at_end=False)
    build_trainer(config, progress=False).run()
    ckpts = list_checkpoints(config.output_dir)
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4"]
    assert not any((c / "resume").exists() for c in ckpts) and all(verify_checkpoint(c) == [] for c in ckpts)
    with pytest.raises(CheckpointError, match="keep_resume_at_end"):
        build_trainer(config.replace(max_train_steps=6, resume_from_checkpoint="latest"), progress=False)


def test_a_checkpoint_with_evaluation_weights_only_is_refused_for_resuming(lean_run, kill_config):
    config = kill_config("lean").replace(max_train_steps=8)
    with pytest.raises(CheckpointError, match=r"checkpoint-4 holds evaluation weights only.*resume from checkpoint-6"):
        build_trainer(config.replace(resume_from_checkpoint="checkpoint-4"), progress=False)
    assert [c.name for c in list_checkpoints(lean_run["run"])] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_sigkill_then_resume_latest_picks_the_newest_resume_state(kill_config, uninterrupted):
    config = kill_config("lean-mid5")
    run = _kill(config, "mid_step", 5)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert not (run / "checkpoints" / "checkpoint-2" / "resume").exists()  # latest must pick checkpoint-4
    _resume_and_compare(config, uninterrupted)  # bit for bit, logs without repeats
    assert [c.name for c in list_checkpoints(run) if (c / "resume").is_dir()] == ["checkpoint-6"]


def test_keep_resume_states_two_and_an_fp32_pipeline(keep_two_run, lean_run):
    run = keep_two_run["run"]
    assert [c.name for c in list_checkpoints(run) if (c / "resume").is_dir()] == ["checkpoint-4", "checkpoint-6"]
    assert all(verify_checkpoint(c) == [] for c in list_checkpoints(run))
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a = load_file(run / "checkpoints" / "checkpoint-6" / "resume" / name)  # the setting changes no result
        b = load_file(lean_run["run"] / "checkpoints" / "checkpoint-6" / "resume" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stored = load_file(keep_two_run["result"].pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(stored[k], v) for k, v in keep_two_run["snapshots"][6]["unet"].items())


def test_a_crash_while_dropping_a_resume_state_leaves_a_valid_checkpoint(keep_two_run, tmp_path, monkeypatch):
    from cartoonify.runs import drop_resume_state, resume_dir

    ckpt = tmp_path / "checkpoint-4"
    shutil.copytree(keep_two_run["run"] / "checkpoints" / "checkpoint-4", ckpt)

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt  # the kill, after the marker was rewritten, before anything was removed

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", crash)
        with pytest.raises(KeyboardInterrupt):
            drop_resume_state(ckpt)
    assert verify_checkpoint(ckpt) == [] and resume_dir(ckpt) is None and (ckpt / "resume").is_dir()
    assert drop_resume_state(ckpt) is False and not (ckpt / "resume").exists()  # the next pass sweeps it
    assert verify_checkpoint(ckpt) == []


def _to_earlier_layout(ckpt: Path) -> None:
    """Rewrite a checkpoint as the earlier code wrote it: fp32 unet/ and text_encoder/, the optimizer, RNG...
    at the top level, and a marker without ``resume_state``."""
    marker = read_marker(ckpt)
    for name in ("unet", "text_encoder"):
        shutil.rmtree(ckpt / name)
    for path in (ckpt / "resume").iterdir():
        path.rename(ckpt / path.name)
    (ckpt / "resume").rmdir()
    (ckpt / "checkpoint.json").unlink()
    info = {k: v for k, v in marker.items() if k not in ("files", "resume_state")}
    write_marker(ckpt, info)


def test_a_checkpoint_of_the_earlier_layout_loads_and_resumes(keep_two_run, lean_run, tmp_path):
    from cartoonify.sampling import load_trained_modules

    run = tmp_path / "old"
    shutil.copytree(keep_two_run["run"], run)
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    shutil.rmtree(run / "pipeline")
    old = run / "checkpoints" / "checkpoint-4"
    _to_earlier_layout(old)
    assert verify_checkpoint(old) == [] and "resume_state" not in read_marker(old)
    modules = load_trained_modules(old)  # for evaluation: its fp32 unet/
    assert all(torch.equal(modules["unet"].state_dict()[k], v) for k, v in keep_two_run["snapshots"][4]["unet"].items())

    config = keep_two_run["config"].replace(output_dir=str(run), keep_resume_states=1, save_final_pipeline=False,
                                            resume_from_checkpoint="latest")
    trainer = build_trainer(config, progress=False)
    assert trainer.resumed_from == old and trainer.global_step == 4
    trainer.run()
    new = run / "checkpoints" / "checkpoint-6" / "resume" / "unet" / "diffusion_pytorch_model.safetensors"
    ref = load_file(lean_run["run"] / "checkpoints" / "checkpoint-6" / "resume" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(load_file(new)[k], v) for k, v in ref.items())  # bit for bit
    # the old checkpoint lost its resume state (the top-level files) and still verifies and loads
    assert sorted(p.name for p in old.iterdir()) == ["checkpoint.json", "text_encoder", "unet"]
    assert verify_checkpoint(old) == [] and read_marker(old)["resume_state"] is None
    assert set(load_trained_modules(old)) == {"unet", "text_encoder"}


def test_disk_plan_of_the_writeup_run():
    from cartoonify.config import TrainConfig
    from cartoonify.training.disk import plan_message, sd15_disk_plan

    plan = sd15_disk_plan()
    trained = 859_520_964 + 123_060_480  # SD1.5's UNet and text encoder
    assert plan["checkpoints"] == plan["kept"] == 8 and plan["resume_kept"] == 1
    assert plan["evaluation_bytes"] == 2 * trained
    assert 4 * trained + 2 * trained < plan["resume_bytes"] < 4 * trained + 2.1 * trained  # fp32 + 8-bit Adam
    assert plan["pipeline_precision"] == "fp16"
    # at the end: 8 x 1.97 GB fp16 + a 2.74 GB fp16 pipeline + images = 18.88 GB (the finished run drops its
    # 5.93 GB resume state); 28.0 GB at the peak, while the last checkpoint is written beside the one before
    # with its resume state; 53.3 GB in the earlier layout
    assert plan["final_bytes"] == 8 * plan["evaluation_bytes"] + plan["pipeline_bytes"] + plan["image_bytes"]
    assert plan["final_bytes"] <= 20e9 and plan["bytes"] < 28.5e9
    assert plan["bytes"] < 0.55 * plan["old_layout_bytes"] and plan["old_layout_bytes"] > 50e9
    assert "fp16 pipeline" in plan_message(plan, None) and "resume state while training" in plan_message(plan, None)
    fp32 = sd15_disk_plan(TrainConfig(final_pipeline_precision="fp32", keep_resume_states=2, keep_resume_at_end=True))
    assert fp32["pipeline_bytes"] == 2 * plan["pipeline_bytes"]
    assert fp32["final_bytes"] - plan["final_bytes"] == plan["pipeline_bytes"] + 2 * plan["resume_bytes"]
    lora = sd15_disk_plan(TrainConfig(train_mode="lora"))
    assert lora["evaluation_bytes"] < 10e6 and lora["resume_bytes"] < 20e6  # megabytes: the adapters only


def test_keep_resume_states_is_checked_and_resumable():
    from cartoonify.config import ConfigError, TrainConfig, resumable_changes

    with pytest.raises(ConfigError, match="keep_resume_states"):
        TrainConfig(keep_resume_states=0).validate()
    with pytest.raises(ConfigError, match="final_pipeline_precision"):
        TrainConfig(final_pipeline_precision="bf16").validate()
    assert {"keep_resume_states", "keep_resume_at_end", "final_pipeline_precision"} <= resumable_changes()
    assert json.loads(json.dumps(TrainConfig().to_dict()))["keep_resume_states"] == 1
