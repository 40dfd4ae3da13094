"""Data: PIL/numpy transforms, captions, the dataset and the step-indexed sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cartoonify.data.dataset import DreamBoothDataset, StepBatchSampler, collate_examples, load_training_image, to_pil
from cartoonify.data.folders import DataFolderError, read_caption, require_images
from cartoonify.imaging import ImageLoadError, open_rgb


def test_transform_matches_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    t = load_training_image(tmp_path / "a.png", 60, center_crop=True)
    # independent: PIL bilinear resize to 60x80 (shorter side 60), center crop 60x60 at x offset 10
    ref = np.asarray(Image.fromarray(arr).resize((80, 60), Image.BILINEAR), dtype=np.float32)[:, 10:70]
    assert t.shape == (3, 60, 60) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy().transpose(1, 2, 0), ref / 127.5 - 1, atol=1e-6)
    assert to_pil(t).size == (60, 60)


@pytest.mark.parametrize("orientation, corner", [(6, "top-right"), (8, "bottom-left"), (3, "bottom-right")])
def test_exif_rotation_and_mode_conversion(tmp_path, orientation, corner):
    """A dark marker in the stored image's top-left corner ends where a viewer shows it: orientation 6 is
    stored rotated 90 degrees counter-clockwise (shown turned clockwise), 8 the other way, 3 upside down."""
    img = Image.new("L", (40, 20), 220)
    img.paste(0, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = open_rgb(tmp_path / "r.jpg")
    assert out.mode == "RGB" and out.size == ((20, 40) if orientation in (6, 8) else (40, 20))
    arr = np.asarray(out.convert("L"), dtype=float)
    h, w = arr.shape
    corners = {"top-left": arr[:8, :8], "top-right": arr[:8, w - 8:], "bottom-left": arr[h - 8:, :8],
               "bottom-right": arr[h - 8:, w - 8:]}
    dark = [name for name, block in corners.items() if block.mean() < 80]
    assert dark == [corner]


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageLoadError, match="bad.png"):
        load_training_image(tmp_path / "bad.png", 32)


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(DataFolderError, match="instance_dir.*nope"):
        require_images(tmp_path / "nope", "instance_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFolderError, match="holds no images"):
        require_images(tmp_path / "empty", "instance_dir")


def test_caption_overrides_instance_prompt(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.txt").write_text("  a cartoon fox,\n Disney style \n")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "c.txt").write_text("   ")
    assert read_caption(tmp_path / "a.png", "default") == "a cartoon fox, Disney style"
    assert read_caption(tmp_path / "b.png", "default") == "default"
    assert read_caption(tmp_path / "c.png", "default") == "default"


def test_dataset_pairs_instance_and_class(tiny_model, demo_data, tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
    for i in range(3):
        Image.new("RGB", (64, 64), (i, i, i)).save(tmp_path / f"class-{i}.png")
    ds = DreamBoothDataset(
        demo_data["instance_dir"], tok, "fallback prompt", 64, class_dir=tmp_path, class_prompt="an illustration"
    )
    n = len(ds.instance_paths)
    assert len(ds) == max(n, 3)
    # captions from the drawn demo data replace the instance prompt
    assert all(p.endswith(", Disney style") for p in ds.instance_prompts)
    ex = ds[n + 1]  # indices past the length wrap (they carry the epoch)
    assert ex["instance_index"] == 1 and ex["class_index"] == (n + 1) % 3
    batch = collate_examples([ds[0], ds[1]], with_prior_preservation=True)
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert torch.equal(batch["input_ids"][2], batch["input_ids"][3])  # class prompt twice
    assert torch.equal(batch["input_ids"][0], ds.instance_ids[0])


def test_sampler_is_a_function_of_seed_and_step():
    s = StepBatchSampler(length=10, batch_size=4, seed=3)
    it = iter(s)
    first = [next(it) for _ in range(7)]
    assert s.batches_per_epoch == 3
    # each epoch covers every index once (last batch short)
    epoch0 = sorted(i for b in first[:3] for i in b)
    assert epoch0 == list(range(10))
    assert [len(b) for b in first[:3]] == [4, 4, 2]
    # epoch 1 carries the epoch in the index and is a different order
    assert all(10 <= i < 20 for b in first[3:6] for i in b)
    # resuming at batch 4 gives exactly the same batches as the uninterrupted iterator
    resumed = iter(StepBatchSampler(length=10, batch_size=4, seed=3, start=4))
    assert [next(resumed) for _ in range(3)] == first[4:7]


def test_sampler_shards_across_processes():
    a = StepBatchSampler(length=16, batch_size=2, seed=0, num_replicas=2, rank=0)
    b = StepBatchSampler(length=16, batch_size=2, seed=0, num_replicas=2, rank=1)
    one = StepBatchSampler(length=16, batch_size=4, seed=0)
    for m in range(4):
        assert sorted(a.batch(m) + b.batch(m)) == sorted(one.batch(m))
        assert not set(a.batch(m)) & set(b.batch(m))
