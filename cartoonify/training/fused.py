"""The optimizer step fused into the backward pass (``fused_backward_pass``): each parameter is updated as
soon as its gradient is ready, and that gradient is freed at once.

The gradients of the whole model then never exist together: for SD1.5's UNet and text encoder that is
3.9 GB of fp32 gradients less at the peak. The mechanism is torch's ``register_post_accumulate_grad_hook``
(called once a parameter's ``.grad`` is complete); the update is the run's own optimizer's (bitsandbytes'
8-bit AdamW, or torch's AdamW) restricted to that one parameter, so its state, its ``state_dict`` and a
checkpoint are the same as in the plain mode, and a run may be resumed in either mode.

What changes, and is therefore stated here once:

- **Clipping is per parameter.** Global-norm clipping needs every gradient before any update; here a
  parameter's gradient is clipped to ``max_grad_norm`` on its own (``torch.nn.utils.clip_grad_norm_`` of
  that one tensor), as
  kohya's fused backward pass does. ``max_grad_norm: 0`` turns clipping off, in both modes. The logged
  ``grad_norm`` is still the global norm before clipping (from the per-parameter norms).
- **fp16 loss scaling skips per parameter.** A gradient is unscaled when it is ready; one with an inf or
  NaN is dropped (that parameter is not updated) and the scale backs off after the backward pass as
  ``GradScaler.update`` does. The other parameters of that step are updated; in the plain mode the whole
  step is skipped. The step counts as skipped (``skipped_steps``) and, as in the plain mode, the LR schedule
  does not advance on it. Deciding per parameter waits for the device once per parameter (under fp16 only).
- **Without a scaler** (fp32, bf16) nothing waits for the device: a non-finite gradient is applied like the
  rest, and after the backward pass the trainer stops with the non-finite error naming the step (the plain
  mode stops before applying it). Either way the run ends there and nothing of that step is saved; resume
  from the last checkpoint.
- **Gradient accumulation** keeps gradients across micro-batches: the hooks update only on the last
  micro-batch of a step, so the memory saved is the same but no more.
- **Eager mode.** With ``compile_unet`` the UNet's backward is one compiled graph whose gradients come out
  together, so they do exist at once before the hooks free them; the memory is saved in eager mode.
- **One process.** Under DDP a gradient is averaged across processes after its hook has run, so the mode is
  refused with several processes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

def step_one_parameter(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, group_index: int,
                       param_index: int = 0) -> None:
    """``optimizer.step()`` for ``param`` alone (``optimizer.param_groups[group_index]["params"][param_index]``).

    bitsandbytes' optimizers (without paged state) update one tensor through their own per-tensor
    ``update_step``, as their ``step()`` does for each in turn. Any other optimizer is stepped while it sees a
    single group holding ``param`` with its group's settings (learning rate as the LR scheduler left it).
    Either way the state (``optimizer.state[param]``) is its own, so the update is the one a full step would
    make for this parameter; it suits any optimizer whose update is per parameter (AdamW and its kin).
    """
    if hasattr(optimizer, "update_step") and hasattr(optimizer, "init_state") and not getattr(optimizer, "is_paged", True):
        _bnb_step_one(optimizer, param, group_index, param_index)
        return
    groups = optimizer.param_groups
    optimizer.param_groups = [{**groups[group_index], "params": [param]}]
    try:
        optimizer.step()
    finally:
        optimizer.param_groups = groups


def _bnb_step_one(optimizer, param, group_index: int, param_index: int) -> None:
    if not optimizer.initialized:
        optimizer.check_overrides()
        optimizer.to_gpu()
        optimizer.initialized = True
    group = optimizer.param_groups[group_index]
    if len(optimizer.state[param]) == 0:
        optimizer.init_state(group, param, group_index, param_index)
    deferred = hasattr(optimizer, "_step_deferred")  # AdamW8bitFusedSmall: 32-bit tensors go through torch's AdamW
    if deferred:
        optimizer._deferred = {}
    optimizer.update_step(group, param, group_index, param_index)
    if deferred:
        optimizer._step_deferred()


def update_loss_scale(scaler, found_inf: bool) -> None:
    """Advance a ``torch.amp.GradScaler`` after a step as its ``update()`` does (back off on an overflow,
    grow after ``growth_interval`` clean steps), for a step taken outside ``scaler.step``."""
    scale = scaler._scale  # set by scaler.scale(loss)
    flag = torch.full((), 1.0 if found_inf else 0.0, device=scale.device)
    torch._amp_update_scale_(scale, scaler._growth_tracker, flag, scaler._growth_factor, scaler._backoff_factor,
                             scaler._growth_interval)


class FusedBackward:
    """Hooks that update each parameter of ``optimizer`` when its gradient is ready (see the module's text).

    Call :meth:`arm` before the backward pass of each micro-batch (True on the last of a step) and
    :meth:`finish` after it on the last; ``close`` removes the hooks.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float, scaler: Any = None):
        self.optimizer = optimizer
        self.max_grad_norm = float(max_grad_norm)
        self.scaler = scaler
        self.index_of: dict[int, tuple[int, int]] = {}  # id(param) -> (group index, index in the group)
        self.handles = []
        for gindex, group in enumerate(optimizer.param_groups):
            for pindex, p in enumerate(group["params"]):
                self.index_of[id(p)] = (gindex, pindex)
                self.handles.append(p.register_post_accumulate_grad_hook(self._hook))
        self.armed = False
        self.inv_scale: torch.Tensor | None = None
        self.norms: list[torch.Tensor] = []
        self.found_inf = False
        self.skipped = False  # the last step dropped a gradient (fp16 overflow)

    @property
    def parameters(self) -> Sequence[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def arm(self, update: bool) -> None:
        """Whether the coming backward pass updates the parameters (the last micro-batch of a step)."""
        self.armed = update
        if update:
            self.norms, self.found_inf = [], False
            self.inv_scale = None  # the scaler's scale exists once backward has begun (scaler.scale(loss))

    @torch.no_grad()
    def _hook(self, param: torch.nn.Parameter) -> None:
        if not self.armed or param.grad is None:
            return
        grad = param.grad
        if self.scaler is not None:
            if self.inv_scale is None:  # the reciprocal as GradScaler computes it, on the device
                self.inv_scale = self.scaler._scale.double().reciprocal().float()
            grad.mul_(self.inv_scale.to(grad.device))
        if self.max_grad_norm > 0:  # torch's clipping, of this one tensor; the norm before it
            norm = torch.nn.utils.clip_grad_norm_([param], self.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(grad)
        self.norms.append(norm)
        if self.scaler is not None and not torch.isfinite(norm):  # a device sync: fp16 only
            self.found_inf = True  # dropped; the scale backs off in finish()
            param.grad = None
            return
        step_one_parameter(self.optimizer, param, *self.index_of[id(param)])
        self.optimizer._opt_called = True  # what optimizer.step() records: the LR scheduler's order check reads it
        param.grad = None

    def finish(self) -> torch.Tensor:
        """After the backward pass of a step's last micro-batch: advance the loss scale and return the global
        gradient norm before clipping (inf or NaN if a gradient was not finite)."""
        self.armed = False
        self.skipped = self.found_inf and self.scaler is not None
        if self.scaler is not None:
            update_loss_scale(self.scaler, self.found_inf)
        missing = [p for p in self.parameters if p.grad is not None]  # a hook that did not run (should not happen)
        if missing:
            raise RuntimeError(f"fused_backward_pass: {len(missing)} parameter(s) kept a gradient after backward")
        if not self.norms:
            return torch.zeros(())
        return torch.nn.utils.get_total_norm(self.norms)

    def close(self) -> None:
        """Remove the hooks (the end of a run, or an error in the middle of a backward pass)."""
        self.armed = False
        for handle in self.handles:
            handle.remove()
        self.handles = []
