"""Checkpoints written by a background thread while training goes on (``background_saves``).

The trainer captures a checkpoint's state on its own thread (:func:`~cartoonify.training.checkpoint.capture_files`
with ``copy=True``: the trained weights copied to the CPU as they are trained, the optimizer, LR scheduler,
grad scaler and random generators flattened into CPU tensors), hands it to :class:`BackgroundSaver`, and
goes on with the next step. The writer then does exactly what a synchronous save does: every file into the
hidden temporary folder, the marker last, the rename into place, then pruning and dropping old resume states.
So a SIGKILL at any moment leaves either a complete checkpoint or a temporary folder that the next save
removes, as before.

One save is in flight at a time: the next checkpoint (and the end of the run, and any error) first waits
for the previous one, and a write error surfaces there as :class:`~cartoonify.training.checkpoint.CheckpointSaveError`.
``on_checkpoint_file`` hooks run on the writer thread (``trainer.global_step`` may be past the checkpoint's
step; the path names it); ``on_checkpoint_saved`` runs on the training thread once the checkpoint is in place.
Several processes save synchronously: their save agrees on failures through collectives, which belong to
the training thread.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable


_WRITERS: set[threading.Thread] = set()  # every writer thread still running, of any trainer in this process


def wait_for_writers() -> None:
    """Wait for checkpoint writes still running in this process: a notebook kernel whose run was interrupted
    twice may have left one (it prunes and drops resume states when done), and a new run or a resume must
    not start under it."""
    for thread in list(_WRITERS):
        thread.join()


class BackgroundSaver:
    """At most one checkpoint write in flight, on a thread; results are collected on the training thread."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._result: Path | None = None
        self._error: BaseException | None = None
        self.write_seconds: list[float] = []  # how long each background write took (off the critical path)
        self.wait_seconds = 0.0  # how long training waited for a write to finish

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], Path]) -> None:
        """Start ``write`` (which returns the checkpoint folder) on a new thread; the previous write must have
        been collected (:meth:`wait` or :meth:`poll`)."""
        if self._thread is not None:
            raise RuntimeError("a checkpoint write is still in flight: wait() for it first")

        def run() -> None:
            t0 = time.perf_counter()
            try:
                self._result = write()
            except BaseException as err:  # re-raised on the training thread by wait()/poll()
                self._error = err
            finally:
                self.write_seconds.append(time.perf_counter() - t0)
                _WRITERS.discard(threading.current_thread())

        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=False)
        _WRITERS.add(self._thread)
        self._thread.start()

    def poll(self) -> Path | None:
        """The folder of a write that has finished since the last call (its error raised), else None."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self.wait()

    def wait(self) -> Path | None:
        """Wait for the write in flight, if any: its folder (None if there was none); its error is raised."""
        if self._thread is None:
            return None
        t0 = time.perf_counter()
        self._thread.join()
        self.wait_seconds += time.perf_counter() - t0
        self._thread = None
        result, error, self._result, self._error = self._result, self._error, None, None
        if error is not None:
            raise error
        return result
