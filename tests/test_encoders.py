"""The evaluation models layer: tiny CLIP/DINO builds, the one encoder loader, the embedding cache, similarities."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cartoonify.config import TINY_CLIP_MODEL, TINY_DINO_MODEL
from cartoonify.evaluation.cache import EmbeddingCache
from cartoonify.evaluation.encoders import (
    KINDS,
    EvalModelUnavailable,
    load_encoder,
    try_load_encoder,
)
from cartoonify.evaluation.similarity import clip_t, mean_pairwise_similarity, paired_similarity, topk_similarity
from cartoonify.evaluation.tinymodels import build_tiny_clip, build_tiny_dino, resolve_eval_model

# --------------------------------------------------------------------------------------------------------------------
# Fixtures.
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny CLIP and DINO built into local folders with seed 0."""
    root = tmp_path_factory.mktemp("tiny_eval")
    return {"clip": build_tiny_clip(root / "clip"), "dino": build_tiny_dino(root / "dino")}


@pytest.fixture(scope="module")
def clip(folders):
    return load_encoder("clip", str(folders["clip"]), device="cpu")


@pytest.fixture(scope="module")
def dino(folders):
    return load_encoder("dino", str(folders["dino"]), device="cpu")


def _images(n: int = 5, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of varied sizes."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 50), (64, 64), (70, 33), (48, 96), (32, 32)]
    sizes = (sizes * (n // len(sizes) + 1))[:n]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    return (x / x.norm(dim=-1, keepdim=True)).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Tiny models.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_tiny_clip, build_tiny_dino])
def test_tiny_builds_are_deterministic_and_leave_the_rng_alone(build, folders, tmp_path):
    kind = "clip" if build is build_tiny_clip else "dino"
    state = torch.get_rng_state()
    again = build(tmp_path / "again", seed=0)
    other = build(tmp_path / "other", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    first, second, third = _weights(folders[kind]), _weights(again), _weights(other)
    assert first.keys() == second.keys() == third.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)
    assert not list(tmp_path.glob(".*tmp-*"))  # no temporary folder left behind
    assert build(again, seed=0) == again  # an identical build is reused
    with pytest.raises(FileExistsError):
        build(again, seed=2)


def test_resolve_eval_model(cartoonify_home, tmp_path):
    assert resolve_eval_model("openai/clip-vit-large-patch14", "clip") == "openai/clip-vit-large-patch14"
    assert resolve_eval_model(str(tmp_path), "dino") == str(tmp_path)
    with pytest.raises(ValueError, match="tiny-clip-random.*dino"):
        resolve_eval_model(TINY_CLIP_MODEL, "dino")
    with pytest.raises(ValueError, match="embedded"):
        resolve_eval_model("embedded:nothing", "clip")
    with pytest.raises(ValueError, match="sound"):
        load_encoder("sound", TINY_CLIP_MODEL)
    assert KINDS == ("clip", "dino")


def test_local_folder_and_embedded_name_load_the_same_model(clip, dino, cartoonify_home):
    images = _images(3)
    for encoder, name in ((clip, TINY_CLIP_MODEL), (dino, TINY_DINO_MODEL)):
        embedded = load_encoder(encoder.kind, name, device="cpu")
        assert Path(resolve_eval_model(name, encoder.kind)).parent == cartoonify_home
        assert np.array_equal(embedded.embed_images(images), encoder.embed_images(images))
        assert embedded.slug == f"{encoder.kind}-embedded-tiny-{encoder.kind}-random"
        assert encoder.slug.startswith(f"{encoder.kind}-{encoder.kind}-") and "/" not in encoder.slug
    text = clip.embed_texts(["a cartoon dog"])
    assert np.array_equal(load_encoder("clip", TINY_CLIP_MODEL, device="cpu").embed_texts(["a cartoon dog"]), text)


# --------------------------------------------------------------------------------------------------------------------
# Embeddings against independent computations.
# --------------------------------------------------------------------------------------------------------------------


def test_clip_image_embeddings(clip, folders):
    from transformers import CLIPImageProcessor, CLIPModel

    images = _images(5)
    got = clip.embed_images(images, batch_size=2)
    assert got.shape == (5, 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(got, clip.embed_images(images, batch_size=2))
    np.testing.assert_allclose(clip.embed_images(images, batch_size=1), got, atol=1e-5)
    np.testing.assert_allclose(clip.embed_images(images, batch_size=16), got, atol=1e-5)

    model = CLIPModel.from_pretrained(folders["clip"]).eval()
    pixels = CLIPImageProcessor.from_pretrained(folders["clip"])(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        expected = _normalised(model.visual_projection(pooled))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert clip.embed_images([]).shape == (0, 32)


def test_clip_text_embeddings(clip, folders):
    from transformers import CLIPModel, CLIPTokenizer

    texts = ["a photo of a dog", "cartoon", "a cute cartoon cat wearing a hat in a garden at sunset", "sks " * 200]
    got = clip.embed_texts(texts)
    assert got.shape == (4, 32) and clip.has_text
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clip.embed_texts(texts, batch_size=1), got, atol=1e-5)

    model = CLIPModel.from_pretrained(folders["clip"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folders["clip"])
    expected = []
    for text in texts:  # one at a time, no padding; the long text cut to 77 tokens
        ids = tokenizer(text, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
        assert ids.shape[1] <= 77
        with torch.no_grad():
            expected.append(_normalised(model.text_projection(model.text_model(input_ids=ids).pooler_output)))
    np.testing.assert_allclose(got, np.concatenate(expected), atol=1e-5)


def test_dino_embeddings_are_the_cls_token(dino, folders):
    from transformers import ViTModel

    images = _images(5, seed=1)
    got = dino.embed_images(images, batch_size=3)
    assert got.shape == (5, 48) and got.dtype == np.float32 and not dino.has_text
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(dino.embed_images(images, batch_size=1), got, atol=1e-5)

    # preprocessing by hand: bilinear resize to 64 x 64, scale to [0, 1], ImageNet normalisation
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    arrays = [(np.asarray(im.resize((64, 64), Image.BILINEAR), dtype=np.float64) / 255 - mean) / std for im in images]
    pixels = torch.tensor(np.stack(arrays).transpose(0, 3, 1, 2), dtype=torch.float32)
    model = ViTModel.from_pretrained(folders["dino"]).eval()
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        expected = _normalised(model.layernorm(hidden)[:, 0])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="images only"):
        dino.embed_texts(["a dog"])


# --------------------------------------------------------------------------------------------------------------------
# Weights that cannot be loaded.
# --------------------------------------------------------------------------------------------------------------------


def test_a_model_of_the_other_kind_is_refused_not_loaded_at_random(folders):
    encoder, message = try_load_encoder("clip", str(folders["dino"]))
    assert encoder is None and "not a clip model" in message and str(folders["dino"]) in message
    encoder, message = try_load_encoder("dino", str(folders["clip"]))
    assert encoder is None and "CLIPModel" in message


def test_unavailable_models_say_what_is_missing_and_how_to_get_it(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    with pytest.raises(EvalModelUnavailable) as info:
        load_encoder("clip", "nobody/not-a-model", device="cpu")
    message = str(info.value)
    assert "nobody/not-a-model" in message and "download nobody/not-a-model" in message
    assert "clip_model" in message and "HF_HUB_OFFLINE" in message and "\n" not in message

    encoder, message = try_load_encoder("dino", "nobody/not-a-model", device="cpu")
    assert encoder is None and "dino_model" in message and "nobody/not-a-model" in message

    encoder, message = try_load_encoder("dino", str(tmp_path / "missing" / "folder"))
    assert encoder is None and "missing" in message and "no such folder" in message

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    encoder, message = try_load_encoder("clip", str(pickled))
    assert encoder is None and "pickle" in message and "pytorch_model.bin" in message


# --------------------------------------------------------------------------------------------------------------------
# The embedding cache.
# --------------------------------------------------------------------------------------------------------------------


def _write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(_images(n, seed=7)):
        paths.append(folder / f"img{i}.png")
        image.save(paths[-1])
    return paths


def test_cache_computes_each_image_once(dino, tmp_path):
    paths = _write_images(tmp_path / "images", 4)
    cache_file = tmp_path / "scores" / "cache" / f"{dino.slug}.npz"
    cache = EmbeddingCache(cache_file)
    first = cache.embed_files(dino, paths + [paths[0]], batch_size=3)
    assert cache.computed == 4 and first.shape == (5, 48) and cache_file.is_file()
    assert np.array_equal(first[4], first[0])
    np.testing.assert_allclose(first[:4], dino.embed_images([Image.open(p) for p in paths]), atol=1e-6)

    rerun = EmbeddingCache(cache_file)
    assert np.array_equal(rerun.embed_files(dino, paths), first[:4]) and rerun.computed == 0

    renamed = tmp_path / "elsewhere" / "renamed.png"
    renamed.parent.mkdir()
    shutil.copy(paths[2], renamed)
    assert np.array_equal(rerun.embed_files(dino, [renamed]), first[2:3]) and rerun.computed == 0

    _images(1, seed=99)[0].save(paths[1])  # a changed file is recomputed
    changed = rerun.embed_files(dino, paths)
    assert rerun.computed == 1
    assert np.array_equal(changed[[0, 2, 3]], first[[0, 2, 3]]) and not np.allclose(changed[1], first[1])
    np.testing.assert_allclose(changed[1], dino.embed_images([Image.open(paths[1])])[0], atol=1e-6)
    assert rerun.embed_files(dino, []).shape == (0, 48)


def test_cache_texts_share_the_file(clip, tmp_path):
    paths = _write_images(tmp_path / "images", 2)
    cache = EmbeddingCache(tmp_path / "clip.npz")
    images = cache.embed_files(clip, paths)
    texts = cache.embed_texts(clip, ["a dog", "a cat", "a dog"])
    assert cache.computed == 4 and np.array_equal(texts[0], texts[2])
    np.testing.assert_allclose(texts, clip.embed_texts(["a dog", "a cat", "a dog"]), atol=1e-6)
    rerun = EmbeddingCache(tmp_path / "clip.npz")
    assert np.array_equal(rerun.embed_texts(clip, ["a cat"]), texts[1:2])
    assert np.array_equal(rerun.embed_files(clip, paths), images) and rerun.computed == 0


def test_corrupt_or_foreign_cache_is_rebuilt_with_a_warning(dino, clip, tmp_path, caplog):
    paths = _write_images(tmp_path / "images", 2)
    expected = dino.embed_images([Image.open(p) for p in paths])
    cache_file = tmp_path / "dino.npz"
    for bad in (b"this is not a zip file", None):
        if bad is None:  # vectors of another length, under this encoder's name
            np.savez(cache_file, keys=np.array(["image:x"]), vectors=np.zeros((1, 5), np.float32), encoder=dino.slug)
        else:
            cache_file.write_bytes(bad)
        cache = EmbeddingCache(cache_file)
        with caplog.at_level(logging.WARNING, logger="cartoonify.evaluation.cache"):
            got = cache.embed_files(dino, paths)
        assert "rebuilding" in caplog.text and cache.computed == 2
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert EmbeddingCache(cache_file).embed_files(dino, paths).shape == (2, 48)
        caplog.clear()
    # a cache written by another encoder is not used for this one
    EmbeddingCache(tmp_path / "shared.npz").embed_files(clip, paths)
    other = EmbeddingCache(tmp_path / "shared.npz")
    with caplog.at_level(logging.WARNING, logger="cartoonify.evaluation.cache"):
        np.testing.assert_allclose(other.embed_files(dino, paths), expected, atol=1e-6)
    assert other.computed == 2 and "belongs to encoder" in caplog.text


# --------------------------------------------------------------------------------------------------------------------
# Similarities.
# --------------------------------------------------------------------------------------------------------------------


def test_clip_t():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    scores = clip_t(images, np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(scores, [100.0, 0.0, 0.0, 60.0])  # a negative cosine clips to 0
    paired = clip_t(images, np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.8, -0.6]]))
    np.testing.assert_allclose(paired, [100.0, 100.0, 100.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="1 or 4 rows"):
        clip_t(images, np.ones((2, 2)))
    with pytest.raises(ValueError, match="length 3"):
        clip_t(images, np.ones((1, 3)))


def test_topk_similarity():
    reference = np.eye(3)
    query = np.array([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(topk_similarity(query, reference, 1), [0.8, 1.0])
    np.testing.assert_allclose(topk_similarity(query, reference, 2), [0.7, 0.0 + 0.5])
    np.testing.assert_allclose(topk_similarity(query, reference, 10), [1.4 / 3, 1 / 3])  # k clipped to 3
    with pytest.raises(ValueError, match="k must"):
        topk_similarity(query, reference, 0)
    with pytest.raises(ValueError, match="2-D"):
        topk_similarity(query[0], reference, 1)


def test_mean_pairwise_and_paired_similarity():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # rows are normalised: cosines
    # cosines: row 1 -> (1, 1, 0), row 2 -> (0, 0, 1)
    assert mean_pairwise_similarity(a, b) == pytest.approx(3 / 6)
    assert mean_pairwise_similarity(a, a) == pytest.approx(0.5)
    np.testing.assert_allclose(paired_similarity(a, np.array([[3.0, 0.0], [1.0, 1.0]])), [1.0, np.sqrt(0.5)])
    np.testing.assert_allclose(paired_similarity(a, -a), [-1.0, -1.0])
    with pytest.raises(ValueError, match="same shape"):
        paired_similarity(a, b)
    with pytest.raises(ValueError, match="empty"):
        mean_pairwise_similarity(np.zeros((0, 2)), b)
