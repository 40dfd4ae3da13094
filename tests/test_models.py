"""Tests for cartoonify.models: the embedded tiny model, loading helpers and the SD1.5 reference architecture."""

import os

# No model hub is reachable: make sure nothing tries (set before diffusers / huggingface_hub are imported).
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cartoonify.models import (  # noqa: E402
    SD15_PARAMETER_COUNTS,
    EMBEDDED_TINY_DIR,
    TINY_MODEL,
    TINY_RANDOM_MODEL,
    build_sd15,
    build_tiny,
    count_parameters,
    load_components,
    load_pipeline,
    resolve_model,
    tiny_model_path,
)
from cartoonify.models import loading  # noqa: E402
from cartoonify.models.tiny import TINY_MARKER  # noqa: E402
from cartoonify.models.tokenizer import TINY_TOKENIZER_WORDS  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Keeps every test offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    """One tiny model shared by the read-only tests of this module."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_safe_path(tmp_path_factory) -> Path:
    """A tiny model that includes a tiny random safety checker."""
    return build_tiny(tmp_path_factory.mktemp("tiny_safe") / "model", with_safety_checker=True)


def _files(root: Path) -> dict[str, Path]:
    """Maps each file's path relative to ``root`` to its absolute path."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _quiet(pipe):
    """Disables the progress bar of a pipeline and returns it."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------------------
# build_tiny
# ---------------------------------------------------------------------------------------------------------------------


def test_tiny_pipeline_loads_and_generates(tiny_path):
    from diffusers import StableDiffusionPipeline

    pipe = _quiet(StableDiffusionPipeline.from_pretrained(tiny_path))
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.unet.config.sample_size == 32
    generator = torch.Generator("cpu").manual_seed(0)
    out = pipe("a person, disney style", num_inference_steps=2, output_type="np", generator=generator)
    assert out.images.shape == (1, 64, 64, 3)
    assert np.isfinite(out.images).all()
    assert out.nsfw_content_detected is None


def test_tiny_layout(tiny_path):
    files = _files(tiny_path)
    for name in (
        "model_index.json",
        TINY_MARKER,
        "scheduler/scheduler_config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        assert name in files, name
    assert not any(name.endswith(".bin") for name in files)
    # the temporary build folder was renamed away, nothing left beside the model
    assert [p.name for p in tiny_path.parent.iterdir()] == [tiny_path.name]


def test_build_is_deterministic_and_keeps_global_rng(tiny_path, tmp_path):
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    other = build_tiny(tmp_path / "again")
    assert torch.equal(torch.random.get_rng_state(), state)

    first, second = _files(tiny_path), _files(other)
    assert first.keys() == second.keys()
    weights = [name for name in first if name.endswith(".safetensors")]
    assert len(weights) == 3
    for name in weights:
        assert first[name].read_bytes() == second[name].read_bytes(), name


def test_rebuild_returns_existing_without_rewriting(tiny_path):
    before = {name: p.stat().st_mtime_ns for name, p in _files(tiny_path).items()}
    assert build_tiny(tiny_path) == tiny_path
    assert build_tiny(str(tiny_path)) == tiny_path
    after = {name: p.stat().st_mtime_ns for name, p in _files(tiny_path).items()}
    assert after == before


def test_other_seed_on_existing_model_raises(tiny_path):
    with pytest.raises(FileExistsError, match=str(tiny_path)):
        build_tiny(tiny_path, seed=1)


def test_foreign_folder_raises_then_overwrite_replaces(tmp_path):
    target = tmp_path / "foreign"
    target.mkdir()
    (target / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match=str(target)):
        build_tiny(target)
    assert (target / "notes.txt").exists()

    assert build_tiny(target, overwrite=True) == target
    assert not (target / "notes.txt").exists()
    assert (target / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]


def test_empty_existing_folder_is_filled(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    build_tiny(target, resolution=32)
    assert (target / "model_index.json").is_file()
    from diffusers import UNet2DConditionModel

    assert UNet2DConditionModel.load_config(target, subfolder="unet")["sample_size"] == 16


def test_bad_resolution_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_tiny(tmp_path / "x", resolution=60)


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer, text encoder, scheduler
# ---------------------------------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_vocab(tiny_path):
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTokenizer

    text_config = CLIPTextConfig.from_pretrained(tiny_path, subfolder="text_encoder")
    for cls in (CLIPTokenizer, AutoTokenizer):
        tokenizer = cls.from_pretrained(tiny_path, subfolder="tokenizer")
        assert len(tokenizer) == text_config.vocab_size < 1000
        assert tokenizer.model_max_length == 77
        assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
        assert tokenizer.bos_token == "<|startoftext|>"
        assert tokenizer.bos_token_id == text_config.bos_token_id
        assert tokenizer.eos_token_id == text_config.eos_token_id == text_config.pad_token_id

        ids = tokenizer("a person, Disney style").input_ids
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert tokens == ["<|startoftext|>", "a</w>", "person</w>", ",</w>", "disney</w>", "style</w>", "<|endoftext|>"]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert text.replace(" ,", ",") == "a person, disney style"
        assert tokenizer(text).input_ids == ids

        padded = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
        assert len(padded) == 77 and padded[-1] == tokenizer.pad_token_id


def test_common_words_are_single_tokens(tiny_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_path, subfolder="tokenizer")
    for word in TINY_TOKENIZER_WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    # unknown words still tokenize, byte by byte at worst
    assert tokenizer.decode(tokenizer("zyxwv qj").input_ids, skip_special_tokens=True) == "zyxwv qj"


def test_vocab_files_match_tokenizer(tiny_path):
    import json

    vocab = json.loads((tiny_path / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    merges = (tiny_path / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(vocab) == 512 + (len(merges) - 1) + 2
    assert vocab["<|endoftext|>"] == len(vocab) - 1
    assert vocab["<|startoftext|>"] == len(vocab) - 2


def test_scheduler_is_sd15(tiny_path):
    from diffusers import DDPMScheduler, PNDMScheduler

    scheduler = PNDMScheduler.from_pretrained(tiny_path, subfolder="scheduler")
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    torch.testing.assert_close(scheduler.betas, expected)
    config = scheduler.config
    assert config.num_train_timesteps == 1000
    assert config.skip_prk_steps and not config.set_alpha_to_one
    assert config.steps_offset == 1 and config.prediction_type == "epsilon"
    assert config.trained_betas is None
    # SD1.5 stores clip_sample=false; the DDPM training scheduler must see it
    assert DDPMScheduler.from_pretrained(tiny_path, subfolder="scheduler").config.clip_sample is False


# ---------------------------------------------------------------------------------------------------------------------
# loading helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_load_pipeline_falls_back_from_missing_variant(tiny_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(str(tiny_path), variant="fp16")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32

    pipe = load_pipeline(str(tiny_path), variant="fp16", safety_checker=False, torch_dtype=torch.bfloat16)
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False
    assert pipe.unet.dtype == torch.bfloat16


def test_variant_for(tiny_path, tmp_path):
    assert loading._variant_for(str(tiny_path), "fp16") is None
    assert loading._variant_for(str(tiny_path), None) is None
    assert loading._variant_for(loading.DEFAULT_MODEL, "fp16") == "fp16"
    local = tmp_path / "with_variant" / "unet"
    local.mkdir(parents=True)
    (local / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert loading._variant_for(str(local.parent), "fp16") == "fp16"


def test_variant_files_are_used_and_upcast(tiny_path, tmp_path):
    from diffusers import StableDiffusionPipeline

    half = tmp_path / "half"
    StableDiffusionPipeline.from_pretrained(tiny_path, dtype=torch.float16).save_pretrained(half, variant="fp16")
    assert (half / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert loading._variant_for(str(half), "fp16") == "fp16"

    assert load_pipeline(str(half), variant="fp16", torch_dtype=torch.float16).unet.dtype == torch.float16
    parts = load_components(str(half), variant="fp16")
    for name in ("text_encoder", "vae", "unet"):
        assert all(p.dtype == torch.float32 for p in parts[name].parameters()), name
    # the default dtype is fp32 for every module (not fp16 for transformers' and fp32 for diffusers')
    pipe = load_pipeline(str(half), variant="fp16")
    for name in ("text_encoder", "vae", "unet"):
        assert all(p.dtype == torch.float32 for p in getattr(pipe, name).parameters()), name
    assert pipe("x", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


def test_load_components(tiny_path):
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    parts = load_components(str(tiny_path), revision=loading.DEFAULT_REVISION, variant="fp16")
    assert isinstance(parts["tokenizer"], CLIPTokenizer)
    assert isinstance(parts["text_encoder"], CLIPTextModel)
    assert isinstance(parts["vae"], AutoencoderKL)
    assert isinstance(parts["unet"], UNet2DConditionModel)
    assert type(parts["noise_scheduler"]) is DDPMScheduler
    assert type(parts["scheduler"]) is PNDMScheduler
    for name in ("text_encoder", "vae", "unet"):
        assert all(p.dtype == torch.float32 for p in parts[name].parameters()), name


def test_resolve_model(monkeypatch, tmp_path):
    monkeypatch.setenv("CARTOONIFY_HOME", str(tmp_path / "home"))
    assert tiny_model_path() == tmp_path / "home" / "tiny-sd-64"
    assert tiny_model_path(32) == tmp_path / "home" / "tiny-sd-32"
    assert resolve_model("some/hub-id") == "some/hub-id"
    resolved = resolve_model(TINY_RANDOM_MODEL)
    assert resolved == str(tmp_path / "home" / "tiny-sd-64")
    assert (Path(resolved) / "model_index.json").is_file()
    assert resolve_model(TINY_RANDOM_MODEL) == resolved
    # the pretrained tiny model ships inside the package, whatever the cache
    assert resolve_model(TINY_MODEL) == str(EMBEDDED_TINY_DIR)


def test_missing_embedded_model_says_how_to_build_it(monkeypatch, tmp_path):
    from cartoonify.models import tiny

    monkeypatch.setattr(tiny, "EMBEDDED_TINY_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="python -m cartoonify.training.basemodel --out"):
        resolve_model(TINY_MODEL)


def test_tiny_model_path_default(monkeypatch):
    monkeypatch.delenv("CARTOONIFY_HOME", raising=False)
    assert tiny_model_path() == Path("~/.cache/cartoonify").expanduser() / "tiny-sd-64"


# ---------------------------------------------------------------------------------------------------------------------
# safety checker
# ---------------------------------------------------------------------------------------------------------------------


def test_tiny_safety_checker_flags_when_thresholds_are_negative(tiny_safe_path):
    pipe = _quiet(load_pipeline(str(tiny_safe_path)))
    assert pipe.safety_checker is not None and pipe.feature_extractor is not None
    assert pipe.config.requires_safety_checker is True

    out = pipe("a cat", num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.nsfw_content_detected == [False]
    assert out.images.max() > 0

    pipe.safety_checker.concept_embeds_weights.data.fill_(-10.0)
    out = pipe(["a cat", "a dog"], num_inference_steps=1, output_type="np")
    assert out.nsfw_content_detected == [True, True]
    assert out.images.shape == (2, 64, 64, 3)
    assert not out.images.any()

    assert load_pipeline(str(tiny_safe_path), safety_checker=False).safety_checker is None


# ---------------------------------------------------------------------------------------------------------------------
# SD1.5 reference architecture
# ---------------------------------------------------------------------------------------------------------------------


def test_sd15_parameter_counts_on_meta():
    modules = build_sd15(device="meta")
    counts = {name: count_parameters(module) for name, module in modules.items()}
    assert counts == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
    assert counts == SD15_PARAMETER_COUNTS
    for module in modules.values():
        assert all(p.device.type == "meta" for p in module.parameters())


def test_sd15_dtype_on_meta():
    modules = build_sd15(device="meta", dtype=torch.float16)
    for module in modules.values():
        assert all(p.dtype == torch.float16 for p in module.parameters())
