"""The diffusers -> original Stable Diffusion single-file export, checked against diffusers' own reverse mapping."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cartoonify.models.sd15 import (
    SD15_SCHEDULER_CONFIG,
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    build_sd15,
    build_sd15_pipeline,
)
from cartoonify.models.single_file import (
    SingleFileError,
    check_mappable,
    single_file_keys,
    single_file_shapes,
    text_encoder_to_original,
    to_single_file,
    unet_to_original,
    vae_to_original,
)
from cartoonify.models.tiny import EMBEDDED_TINY_DIR, tiny_text_encoder_config, tiny_unet_config, tiny_vae_config

# A "mini SD1.5": SD1.5's block layout (4 levels, 2 resnets each, attention at the first three, 8 heads, 32 groups)
# at small widths, so that the whole value round trip runs in seconds.
MINI_UNET_CONFIG = {
    **SD15_UNET_CONFIG,
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 32,
    "sample_size": 8,
}
MINI_VAE_CONFIG = {**SD15_VAE_CONFIG, "block_out_channels": [32, 32, 64, 64], "sample_size": 64}


def _state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _sd15_on_meta() -> dict[str, torch.nn.Module]:
    return build_sd15(device="meta", dtype=torch.float16)


def _strip(prefix: str, tensors: dict) -> dict:
    assert all(k.startswith(prefix) for k in tensors), prefix
    return {k[len(prefix):]: v for k, v in tensors.items()}


# --------------------------------------------------------------------------------------------------------------------
# Fast: SD1.5's real configs on the meta device, through diffusers' own original -> diffusers converters.
# --------------------------------------------------------------------------------------------------------------------


def test_sd15_unet_keys_round_trip_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = _sd15_on_meta()["unet"]
    original = unet_to_original(unet.state_dict(), unet.config)
    assert all(k.startswith("model.diffusion_model.") for k in original)
    assert len(original) == len(unet.state_dict()) == 686
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert {k: tuple(v.shape) for k, v in back.items()} == _state_shapes(unet)


def test_sd15_vae_keys_round_trip_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = _sd15_on_meta()["vae"]
    original = vae_to_original(vae.state_dict(), vae.config)
    assert all(k.startswith("first_stage_model.") for k in original)
    for part in ("encoder", "decoder"):  # the original's mid-block attention is 1x1 convolutions
        for name in ("q", "k", "v", "proj_out"):
            assert tuple(original[f"first_stage_model.{part}.mid.attn_1.{name}.weight"].shape) == (512, 512, 1, 1)
    back = convert_ldm_vae_checkpoint(original, dict(vae.config))
    assert {k: tuple(v.shape) for k, v in back.items()} == _state_shapes(vae)


def test_sd15_text_encoder_keys_round_trip_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, is_clip_model

    text_encoder = _sd15_on_meta()["text_encoder"]
    original = text_encoder_to_original(text_encoder.state_dict())
    assert is_clip_model(original)
    back = convert_ldm_clip_checkpoint(original)
    assert all(k.startswith("text_model.") for k in back)
    # what diffusers does for transformers' flattened CLIPTextModel (and what ours is: no `text_model` attribute)
    if not hasattr(text_encoder, "text_model"):
        back = {k.removeprefix("text_model."): v for k, v in back.items()}
    assert {k: tuple(v.shape) for k, v in back.items()} == _state_shapes(text_encoder)


def test_sd15_single_file_key_set_on_meta():
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = single_file_shapes(SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_ENCODER_CONFIG)
    keys = single_file_keys(SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_ENCODER_CONFIG)
    assert keys == set(shapes)
    assert len(keys) == 686 + 248 + 196
    # anchors from the published v1-5 checkpoint's key names, independent of any converter
    anchors = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "model.diffusion_model.time_embed.2.weight": (1280, 1280),
        "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.2.norm2.weight": (128,),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias": (768,),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
    assert {k: shapes[k] for k in anchors} == anchors
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in keys
    on_meta = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    assert infer_diffusers_model_type(on_meta) == "v1"  # diffusers recognises the file as SD1.x


# --------------------------------------------------------------------------------------------------------------------
# What cannot be mapped.
# --------------------------------------------------------------------------------------------------------------------


def test_check_mappable_accepts_sd15_and_the_mini_layout():
    check_mappable(SD15_UNET_CONFIG, SD15_VAE_CONFIG)
    check_mappable(MINI_UNET_CONFIG, MINI_VAE_CONFIG)


def test_check_mappable_refuses_the_tiny_models():
    with pytest.raises(SingleFileError, match="the UNet has 2 down blocks; the original Stable Diffusion layout has 4"):
        check_mappable(tiny_unet_config(), tiny_vae_config())
    unet = json.loads((EMBEDDED_TINY_DIR / "unet" / "config.json").read_text())
    vae = json.loads((EMBEDDED_TINY_DIR / "vae" / "config.json").read_text())
    with pytest.raises(SingleFileError) as info:
        check_mappable(unet, vae)
    message = str(info.value)
    for part in (
        "the UNet has 3 down blocks; the original Stable Diffusion layout has 4",
        "the UNet's layers_per_block is 1",
        "the UNet's norm_num_groups is 16",
        "the VAE's latent_channels is 16",
        "the VAE's mid_block_add_attention is False",
    ):
        assert part in message
    assert isinstance(info.value, ValueError)


def test_check_mappable_names_a_single_difference():
    with pytest.raises(SingleFileError, match=r"use_linear_projection is True.*has False") as info:
        check_mappable({**SD15_UNET_CONFIG, "use_linear_projection": True}, SD15_VAE_CONFIG)
    assert "VAE" not in str(info.value)


def test_to_single_file_refuses_the_tiny_model_and_writes_nothing(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**tiny_unet_config())
    vae = AutoencoderKL(**tiny_vae_config())
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(100)))
    with pytest.raises(SingleFileError, match="2 down blocks"):
        to_single_file(unet, text_encoder, vae, tmp_path / "out" / "tiny.safetensors")
    assert not any(tmp_path.rglob("*"))


def test_a_mapping_refuses_a_key_it_has_no_place_for():
    with pytest.raises(SingleFileError, match="add_embedding"):
        unet_to_original({"add_embedding.linear_1.weight": torch.zeros(1)}, SD15_UNET_CONFIG)


# --------------------------------------------------------------------------------------------------------------------
# Values: export a mini SD1.5 and load it back with diffusers' from_single_file, offline.
# --------------------------------------------------------------------------------------------------------------------


def _config_only(folder: Path) -> Path:
    """Removes a pipeline folder's weight files, so that from_single_file cannot quietly read a component from it."""
    for weights in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        weights.unlink()
    return folder


def _mini_modules(seed: int, vocab_size: int) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {
            "unet": UNet2DConditionModel(**MINI_UNET_CONFIG),
            "vae": AutoencoderKL(**MINI_VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(vocab_size))),
        }


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> dict:
    """Mini SD1.5 modules in memory and a config-only pipeline folder of the same architecture."""
    from diffusers import PNDMScheduler

    from cartoonify.models.pipeline import pipeline_from_modules
    from cartoonify.models.tokenizer import write_bpe_files, write_tiny_tokenizer

    folder = tmp_path_factory.mktemp("mini_sd15")
    tokenizer = write_tiny_tokenizer(folder / "tokenizer")
    saved = _mini_modules(seed=1, vocab_size=len(tokenizer))  # other weights than the exported ones, then removed
    pipe = pipeline_from_modules(
        saved["unet"], saved["text_encoder"], saved["vae"], tokenizer, PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    write_bpe_files(folder / "tokenizer")
    return {"folder": _config_only(folder), "modules": _mini_modules(seed=0, vocab_size=len(tokenizer))}


def _assert_round_trip(modules: dict, file: Path, folder: Path, dtype: torch.dtype) -> None:
    """Loads ``file`` with diffusers' from_single_file (configs from ``folder``) and compares every tensor."""
    from diffusers import StableDiffusionPipeline

    loaded = StableDiffusionPipeline.from_single_file(
        str(file), config=str(folder), local_files_only=True, torch_dtype=dtype
    )
    for name in ("unet", "text_encoder", "vae"):
        expected = modules[name].state_dict()
        got = getattr(loaded, name).state_dict()
        assert set(got) == set(expected), name
        for key, value in expected.items():
            other = got[key]
            assert other.device.type == "cpu", (name, key)
            if value.is_floating_point():
                assert other.dtype == dtype, (name, key)
                assert torch.equal(other, value.to(dtype)), (name, key)
            else:
                assert torch.equal(other, value), (name, key)


def test_mini_sd15_value_round_trip_through_from_single_file(mini, tmp_path):
    modules = mini["modules"]
    file = to_single_file(modules["unet"], modules["text_encoder"], modules["vae"], tmp_path / "mini.safetensors")
    assert file == tmp_path / "mini.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == ["mini.safetensors"]  # no temporary file left behind
    _assert_round_trip(modules, file, mini["folder"], torch.float16)


def test_metadata_comes_back_and_must_be_strings(mini, tmp_path):
    from safetensors import safe_open

    modules = mini["modules"]
    metadata = {"cartoonify.style": "sks cartoon", "cartoonify.step": "400"}
    file = to_single_file(
        modules["unet"], modules["text_encoder"], modules["vae"], tmp_path / "m.safetensors",
        dtype=torch.float32, metadata=metadata,
    )
    with safe_open(str(file), framework="pt") as f:
        assert f.metadata() == metadata
        assert f.get_tensor("model.diffusion_model.out.2.bias").dtype == torch.float32
    with pytest.raises(TypeError, match="strings"):
        to_single_file(modules["unet"], modules["text_encoder"], modules["vae"], tmp_path / "bad.safetensors",
                       metadata={"step": 400})
    assert not (tmp_path / "bad.safetensors").exists()


# --------------------------------------------------------------------------------------------------------------------
# Slow: the full SD1.5 architecture with random weights (about 2 GB on disk twice, several minutes on 2 cores).
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sd15_full_value_round_trip(tmp_path, record_property):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = build_sd15_pipeline(tmp_path / "sd15", dtype=torch.float16, seed=0)
    modules = {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float16),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float16),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float16),
    }
    _config_only(folder)
    start = time.perf_counter()
    file = to_single_file(
        modules["unet"], modules["text_encoder"], modules["vae"], tmp_path / "sd15.safetensors",
        metadata={"cartoonify.base": "random SD1.5"},
    )
    seconds = time.perf_counter() - start
    size = file.stat().st_size
    record_property("single_file_bytes", size)
    record_property("export_seconds", round(seconds, 1))
    print(f"\nSD1.5 single file fp16: {size:,} bytes, written in {seconds:.1f} s")
    tensor_bytes = sum(v.numel() * 2 for m in modules.values() for v in m.state_dict().values())
    assert tensor_bytes == 2 * (859_520_964 + 123_060_480 + 83_653_863)
    assert tensor_bytes < size < tensor_bytes + 1_000_000  # the header is small
    start = time.perf_counter()
    _assert_round_trip(modules, file, folder, torch.float16)
    print(f"from_single_file + comparison: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_the_mappings_follow_the_block_counts(which):
    """check_mappable refuses the tiny models for publication, but the key mappings themselves follow any block
    count and layers per block, as diffusers' reverse converters confirm."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    if which == "tiny":
        unet_config, vae_config = tiny_unet_config(), tiny_vae_config()
    else:
        unet_config = json.loads((EMBEDDED_TINY_DIR / "unet" / "config.json").read_text())
        vae_config = json.loads((EMBEDDED_TINY_DIR / "vae" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
    back = convert_ldm_unet_checkpoint(unet_to_original(unet.state_dict(), unet.config), dict(unet.config))
    assert {k: tuple(v.shape) for k, v in back.items()} == _state_shapes(unet)
    back = convert_ldm_vae_checkpoint(vae_to_original(vae.state_dict(), vae.config), dict(vae.config))
    assert {k: tuple(v.shape) for k, v in back.items()} == _state_shapes(vae)
