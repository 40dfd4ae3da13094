"""Runs a training config in this process, optionally killing it with SIGKILL at a chosen point.

    python tests/kill_driver.py CONFIG.json none
    python tests/kill_driver.py CONFIG.json mid_step STEP        # after the backward pass of STEP, before its update
    python tests/kill_driver.py CONFIG.json in_save STEP N       # during the save of STEP, after its N-th file
    python tests/kill_driver.py CONFIG.json in_background_save STEP N  # the same, once step STEP+1 has trained
    python tests/kill_driver.py CONFIG.json fail_save STEP RANK  # an OSError in process RANK's part of STEP's save

Used by test_crash_safety.py: the kill is a real SIGKILL, not an exception. The kill points are hooks of
the trainer's one callback protocol.
"""

import os
import re
import signal
import sys
import threading

from cartoonify.config import TrainConfig
from cartoonify.training.callbacks import TrainerCallback
from cartoonify.training.run import build_trainer


class KillMidStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer):
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def saving_step(path) -> int:
    """The step of the checkpoint a file belongs to (with background saves the trainer may be past it)."""
    return int(re.search(r"checkpoint-(\d+)", str(path)).group(1))


class KillInSave(TrainerCallback):
    def __init__(self, step: int, after: int):
        self.step, self.after, self.written = step, after, []

    def on_checkpoint_file(self, trainer, path):
        if saving_step(path) == self.step:
            self.written.append(path)
            if len(self.written) == self.after:
                os.kill(os.getpid(), signal.SIGKILL)


class KillInBackgroundSave(TrainerCallback):
    """SIGKILL on the writer thread after its ``after``-th file of checkpoint ``step``, once the training thread
    has finished step ``step + 1`` (proof that training went on while the checkpoint was being written)."""

    def __init__(self, step: int, after: int):
        self.step, self.after, self.written = step, after, []
        self.trained_on = threading.Event()

    def on_step_end(self, trainer, row):
        if trainer.global_step == self.step + 1:
            self.trained_on.set()

    def on_checkpoint_file(self, trainer, path):
        if saving_step(path) == self.step:
            self.written.append(path)
            if len(self.written) == self.after:
                assert threading.current_thread() is not threading.main_thread(), "the save was not in the background"
                self.trained_on.wait(timeout=120)
                os.kill(os.getpid(), signal.SIGKILL)


class FailSave(TrainerCallback):
    """A write error (a full disk) in one process's part of a checkpoint save."""

    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def on_checkpoint_file(self, trainer, path):
        if saving_step(path) == self.step and trainer.accelerator.process_index == self.rank:
            raise OSError(28, "No space left on device (injected)")


def main(argv):
    config = TrainConfig.load(argv[0])
    mode = argv[1]
    callbacks = []
    if mode == "mid_step":
        callbacks.append(KillMidStep(int(argv[2])))
    elif mode == "in_save":
        callbacks.append(KillInSave(int(argv[2]), int(argv[3])))
    elif mode == "in_background_save":
        callbacks.append(KillInBackgroundSave(int(argv[2]), int(argv[3])))
    elif mode == "fail_save":
        callbacks.append(FailSave(int(argv[2]), int(argv[3])))
    build_trainer(config, progress=False, callbacks=callbacks).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
