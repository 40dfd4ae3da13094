"""LoRA mode (``train_mode: lora``): only the adapters train, checkpoints hold megabytes, diffusers'
``load_lora_weights`` on a fresh pipeline reproduces the run's validation image, a SIGKILL and resume is
bit-identical, the final pipeline has the adapters fused into plain weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_crash_safety as crash_safety
import torch
from PIL import Image
from safetensors.torch import load_file

from cartoonify.models import load_components, load_pipeline, make_scheduler, text_to_image
from cartoonify.runs import CheckpointError, list_checkpoints, read_marker
from cartoonify.training.lora import LORA_WEIGHTS, is_lora_checkpoint
from cartoonify.training.run import build_trainer
from cartoonify.training.validation import validation_seeds

kill_config = crash_safety.kill_config
STEPS = crash_safety.STEPS
LORA = dict(train_mode="lora", lora_rank=4, lora_alpha=8.0, learning_rate=3e-2)  # LoRA wants a high rate; a visible change in 4 steps


def _lora_config(kill_config, name: str, **overrides):
    return kill_config(name, **{**LORA, **overrides})


def _base_weights(model) -> dict[str, torch.Tensor]:
    """The base weights of a module with adapters, by their names without peft's ``base_layer.`` level."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.fixture(scope="module")
def lora_run(kill_config, tiny_model):
    """6 LoRA steps (UNet and text encoder adapters), a checkpoint and one validation image every 2, a final
    pipeline; the base weights before and after, the adapters' initial weights."""
    config = _lora_config(kill_config, "lora", num_validation_images=1, validation_inference_steps=4,
                          save_final_pipeline=True, final_pipeline_precision="fp32", report_to="none")
    trainer = build_trainer(config, progress=False)
    unet, te = trainer.unwrap(trainer.unet), trainer.unwrap(trainer.text_encoder)
    before = {"unet": _base_weights(unet), "text_encoder": _base_weights(te)}
    initial_lora = {k: v.detach().clone() for k, v in unet.state_dict().items() if "lora_" in k}
    result = trainer.run()
    after = {"unet": _base_weights(unet), "text_encoder": _base_weights(te)}
    return {"config": config, "result": result, "trainer": trainer, "before": before, "after": after,
            "initial_lora": initial_lora, "tiny_model": str(tiny_model)}


def test_only_the_adapters_change(lora_run, tiny_model):
    fresh = load_components(str(tiny_model), variant=None)
    for name in ("unet", "text_encoder"):
        before, after = lora_run["before"][name], lora_run["after"][name]
        reference = fresh[name].state_dict()
        assert set(before) == set(reference), name  # every base weight is there, under its own name
        assert all(torch.equal(after[k], reference[k]) for k in reference), name  # byte-identical to the base
    unet = lora_run["trainer"].unwrap(lora_run["trainer"].unet)
    trained = {k: v for k, v in unet.state_dict().items() if "lora_" in k}
    assert trained and any(not torch.equal(trained[k], lora_run["initial_lora"][k]) for k in trained)
    assert all(p.requires_grad == ("lora_" in n) for n, p in unet.named_parameters())


def test_checkpoints_hold_the_adapter_only(lora_run):
    ckpts = list_checkpoints(lora_run["result"].output_dir)
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for ckpt in ckpts:
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        assert size < 1024 * 1024, (ckpt.name, size)
        assert is_lora_checkpoint(ckpt) and not (ckpt / "unet").exists() and not (ckpt / "text_encoder").exists()
        weights = load_file(ckpt / LORA_WEIGHTS)
        assert {k.split(".")[0] for k in weights} == {"unet", "text_encoder"}
        assert all("lora" in k for k in weights) and {v.dtype for v in weights.values()} == {torch.float32}
        newest = ckpt == ckpts[-1]
        assert (ckpt / "resume" / "lora_unet.safetensors").is_file() == newest
        assert read_marker(ckpt)["resume_state"] == ("resume" if newest else None)


@pytest.fixture(scope="module")
def unet_lora_run(kill_config, tiny_model):
    """A UNet-only LoRA run (``train_text_encoder: false``), 4 steps, one validation image every 2."""
    config = _lora_config(kill_config, "lora-unet", train_text_encoder=False, max_train_steps=4,
                          num_validation_images=1, validation_inference_steps=4, report_to="none")
    build_trainer(config, progress=False).run()
    return {"config": config, "tiny_model": str(tiny_model)}


def test_load_lora_weights_on_a_fresh_pipeline_reproduces_the_validation_image(unet_lora_run):
    """diffusers' own loader, on the base model loaded afresh, at the validation seed and settings. (A text
    encoder's adapter in the same file needs transformers' ``load_adapter``, which asks for a newer peft
    than PyPI has beside transformers 5; the package's loader covers it: the test below.)"""
    config = unet_lora_run["config"]
    pipe = load_pipeline(unet_lora_run["tiny_model"], variant=None, safety_checker=False)
    pipe.scheduler = make_scheduler(config.validation_scheduler, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    ckpt = Path(config.output_dir) / "checkpoints" / "checkpoint-4"
    pipe.load_lora_weights(str(ckpt))
    again = text_to_image(pipe, config.validation_prompt, validation_seeds(config),
                          num_inference_steps=config.validation_inference_steps,
                          guidance_scale=config.validation_guidance_scale, height=64, width=64).images[0]
    saved = Image.open(Path(config.output_dir) / "validation" / "step-4" / "image-00.png").convert("RGB")
    diff = np.abs(np.asarray(again, dtype=int) - np.asarray(saved, dtype=int))
    assert diff.max() <= 1, diff.max()  # the same arithmetic; at most a rounding step of the PNG's uint8
    pipe.unload_lora_weights()  # without the adapter: another image (the adapter did something)
    base = text_to_image(pipe, config.validation_prompt, validation_seeds(config),
                         num_inference_steps=config.validation_inference_steps,
                         guidance_scale=config.validation_guidance_scale, height=64, width=64).images[0]
    assert np.abs(np.asarray(base, dtype=int) - np.asarray(saved, dtype=int)).mean() > 1


def test_the_final_pipeline_has_the_adapters_fused(lora_run, tiny_model):
    """Every adapted projection of the saved pipeline (UNet and text encoder) checked against
    W + (alpha / r) B A, computed here from the base weights and the checkpoint's LoRA file."""
    from diffusers import StableDiffusionPipeline

    run = Path(lora_run["config"].output_dir)
    pipe = StableDiffusionPipeline.from_pretrained(run / "pipeline")
    base = load_components(str(tiny_model), variant=None)
    lora = load_file(run / "checkpoints" / "checkpoint-6" / LORA_WEIGHTS)
    scale = LORA["lora_alpha"] / LORA["lora_rank"]
    checked = 0
    for module in ("unet", "text_encoder"):
        fused, original = getattr(pipe, module).state_dict(), base[module].state_dict()
        assert set(fused) == set(original), module  # plain modules: no adapter left
        downs = [k for k in lora if k.startswith(f"{module}.") and k.endswith("down.weight")]
        for down in downs:  # diffusers' names: <layer>.lora.down / .lora_linear_layer.down (A), .up (B)
            layer = down[len(module) + 1:].rsplit(".lora", 1)[0]
            delta = scale * lora[down.replace("down.weight", "up.weight")] @ lora[down]
            torch.testing.assert_close(fused[f"{layer}.weight"], original[f"{layer}.weight"] + delta,
                                       rtol=1e-5, atol=1e-6)
            checked += 1
        assert downs, module
    assert checked >= 20


def test_load_finetuned_and_the_sampling_path_use_the_adapter(lora_run):
    from cartoonify.sampling import apply_checkpoint, load_finetuned

    config = lora_run["config"]
    ckpt = Path(config.output_dir) / "checkpoints" / "checkpoint-6"
    pipe = load_finetuned(lora_run["tiny_model"], ckpt, scheduler=config.validation_scheduler, variant=None,
                          safety_checker=False, device="cpu")
    kw = dict(num_inference_steps=config.validation_inference_steps, guidance_scale=config.validation_guidance_scale,
              height=64, width=64)
    image = text_to_image(pipe, config.validation_prompt, validation_seeds(config), **kw).images[0]
    saved = Image.open(Path(config.output_dir) / "validation" / "step-6" / "image-00.png").convert("RGB")
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(saved, dtype=int)).max() <= 1
    # back to the base model and on to another checkpoint, in the same pipeline (as drift images do)
    base_modules = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    apply_checkpoint(pipe, None, base_modules)
    assert not any("lora_" in k for k in [*pipe.unet.state_dict(), *pipe.text_encoder.state_dict()])
    apply_checkpoint(pipe, ckpt.parent / "checkpoint-2", base_modules)
    step2 = text_to_image(pipe, config.validation_prompt, validation_seeds(config), **kw).images[0]
    saved2 = Image.open(Path(config.output_dir) / "validation" / "step-2" / "image-00.png").convert("RGB")
    assert np.abs(np.asarray(step2, dtype=int) - np.asarray(saved2, dtype=int)).max() <= 1


def _marker_digest(ckpt: Path) -> dict:
    """Every file of a checkpoint (adapter, resume state) by its SHA-256, from the marker; the LoRA file by
    its tensors and metadata instead: safetensors writes a header with two metadata keys in a per-process
    hash order, so its bytes differ between processes whose tensors and metadata are equal."""
    from safetensors import safe_open

    digest = {k: v for k, v in read_marker(ckpt)["files"].items() if k != LORA_WEIGHTS}
    with safe_open(str(ckpt / LORA_WEIGHTS), framework="pt") as f:
        digest[LORA_WEIGHTS] = (f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()})
    return digest


def test_sigkill_then_resume_is_bit_identical(kill_config):
    straight = _lora_config(kill_config, "lora-straight")
    assert crash_safety._drive(straight, "none").returncode == 0
    killed = _lora_config(kill_config, "lora-killed")
    run = crash_safety._kill(killed, "mid_step", 5)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    resumed = crash_safety._drive(killed.replace(resume_from_checkpoint="latest"), "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = f"checkpoint-{STEPS}"
    assert _marker_digest(run / "checkpoints" / final) == _marker_digest(Path(straight.output_dir) / "checkpoints" / final)


def test_a_lora_checkpoint_is_not_resumed_as_a_full_run(kill_config, lora_run):
    """A changed train_mode is refused by the run folder's config check; the checkpoint's own files refuse a
    LoRA resume state loaded into full modules, and the other way round."""
    from cartoonify.config import ConfigError

    config = lora_run["config"]
    with pytest.raises((ConfigError, CheckpointError, ValueError), match="train_mode"):
        build_trainer(config.replace(train_mode="full", resume_from_checkpoint="latest", max_train_steps=8),
                      progress=False)


# ------------------------------------------------------------------------------------------------
# export: the lora format (diffusers' file, the kohya layout), and a LoRA checkpoint as a full model
# ------------------------------------------------------------------------------------------------


def test_lora_export_loads_back_and_its_kohya_file_reproduces_the_validation_image(unet_lora_run):
    """diffusers reads the kohya layout too (its non-diffusers LoRA conversion): the exported kohya file,
    loaded on a fresh pipeline, gives the run's validation image back, so names and alpha are right."""
    from cartoonify.exporting import export_model
    from cartoonify.exporting.lora import KOHYA_SUFFIX

    config = unet_lora_run["config"]
    model = export_model(config.output_dir, "checkpoint-4", fmt="lora", dtype="fp32")
    folder = model.parent
    assert model.name == LORA_WEIGHTS and (folder / "README.md").is_file()
    card = (folder / "README.md").read_text()
    assert config.instance_prompt in card and "models/Lora" in card and "load_lora_weights" in card
    exported, original = load_file(model), load_file(Path(config.output_dir) / "checkpoints" / "checkpoint-4" / LORA_WEIGHTS)
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    kohya_file = next(folder.glob(f"*{KOHYA_SUFFIX}"))
    kohya = load_file(kohya_file)
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {LORA["lora_alpha"]}

    pipe = load_pipeline(unet_lora_run["tiny_model"], variant=None, safety_checker=False)
    pipe.scheduler = make_scheduler(config.validation_scheduler, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder), weight_name=kohya_file.name)
    image = text_to_image(pipe, config.validation_prompt, validation_seeds(config),
                          num_inference_steps=config.validation_inference_steps,
                          guidance_scale=config.validation_guidance_scale, height=64, width=64).images[0]
    saved = Image.open(Path(config.output_dir) / "validation" / "step-4" / "image-00.png").convert("RGB")
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(saved, dtype=int)).max() <= 1


def test_kohya_names_of_the_text_encoder_and_a_full_checkpoint_refused(lora_run, trained_run):
    from cartoonify.exporting import ExportError, export_model, kohya_state_dict

    ckpt = Path(lora_run["config"].output_dir) / "checkpoints" / "checkpoint-6"
    kohya = kohya_state_dict(ckpt)
    te = [k for k in kohya if k.startswith("lora_te_")]
    assert te and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te)  # kohya's SD1 names
    diffusers_file = load_file(ckpt / LORA_WEIGHTS)
    down = "text_encoder.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"
    assert torch.equal(kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"], diffusers_file[down])
    full = trained_run["result"].output_dir
    out = Path(full) / "exports" / "refused"
    with pytest.raises(ExportError, match="not a LoRA adapter"):
        export_model(full, "checkpoint-4", fmt="lora", out=out)
    assert not out.exists() and not list(out.parent.glob(".tmp-*"))


def test_a_lora_checkpoint_exports_as_a_fused_diffusers_pipeline(lora_run):
    """The diffusers export of a LoRA checkpoint is the fused model: the same weights as the run's final
    pipeline (also fused, from the same step), to fp16 rounding."""
    from diffusers import StableDiffusionPipeline

    from cartoonify.exporting import export_model

    run = Path(lora_run["config"].output_dir)
    folder = export_model(run, "checkpoint-6", fmt="diffusers", dtype="fp32")
    exported = StableDiffusionPipeline.from_pretrained(folder)
    final = StableDiffusionPipeline.from_pretrained(run / "pipeline")
    for name in ("unet", "text_encoder"):
        a, b = getattr(exported, name).state_dict(), getattr(final, name).state_dict()
        assert a.keys() == b.keys() and not any("lora" in k for k in a)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
