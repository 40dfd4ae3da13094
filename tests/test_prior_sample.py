"""Class-image generation (top-up, never overwrite) and sampling (schedulers, seeds, img2img, grids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cartoonify.config import SCHEDULERS, scheduler_spec
from cartoonify.data.prior import class_image_name, generate_class_images, missing_class_indices
from cartoonify.imaging import image_grid
from cartoonify.models import image_to_image, make_scheduler, text_to_image
from cartoonify.sampling import load_finetuned


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return load_finetuned(str(tiny_model), safety_checker=False, device="cpu")


def test_missing_indices_count_foreign_files_and_skip_taken_names(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "user-photo.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / class_image_name(1))
    assert missing_class_indices(tmp_path, 5) == [0, 2, 3]
    assert missing_class_indices(tmp_path, 2) == []
    assert missing_class_indices(tmp_path / "absent", 2) == [0, 1]


def test_class_images_top_up_never_overwrite_and_match_a_single_run(pipe, tmp_path):
    kw = dict(seed=7, batch_size=2, num_inference_steps=3, progress=False)
    one_go = generate_class_images(pipe, tmp_path / "a", "an illustration", 3, **kw)
    assert [p.name for p in one_go] == [class_image_name(k) for k in range(3)]
    b = tmp_path / "b"
    b.mkdir()
    Image.new("RGB", (64, 64), "red").save(b / "mine.png")  # a user's own class image
    Image.new("RGB", (64, 64), "blue").save(b / class_image_name(1))
    before = (b / class_image_name(1)).read_bytes()
    new = generate_class_images(pipe, b, "an illustration", 3, **kw)
    assert [p.name for p in new] == [class_image_name(0)]
    assert (b / class_image_name(1)).read_bytes() == before
    assert (b / class_image_name(0)).read_bytes() == (tmp_path / "a" / class_image_name(0)).read_bytes()
    assert generate_class_images(pipe, b, "an illustration", 3, **kw) == []  # already full
    # image k comes from seed+k alone, whatever the batch it was generated in
    more = generate_class_images(pipe, tmp_path / "a", "an illustration", 4, **{**kw, "batch_size": 1})
    ref = text_to_image(pipe, "an illustration", [7 + 3], num_inference_steps=3)
    assert np.array_equal(np.asarray(Image.open(more[0])), np.asarray(ref.images[0]))


def test_an_automatic_class_batch_halves_on_out_of_memory_and_keeps_what_fits(pipe, tmp_path, monkeypatch):
    """batch_size None: the largest batch that fits, found by halving on CUDA out-of-memory (injected here:
    a batch of more than 3 fails), capped by the count; every image still comes from its own seed."""
    import cartoonify.data.prior as prior
    from cartoonify.data.prior import auto_batches

    tried = []

    def generate(chunk):
        tried.append(len(chunk))
        if len(chunk) > 3:
            raise torch.cuda.OutOfMemoryError("injected")
        return chunk

    chunks = [c for c, _ in auto_batches(list(range(10)), generate, None, "cuda")]
    assert tried[:3] == [10, 5, 2] and chunks == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # 64 capped at 10
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a batch size the user set is not changed behind them
        list(auto_batches(list(range(10)), generate, 4, "cuda"))

    monkeypatch.setitem(prior.AUTO_BATCH_START, "cpu", 4)
    auto = generate_class_images(pipe, tmp_path / "auto", "an illustration", 5, seed=7, batch_size=None,
                                 num_inference_steps=3, progress=False)
    single = generate_class_images(pipe, tmp_path / "one", "an illustration", 5, seed=7, batch_size=1,
                                   num_inference_steps=3, progress=False)
    assert [p.name for p in auto] == [p.name for p in single]
    for a, b in zip(auto, single):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 1  # the same images (batched matrix products may round the last bit apart)


def test_registry_covers_the_comparison_and_swaps_from_config(pipe):
    for name in ("pndm", "ddim", "euler", "euler_a", "dpmpp_2m_karras", "unipc", "heun", "lms"):
        assert name in SCHEDULERS
        s = make_scheduler(name, pipe.scheduler)
        assert type(s).__name__ == SCHEDULERS[name].class_name
        assert s.config.beta_schedule == "scaled_linear" and s.config.beta_end == 0.012
    assert make_scheduler("dpmpp_2m_karras", pipe.scheduler).config.use_karras_sigmas is True
    assert scheduler_spec("PNDMScheduler").class_name == "PNDMScheduler"
    with pytest.raises(KeyError, match="nope"):
        scheduler_spec("nope")
    with pytest.raises(KeyError, match="NopeScheduler"):  # well-formed, but diffusers has no such class
        make_scheduler("NopeScheduler", pipe.scheduler)


def test_per_image_seeds_do_not_depend_on_the_batch(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "scheduler", make_scheduler("euler_a", pipe.scheduler))  # ancestral: noise every step
    together = text_to_image(pipe, "a person, Disney style", [1, 2, 3], num_inference_steps=3)
    alone = text_to_image(pipe, "a person, Disney style", [2], num_inference_steps=3)
    again = text_to_image(pipe, "a person, Disney style", [1, 2, 3], num_inference_steps=3, batch_size=1)
    a = [np.asarray(i, dtype=np.int16) for i in together.images]
    assert np.abs(a[1] - np.asarray(alone.images[0], dtype=np.int16)).max() <= 1
    assert all(np.abs(x - np.asarray(y, dtype=np.int16)).max() <= 1 for x, y in zip(a, again.images))
    assert not np.array_equal(a[0], a[1])
    assert together.seeds == [1, 2, 3] and together.nsfw == [None] * 3


def test_img2img_strength(pipe, monkeypatch):
    """Strength is the share of the denoising schedule that runs: it sets how many UNet evaluations there
    are (DDIM: one a step), and it is deterministic for a seed."""
    monkeypatch.setattr(pipe, "scheduler", make_scheduler("ddim", pipe.scheduler))
    photo = Image.new("RGB", (100, 80), (200, 40, 40))
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        counts = {}
        for strength in (0.2, 0.5, 1.0):
            calls.clear()
            res = image_to_image(pipe, photo, "a person, Disney style", strength=strength, seed=0,
                                 num_inference_steps=10)
            counts[strength] = len(calls)
    finally:
        handle.remove()
    assert counts == {0.2: 2, 0.5: 5, 1.0: 10}  # int(10 * strength) steps of the schedule
    assert res.images[0].size == (64, 64)
    low = image_to_image(pipe, photo, "a person, Disney style", strength=0.2, seed=0, num_inference_steps=10)
    ref = image_to_image(pipe, photo, "a person, Disney style", strength=0.2, seed=0, num_inference_steps=10)
    assert np.array_equal(np.asarray(low.images[0]), np.asarray(ref.images[0]))
    with pytest.raises(ValueError, match="strength"):
        image_to_image(pipe, photo, "x", strength=0.0)


def test_load_finetuned_swaps_in_checkpoint_modules(trained_run):
    ckpt = trained_run["result"].checkpoints[0]
    pipe = load_finetuned(str(trained_run["config"].pretrained_model), ckpt, scheduler="euler_a", device="cpu")
    snap = trained_run["snapshots"][2]  # a checkpoint keeps fp16 weights for evaluation, loaded into the fp32 pipeline

    def fp16(v):
        return v.half().float() if v.is_floating_point() else v

    assert all(torch.equal(pipe.unet.state_dict()[k], fp16(v)) for k, v in snap["unet"].items())
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], fp16(v)) for k, v in snap["text_encoder"].items())
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.raises(FileNotFoundError, match="unet"):
        load_finetuned(str(trained_run["config"].pretrained_model), trained_run["config"].output_dir)


def test_image_grid_layout():
    ims = [Image.new("RGB", (10, 8), c) for c in ("red", "green", "blue")]
    g = image_grid(ims, rows=1, pad=2)
    assert g.size == (34, 8)
    assert g.getpixel((0, 0)) == (255, 0, 0) and g.getpixel((12, 0)) == (0, 128, 0) and g.getpixel((11, 0)) == (255, 255, 255)
    assert image_grid(ims, cols=2).size == (22, 18)
    with pytest.raises(ValueError):
        image_grid(ims, rows=1, cols=2)


def test_compile_unet_generates_class_images_with_the_compiled_unet_and_its_mode(tiny_model, tmp_path, monkeypatch):
    """``compile_unet`` reaches class-image generation, with ``compile_mode`` (reduce-overhead: CUDA graphs),
    and the training step gets the same mode. torch.compile is recorded here (compiling takes minutes on a
    CPU; tests/test_compile.py compiles for real)."""
    from cartoonify.config import TrainConfig
    from cartoonify.data.prior import ensure_class_images
    from cartoonify.training.setup import apply_speed_settings

    calls = []

    def record(fn, **kwargs):
        calls.append((fn, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", record)
    config = TrainConfig(pretrained_model=str(tiny_model), class_dir=str(tmp_path / "class"), num_class_images=2,
                         sample_batch_size=2, class_inference_steps=2, prior_generation_precision="fp32",
                         resolution=64, compile_unet=True, compile_mode="reduce-overhead")
    assert len(ensure_class_images(config, "cpu", progress=False)) == 2
    assert len(calls) == 1 and type(calls[0][0]).__name__ == "UNet2DConditionModel"
    assert calls[0][1] == {"mode": "reduce-overhead"}
    unet = torch.nn.Linear(2, 2)
    apply_speed_settings(config, unet, torch.device("cpu"))
    assert calls[1][1] == {"mode": "reduce-overhead"} and unet._eager_forward is not None
    apply_speed_settings(config.replace(compile_mode="default"), torch.nn.Linear(2, 2), torch.device("cpu"))
    assert calls[2][1] == {}  # torch's default mode
