"""Training progress through the callback channel: step, loss and rate at most every few seconds (by an
injected clock, no sleeping), a line per checkpoint, a closing line."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from cartoonify.training.progress import TrainingProgress, format_duration

STEP_LINE = re.compile(r"^step (\d+)/(\d+)  loss (\d+\.\d{4})  (\d+\.\d\d) steps/s  elapsed \d+:\d\d")


class Clock:
    """Seconds that move only when told to."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _trainer(total: int, step: int = 0, main: bool = True):
    return SimpleNamespace(config=SimpleNamespace(max_train_steps=total), global_step=step,
                           accelerator=SimpleNamespace(is_main_process=main))


def _steps(progress, trainer, clock, first: int, last: int, seconds: float, loss=lambda s: 1.0 / s):
    for step in range(first, last + 1):
        clock.now += seconds
        trainer.global_step = step
        progress.on_step_end(trainer, {"step": step, "loss": loss(step)})


def test_lines_are_throttled_by_the_clock():
    clock, lines = Clock(), []
    progress = TrainingProgress(every=5, clock=clock, write=lines.append)
    trainer = _trainer(20)
    progress.on_train_begin(trainer)
    _steps(progress, trainer, clock, 1, 20, seconds=1.0, loss=lambda s: 0.5)
    progress.on_train_end(trainer)
    assert lines[0] == "training: 20 steps"
    steps = [STEP_LINE.match(line) for line in lines[1:-1]]
    assert all(steps), lines
    assert [int(m.group(1)) for m in steps] == [5, 10, 15, 20]  # every 5 s at 1 s a step, and the last step
    assert all(m.group(3) == "0.5000" and m.group(4) == "1.00" for m in steps)
    assert "left ~0:15" in lines[1] and "left" not in lines[4]
    assert lines[-1] == "training done: step 20/20, 20 steps in 0:20 (1.00 steps/s while training)"
    assert progress.lines == lines


def test_loss_is_the_mean_since_the_last_line_and_rate_follows_the_speed():
    clock, lines = Clock(), []
    progress = TrainingProgress(every=2, clock=clock, write=lines.append)
    trainer = _trainer(8)
    progress.on_train_begin(trainer)
    clock.now += 30  # the step-0 validation: not counted in the rate
    trainer.global_step = 1
    progress.on_step_end(trainer, {"step": 1, "loss": 0.1})
    _steps(progress, trainer, clock, 2, 4, seconds=0.5, loss=lambda s: 0.2)
    _steps(progress, trainer, clock, 5, 8, seconds=1.0, loss=lambda s: 0.4)
    assert lines[1] == "step 1/8  loss 0.1000  elapsed 0:30"  # no rate: its only step waited for validation
    second = STEP_LINE.match(lines[2])
    assert (second.group(1), second.group(3), second.group(4)) == ("5", "0.2500", "1.60")  # 0.2 x3, 0.4; 4 steps/2.5 s
    assert STEP_LINE.match(lines[-1]).group(1) == "8"


def test_checkpoint_lines_and_the_step_after_a_checkpoint():
    clock, lines = Clock(), []
    progress = TrainingProgress(every=1000, clock=clock, write=lines.append)
    trainer = _trainer(4, step=2)
    progress.on_train_begin(trainer)
    assert lines == ["training: resumed at step 2/4"]
    _steps(progress, trainer, clock, 3, 3, seconds=1.0)
    progress.on_checkpoint_captured(trainer, Path("/runs/x/checkpoints/checkpoint-3"))  # as the trainer calls them
    progress.on_checkpoint_saved(trainer, Path("/runs/x/checkpoints/checkpoint-3"))
    assert lines[-1] == "step 3/4  checkpoint-3 saved  elapsed 0:01"
    clock.now += 20  # checkpoint, validation and held-out loss
    _steps(progress, trainer, clock, 4, 4, seconds=1.0)
    # the last step: a line; the loss of steps 3 and 4 (1/3, 1/4); both waited (for the start and for the
    # checkpoint), so no rate
    assert lines[-1] == "step 4/4  loss 0.2917  elapsed 0:22"
    progress.on_train_end(trainer)
    assert lines[-1] == "training done: step 4/4, 2 steps in 0:22"


def test_only_the_main_process_prints_and_a_finished_run_says_so():
    lines = []
    progress = TrainingProgress(write=lines.append)
    trainer = _trainer(4, main=False)
    progress.on_train_begin(trainer)
    progress.on_step_end(trainer, {"step": 1, "loss": 0.1})
    progress.on_train_end(trainer)
    assert lines == []
    progress.on_train_begin(_trainer(4, step=4))
    assert lines == ["training: step 4/4, nothing left to train"]


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 + 62)] == ["0:00", "1:00", "1:01", "1:01:02"]


def test_progress_of_a_tiny_run(small_config):
    """A real run on the tiny model, with the callback as 02_train installs it: every line comes from the
    trainer's hooks. The clock moves 1 s at each call, so with every=2 not every step gets a line."""
    from cartoonify.training.run import build_trainer

    ticks = iter(range(10_000))
    lines = []
    progress = TrainingProgress(every=2, clock=lambda: float(next(ticks)), write=lines.append)
    config = small_config(num_validation_images=0, report_to="none", save_final_pipeline=False,  # 4 steps
                          background_saves=False)  # the saved lines at fixed points (background: the next test)
    result = build_trainer(config, progress=False, callbacks=[progress]).run()
    assert result.global_step == 4
    assert lines[0] == "training: 4 steps" and lines[-1].startswith("training done: step 4/4, 4 steps in")
    # begin at 0 s; step 1 at 1 s (no line), step 2 at 2 s, checkpoint at 3 s, step 3 at 4 s, step 4 (the last)
    assert lines[1:-1] == [
        "step 2/4  loss " + lines[1].split("loss ")[1],
        "step 2/4  checkpoint-2 saved  elapsed 0:03",
        "step 3/4  loss " + lines[3].split("loss ")[1],
        "step 4/4  loss " + lines[4].split("loss ")[1],
        "step 4/4  checkpoint-4 saved  elapsed 0:06",
    ]
    step_2, step_4 = STEP_LINE.match(lines[1]), STEP_LINE.match(lines[4])
    assert step_2.group(4) == "1.00" and step_4.group(4) == "1.00"  # the steps after start and checkpoint: not rated
    assert "steps/s" not in lines[3] and float(step_2.group(3)) > 0 and float(step_4.group(3)) > 0


def test_progress_with_background_saves(small_config):
    """With checkpoints written in the background, each one's saved line still comes, once, after its step
    and before the end; the step right after a checkpoint is still not rated."""
    from cartoonify.training.run import build_trainer

    lines = []
    progress = TrainingProgress(every=0, write=lines.append)
    config = small_config(num_validation_images=0, report_to="none", save_final_pipeline=False, max_train_steps=6)
    build_trainer(config, progress=False, callbacks=[progress]).run()
    saved = [i for i, line in enumerate(lines) if " saved " in line]
    assert [lines[i].split()[2] for i in saved] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for i, step in zip(saved, (2, 4, 6)):
        assert int(lines[i].split()[1].split("/")[0]) >= step  # not before its step
    assert saved[-1] < len(lines) - 1 and lines[-1].startswith("training done")
    rated = [line for line in lines if line.startswith("step 3/6") or line.startswith("step 5/6")]
    assert rated and all("steps/s" not in line for line in rated), rated
