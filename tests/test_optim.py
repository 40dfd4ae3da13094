"""The 8-bit AdamW with fused small-tensor updates, on CPU."""

from __future__ import annotations

import math

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from cartoonify.training.optim import adamw8bit, fused_small_class  # noqa: E402

# two tensors with 8-bit state (>= 4096 elements) and three that bitsandbytes keeps in 32-bit
SHAPES = [(64,), (32, 3, 3, 3), (128, 64), (5000,), (10,)]
HYPER = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def make_params(seed: int = 1) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def run(optimizers_and_params, steps: int, seed: int = 2) -> None:
    """The same random gradients for every (optimizer, params) pair, ``steps`` times."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grads = [torch.randn(s, generator=g) for s in SHAPES]
        for opt, params in optimizers_and_params:
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()


def test_matches_bitsandbytes_adamw8bit():
    a, b = make_params(), make_params()
    ref, ours = bnb.optim.AdamW8bit(a, **HYPER), adamw8bit(b, **HYPER)
    assert type(ours) is fused_small_class()
    run([(ref, a), (ours, b)], steps=10)
    for pa, pb in zip(a, b):
        sa, sb = ref.state[pa], ours.state[pb]
        assert sa["step"] == sb["step"] == 10
        assert sa["state1"].dtype == sb["state1"].dtype
        if sa["state1"].dtype == torch.uint8:  # 8-bit tensors take bitsandbytes' own path: identical
            assert torch.equal(pa, pb) and torch.equal(sa["state1"], sb["state1"])
            assert torch.equal(sa["absmax2"], sb["absmax2"])
        else:  # 32-bit tensors: the same AdamW, to float rounding
            torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(sb["state1"], sa["state1"], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(sb["state2"], sa["state2"], rtol=1e-6, atol=1e-9)


def test_small_tensors_follow_adamw_formula():
    """Against AdamW written out: decoupled weight decay, bias-corrected moments."""
    (p,) = [torch.nn.Parameter(torch.randn(50, generator=torch.Generator().manual_seed(0)))]
    opt = adamw8bit([p], **HYPER)
    x = p.detach().double().clone()
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    lr, (b1, b2), eps, wd = HYPER["lr"], HYPER["betas"], HYPER["eps"], HYPER["weight_decay"]
    g = torch.Generator().manual_seed(3)
    for t in range(1, 6):
        grad = torch.randn(50, generator=g)
        p.grad = grad.clone()
        opt.step()
        grad = grad.double()
        x = x * (1 - lr * wd)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        x = x - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(p.detach().double(), x, rtol=1e-5, atol=1e-6)


def test_small_tensors_skip_bitsandbytes_32bit_kernel(monkeypatch):
    import bitsandbytes.functional as F

    calls = []
    real = F.optimizer_update_32bit
    monkeypatch.setattr(F, "optimizer_update_32bit", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = make_params()
    run([(adamw8bit(params, **HYPER), params)], steps=2)
    assert calls == []  # every 32-bit tensor went through the one fused call
    params = make_params()
    run([(adamw8bit(params, fuse_small=False, **HYPER), params)], steps=2)
    assert len(calls) == 2 * 3  # bitsandbytes itself: one call per small tensor per step


@pytest.mark.parametrize("first_fused", [True, False])
def test_state_dicts_interchangeable(first_fused):
    """A checkpoint of either optimizer resumes in the other, and the runs stay together."""
    a = make_params()
    first = adamw8bit(a, fuse_small=first_fused, **HYPER)
    run([(first, a)], steps=3, seed=5)
    state = first.state_dict()
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    second = adamw8bit(b, fuse_small=not first_fused, **HYPER)
    second.load_state_dict(state)
    run([(first, a), (second, b)], steps=3, seed=6)
    for pa, pb in zip(a, b):
        assert first.state[pa]["step"] == second.state[pb]["step"] == 6
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-6)


def test_learning_rate_changes_are_followed():
    """An LR scheduler writes param_groups[...]["lr"]; the fused call must read it each step."""
    a, b = make_params(), make_params()
    ref, ours = bnb.optim.AdamW8bit(a, **HYPER), adamw8bit(b, **HYPER)
    for opt in (ref, ours):
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
        opt._sched = sched
    g = torch.Generator().manual_seed(7)
    for _ in range(4):
        grads = [torch.randn(s, generator=g) for s in SHAPES]
        for opt, params in ((ref, a), (ours, b)):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
            opt._sched.step()
    assert math.isclose(ours.param_groups[0]["lr"], HYPER["lr"] * 0.5**4)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-6)

