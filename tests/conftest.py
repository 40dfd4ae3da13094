"""Shared fixtures: the embedded tiny model, the drawn demo data and one short training run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cartoonify_home(tmp_path_factory) -> Path:
    """A private cache for the embedded tiny model (CARTOONIFY_HOME), shared by subprocesses."""
    home = tmp_path_factory.mktemp("cartoonify_home")
    os.environ["CARTOONIFY_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model(cartoonify_home) -> Path:
    """The random-weight tiny model: the machinery tests need no learned weights."""
    from cartoonify.models import TINY_RANDOM_MODEL, resolve_model

    return Path(resolve_model(TINY_RANDOM_MODEL, 64))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    from cartoonify.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo_data"), size=64, n=8, seed=0)


@pytest.fixture(scope="session")
def class_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("class_images")


def _small_run(tiny_model, demo_data, class_images, run_dir, **overrides):
    """A short CPU run on the tiny model: 64 px, batch 2 + 2 class images, checkpoints every 2 steps."""
    from cartoonify.config import TrainConfig

    base = dict(
        pretrained_model=str(tiny_model),
        instance_dir=str(demo_data["instance_dir"]),
        class_dir=str(class_images),
        output_dir=str(run_dir),
        resolution=64,
        num_class_images=4,
        sample_batch_size=4,
        class_inference_steps=4,
        train_batch_size=2,
        max_train_steps=4,
        checkpointing_steps=2,
        learning_rate=1e-3,
        keep_resume_at_end=True,  # tests extend finished runs (resume with a larger max_train_steps)
        mixed_precision="no",
        prior_generation_precision="fp32",
        num_validation_images=2,
        validation_inference_steps=3,
        report_to="none",
        holdout_images=0,  # the 8 demo images are all trained on (tests/test_heldout.py holds some out)
    )
    return TrainConfig.from_dict({**base, **overrides})


@pytest.fixture
def small_config(tiny_model, demo_data, class_dir, tmp_path):
    """A factory of short CPU runs on the tiny model (override any key)."""
    return lambda **overrides: _small_run(tiny_model, demo_data, class_dir, tmp_path / "run", **overrides)


@pytest.fixture(scope="session")
def trained_run(tiny_model, demo_data, class_dir, tmp_path_factory):
    """One short training run (4 steps, checkpoints at 2 and 4) shared by the read-only tests."""
    from cartoonify.training.run import build_trainer

    out = tmp_path_factory.mktemp("trained") / "run"
    config = _small_run(tiny_model, demo_data, class_dir, out, report_to="tensorboard")
    snapshots = {}

    def snapshot(trainer, row):
        snapshots[trainer.global_step] = {
            "unet": {k: v.detach().clone() for k, v in trainer.unwrap(trainer.unet).state_dict().items()},
            "text_encoder": {
                k: v.detach().clone() for k, v in trainer.unwrap(trainer.text_encoder).state_dict().items()
            },
        }

    trainer = build_trainer(config, progress=False, callbacks=[snapshot])
    initial = {
        "unet": {k: v.detach().clone() for k, v in trainer.unwrap(trainer.unet).state_dict().items()},
        "text_encoder": {k: v.detach().clone() for k, v in trainer.unwrap(trainer.text_encoder).state_dict().items()},
        "vae": {k: v.detach().clone() for k, v in trainer.vae.state_dict().items()},
    }
    result = trainer.run()
    return {"config": config, "trainer": trainer, "result": result, "initial": initial, "snapshots": snapshots}
