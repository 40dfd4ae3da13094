"""Training progress as plain lines, through the trainer's callback channel.

:class:`TrainingProgress` prints ``step 120/600  loss 0.1234  6.1 steps/s  elapsed 0:20  left ~1:18`` at most
every ``every`` seconds (and at the last step), a line per checkpoint and a closing line. Plain ``print``
lines, unlike the tqdm bar, reach a terminal from a papermill run (``python -m cartoonify.notebooks`` echoes
the notebooks' printed lines) and stay readable in a log file::

    cartoonify.run_training(config, callbacks=[TrainingProgress()])

The loss is the mean over the steps since the previous line; the rate counts training steps only (the first
step and the step after a checkpoint, which also wait for validation and the held-out loss, are left out of
it), and so does the estimate of the time left.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from .callbacks import TrainerCallback


def format_duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


class TrainingProgress(TrainerCallback):
    """Prints the step, loss and rate at most every ``every`` seconds, and a line per checkpoint.

    ``clock`` (seconds, monotonic) and ``write`` (one line) can be replaced, e.g. in tests. Only the main
    process prints.
    """

    def __init__(self, every: float = 5.0, *, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], Any] = _print):
        self.every = float(every)
        self.clock = clock
        self.write = write
        self.lines: list[str] = []  # everything written, for tests and notebooks
        self._reset()

    def _reset(self) -> None:
        self.enabled = True
        self.total = 0
        self.start_step = self.step = 0
        self.started = self.last_line = self.last_step_end = 0.0
        self.losses: list[float] = []
        self.train_steps, self.train_seconds = 0, 0.0  # all steps of this call, checkpoint waits excluded
        self.window_steps, self.window_seconds = 0, 0.0  # since the last line
        self.after_checkpoint = False

    def _emit(self, line: str) -> None:
        if self.enabled:
            self.lines.append(line)
            self.write(line)

    # -- hooks -----------------------------------------------------------------------------------
    def on_train_begin(self, trainer) -> None:
        self._reset()
        self.enabled = bool(getattr(trainer.accelerator, "is_main_process", True))
        now = self.clock()
        self.started = self.last_line = self.last_step_end = now
        self.total = int(trainer.config.max_train_steps)
        self.start_step = self.step = int(trainer.global_step)
        self.after_checkpoint = True  # the first step also waits for the step-0 held-out loss and validation
        if self.start_step >= self.total:
            self._emit(f"training: step {self.start_step}/{self.total}, nothing left to train")
        elif self.start_step:
            self._emit(f"training: resumed at step {self.start_step}/{self.total}")
        else:
            self._emit(f"training: {self.total} steps")

    def on_step_end(self, trainer, row: dict[str, Any]) -> None:
        now = self.clock()
        self.step = int(row.get("step", trainer.global_step))
        if row.get("loss") is not None:
            self.losses.append(float(row["loss"]))
        if not self.after_checkpoint:
            dt = now - self.last_step_end
            self.train_steps += 1
            self.train_seconds += dt
            self.window_steps += 1
            self.window_seconds += dt
        self.after_checkpoint = False
        self.last_step_end = now
        if now - self.last_line >= self.every or self.step >= self.total:
            self._step_line(now)

    def on_checkpoint_captured(self, trainer, path) -> None:
        self.after_checkpoint = True  # the next step also waits for the save, validation and the held-out loss

    def on_checkpoint_saved(self, trainer, path) -> None:
        """With background saves this comes a step or more after the checkpoint's own step."""
        name = getattr(path, "name", str(path))
        elapsed = format_duration(self.clock() - self.started)
        self._emit(f"step {self.step}/{self.total}  {name} saved  elapsed {elapsed}")

    def on_train_end(self, trainer) -> None:
        steps = self.step - self.start_step
        elapsed = self.clock() - self.started
        rate = f" ({self._rate(self.train_steps, self.train_seconds)} while training)" if self.train_steps else ""
        self._emit(f"training done: step {self.step}/{self.total}, {steps} steps in {format_duration(elapsed)}{rate}")

    # -- lines -----------------------------------------------------------------------------------
    @staticmethod
    def _rate(steps: int, seconds: float) -> str:
        if seconds <= 0:
            return "- steps/s"
        rate = steps / seconds
        return f"{rate:.2f} steps/s" if rate >= 0.1 else f"{seconds / steps:.1f} s/step"

    def _step_line(self, now: float) -> None:
        loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        parts = [f"step {self.step}/{self.total}", f"loss {loss:.4f}"]
        if self.window_steps:
            parts.append(self._rate(self.window_steps, self.window_seconds))
        parts.append(f"elapsed {format_duration(now - self.started)}")
        if self.train_steps and self.train_seconds > 0 and self.step < self.total:
            left = (self.total - self.step) * self.train_seconds / self.train_steps
            parts.append(f"left ~{format_duration(left)}")
        self._emit("  ".join(parts))
        self.losses.clear()
        self.window_steps, self.window_seconds = 0, 0.0
        self.last_line = now
