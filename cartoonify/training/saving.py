"""Saving a run's checkpoints: synchronously, or captured on the training thread and written by a
background thread (:mod:`cartoonify.training.background`), with the checkpoint hooks fired on the right thread."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from ..runs import RunLayout
from .background import BackgroundSaver
from .checkpoint import CheckpointParts, TrainState, capture_files, drop_resume_states, prune_checkpoints, save_checkpoint

logger = logging.getLogger(__name__)


class Checkpointer:
    """The trainer's saves. ``fire(hook, *args)`` calls a callback hook with the trainer.

    With ``background_saves`` and one process, a save captures the state (:func:`capture_files` with copies)
    and returns while a thread writes it; :meth:`collect` (after every step) fires ``on_checkpoint_saved`` once
    a write has finished and raises its error, and the next save, the end of the run and any error wait for
    the write in flight.
    """

    def __init__(self, layout: RunLayout, config: TrainConfig, accelerator, fire: Callable[..., None]):
        self.layout, self.config, self.accelerator, self.fire = layout, config, accelerator, fire
        background = config.background_saves and accelerator.num_processes == 1
        self.saver = BackgroundSaver() if background else None

    @property
    def background(self) -> bool:
        return self.saver is not None

    def save(self, parts: CheckpointParts, state: TrainState, info: dict[str, Any]) -> Path:
        """Save ``checkpoints/checkpoint-<step>`` (fp16 weights and the full resume state), then prune old
        checkpoints and drop the resume state of all but the newest ``keep_resume_states``. In the background
        the folder is returned before it exists."""
        self.collect(wait=True)  # one write in flight at a time
        state = replace(state)  # training goes on changing the trainer's
        path = self.layout.checkpoint(state.global_step)
        if self.saver is not None:
            jobs = capture_files(parts, copy=True)
            self.saver.submit(lambda: self._write(parts, state, info, jobs))
            self.fire("on_checkpoint_captured", path)
            return path
        self._write(parts, state, info, None)
        self.accelerator.wait_for_everyone()
        self.fire("on_checkpoint_captured", path)
        self.fire("on_checkpoint_saved", path)
        return path

    def _write(self, parts: CheckpointParts, state: TrainState, info: dict[str, Any], jobs) -> Path:
        path = save_checkpoint(self.layout, parts, state, info, jobs=jobs,
                               on_file=lambda p: self.fire("on_checkpoint_file", p))
        if self.accelerator.is_main_process:
            prune_checkpoints(self.layout, self.config.checkpoints_total_limit)
            drop_resume_states(self.layout, self.config.keep_resume_states)
        return path

    def collect(self, wait: bool = False) -> None:
        """Collect a finished background write (``wait``: wait for the one in flight): ``on_checkpoint_saved``
        fires, and a write error is raised here."""
        if self.saver is None:
            return
        path = self.saver.wait() if wait else self.saver.poll()
        if path is not None:
            self.fire("on_checkpoint_saved", path)

    def finish_quietly(self) -> None:
        """Wait for the write in flight while another error propagates (that one is reported; this one logged)."""
        try:
            self.collect(wait=True)
        except Exception as err:
            logger.error("the checkpoint being written in the background failed too: %s", err)
