"""The embedded pretrained tiny model learns: its VAE reconstructs held-out photos, it generates base-world
images (not noise), a short DreamBooth run moves it toward the cartoon style, prior preservation keeps the
class prompt's images near the base model's, and img2img keeps a photo at low strength.

Figures are judged with the weight-free style score (:mod:`cartoonify.style`), PSNR, SSIM and pixel
distances; every threshold is stated where it is asserted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cartoonify.config import TINY_MODEL, TrainConfig
from cartoonify.imaging import fit_square, gray_ssim
from cartoonify.models import image_to_image, load_pipeline, make_scheduler, resolve_model, text_to_image
from cartoonify.sampling import load_finetuned
from cartoonify.style import mean_style_score, style_score
from cartoonify.training.run import run_training

SEEDS = [0, 1, 2]
BASE_PROMPTS = ["a photo of a red ball on grass under a blue sky", "a photo of a cat",
                "a photo of a blue box on sand under an orange sky"]


def _held_out_photos() -> list[Image.Image]:
    import skimage.data

    return [fit_square(Image.fromarray(f()).convert("RGB"), 64) for f in (skimage.data.astronaut, skimage.data.camera)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def base_pipe():
    pipe = load_pipeline(TINY_MODEL, safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler)
    return pipe


def test_vae_reconstructs_held_out_photos(base_pipe):
    """astronaut and camera were never seen in pretraining; a random VAE gives about 9 dB."""
    vae = base_pipe.vae
    scores = []
    for photo in _held_out_photos():
        x = torch.from_numpy(np.asarray(photo)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        out = ((rec[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        scores.append(_psnr(np.asarray(photo), out))
    assert np.mean(scores) >= 20.0, scores


def _high_frequency_share(img: np.ndarray) -> float:
    """Energy of the image's Laplacian relative to its variance (white noise: about 20 for this kernel)."""
    g = img.astype(np.float64).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var() / max(g.var(), 1e-9))


def test_base_samples_are_images_not_noise(base_pipe):
    rng = np.random.default_rng(0)
    noise_share = _high_frequency_share(rng.integers(0, 256, (64, 64, 3)))
    for prompt in BASE_PROMPTS:
        images = text_to_image(base_pipe, prompt, SEEDS, num_inference_steps=25, guidance_scale=5.0).images
        for img in images:
            arr = np.asarray(img)
            assert arr.std() > 10, "not a flat image"
            assert _high_frequency_share(arr) < 0.1 * noise_share, prompt
        assert mean_style_score(images) < 0.3, f"{prompt}: the base model draws photos, not cartoons"


@pytest.fixture(scope="module")
def dreambooth_runs(tmp_path_factory, demo_cartoons):
    """Short DreamBooth runs on the cartoon demo images, with and without prior preservation."""
    root = tmp_path_factory.mktemp("learning")
    runs = {}
    for prior in (True, False):
        config = TrainConfig(
            pretrained_model=TINY_MODEL, instance_dir=str(demo_cartoons), class_dir=str(root / "class"),
            output_dir=str(root / f"prior-{prior}"), resolution=64, num_class_images=24, sample_batch_size=24,
            class_inference_steps=25, with_prior_preservation=prior, train_batch_size=4,
            max_train_steps=LEARN_STEPS, checkpointing_steps=LEARN_STEPS, learning_rate=LEARN_RATE,
            mixed_precision="no", prior_generation_precision="fp32", num_validation_images=len(SEEDS),
            validation_inference_steps=25, validate_at_start=True, report_to="none", save_final_pipeline=False,
            seed=42, holdout_images=0,  # the thresholds are for all 24 images (16 learn the style unreliably)
        )
        result = run_training(config, progress=False)
        runs[prior] = (config, result)
    return runs


LEARN_STEPS = 300  # as the demo
LEARN_RATE = 1e-3  # the demo's (the write-up's 1e-6 is for SD1.5's 860M-parameter UNet)


@pytest.fixture(scope="module")
def demo_cartoons(tmp_path_factory):
    from cartoonify.data.collect import collect_dataset
    from cartoonify.config import CollectConfig
    from cartoonify.data.demo import make_style_images

    root = tmp_path_factory.mktemp("cartoons")
    make_style_images(root / "raw", n=24, size=128, seed=0)
    collect_dataset(CollectConfig(sources=[str(root / "raw")], collect_dir=str(root / "set"), resolution=64),
                    progress=False)
    return root / "set" / "images"


def _validation_images(result, step: int) -> list[Image.Image]:
    folder = Path(result.output_dir) / "validation" / f"step-{step}"
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("image-*.png"))]


def test_dreambooth_moves_validation_images_toward_the_style(dreambooth_runs):
    config, result = dreambooth_runs[True]
    before = mean_style_score(_validation_images(result, 0))
    after = mean_style_score(_validation_images(result, LEARN_STEPS))
    assert after - before >= 0.15, (before, after)


def _class_images(pipe, prompt: str) -> np.ndarray:
    images = text_to_image(pipe, prompt, SEEDS, num_inference_steps=20, guidance_scale=5.0).images
    return np.stack([np.asarray(i, dtype=np.float64) for i in images])


def test_prior_preservation_keeps_the_class_prompt_near_the_base(dreambooth_runs, base_pipe):
    """The class prompt's images at fixed seeds drift less from the base model's with prior preservation."""
    config = dreambooth_runs[True][0]
    base = _class_images(base_pipe, config.class_prompt)
    drift = {}
    for prior, (cfg, result) in dreambooth_runs.items():
        pipe = load_finetuned(resolve_model(TINY_MODEL), result.checkpoints[-1], scheduler="ddim",
                              safety_checker=False, device="cpu")
        drift[prior] = float(np.sqrt(np.mean((_class_images(pipe, cfg.class_prompt) - base) ** 2)))
    assert drift[True] < drift[False], drift


def test_img2img_keeps_the_photo_at_low_strength_and_takes_the_style_at_high(dreambooth_runs, base_pipe):
    """At strength 0.3 the output keeps the photo's structure; at 0.9 the fine-tuned model's outputs score
    higher on the style scale than the base model's from the same photo, seed and settings."""
    config, result = dreambooth_runs[True]
    tuned = load_finetuned(resolve_model(TINY_MODEL), result.checkpoints[-1], scheduler="ddim",
                           safety_checker=False, device="cpu")
    kw = dict(num_inference_steps=25, guidance_scale=7.5)
    moved = []
    for photo in _held_out_photos():
        low = image_to_image(tuned, photo, config.validation_prompt, strength=0.3, seed=0, **kw).images[0]
        assert gray_ssim(photo, low) >= 0.5
        for seed in SEEDS:
            high = image_to_image(tuned, photo, config.validation_prompt, strength=0.9, seed=seed, **kw).images[0]
            base = image_to_image(base_pipe, photo, config.validation_prompt, strength=0.9, seed=seed, **kw).images[0]
            moved.append(style_score(high) - style_score(base))
    assert np.mean(moved) >= 0.1, moved


# ------------------------------------------------------------------------------------------------
# the automated scores of 03_evaluate on the same runs (tiny random CLIP and DINO copies)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluations(dreambooth_runs):
    from cartoonify.config import TINY_CLIP_MODEL, TINY_DINO_MODEL, EvalConfig
    from cartoonify.evaluation import evaluate_run

    config = EvalConfig(clip_model=TINY_CLIP_MODEL, dino_model=TINY_DINO_MODEL, drift_images=4,
                        bootstrap_resamples=200)
    return {prior: {r["step"]: r for r in evaluate_run(result.output_dir, config, [], progress=False).rows}
            for prior, (_, result) in dreambooth_runs.items()}


def test_style_similarity_to_the_cartoon_training_set_rises(evaluations):
    """The validation images move toward the instance images in the (random-feature) CLIP and DINO
    embeddings, and on the weight-free style score."""
    rows = evaluations[True]
    before, after = rows[0], rows[LEARN_STEPS]
    for key in ("clip_style", "dino", "style_score"):
        assert after[key] > before[key], (key, before[key], after[key])
    assert after["clip_style"] - before["clip_style"] >= 0.01, (before["clip_style"], after["clip_style"])


def test_drift_is_larger_without_prior_preservation(evaluations):
    """The class prompt's images at the base model's seeds move further from the base model's without prior
    preservation: 1 - SSIM about 0.40 against 0.26 with it.

    Only the weight-free measure is asserted: the embedded CLIP and DINO copies have random weights, and their
    drift does not order these runs (about 0.008 against 0.011 for CLIP); with the real models it is the
    DreamBooth paper's measure. Here they are only required to be measured.
    """
    with_prior, without = evaluations[True][LEARN_STEPS], evaluations[False][LEARN_STEPS]
    assert without["drift_ssim"] > with_prior["drift_ssim"] + 0.05, (with_prior["drift_ssim"], without["drift_ssim"])
    for key in ("drift_clip", "drift_dino"):
        assert 0 < with_prior[key] < 1 and 0 < without[key] < 1, key


# ------------------------------------------------------------------------------------------------
# photos into the style: ControlNet keeps more of the photo than img2img (the shipped tiny canny ControlNet)
# ------------------------------------------------------------------------------------------------

# mean edge-F1 advantage of ControlNet (conditioning scale 1) over img2img at strength 0.75 required below; measured
# +0.065 (every one of the 8 photo/seed pairs between +0.013 and +0.119; +0.098 at scale 1.5, +0.155 at scale 2)
CONTROL_MARGIN = 0.04


def _structure_photos() -> list[Image.Image]:
    """Photos outside the base model's training (astronaut, camera) and two more scikit-image samples."""
    import skimage.data

    extra = [skimage.data.chelsea, skimage.data.coffee]
    return _held_out_photos() + [fit_square(Image.fromarray(f()).convert("RGB"), 64) for f in extra]


def test_controlnet_keeps_more_structure_than_img2img(dreambooth_runs):
    """At the same strength (0.75) and seeds, ControlNet-guided img2img with the shipped tiny canny ControlNet
    keeps more of the photo's outline (edge F1 of the Canny maps) than plain img2img, over four photos."""
    from cartoonify.config import TINY_CANNY_CONTROLNET
    from cartoonify.edgemaps import canny_map, structure_f1
    from cartoonify.models import load_controlnet
    from cartoonify.stylize import Setting, controlnet, controlnet_pipeline, img2img

    config, result = dreambooth_runs[True]
    tuned = load_finetuned(resolve_model(TINY_MODEL), result.checkpoints[-1], scheduler="euler_a",
                           safety_checker=False, device="cpu")
    cn = controlnet_pipeline(tuned, load_controlnet(TINY_CANNY_CONTROLNET))
    kw = dict(steps=25, guidance_scale=7.5)
    gains = []
    for photo in _structure_photos():
        for seed in (0, 1):
            plain = img2img(tuned, photo, config.validation_prompt, Setting("img2img", 0.75), seed=seed, **kw)
            guided = controlnet(cn, photo, [canny_map(photo)], config.validation_prompt,
                                Setting("controlnet", 0.75, 1.0), seed=seed, **kw)
            gains.append(structure_f1(photo, guided) - structure_f1(photo, plain))
    assert min(gains) > 0 and np.mean(gains) >= CONTROL_MARGIN, gains
