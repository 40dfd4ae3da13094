"""Results written as they are measured, within a time budget.

A :class:`Recorder` rewrites ``<out>/<name>.json`` and ``.md`` (atomically) after every variant and stage, so
a benchmark stopped by a device's time limit keeps everything it finished. ``--budget SECONDS`` makes it
stop cleanly before that limit: no measurement starts once the budget is spent, a running one is stopped at
it (its process killed, the row marked), and what was skipped is recorded as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUDGET_MARGIN = 5.0  # seconds kept back to write the results after the last measurement


class Recorder:
    """Where the results go, written after every update, and how much of the budget is left."""

    def __init__(self, out_dir: str | Path, name: str, budget: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.out_dir, self.name, self.budget, self.clock = Path(out_dir), name, budget, clock
        self.started = clock()
        self.results: dict[str, Any] = {}
        self.written: list[Path] = []

    def remaining(self) -> float | None:
        """Seconds left for measurements (None: no budget)."""
        if self.budget is None:
            return None
        return self.budget - BUDGET_MARGIN - (self.clock() - self.started)

    def exhausted(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    def skip(self, what: str) -> bool:
        """True (and the skip recorded) when the budget is spent before ``what`` starts."""
        if not self.exhausted():
            return False
        self.results.setdefault("skipped_for_budget", []).append(what)
        self.save()
        return True

    def update(self, **entries: Any) -> None:
        self.results.update(entries)
        self.save()

    def save(self) -> None:
        from .report import write_results

        self.results["elapsed_s"] = self.clock() - self.started
        if self.budget is not None:
            self.results["budget_s"] = self.budget
        self.written = list(write_results(self.results, self.out_dir, self.name))
