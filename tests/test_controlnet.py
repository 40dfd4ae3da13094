"""The embedded tiny canny ControlNet: its build script (a few steps, so that it cannot rot), the shipped weights
(loaded like any local folder, and generation follows their control on held-out images), and loading
ControlNets by name with a clear error where one is unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cartoonify.config import TINY_CANNY_CONTROLNET, ConfigError, ControlNetBuildConfig
from cartoonify.models import (
    CANNY_CONTROLNET,
    EMBEDDED_CONTROLNET_DIR,
    ControlNetUnavailable,
    load_controlnet,
    load_controlnets,
    resolve_controlnet,
)
from cartoonify.training.controlnet import BUILD_RECORD, build_tiny_controlnet, control_f1, held_out_controls

SHIPPED_LIMIT = 4 * 1024 * 1024  # bytes of ControlNet weights the package may carry
# mean held-out edge F1 at conditioning scale 1 minus scale 0: measured +0.216 at build time (README.md), less a
# safety margin for other machines' arithmetic
CONTROL_MARGIN = 0.12


def _tiny_config(**overrides) -> ControlNetBuildConfig:
    return ControlNetBuildConfig(images=12, steps=3, batch_size=4, warmup=1, log_every=1, **overrides)


def _zero_convs(controlnet) -> list[torch.Tensor]:
    """The weights of the zero convolutions (all zero when the ControlNet is fresh from ``from_unet``)."""
    modules = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
               controlnet.controlnet_cond_embedding.conv_out]
    return [p for m in modules for p in m.parameters()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("controlnet") / "cn"
    assert build_tiny_controlnet(_tiny_config(), out, evaluate=False) == out
    return out


@pytest.fixture(scope="module")
def shipped():
    return load_controlnet(TINY_CANNY_CONTROLNET)


def test_build_script_writes_a_loadable_trained_controlnet(built):
    record = json.loads((built / BUILD_RECORD).read_text())
    assert ControlNetBuildConfig.from_dict(record["config"]) == _tiny_config() and record["seconds"] > 0 and record["versions"]
    card = (built / "README.md").read_text()
    assert "python -m cartoonify.training.controlnet" in card and "Canny" in card and "MIT" in card
    for path in built.rglob("*.safetensors"):  # shipped in fp16
        with safe_open(str(path), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}, path
    controlnet = load_controlnet(str(built))
    assert controlnet.dtype == torch.float32  # loaded in float32 unless asked otherwise
    assert controlnet.config.conditioning_embedding_out_channels == [16, 32, 64]
    assert any(p.abs().sum() > 0 for p in _zero_convs(controlnet))  # trained: no longer zero-initialised
    assert not list(built.parent.glob(".cn.tmp"))  # written through a temporary folder, renamed into place


def test_the_same_config_gives_the_same_weights(built, tmp_path):
    again = build_tiny_controlnet(_tiny_config(), tmp_path / "again", evaluate=False)
    first, second = load_controlnet(built).state_dict(), load_controlnet(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="conditioning_channels"):
        ControlNetBuildConfig(conditioning_channels=(16, 32)).validate()
    with pytest.raises(ConfigError, match="canny_low"):
        ControlNetBuildConfig(canny_low=0.95).validate()
    with pytest.raises(ConfigError, match="caption_dropout"):
        ControlNetBuildConfig(caption_dropout=1.5).validate()


def test_command_line_refuses_unknown_settings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cartoonify.training.controlnet", "--out", str(tmp_path / "x"),
                           "--step", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'step'" in proc.stderr and "steps" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_shipped_controlnet_loads_like_a_local_folder(shipped):
    assert resolve_controlnet(TINY_CANNY_CONTROLNET) == str(EMBEDDED_CONTROLNET_DIR)
    local = load_controlnet(str(EMBEDDED_CONTROLNET_DIR))
    assert type(local) is type(shipped)
    a, b = shipped.state_dict(), local.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    size = sum(p.stat().st_size for p in EMBEDDED_CONTROLNET_DIR.rglob("*.safetensors"))
    assert size <= SHIPPED_LIMIT, size
    record = json.loads((EMBEDDED_CONTROLNET_DIR / BUILD_RECORD).read_text())
    built_with = ControlNetBuildConfig.from_dict(record["config"]).replace(log_every=ControlNetBuildConfig().log_every)
    assert built_with == ControlNetBuildConfig()  # built with the defaults (how often it printed aside)
    assert "Edge F1" in (EMBEDDED_CONTROLNET_DIR / "README.md").read_text()
    assert load_controlnet(TINY_CANNY_CONTROLNET, torch_dtype=torch.float16).dtype == torch.float16


def test_generation_follows_the_shipped_controlnet_on_held_out_controls(shipped):
    """Photos and drawings outside the base world: the outputs' Canny edges match the control's better with the
    ControlNet (conditioning scale 1) than without it (scale 0), same seed and prompt."""
    sources = held_out_controls(64)
    assert len(sources) >= 3
    f1 = control_f1(shipped, sources=sources)
    gain = f1["scale_1"]["mean"] - f1["scale_0"]["mean"]
    assert gain >= CONTROL_MARGIN, f1
    recorded = json.loads((EMBEDDED_CONTROLNET_DIR / BUILD_RECORD).read_text())["evaluation"]["edge_f1"]
    assert f1["scale_1"]["mean"] == pytest.approx(recorded["scale_1"]["mean"], abs=0.05)


def test_an_unavailable_controlnet_is_named(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ControlNetUnavailable, match="control_v11p_sd15_canny") as err:
        load_controlnet(CANNY_CONTROLNET)
    assert "hf download lllyasviel/control_v11p_sd15_canny" in str(err.value)
    assert "\n" not in str(err.value)
    missing = tmp_path / "no-such-controlnet"
    with pytest.raises(ControlNetUnavailable, match="no-such-controlnet"):
        load_controlnet(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ControlNetUnavailable, match="empty"):
        load_controlnet(str(empty))


def test_a_missing_embedded_controlnet_says_how_to_build_it(monkeypatch, tmp_path):
    from cartoonify.models import controlnet as module

    monkeypatch.setitem(module.EMBEDDED_CONTROLNETS, TINY_CANNY_CONTROLNET, tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="python -m cartoonify.training.controlnet"):
        resolve_controlnet(TINY_CANNY_CONTROLNET)
    with pytest.raises(ControlNetUnavailable, match="tiny-controlnet-canny"):
        load_controlnet(TINY_CANNY_CONTROLNET)


def test_several_controlnets_load_as_one_multi_controlnet(built):
    from diffusers import ControlNetModel, MultiControlNetModel

    multi = load_controlnets([TINY_CANNY_CONTROLNET, str(built)])
    assert isinstance(multi, MultiControlNetModel) and len(multi.nets) == 2
    assert isinstance(load_controlnets([str(built)]), ControlNetModel)
    assert isinstance(load_controlnets(str(built)), ControlNetModel)
