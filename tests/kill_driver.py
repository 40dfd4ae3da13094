"""Runs a training config in this process, optionally killing it with SIGKILL at a chosen point.

    python tests/kill_driver.py CONFIG.json none
    python tests/kill_driver.py CONFIG.json mid_step STEP        # after the backward pass of STEP, before its update
    python tests/kill_driver.py CONFIG.json in_save STEP N       # during the save of STEP, after its N-th file
    python tests/kill_driver.py CONFIG.json fail_save STEP RANK  # an OSError in process RANK's part of STEP's save

Used by test_crash_safety.py: the kill is a real SIGKILL, not an exception. The kill points are hooks of
the trainer's one callback protocol.
"""

import os
import signal
import sys

from cartoonify.config import TrainConfig
from cartoonify.training.callbacks import TrainerCallback
from cartoonify.training.run import build_trainer


class KillMidStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer):
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillInSave(TrainerCallback):
    def __init__(self, step: int, after: int):
        self.step, self.after, self.written = step, after, []

    def on_checkpoint_file(self, trainer, path):
        if trainer.global_step == self.step:
            self.written.append(path)
            if len(self.written) == self.after:
                os.kill(os.getpid(), signal.SIGKILL)


class FailSave(TrainerCallback):
    """A write error (a full disk) in one process's part of a checkpoint save."""

    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def on_checkpoint_file(self, trainer, path):
        if trainer.global_step == self.step and trainer.accelerator.process_index == self.rank:
            raise OSError(28, "No space left on device (injected)")


def main(argv):
    config = TrainConfig.load(argv[0])
    mode = argv[1]
    callbacks = []
    if mode == "mid_step":
        callbacks.append(KillMidStep(int(argv[2])))
    elif mode == "in_save":
        callbacks.append(KillInSave(int(argv[2]), int(argv[3])))
    elif mode == "fail_save":
        callbacks.append(FailSave(int(argv[2]), int(argv[3])))
    build_trainer(config, progress=False, callbacks=callbacks).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
