"""TrainConfig: write-up defaults, YAML/JSON round trip, refusal of unknown keys and wrong types."""

from __future__ import annotations

import json

import pytest

from cartoonify.config import ConfigError, TrainConfig, parse_overrides
from cartoonify.training.cli import config_from_args


def test_defaults_are_the_writeup_settings():
    c = TrainConfig()
    assert c.pretrained_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (c.revision, c.variant) == ("main", "fp16")
    assert (c.num_class_images, c.with_prior_preservation, c.prior_loss_weight) == (1000, True, 1.0)
    assert (c.resolution, c.center_crop, c.train_text_encoder) == (512, True, True)
    assert (c.train_batch_size, c.max_train_steps, c.gradient_accumulation_steps) == (4, 4000, 1)
    assert (c.use_8bit_adam, c.learning_rate, c.lr_scheduler, c.lr_warmup_steps) == (True, 1e-6, "constant", 0)
    assert (c.adam_beta1, c.adam_beta2, c.adam_weight_decay, c.adam_epsilon) == (0.9, 0.999, 1e-2, 1e-8)
    assert (c.max_grad_norm, c.checkpointing_steps, c.logging_dir) == (1.0, 500, "logs")
    assert (c.mixed_precision, c.prior_generation_precision) == ("fp16", "fp16")
    assert (c.validation_prompt, c.num_validation_images) == ("a person, Disney style", 4)
    assert (c.validation_scheduler, c.seed) == ("PNDMScheduler", 42)
    c.validate()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    c = TrainConfig(learning_rate=3e-5, checkpoints_total_limit=2, variant=None, instance_prompt="x, y")
    path = c.save(tmp_path / f"c{suffix}")
    assert TrainConfig.load(path) == c
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_yaml_reads_exponent_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-6\nadam_epsilon: 1e-8\n")
    c = TrainConfig.load(path)
    assert c.learning_rate == 1e-6 and isinstance(c.learning_rate, float)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat'.*did you mean 'learning_rate'"):
        TrainConfig.from_dict({"learning_rat": 1e-4})


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_train_steps", "4000"),
        ("max_train_steps", 4000.5),
        ("max_train_steps", True),
        ("train_text_encoder", 1),
        ("learning_rate", "fast"),
        ("instance_prompt", 3),
        ("checkpoints_total_limit", "two"),
    ],
)
def test_wrong_type_is_named(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        TrainConfig.from_dict({key: value})


def test_int_accepted_for_float_and_none_for_optional():
    c = TrainConfig.from_dict({"learning_rate": 1, "checkpoints_total_limit": None, "variant": None})
    assert c.learning_rate == 1.0 and isinstance(c.learning_rate, float)


@pytest.mark.parametrize(
    "key,value",
    [("mixed_precision", "fp8"), ("validation_scheduler", "NoSuchScheduler"), ("resolution", 500), ("train_batch_size", 0)],
)
def test_invalid_values_are_named(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig.from_dict({key: value}).validate()


def test_any_diffusers_scheduler_or_registry_name_validates():
    TrainConfig(validation_scheduler="EulerAncestralDiscreteScheduler").validate()
    TrainConfig(validation_scheduler="dpmpp_2m_karras").validate()


def test_command_line_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_train_steps: 10\nseed: 1\n")
    c = config_from_args(["--config", str(path), "--seed", "7", "--learning_rate=1e-4", "--variant", "null"])
    assert (c.max_train_steps, c.seed, c.learning_rate, c.variant) == (10, 7, 1e-4, None)
    with pytest.raises(ConfigError, match="'no_such_key'"):
        config_from_args(["--no_such_key", "1"])
    assert parse_overrides(["--train_text_encoder", "false"]) == {"train_text_encoder": False}


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        TrainConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        TrainConfig.load(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        TrainConfig.load(broken)


def test_train_cli_reads_the_notebook_parameter_files():
    """`python -m cartoonify.train --config configs/disney.yaml` is the write-up's TrainConfig."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    disney = config_from_args(["--config", str(root / "disney.yaml")]).validate()
    assert disney == TrainConfig()  # output_dir: outputs/<run_name> = outputs/disney, the default
    demo = config_from_args(["--config", str(root / "demo.yaml"), "--run_name", "other"]).validate()
    assert demo.pretrained_model == "embedded:tiny" and demo.resolution == 64
    assert demo.output_dir == "outputs/other"


def test_yaml_no_is_a_string_and_cli_keeps_string_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\nprior_generation_precision: no\ncenter_crop: false\n")
    c = TrainConfig.load(path)
    assert (c.mixed_precision, c.prior_generation_precision, c.center_crop) == ("no", "no", False)
    c = config_from_args(
        ["--mixed_precision", "no", "--revision", "1.0", "--instance_prompt", "sks: dog", "--variant", "None"]
    )
    assert (c.mixed_precision, c.revision, c.instance_prompt, c.variant) == ("no", "1.0", "sks: dog", None)


def test_prior_preservation_needs_class_images():
    with pytest.raises(ConfigError, match="num_class_images"):
        TrainConfig(num_class_images=0).validate()
    TrainConfig(num_class_images=0, with_prior_preservation=False).validate()
