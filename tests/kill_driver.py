"""Runs a training config in this process, optionally killing it with SIGKILL at a chosen point.

    python tests/kill_driver.py CONFIG.json none
    python tests/kill_driver.py CONFIG.json mid_step STEP        # after the backward pass of STEP, before its update
    python tests/kill_driver.py CONFIG.json in_save STEP N       # during the save of STEP, after its N-th file

Used by test_crash_safety.py: the kill is a real SIGKILL, not an exception.
"""

import os
import signal
import sys

from cartoonify.config import TrainConfig
from cartoonify.train import DreamBoothTrainer


def main(argv):
    config = TrainConfig.load(argv[0])
    mode = argv[1]
    hooks = {}
    if mode == "mid_step":
        step = int(argv[2])

        def after_backward(trainer):
            if trainer.global_step + 1 == step:
                os.kill(os.getpid(), signal.SIGKILL)

        hooks["after_backward"] = after_backward
    elif mode == "in_save":
        step, after = int(argv[2]), int(argv[3])
        written = []

        def checkpoint_file(trainer, path):
            if trainer.global_step == step:
                written.append(path)
                if len(written) == after:
                    os.kill(os.getpid(), signal.SIGKILL)

        hooks["checkpoint_file"] = checkpoint_file
    DreamBoothTrainer(config, progress=False, hooks=hooks).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
