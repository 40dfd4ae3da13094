"""The one instrumentation channel of training: callbacks with named hook points.

Subclass :class:`TrainerCallback` and override what you need; tests inject faults through it and the
benchmark times steps through it. Every hook receives the trainer first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class TrainerCallback:
    """No-op hooks, called in this order within a run."""

    def on_train_begin(self, trainer) -> None:
        """Before the first step of this call (after a resume, at the resumed step)."""

    def transform_loss(self, trainer, loss):
        """The loss of a micro-batch before backward; return it (or a replacement)."""
        return loss

    def on_after_backward(self, trainer) -> None:
        """After ``backward`` of a micro-batch, before clipping and the optimizer step."""

    def on_step_end(self, trainer, row: dict[str, Any]) -> None:
        """After every optimizer step, with its log row (step, loss, lr, grad norm...)."""

    def on_checkpoint_file(self, trainer, path: Path) -> None:
        """After each file or folder of a checkpoint is written (before the marker). With ``background_saves``
        it runs on the writer thread while training goes on: ``trainer.global_step`` may be past the
        checkpoint's step (the path names it)."""

    def on_checkpoint_captured(self, trainer, path: Path) -> None:
        """After a checkpoint's state is captured and training may go on: with ``background_saves`` its files
        are being written by the writer thread; without, they are already in place."""

    def on_checkpoint_saved(self, trainer, path: Path) -> None:
        """After a checkpoint is complete and in place (on the training thread; with ``background_saves``, at the
        first step end after the write finished, or when the trainer waits for it)."""

    def on_validation_end(self, trainer, folder: Path) -> None:
        """After the validation images of a checkpoint (or of the base model, at the start) are written."""

    def on_train_end(self, trainer) -> None:
        """After the last step, checkpoint and final pipeline of this call."""


class StepCallback(TrainerCallback):
    """Adapts a plain function ``fn(trainer, row)`` to :meth:`TrainerCallback.on_step_end`."""

    def __init__(self, fn):
        self.fn = fn

    def on_step_end(self, trainer, row):
        self.fn(trainer, row)


class CallbackList:
    """Calls each callback's hook in order; ``transform_loss`` threads the loss through all of them."""

    def __init__(self, callbacks: Sequence[Any] = ()):
        self.callbacks = [cb if isinstance(cb, TrainerCallback) else StepCallback(cb) for cb in callbacks]

    def fire(self, hook: str, trainer, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(trainer, *args)

    def transform_loss(self, trainer, loss):
        for cb in self.callbacks:
            loss = cb.transform_loss(trainer, loss)
        return loss
