"""Model loading and construction helpers for Stable Diffusion 1.5 DreamBooth work.

This module knows three kinds of model:

* the real base model (``DEFAULT_MODEL``) or any other diffusers-format SD checkpoint, loaded through
  :func:`load_pipeline` / :func:`load_components` from a hub id or a local folder;
* an *embedded tiny model* (``TINY_MODEL``): a deterministic, randomly initialised miniature SD pipeline that the
  package writes itself with :func:`build_tiny` so that tests and smoke runs need no download;
* the full SD1.5 architecture with random weights (:func:`build_sd15`), for benchmarks and memory estimates.

Heavy libraries (diffusers, transformers) are imported lazily inside the functions that need them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .utils import move_module


if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_REVISION = "main"
DEFAULT_VARIANT = "fp16"
TINY_MODEL = "embedded:tiny"

# Name of the marker file that records how a tiny model folder was built.
TINY_MARKER = "cartoonify_tiny.json"
# Bump when the tiny model's layout changes so that stale caches are not reused.
TINY_FORMAT_VERSION = 1

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# --------------------------------------------------------------------------------------------------------------------
# SD1.5 reference configurations (copied from the checkpoint's unet/, vae/ and text_encoder/ config.json files).
# --------------------------------------------------------------------------------------------------------------------

SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

SD15_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": [
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
        "DownEncoderBlock2D",
    ],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": [
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
        "UpDecoderBlock2D",
    ],
}

# CLIP ViT-L/14 text tower, as stored in SD1.5's text_encoder/config.json.
SD15_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# Parameter counts of the real SD1.5 checkpoint, which :func:`build_sd15` reproduces.
SD15_PARAMETER_COUNTS: dict[str, int] = {
    "unet": 859_520_964,
    "text_encoder": 123_060_480,
    "vae": 83_653_863,
}

# SD1.5's scheduler/scheduler_config.json (PNDM, the pipeline's default sampler).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# --------------------------------------------------------------------------------------------------------------------
# Tiny model architecture (the classic tiny pipeline of diffusers' StableDiffusionPipeline fast tests).
# --------------------------------------------------------------------------------------------------------------------

TINY_CROSS_ATTENTION_DIM = 32


def tiny_unet_config(resolution: int = 64) -> dict[str, Any]:
    """Returns the tiny UNet's config; latents are ``resolution // 2`` because the tiny VAE downsamples by 2."""
    return {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "sample_size": resolution // 2,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": TINY_CROSS_ATTENTION_DIM,
    }


def tiny_vae_config(resolution: int = 64) -> dict[str, Any]:
    """Returns the tiny VAE's config (two blocks, so a downsample factor of 2)."""
    return {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "sample_size": resolution,
    }


def tiny_text_encoder_config(vocab_size: int) -> dict[str, Any]:
    """Returns the tiny CLIP text encoder's config; special token ids match :func:`tiny_vocab`'s layout."""
    return {
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
        "hidden_size": TINY_CROSS_ATTENTION_DIM,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": MODEL_MAX_LENGTH,
    }


def tiny_safety_checker_config() -> dict[str, Any]:
    """Returns a tiny ``CLIPConfig`` (as keyword arguments) for a randomly initialised safety checker."""
    return {
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "max_position_embeddings": MODEL_MAX_LENGTH,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        "projection_dim": 32,
    }


# --------------------------------------------------------------------------------------------------------------------
# Tiny tokenizer: CLIP's byte-level BPE with a vocabulary learned from a built-in word list.
# --------------------------------------------------------------------------------------------------------------------

TINY_TOKENIZER_WORDS: tuple[str, ...] = tuple(
    """
    a an the of with in on and at by for from to as is or
    photo photograph portrait picture image illustration drawing painting painted render art artwork
    cartoon character style disney pixar anime comic sketch digital concept studio cinematic animation animated
    movie film watercolor
    person people woman man girl boy child kid baby face head hair eyes smile smiling body full close up
    dog cat bird horse animal
    castle forest landscape background city street house room sky mountain river sea beach garden tree flower
    night day sunset light lighting
    white black red blue green yellow pink purple orange brown gray colorful bright dark
    high quality detailed simple cute beautiful happy young old little big small
    sks wearing standing sitting looking holding shirt dress hat glasses
    """.split()
)


def bytes_to_unicode() -> dict[int, str]:
    """Returns CLIP's (GPT-2's) reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


@functools.lru_cache(maxsize=1)
def _byte_map() -> dict[int, str]:
    """Cached :func:`bytes_to_unicode`."""
    return bytes_to_unicode()


def _word_symbols(word: str) -> tuple[str, ...]:
    """Splits a word into byte-level symbols, the last one carrying CLIP's end-of-word suffix ``</w>``."""
    byte_map = _byte_map()
    chars = [byte_map[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replaces every occurrence of ``pair`` in ``symbols`` by the merged symbol."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def learn_bpe_merges(words: tuple[str, ...] | list[str], max_merges: int | None = None) -> list[tuple[str, str]]:
    """Learns BPE merges greedily (most frequent pair, ties broken lexicographically) until every word is one token.

    The procedure is deterministic: the same word list always gives the same merges in the same order.
    """
    counts = Counter(_word_symbols(w) for w in words)
    merges: list[tuple[str, str]] = []
    while max_merges is None or len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new_counts: Counter[tuple[str, ...]] = Counter()
        for symbols, count in counts.items():
            new_counts[_merge_pair(symbols, best)] += count
        counts = new_counts
    return merges


def tiny_vocab(words: tuple[str, ...] | list[str] = TINY_TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
    """Builds the tiny tokenizer's ``vocab.json`` mapping and ``merges.txt`` lines, laid out like CLIP's.

    Order: the 256 byte symbols, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last (so bos = vocab_size - 2 and eos = pad = vocab_size - 1, as in CLIP).
    """
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base]
    merges = learn_bpe_merges(words)
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(set(tokens)) != len(tokens):
        raise ValueError("tiny tokenizer vocabulary has duplicate tokens")
    vocab = {token: index for index, token in enumerate(tokens)}
    return vocab, [f"{a} {b}" for a, b in merges]


def write_bpe_files(directory: str | os.PathLike) -> None:
    """Writes the tiny tokenizer's classic ``vocab.json`` and ``merges.txt`` to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def write_tiny_tokenizer(directory: str | os.PathLike) -> Any:
    """Writes the tiny CLIP tokenizer to ``directory`` and returns it as a ``transformers.CLIPTokenizer``.

    The tokenizer is read back from the written ``vocab.json`` / ``merges.txt``, which works with both the slow
    (transformers 4) and the tokenizers-backed (transformers 5) ``CLIPTokenizer``. Like SD1.5's tokenizer it pads
    with ``<|endoftext|>`` and has ``model_max_length`` 77.
    """
    from transformers import CLIPTokenizer

    write_bpe_files(directory)
    tokenizer = CLIPTokenizer.from_pretrained(
        directory,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.save_pretrained(directory)
    write_bpe_files(directory)  # keep the canonical formatting whatever save_pretrained wrote
    return tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Tiny model construction.
# --------------------------------------------------------------------------------------------------------------------


def _seeded(seed: int) -> None:
    """Seeds torch's CPU RNG (callers wrap this in ``torch.random.fork_rng`` to keep the global state intact)."""
    torch.manual_seed(seed)


def _tiny_marker(resolution: int, seed: int, with_safety_checker: bool) -> dict[str, Any]:
    """Returns the marker contents that identify a tiny model build."""
    return {
        "format_version": TINY_FORMAT_VERSION,
        "resolution": int(resolution),
        "seed": int(seed),
        "with_safety_checker": bool(with_safety_checker),
    }


def _read_marker(path: Path) -> dict[str, Any] | None:
    """Returns the tiny-model marker of ``path``, or ``None`` if it has none or it is unreadable."""
    try:
        return json.loads((path / TINY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete_tiny(path: Path, marker: dict[str, Any]) -> bool:
    """Whether ``path`` holds a complete tiny model built with exactly ``marker``'s parameters."""
    return path.is_dir() and (path / "model_index.json").is_file() and _read_marker(path) == marker


def _build_tiny_safety_checker(seed: int) -> tuple[Any, Any]:
    """Builds a tiny randomly initialised ``StableDiffusionSafetyChecker`` and a matching feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    _seeded(seed)
    safety_checker = StableDiffusionSafetyChecker(CLIPConfig(**tiny_safety_checker_config())).eval()
    size = tiny_safety_checker_config()["vision_config"]["image_size"]
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
    )
    return safety_checker, feature_extractor


def _build_tiny_pipeline(
    tokenizer: Any, resolution: int, seed: int, with_safety_checker: bool
) -> "StableDiffusionPipeline":
    """Builds the tiny pipeline in memory, re-seeding before each randomly initialised component."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(resolution))
    _seeded(seed)
    vae = AutoencoderKL(**tiny_vae_config(resolution))
    _seeded(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(len(tokenizer))))
    # from_config (not __init__) keeps SD1.5's extra ``clip_sample: false`` key, which DDPMScheduler later reads.
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    safety_checker, feature_extractor = (
        _build_tiny_safety_checker(seed) if with_safety_checker else (None, None)
    )
    from .sample import pipeline_from_modules

    return pipeline_from_modules(
        unet, text_encoder, vae, tokenizer, scheduler, safety_checker, feature_extractor, with_safety_checker
    )


def _write_tiny(target: Path, resolution: int, seed: int, with_safety_checker: bool) -> None:
    """Writes a complete tiny model (and finally its marker) into the empty folder ``target``."""
    tokenizer = write_tiny_tokenizer(target / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        pipeline = _build_tiny_pipeline(tokenizer, resolution, seed, with_safety_checker)
    pipeline.save_pretrained(target, safe_serialization=True)
    write_bpe_files(target / "tokenizer")
    marker = _tiny_marker(resolution, seed, with_safety_checker)
    (target / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny(
    path: str | os.PathLike,
    resolution: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    with_safety_checker: bool = False,
) -> Path:
    """Writes a deterministic, randomly initialised miniature SD pipeline (diffusers format) to ``path``.

    The folder loads with ``StableDiffusionPipeline.from_pretrained(path)``. The model is built in a temporary folder
    beside ``path`` and renamed into place, so readers never see a half-written model. The caller's global torch RNG
    state is left untouched.

    Args:
        path: Destination folder.
        resolution: Image resolution in pixels (the latents are ``resolution // 2``); must be a multiple of 8.
        seed: Seed for the random initialisation of every component.
        overwrite: Replace whatever ``path`` holds if it is not this exact tiny model.
        with_safety_checker: Include a tiny random ``StableDiffusionSafetyChecker`` and its feature extractor.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileExistsError: If ``path`` exists, is not an empty folder nor this exact tiny model, and ``overwrite`` is
            False.
    """
    if resolution <= 0 or resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
    path = Path(path).expanduser()
    marker = _tiny_marker(resolution, seed, with_safety_checker)
    if _is_complete_tiny(path, marker):
        return path
    _check_replaceable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write_tiny(tmp, resolution, seed, with_safety_checker)
        _move_into_place(tmp, path, marker)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Raises ``FileExistsError`` if ``path`` holds something other than an empty folder and overwrite is off."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists and is not a tiny model built with these parameters; "
            "pass overwrite=True to replace it"
        )


def _move_into_place(tmp: Path, path: Path, marker: dict[str, Any]) -> None:
    """Renames the finished build ``tmp`` to ``path``, replacing an empty folder or an overwritable old one.

    If a concurrent build put the same model there first, ``tmp`` is left for the caller to delete.
    """
    if _is_complete_tiny(path, marker):
        return
    if path.exists() or path.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, trash / path.name)
        try:
            _rename_or_accept(tmp, path, marker)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        _rename_or_accept(tmp, path, marker)


def _rename_or_accept(tmp: Path, path: Path, marker: dict[str, Any]) -> None:
    """Renames ``tmp`` to ``path``; losing the race to an identical concurrent build is not an error."""
    try:
        os.replace(tmp, path)
    except OSError:
        if not _is_complete_tiny(path, marker):
            raise


def tiny_model_path(resolution: int = 64) -> Path:
    """Returns the cache folder of the embedded tiny model (``$CARTOONIFY_HOME`` or ``~/.cache/cartoonify``)."""
    home = Path(os.environ.get("CARTOONIFY_HOME", "~/.cache/cartoonify")).expanduser()
    return home / f"tiny-sd-{resolution}"


def resolve_model(name_or_path: str, resolution: int = 64) -> str:
    """Returns ``name_or_path`` unchanged, or for ``TINY_MODEL`` the (built if needed) tiny model's folder."""
    if str(name_or_path) != TINY_MODEL:
        return str(name_or_path)
    return str(build_tiny(tiny_model_path(resolution), resolution=resolution))


# --------------------------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------------------------


# First versions whose ``from_pretrained`` takes ``dtype`` (and deprecate ``torch_dtype``).
_DTYPE_KEYWORD_SINCE = {"diffusers": "0.40.0", "transformers": "4.56.0"}


@functools.lru_cache(maxsize=None)
def _accepts_dtype_keyword(package: str) -> bool:
    """Whether ``package``'s ``from_pretrained`` takes ``dtype`` rather than the older ``torch_dtype``."""
    from importlib.metadata import version

    from packaging.version import Version

    installed = Version(Version(version(package)).base_version)
    return installed >= Version(_DTYPE_KEYWORD_SINCE[package])


def _dtype_kwargs(package: str, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Returns ``{"dtype": dtype}`` or ``{"torch_dtype": dtype}``, whichever ``package`` expects."""
    return {("dtype" if _accepts_dtype_keyword(package) else "torch_dtype"): dtype}


def _variant_for(name_or_path: str | os.PathLike, variant: str | None) -> str | None:
    """Returns ``variant`` unless ``name_or_path`` is a local folder without any ``*.<variant>.*`` weight files.

    diffusers refuses a variant that a folder lacks; local folders (the tiny model, one's own fine-tunes) are
    usually saved without one, so the variant is dropped for them. Hub ids are left alone.
    """
    if variant is None or not Path(name_or_path).expanduser().is_dir():
        return variant
    root = Path(name_or_path).expanduser()
    for suffix in ("safetensors", "bin"):
        if next(root.rglob(f"*.{variant}.{suffix}"), None) is not None:
            return variant
        # sharded variant checkpoints: model.safetensors.index.fp16.json / *.fp16-00001-of-00002.safetensors
        if next(root.rglob(f"*.{variant}-*.{suffix}"), None) is not None:
            return variant
    return None


def _local_or_hub(name_or_path: str | os.PathLike) -> str:
    """Expands ``~`` for existing local paths; hub ids are returned unchanged."""
    expanded = Path(name_or_path).expanduser()
    return str(expanded) if expanded.exists() else str(name_or_path)


def load_pipeline(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
    torch_dtype: torch.dtype | None = None,
    safety_checker: bool = True,
    **kwargs: Any,
) -> "StableDiffusionPipeline":
    """Loads a base ``StableDiffusionPipeline`` from a hub id, a local folder or ``TINY_MODEL``.

    Args:
        name_or_path: Hub id, local diffusers folder, or ``TINY_MODEL``.
        revision: Hub revision (ignored by diffusers for local folders).
        variant: Weight variant such as ``"fp16"``; dropped for local folders that have no such files.
        torch_dtype: Dtype of every loaded module; float32 when None. (Left unset, transformers would load
            the fp16 variant's text encoder and safety checker in fp16 next to an fp32 UNet.)
        safety_checker: If False, load without the safety checker (``safety_checker=None``).
        **kwargs: Passed on to ``StableDiffusionPipeline.from_pretrained`` (``use_safetensors`` defaults to True).
    """
    from diffusers import StableDiffusionPipeline

    resolved = _local_or_hub(resolve_model(name_or_path))
    kwargs.setdefault("use_safetensors", True)
    if kwargs["use_safetensors"] and Path(resolved).is_dir():
        from .checkpoint import check_safe_to_load

        check_safe_to_load(resolved)  # a clear refusal, naming the pickle files, before diffusers' own
    kwargs.update(_dtype_kwargs("diffusers", torch_dtype or torch.float32))
    if not safety_checker:
        kwargs["safety_checker"] = None
        kwargs["requires_safety_checker"] = False
    return StableDiffusionPipeline.from_pretrained(
        resolved, revision=revision, variant=_variant_for(resolved, variant), **kwargs
    )


def _scheduler_as_saved(name_or_path: str, revision: str | None) -> Any:
    """Loads the scheduler stored in ``scheduler/`` with the class named in its config."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(name_or_path, subfolder="scheduler", revision=revision)
    scheduler_class = getattr(diffusers, config["_class_name"])
    return scheduler_class.from_config(config)


def load_components(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
) -> dict[str, Any]:
    """Loads an SD checkpoint's parts separately, in float32, as diffusers' ``train_dreambooth.py`` does.

    Returns:
        A dict with ``tokenizer``, ``text_encoder``, ``vae``, ``unet``, ``noise_scheduler`` (a ``DDPMScheduler`` for
        training) and ``scheduler`` (the pipeline's own sampler, as saved).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    resolved = _local_or_hub(resolve_model(name_or_path))
    variant = _variant_for(resolved, variant)
    model_kwargs: dict[str, Any] = {"revision": revision, "variant": variant, "use_safetensors": True}
    text_kwargs = {**model_kwargs, **_dtype_kwargs("transformers", torch.float32)}
    diffusers_kwargs = {**model_kwargs, **_dtype_kwargs("diffusers", torch.float32)}
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(resolved, subfolder="tokenizer", revision=revision),
        "text_encoder": CLIPTextModel.from_pretrained(resolved, subfolder="text_encoder", **text_kwargs),
        "vae": AutoencoderKL.from_pretrained(resolved, subfolder="vae", **diffusers_kwargs),
        "unet": UNet2DConditionModel.from_pretrained(resolved, subfolder="unet", **diffusers_kwargs),
        "noise_scheduler": DDPMScheduler.from_pretrained(resolved, subfolder="scheduler", revision=revision),
        "scheduler": _scheduler_as_saved(resolved, revision),
    }


# --------------------------------------------------------------------------------------------------------------------
# Full-size SD1.5 with random weights.
# --------------------------------------------------------------------------------------------------------------------


def build_sd15(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, torch.nn.Module]:
    """Builds SD1.5's UNet, VAE and CLIP text encoder with random weights on ``device`` (``"meta"`` allowed).

    Parameter counts equal the real checkpoint's: UNet 859,520,964; text encoder 123,060,480; VAE 83,653,863.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel(**SD15_UNET_CONFIG),
            "vae": AutoencoderKL(**SD15_VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG)),
        }
    return {name: move_module(module, dtype=dtype) for name, module in modules.items()}


def build_sd15_pipeline(path: str | os.PathLike, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write SD1.5's full architecture with random weights as a diffusers pipeline (for benchmarks).

    The tokenizer is the package's small one: its ids are valid for SD1.5's 49,408-token embedding, and
    the token ids do not change the cost of a step.
    """
    from .sample import pipeline_from_modules

    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = build_sd15(dtype=dtype)
    tokenizer = write_tiny_tokenizer(path / "tokenizer")
    from diffusers import PNDMScheduler

    pipe = pipeline_from_modules(
        modules["unet"], modules["text_encoder"], modules["vae"], tokenizer, PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    )
    pipe.save_pretrained(path, safe_serialization=True)
    write_bpe_files(path / "tokenizer")
    return path


def count_parameters(module: torch.nn.Module) -> int:
    """Returns the number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def load_safety_components(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = DEFAULT_REVISION,
    variant: str | None = DEFAULT_VARIANT,
) -> tuple[Any, Any]:
    """The model's safety checker and its feature extractor, or ``(None, None)`` if it has none.

    Training validation keeps the checker on, as the write-up's runs did: an image it flags comes back
    black and is recorded as NSFW, so that rating can exclude it.
    """
    import transformers
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    resolved = _local_or_hub(resolve_model(name_or_path))
    index = DiffusionPipeline.load_config(resolved, revision=revision)
    checker_entry = index.get("safety_checker") or [None, None]
    extractor_entry = index.get("feature_extractor") or [None, None]
    if checker_entry[1] is None or extractor_entry[1] is None:
        return None, None
    checker = StableDiffusionSafetyChecker.from_pretrained(
        resolved,
        subfolder="safety_checker",
        revision=revision,
        variant=_variant_for(resolved, variant),
        use_safetensors=True,
        **_dtype_kwargs("transformers", torch.float32),
    )
    extractor_cls = getattr(transformers, extractor_entry[1])
    extractor = extractor_cls.from_pretrained(resolved, subfolder="feature_extractor", revision=revision)
    return checker, extractor
