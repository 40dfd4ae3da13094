"""The errors training stops with, and their messages: each names the step, setting or file to act on."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig


class RunExistsError(FileExistsError):
    """The run folder already holds a run that this call would overwrite."""


class TrainingOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory; the message names the settings that lower memory."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


def _last(checkpoints: list[Path]) -> str:
    return str(checkpoints[-1]) if checkpoints else "none (no checkpoint was saved yet)"


def oom_message(config: TrainConfig, step: int, checkpoints: list[Path], err: BaseException) -> str:
    c = config
    return (
        f"CUDA ran out of memory after step {step}. Settings that lower memory: "
        f"gradient_checkpointing=True (now {c.gradient_checkpointing}); use_8bit_adam=True (now "
        f"{c.use_8bit_adam}); a smaller train_batch_size (now {c.train_batch_size}; start a new run, with "
        f"gradient_accumulation_steps to keep the effective batch); train_text_encoder=False (now "
        f"{c.train_text_encoder}); mixed_precision='fp16' (now {c.mixed_precision!r}). No checkpoint was "
        f"corrupted; the last complete one is {checkpoints[-1] if checkpoints else 'none'}. ({err})"
    )


def nonfinite_message(
    config: TrainConfig, step: int, mixed_precision: str, checkpoints: list[Path], value: float, what: str = "loss"
) -> str:
    return (
        f"{what} is {value} at step {step}; training stopped. Likely causes: a learning rate too "
        f"high (learning_rate={config.learning_rate}), fp16 overflow (mixed_precision="
        f"{mixed_precision!r}; try bf16 or fp32), or corrupt input images. "
        f"The last good checkpoint is {_last(checkpoints)}."
    )
