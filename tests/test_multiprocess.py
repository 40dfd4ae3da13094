"""Several processes, as a user launches them: ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2`` (gloo on
CPU). A 2-process run saves both processes' generators and resumes bit for bit; copies that do not see each
other are refused before they write anything; a checkpoint is not resumed by another number of processes
unless allowed; a write error in one process's part of a save stops the save in both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_crash_safety as crash_safety
import torch

from cartoonify.runs import list_checkpoints, read_marker

pytestmark = pytest.mark.slow  # 2-process runs (about a minute): in CI's `make test-slow`

kill_config = crash_safety.kill_config
DRIVER = crash_safety.DRIVER
STEPS = 6


def _launch(config, *mode, processes: int = 2, use_cpu: bool = True, timeout: int = 600):
    """``torchrun --nproc_per_node N tests/kill_driver.py CONFIG MODE...`` (``ACCELERATE_USE_CPU=1`` when
    ``use_cpu``); returns the finished process."""
    path = Path(config.output_dir).parent / f"{Path(config.output_dir).name}-{len(mode)}-config.json"
    config.save(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           str(DRIVER), str(path), *map(str, mode or ("none",))]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _files(ckpt: Path) -> dict:
    """Every file of a checkpoint by its SHA-256 (the marker's record)."""
    return read_marker(ckpt)["files"]


@pytest.fixture(scope="module")
def two_process_run(kill_config):
    """6 steps in 2 processes, a checkpoint every 2; the reference for the resume."""
    config = kill_config("mp-straight", max_train_steps=STEPS, train_batch_size=1)
    proc = _launch(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config


def test_two_processes_train_and_save_every_rank(two_process_run):
    run = Path(two_process_run.output_dir)
    ckpts = list_checkpoints(run)
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    newest = ckpts[-1]
    assert read_marker(newest)["processes"] == 2
    files = _files(newest)
    for rank in (0, 1):
        assert f"resume/rng_{rank}.json" in files and f"resume/rng_{rank}.safetensors" in files
    from safetensors.torch import load_file

    a, b = (load_file(newest / "resume" / f"rng_{rank}.safetensors") for rank in (0, 1))
    assert a.keys() == b.keys() and not torch.equal(a["s.generator"], b["s.generator"])  # noise: seed + rank
    info = json.loads((run / "run_info.json").read_text())
    assert info  # written once, by the main process
    class_images = [p for p in Path(two_process_run.class_dir).iterdir() if p.suffix == ".png"]
    assert len(class_images) == two_process_run.num_class_images  # generated once, by the main process
    rows = (run / "logs" / "train_log.csv").read_text().splitlines()
    assert len(rows) == STEPS + 1  # one header, one row per step: only the main process logs


def test_resume_with_two_processes_is_bit_identical(kill_config, two_process_run):
    config = kill_config("mp-resumed", max_train_steps=4, train_batch_size=1)
    first = _launch(config)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _launch(config.replace(max_train_steps=STEPS, resume_from_checkpoint="latest"))
    assert second.returncode == 0, second.stderr[-3000:]
    name = f"checkpoint-{STEPS}"
    resumed, straight = Path(config.output_dir) / "checkpoints" / name, Path(two_process_run.output_dir) / "checkpoints" / name
    assert _files(resumed) == _files(straight)  # weights, optimizer, both processes' generators: bit for bit
    log = lambda run: (Path(run) / "logs" / "train_log.csv").read_text().splitlines()  # noqa: E731
    losses = lambda rows: [r.split(",")[:3] for r in rows]  # noqa: E731  step, loss, instance loss
    assert losses(log(config.output_dir)) == losses(log(two_process_run.output_dir))


def test_racing_copies_are_refused_before_writing(kill_config):
    """torchrun on CPU without ACCELERATE_USE_CPU: accelerate sees one process in each copy."""
    config = kill_config("mp-race", max_train_steps=2, train_batch_size=1)
    proc = _launch(config, use_cpu=False)
    assert proc.returncode != 0
    assert "WORLD_SIZE=2" in proc.stderr and "ACCELERATE_USE_CPU=1 torchrun" in proc.stderr
    assert not Path(config.output_dir).exists()


def test_another_number_of_processes_is_refused_unless_allowed(kill_config, two_process_run, tmp_path):
    from cartoonify.runs import CheckpointError
    from cartoonify.training.run import build_trainer

    run = tmp_path / "copy"
    shutil.copytree(two_process_run.output_dir, run)
    config = two_process_run.replace(output_dir=str(run), max_train_steps=8, resume_from_checkpoint="latest")
    with pytest.raises(CheckpointError, match=r"saved by 2 process\(es\), this run has 1"):
        build_trainer(config, progress=False)
    with pytest.warns(RuntimeWarning, match="data order"):
        trainer = build_trainer(config.replace(allow_process_count_change=True), progress=False)
    assert trainer.global_step == STEPS and trainer.resumed_from.name == f"checkpoint-{STEPS}"


def test_a_failed_save_in_one_process_stops_both(kill_config):
    """Process 1 cannot write its generators at step 4: both stop with the save error (neither waits at a
    barrier for ever), the partial save is removed, checkpoint-2 is intact."""
    config = kill_config("mp-fail", max_train_steps=STEPS, train_batch_size=1)
    proc = _launch(config, "fail_save", 4, 1, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("CheckpointSaveError") >= 2, proc.stderr[-3000:]  # raised in both processes
    run = Path(config.output_dir)
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-2"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    from cartoonify.runs import verify_checkpoint

    assert verify_checkpoint(run / "checkpoints" / "checkpoint-2") == []
