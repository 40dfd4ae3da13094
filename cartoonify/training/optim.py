"""The optimizer: bitsandbytes' 8-bit AdamW, with its 32-bit tensors updated in one fused call.

bitsandbytes keeps the Adam state of every tensor smaller than ``min_8bit_size`` (4,096 elements) in
32-bit, and updates each with its own call: in SD1.5 that is most of the biases and norms, and on a CPU
each call costs more than the arithmetic it does. :class:`AdamW8bitFusedSmall` hands those tensors to
``torch.optim.adamw.adamw(fused=True)`` in one call per parameter group instead. The arithmetic is
AdamW's in both (decoupled weight decay, bias-corrected moments), so the result equals AdamW8bit's to
float rounding, and the state (``state1``, ``state2``, ``step`` per tensor) keeps bitsandbytes'
layout: a checkpoint of either optimizer loads into the other.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Iterable

import torch
from torch.optim.adamw import adamw as _adamw

from ..config import TrainConfig


def adamw8bit(params: Iterable, fuse_small: bool = True, **kwargs: Any) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit (``fuse_small=False``) or :class:`AdamW8bitFusedSmall` over ``params``.

    ``kwargs`` are AdamW8bit's (lr, betas, eps, weight_decay, ...). Raises ImportError without
    bitsandbytes.
    """
    import bitsandbytes as bnb

    cls = fused_small_class() if fuse_small else bnb.optim.AdamW8bit
    return cls(params, **kwargs)


@functools.cache
def fused_small_class() -> type:
    """The :class:`AdamW8bitFusedSmall` class (built on first use, so importing this module does not
    import bitsandbytes)."""
    import bitsandbytes as bnb

    class AdamW8bitFusedSmall(bnb.optim.AdamW8bit):
        """AdamW8bit whose 32-bit-state tensors are updated together by torch's fused AdamW.

        bitsandbytes' own step also waits for the device after every tensor; this one does not (it is
        needed for paged state only). Tensors with 8-bit state, and any tensor whose settings torch's AdamW has no equivalent for
        (``max_unorm``, ``skip_zeros``, a non-fp32 parameter), go through bitsandbytes as before.
        """

        @torch.no_grad()
        def step(self, closure=None):
            """bitsandbytes' step without its device synchronisation after every tensor (which only paged
            state needs: a paged optimizer takes bitsandbytes' own loop); the 32-bit tensors are deferred to
            one fused call."""
            self._deferred: dict[tuple, list[torch.Tensor]] = {}
            loss = super().step(closure) if self.is_paged else step_without_sync(self, closure)
            self._step_deferred()
            return loss

        @torch.no_grad()
        def update_step(self, group, p, gindex, pindex):
            state = self.state[p]
            if state["state1"].dtype != torch.float32 or p.dtype != torch.float32:
                return super().update_step(group, p, gindex, pindex)  # 8-bit state: bitsandbytes' own path
            config = self.get_config(gindex, pindex, group)
            if (
                config["max_unorm"] > 0.0
                or config["skip_zeros"]
                or len(config["betas"]) != 2
            ):
                return super().update_step(group, p, gindex, pindex)
            state["step"] += 1  # as bitsandbytes counts it
            key = (
                state["step"],
                p.device,
                float(config["lr"]),
                tuple(float(b) for b in config["betas"]),
                float(config["eps"]),
                float(config["weight_decay"]),
            )
            self._deferred.setdefault(key, []).append(p)

        @torch.no_grad()
        def _step_deferred(self) -> None:
            update_32bit_together(self.state, self._deferred)
            self._deferred = {}

    return AdamW8bitFusedSmall


@torch.no_grad()
def update_32bit_together(state: dict, deferred: dict[tuple, list[torch.Tensor]]) -> None:
    """torch's fused AdamW over the tensors of each (step, device, lr, betas, eps, weight decay) key, with their
    bitsandbytes state (``state1``, ``state2``)."""
    for (step, device, lr, (beta1, beta2), eps, weight_decay), params in deferred.items():
        states = [state[p] for p in params]
        # the fused kernel adds 1 to each step tensor before it uses it
        steps = [torch.full((), step - 1.0, device=device) for _ in params]  # a fill, not a host copy (no sync)
        _adamw(params, [p.grad for p in params], [s["state1"] for s in states], [s["state2"] for s in states], [],
               steps, fused=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay,
               eps=eps, maximize=False)


def step_without_sync(optimizer, closure=None):
    """bitsandbytes' ``Optimizer8bit.step`` loop (initialise, then ``update_step`` per tensor with a gradient)
    without its ``sync_gpu`` after every tensor; for optimizers without paged state."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    if not optimizer.initialized:
        optimizer.check_overrides()
        optimizer.to_gpu()
        optimizer.initialized = True
    for gindex, group in enumerate(optimizer.param_groups):
        for pindex, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if len(optimizer.state[p]) == 0:
                optimizer.init_state(group, p, gindex, pindex)
            optimizer.update_step(group, p, gindex, pindex)
    return loss


def build_optimizer(params, config: TrainConfig, device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit when ``use_8bit_adam``, else torch AdamW; the write-up's betas, weight decay
    and epsilon. With ``fuse_small_adam_updates`` the tensors bitsandbytes keeps in 32-bit are updated in
    one fused call (:class:`AdamW8bitFusedSmall`; same arithmetic, same state layout).

    bitsandbytes is tried with one step on a probe tensor on ``device`` first: its native library often
    imports fine and only fails at the first step. If it fails, training falls back to torch AdamW with
    a warning that says why.
    """
    kwargs = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    params = list(params)
    if config.use_8bit_adam:
        try:
            # 4096 elements: 8-bit state; 16: 32-bit state (the fused path)
            probes = [torch.nn.Parameter(torch.zeros(n, device=device)) for n in (4096, 16)]
            for probe in probes:
                probe.grad = torch.ones_like(probe)
            adamw8bit(probes, fuse_small=config.fuse_small_adam_updates, **kwargs).step()
            return adamw8bit(params, fuse_small=config.fuse_small_adam_updates, **kwargs)
        except Exception as err:  # ImportError, or a native library that fails to load or run
            warnings.warn(
                f"use_8bit_adam=True but bitsandbytes' AdamW8bit does not work here ({type(err).__name__}: "
                f"{err}); falling back to torch.optim.AdamW (32-bit state: 4x the optimizer memory)",
                RuntimeWarning,
                stacklevel=2,
            )
    return torch.optim.AdamW(params, **kwargs)
