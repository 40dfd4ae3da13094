"""Training: the DreamBooth objective, the optimizer, checkpoints, validation, export, the disk plan, the
errors training stops with, callbacks, the trainer, the run function and the command line.

Import from the submodules (``cartoonify.training.run``...) or use the flat API (``cartoonify.run_training``).
"""
