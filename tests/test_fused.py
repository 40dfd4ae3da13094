"""The optimizer step fused into the backward pass (``fused_backward_pass``): with clipping off it equals the
plain step exactly (torch AdamW, bitsandbytes' AdamW8bit, the fused-small variant; whole runs of the tiny
model, with gradient accumulation too); clipping is per parameter; fp16 loss scaling skips per parameter; no
gradient outlives the backward pass; several processes are refused."""

from __future__ import annotations

import copy

import pytest
import torch

from cartoonify.config import ConfigError, TrainConfig
from cartoonify.training.callbacks import TrainerCallback
from cartoonify.training.fused import FusedBackward, step_one_parameter
from cartoonify.training.logs import read_loss_log
from cartoonify.training.optim import adamw8bit
from cartoonify.training.run import build_trainer
from cartoonify.training.setup import check_fused_backward

HYPER = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # a weight big enough for 8-bit state (>= 4096 elements) and small tensors with 32-bit state
    return torch.nn.Sequential(torch.nn.Linear(64, 80), torch.nn.GELU(), torch.nn.LayerNorm(80), torch.nn.Linear(80, 3))


def _batches(n: int = 4):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 64, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(n)]


def _optimizer(kind: str, params):
    if kind == "torch":
        return torch.optim.AdamW(params, **HYPER)
    return adamw8bit(params, fuse_small=kind == "bnb_fused_small", **HYPER)


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y) * 100  # large gradients: clipping bites at 1.0


def _plain(kind: str, clip: float, scaler=None):
    model = _model()
    opt = _optimizer(kind, model.parameters())
    norms = []
    for x, y in _batches():
        loss = _loss(model, x, y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        if clip:
            for p in model.parameters():  # per-parameter clipping, computed independently
                torch.nn.utils.clip_grad_norm_([p], clip)
        scaler.step(opt) if scaler else opt.step()
        if scaler:
            scaler.update()
        opt.zero_grad(set_to_none=True)
    return model, opt, norms


def _fused(kind: str, clip: float, scaler=None):
    model = _model()
    opt = _optimizer(kind, model.parameters())
    fused = FusedBackward(opt, clip, scaler)
    norms = []
    for x, y in _batches():
        fused.arm(True)
        loss = _loss(model, x, y)
        (scaler.scale(loss) if scaler else loss).backward()
        assert all(p.grad is None for p in model.parameters())  # each gradient freed once applied
        norms.append(fused.finish())
    fused.close()
    return model, opt, norms


@pytest.mark.parametrize("kind", ["torch", "bnb", "bnb_fused_small"])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_fused_equals_plain_with_per_parameter_clipping(kind, clip):
    pytest.importorskip("bitsandbytes") if kind != "torch" else None
    plain, plain_opt, plain_norms = _plain(kind, clip)
    fused, fused_opt, fused_norms = _fused(kind, clip)
    for (name, a), b in zip(plain.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"{kind} clip={clip}: {name} differs")
    torch.testing.assert_close(torch.stack(fused_norms), torch.stack(plain_norms), rtol=1e-6, atol=0)
    # the optimizer state is the same structure and values: a checkpoint loads into either mode
    sa, sb = plain_opt.state_dict(), fused_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for key, value in sa["state"][i].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(sb["state"][i][key], value, rtol=0, atol=0)


def test_clipping_is_per_parameter_not_global():
    _, _, norms = _fused("torch", 0.0)
    clipped_model, _, _ = _fused("torch", 1.0)
    unclipped_model, _, _ = _fused("torch", 0.0)
    assert norms[0] > 1.0  # the test's gradients are large enough to be clipped
    model = _model()  # global clipping, for contrast: it gives another result
    opt = torch.optim.AdamW(model.parameters(), **HYPER)
    for x, y in _batches():
        _loss(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    differs = lambda m1, m2: any(not torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert differs(clipped_model, unclipped_model) and differs(clipped_model, model)


def test_step_one_parameter_restores_the_groups_and_uses_the_groups_lr():
    model = _model()
    opt = torch.optim.AdamW([{"params": list(model[0].parameters()), "lr": 0.0},
                             {"params": list(model[3].parameters()), "lr": 0.1}], **{k: v for k, v in HYPER.items() if k != "lr"})
    groups = opt.param_groups
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, *_batches(1)[0]).backward()
    step_one_parameter(opt, model[0].weight, 0)  # lr 0: unchanged (weight decay is scaled by lr too)
    step_one_parameter(opt, model[3].weight, 1)
    assert opt.param_groups is groups and len(opt.param_groups[0]["params"]) == 2
    assert torch.equal(model[0].weight, before[0]) and not torch.equal(model[3].weight, before[4])
    assert torch.equal(model[3].bias, before[5])  # not stepped


def test_fp16_loss_scaling_skips_only_the_overflowing_parameter():
    scaler_plain = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaler_fused = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    plain, _, _ = _plain("torch", 0.0, scaler_plain)
    fused, _, _ = _fused("torch", 0.0, scaler_fused)
    for a, b in zip(plain.parameters(), fused.parameters()):  # no overflow: the same as GradScaler's step
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert scaler_fused.get_scale() == scaler_plain.get_scale()

    model = _model()
    opt = torch.optim.AdamW(model.parameters(), **HYPER)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    fused_bw = FusedBackward(opt, 1.0, scaler)
    model[3].bias.register_hook(lambda g: g * float("inf"))  # this gradient overflows
    before = copy.deepcopy(model.state_dict())
    fused_bw.arm(True)
    scaler.scale(_loss(model, *_batches(1)[0])).backward()
    norm = fused_bw.finish()
    assert not torch.isfinite(norm) and fused_bw.skipped
    assert torch.equal(model[3].bias, before["3.bias"])  # dropped
    assert not torch.equal(model[3].weight, before["3.weight"])  # the others were updated
    assert scaler.get_scale() == 2.0 ** 9  # backed off, as GradScaler.update does


class GradsAfterBackward(TrainerCallback):
    """Bytes of gradients held right after each backward pass."""

    def __init__(self):
        self.bytes: list[int] = []

    def on_after_backward(self, trainer):
        self.bytes.append(sum(p.grad.numel() * p.grad.element_size() for m in trainer.trained
                              for p in m.parameters() if p.grad is not None))


@pytest.mark.parametrize("accumulation", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_fused_run_equals_a_plain_run_with_clipping_off(small_config, tmp_path, accumulation):
    """The issue's check: the tiny model trained 3 steps (UNet and text encoder, 8-bit AdamW, prior
    preservation) with the optimizer in the backward pass gives the plain run's weights, losses and norms."""
    settings = dict(max_train_steps=3, checkpointing_steps=3, num_validation_images=0, save_final_pipeline=False,
                    max_grad_norm=0.0, gradient_accumulation_steps=accumulation)
    results, grads = {}, {}
    for fused in (False, True):
        grads[fused] = GradsAfterBackward()
        trainer = build_trainer(small_config(**settings, output_dir=str(tmp_path / f"fused{fused}"),
                                             fused_backward_pass=fused), progress=False, callbacks=[grads[fused]])
        result = trainer.run()
        weights = {k: v.clone() for m in trainer.trained for k, v in trainer.unwrap(m).state_dict().items()}
        results[fused] = (read_loss_log(result.log_csv), weights, trainer.optimizer_name)
    (plain_log, plain_w, opt_name), (fused_log, fused_w, _) = results[False], results[True]
    assert "8bit" in opt_name.lower() or "AdamW8bit" in opt_name
    assert [r["loss"] for r in fused_log] == [r["loss"] for r in plain_log]
    torch.testing.assert_close([r["grad_norm"] for r in fused_log], [r["grad_norm"] for r in plain_log],
                               rtol=1e-5, atol=0)
    assert plain_w.keys() == fused_w.keys()
    for k in plain_w:
        torch.testing.assert_close(fused_w[k], plain_w[k], rtol=0, atol=0, msg=k)
    # no gradient is held after the backward pass that steps (the last micro-batch of each step)
    assert grads[True].bytes[accumulation - 1::accumulation] == [0, 0, 0]
    assert min(grads[False].bytes) > 0


def test_fused_backward_needs_one_process_and_clipping_is_checked(small_config):
    config = small_config(fused_backward_pass=True)
    check_fused_backward(config, 1)
    with pytest.raises(ConfigError, match=r"'fused_backward_pass'.*3.*nothing was written"):
        check_fused_backward(config, 3)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=-1.0).validate()
    with pytest.raises(ConfigError, match="compile_mode"):
        TrainConfig(compile_mode="fast").validate()


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for m in trainer.trained for k, v in trainer.unwrap(m).state_dict().items()}


def test_a_fused_run_resumes_exactly_and_lora_trains_fused(small_config, tmp_path):
    """A fused run stopped at its checkpoint and resumed ends where the straight one does (the optimizer
    state is the plain mode's); LoRA adapters train in the fused mode too, and only they change."""
    settings = dict(num_validation_images=0, save_final_pipeline=False, fused_backward_pass=True,
                    max_train_steps=4, checkpointing_steps=2)
    straight = build_trainer(small_config(**settings, output_dir=str(tmp_path / "straight")), progress=False)
    straight.run()
    half = small_config(**settings, output_dir=str(tmp_path / "halves")).replace(max_train_steps=2)
    build_trainer(half, progress=False).run()
    resumed = build_trainer(half.replace(max_train_steps=4, resume_from_checkpoint="latest"), progress=False)
    resumed.run()
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)

    lora = build_trainer(small_config(**settings, output_dir=str(tmp_path / "lora"), train_mode="lora",
                                      learning_rate=1e-2), progress=False)
    before = _weights(lora)
    lora.run()
    after = _weights(lora)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]


def test_a_nonfinite_gradient_without_a_scaler_stops_the_fused_run_at_its_step(small_config, tmp_path):
    """fp32 (no scaler): nothing waits for the device per parameter, so an inf gradient is applied, and the
    trainer stops right after that backward pass naming the step; the last checkpoint is intact and no later
    one is written."""
    from cartoonify.runs import list_checkpoints, verify_checkpoint
    from cartoonify.training.errors import NonFiniteLossError

    class InfLoss(TrainerCallback):
        def transform_loss(self, trainer, loss):
            return loss * float("inf") if trainer.global_step + 1 == 3 else loss

    config = small_config(output_dir=str(tmp_path / "inf"), fused_backward_pass=True, num_validation_images=0,
                          max_train_steps=4, checkpointing_steps=2, save_final_pipeline=False)
    trainer = build_trainer(config, progress=False, callbacks=[InfLoss()])
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        trainer.run()
    assert [c.name for c in list_checkpoints(config.output_dir)] == ["checkpoint-2"]
    assert verify_checkpoint(list_checkpoints(config.output_dir)[0]) == []
    assert trainer.fused_backward.handles == [] and not trainer.fused_backward.armed  # hooks removed
