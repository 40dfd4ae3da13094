"""The embedded tiny model's build script (run for a few steps, so that it cannot rot) and the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from cartoonify.config import TINY_MODEL, BaseModelConfig
from cartoonify.models import EMBEDDED_TINY_DIR, load_pipeline, resolve_model, text_to_image
from cartoonify.training.basemodel import BUILD_RECORD, build_base_model

SHIPPED_LIMIT = 10 * 1024 * 1024  # bytes of weights the package may carry


def _weights(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def test_build_script_runs_and_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "tiny"
    config = BaseModelConfig(images=32, vae_images=32, vae_graphics=8, vae_steps=2, unet_steps=2, vae_batch_size=4,
                             unet_batch_size=4, warmup_steps=1, log_every=1)
    assert build_base_model(config, out) == out
    record = json.loads((out / BUILD_RECORD).read_text())
    assert record["config"] == config.to_dict() and record["scaling_factor"] > 0
    card = (out / "README.md").read_text()
    assert "python -m cartoonify.training.basemodel" in card and '"seed": 0' in card
    for path in _weights(out):  # shipped in fp16
        with safe_open(str(path), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}, path
    pipe = load_pipeline(str(out), safety_checker=False)
    assert pipe.vae.config.scaling_factor == record["scaling_factor"]
    image = text_to_image(pipe, "a photo of a red ball on grass", [0], num_inference_steps=2).images[0]
    assert image.size == (64, 64)
    assert not list(tmp_path.glob(".tiny.tmp"))  # written through a temporary folder, renamed into place


def test_command_line_refuses_unknown_settings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cartoonify.training.basemodel", "--out", str(tmp_path / "x"),
                           "--unet_step", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unet_step" in proc.stderr and "unet_steps" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_shipped_model_is_small_fp16_and_documented():
    folder = Path(resolve_model(TINY_MODEL))
    assert folder == EMBEDDED_TINY_DIR
    size = sum(p.stat().st_size for p in _weights(folder))
    assert size <= SHIPPED_LIMIT, size
    record = json.loads((folder / BUILD_RECORD).read_text())
    built = BaseModelConfig.from_dict(record["config"]).replace(log_every=BaseModelConfig().log_every)
    assert built == BaseModelConfig()  # built with the defaults (how often it printed aside)
    assert "Seed" in (folder / "README.md").read_text()
