"""The training log: ``logs/train_log.csv``, one row per optimizer step."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

LOG_COLUMNS = (
    "step", "loss", "loss_instance", "loss_prior", "lr", "grad_norm", "skipped_steps", "epoch", "wall_time"
)
# the columns also logged to the trackers (TensorBoard)
SCALARS = ("loss", "loss_instance", "loss_prior", "lr", "grad_norm", "skipped_steps")


class LossLog:
    """``logs/train_log.csv``: one row per optimizer step, appended and flushed as training goes.

    On (re)start the rows after the starting step are dropped, so a resumed run has no duplicates. Other
    step-indexed logs (``logs/heldout_loss.csv``) name their own ``columns``.
    """

    def __init__(self, path: Path, start_step: int, columns: tuple[str, ...] = LOG_COLUMNS):
        self.path = path
        self.columns = tuple(columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        self.steps = [int(r["step"]) for r in rows]  # the steps kept from an earlier start
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self._fh = path.open("a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.columns})
        self._fh.flush()
        self.steps.append(int(row["step"]))

    def close(self) -> None:
        self._fh.close()


def read_loss_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``train_log.csv`` as floats (empty cells become NaN)."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) if v != "" else float("nan") for k, v in row.items()} for row in csv.DictReader(fh)]


def step_row(losses, grad_norm, accelerator, **fields: Any) -> dict[str, Any]:
    """A step's log row: its micro-batches' (loss, instance loss, prior loss) averaged over the micro-batches
    and the processes (so every process sees the same values and stops together on a non-finite loss), the
    gradient norm, the wall time and ``fields`` (step, lr, epoch, skipped steps)."""
    import torch

    def mean(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return None
        return float(accelerator.reduce(torch.stack(xs).float().mean(), reduction="mean"))

    return {
        **fields,
        "loss": mean([l[0] for l in losses]),
        "loss_instance": mean([l[1] for l in losses]),
        "loss_prior": mean([l[2] for l in losses]),
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "wall_time": round(time.time(), 3),
    }
