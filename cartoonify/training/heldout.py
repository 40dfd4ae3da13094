"""The held-out loss: the DreamBooth loss of images the run does not train on, the overfitting signal.

``holdout_images`` instance images are chosen from the sorted instance paths with the run's seed
(``numpy.random.default_rng(seed).permutation``), left out of the training set, and listed in
``<run>/holdout.json`` when the run starts; a resumed run uses the saved list, so the set never changes
mid-run. The class side is the first ``holdout_images`` class images (sorted): they *are* training images
of the prior, so their loss measures how well the prior is kept, not generalisation.

The loss is a pure function of the weights: latents are the VAE posterior **mean** times the scaling
factor, every image is noised at each of :data:`HELDOUT_TIMESTEPS`, and the noise is drawn once from
``torch.Generator().manual_seed(seed)`` (CPU): first ``randn(n_instance, T, C, h, w)``, then
``randn(n_class, T, C, h, w)``. Nothing touches the training generator or a global RNG, so measuring it
leaves a run bit for bit as it was. The trainer measures it at step 0 and after every checkpoint, into
``logs/heldout_loss.csv`` and TensorBoard (``heldout/instance``, ``heldout/class``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..data.dataset import load_training_image, relative_name, tokenize_prompts
from ..data.folders import DataFolderError, list_images, read_caption, require_images
from ..runs import RunLayout
from ..utils import write_json
from .logs import LossLog, read_loss_log
from .objective import noise_target

HELDOUT_TIMESTEPS = (100, 300, 500, 700, 900)  # evenly spaced over a 1000-step schedule
HELDOUT_COLUMNS = ("step", "heldout_instance", "heldout_class")
HELDOUT_BATCH = 40  # (image, timestep) pairs per forward pass by default: 8 images at every timestep


@dataclass(frozen=True)
class Holdout:
    """The held-out images of a run, named relative to ``instance_dir`` and ``class_dir``."""

    seed: int
    count: int
    images: tuple[str, ...]
    class_images: tuple[str, ...]
    instance_dir: Path
    class_dir: Path
    timesteps: tuple[int, ...] = HELDOUT_TIMESTEPS

    @property
    def instance_paths(self) -> list[Path]:
        return [self.instance_dir / name for name in self.images]

    @property
    def class_paths(self) -> list[Path]:
        return [self.class_dir / name for name in self.class_images]

    def to_json(self) -> dict:
        return {"seed": self.seed, "count": self.count, "timesteps": list(self.timesteps),
                "images": list(self.images), "class_images": list(self.class_images)}


def choose_holdout(instance_paths: Sequence[Path], count: int, seed: int) -> list[Path]:
    """``count`` of the sorted ``instance_paths``, chosen with ``seed``; returned in sorted order."""
    paths = sorted(instance_paths)
    picked = np.random.default_rng(seed).permutation(len(paths))[:count]
    return [paths[i] for i in sorted(picked)]


def check_holdout_size(config: TrainConfig) -> list[Path]:
    """The instance images; a ConfigError unless there are more than ``holdout_images`` (some to train on)."""
    paths = require_images(config.instance_dir, "instance_dir")
    if config.holdout_images and len(paths) <= config.holdout_images:
        raise ConfigError(
            f"config key 'holdout_images' is {config.holdout_images} but instance_dir {config.instance_dir} holds "
            f"only {len(paths)} images: hold out fewer, or set holdout_images: 0 to turn the held-out loss off"
        )
    return paths


def read_holdout(path: Path, config: TrainConfig) -> Holdout:
    """A saved ``holdout.json``; a listed file that has gone missing is an error naming it."""
    data = json.loads(Path(path).read_text())
    holdout = Holdout(int(data["seed"]), int(data["count"]), tuple(data["images"]), tuple(data["class_images"]),
                      Path(config.instance_dir), Path(config.class_dir),
                      tuple(data.get("timesteps", HELDOUT_TIMESTEPS)))
    for p in holdout.instance_paths + holdout.class_paths:
        if not p.is_file():
            raise DataFolderError(f"held-out image {p} (listed in {path}) is missing; the held-out set "
                                  "cannot change mid-run: restore it")
    return holdout


def prepare_holdout(config: TrainConfig, write: bool = True) -> Holdout | None:
    """The run's held-out images: saved in ``holdout.json`` on resume, else chosen now (and written when
    ``write``). None when ``holdout_images`` is 0. Call after the class images are generated."""
    if not config.holdout_images:
        return None
    instance = check_holdout_size(config)
    path = RunLayout.of(config).holdout
    if config.resume_from_checkpoint is not None and path.is_file():
        return read_holdout(path, config)
    klass: list[Path] = []
    if config.with_prior_preservation:
        klass = list_images(config.class_dir, "class_dir")[: min(config.holdout_images, config.num_class_images)]
    chosen = choose_holdout(instance, config.holdout_images, config.seed)
    holdout = Holdout(
        config.seed, config.holdout_images, tuple(relative_name(p, config.instance_dir) for p in chosen),
        tuple(relative_name(p, config.class_dir) for p in klass), Path(config.instance_dir), Path(config.class_dir),
    )
    if write:
        write_json(path, holdout.to_json())
    return holdout


# ------------------------------------------------------------------------------------------------
# the fixed inputs and the loss
# ------------------------------------------------------------------------------------------------


@dataclass
class HeldoutInputs:
    """One fixed set: mean latents (N, C, h, w), token ids (N, L), noise (N, T, C, h, w), all on the CPU."""

    latents: torch.Tensor
    input_ids: torch.Tensor
    noise: torch.Tensor


@dataclass
class HeldoutSets:
    instance: HeldoutInputs
    klass: HeldoutInputs | None
    timesteps: tuple[int, ...] = HELDOUT_TIMESTEPS
    batch_size: int = HELDOUT_BATCH  # (image, timestep) pairs per forward pass


def mean_latents(vae, paths: Sequence[Path], resolution: int, batch_size: int = 8) -> torch.Tensor:
    """The VAE posterior mean of each (center-cropped) image times the scaling factor, float32 on the CPU."""
    out = []
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([load_training_image(p, resolution, True) for p in paths[start : start + batch_size]])
        with torch.no_grad():
            mean = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
        out.append(mean.float().cpu() * vae.config.scaling_factor)
    return torch.cat(out)


def build_heldout_sets(holdout: Holdout, config: TrainConfig, tokenizer, vae) -> HeldoutSets:
    """Encode the held-out images once and draw their noise (instance first, then class) from the seed.
    A forward pass takes as many rows as a training micro-batch (instance + class), so it fits where
    training does."""
    gen = torch.Generator().manual_seed(holdout.seed)
    n_t = len(holdout.timesteps)

    def inputs(paths, prompts):
        latents = mean_latents(vae, paths, config.resolution)
        noise = torch.randn((len(paths), n_t, *latents.shape[1:]), generator=gen)
        return HeldoutInputs(latents, tokenize_prompts(tokenizer, prompts), noise)

    paths = holdout.instance_paths
    instance = inputs(paths, [read_caption(p, config.instance_prompt) for p in paths])
    klass = None
    if holdout.class_images:
        klass = inputs(holdout.class_paths, [config.class_prompt] * len(holdout.class_paths))
    rows = config.train_batch_size * (2 if config.with_prior_preservation else 1)
    return HeldoutSets(instance, klass, holdout.timesteps, rows)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """As validation: autocast to ``dtype`` (fp16/bf16) on ``device``; nothing for fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def heldout_loss(unet, text_encoder, noise_scheduler, inputs: HeldoutInputs,
                 timesteps: Sequence[int] = HELDOUT_TIMESTEPS, *, autocast_dtype: torch.dtype | None = None,
                 batch_size: int = HELDOUT_BATCH) -> float:
    """The mean squared error of the set's predictions, over every image, timestep and latent element;
    ``batch_size`` (image, timestep) pairs go through the models at once."""
    device = next(unet.parameters()).device
    n_t = len(timesteps)
    steps = torch.tensor(timesteps, dtype=torch.long)
    noise_all = inputs.noise.flatten(0, 1)  # pair p: image p // n_t at timestep p % n_t
    total, count = 0.0, 0
    for start in range(0, len(noise_all), batch_size):
        pairs = torch.arange(start, min(start + batch_size, len(noise_all)))
        image, t = pairs // n_t, steps[pairs % n_t].to(device)
        latents, noise = inputs.latents[image].to(device), noise_all[pairs].to(device)
        with torch.no_grad(), _autocast(device, autocast_dtype):
            hidden = text_encoder(inputs.input_ids[image].to(device), return_dict=False)[0]
            noisy = noise_scheduler.add_noise(latents, noise, t)
            pred = unet(noisy, t, hidden, return_dict=False)[0]
        target = noise_target(noise_scheduler, latents, noise, t)
        total += F.mse_loss(pred.float(), target.float(), reduction="sum").double().item()
        count += pred.numel()
    return total / count


def heldout_losses(unet, text_encoder, noise_scheduler, sets: HeldoutSets,
                   autocast_dtype: torch.dtype | None = None) -> tuple[float, float | None]:
    """``(instance, class)`` held-out losses (class None without class images); the modules are in eval
    mode meanwhile and get their modes back."""
    modules = [unet, text_encoder]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        kw = {"autocast_dtype": autocast_dtype, "batch_size": sets.batch_size}
        inst = heldout_loss(unet, text_encoder, noise_scheduler, sets.instance, sets.timesteps, **kw)
        klass = None
        if sets.klass is not None:
            klass = heldout_loss(unet, text_encoder, noise_scheduler, sets.klass, sets.timesteps, **kw)
        return inst, klass
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class HeldoutMonitor:
    """Measures the held-out losses and appends them to ``logs/heldout_loss.csv`` (rows after the start
    step dropped on (re)start, as :class:`~.logs.LossLog`)."""

    def __init__(self, sets: HeldoutSets, path: Path, start_step: int):
        self.sets = sets
        self.log = LossLog(path, start_step, HELDOUT_COLUMNS)

    def has(self, step: int) -> bool:
        return step in self.log.steps

    def measure(self, unet, text_encoder, noise_scheduler, step: int, autocast_dtype=None) -> dict:
        inst, klass = heldout_losses(unet, text_encoder, noise_scheduler, self.sets, autocast_dtype)
        row = {"step": step, "heldout_instance": inst, "heldout_class": klass}
        self.log.write(row)
        return row

    def close(self) -> None:
        self.log.close()


def read_heldout_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``heldout_loss.csv`` (``step``, ``heldout_instance``, ``heldout_class``) as floats; an
    empty cell (no class images) becomes NaN."""
    return read_loss_log(path)
