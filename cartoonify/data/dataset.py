"""Training data: image tensors, the DreamBooth dataset and its sampler (folders: :mod:`.folders`).

Transforms follow diffusers' ``train_dreambooth.py`` (resize the shorter side with bilinear filtering,
center or random crop, scale to [-1, 1]) but use PIL and numpy only: there is no CPU build of
torchvision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..imaging import check_readable, crop_square, open_rgb, resize_shorter_side
from .folders import DataFolderError, read_caption, require_images

# ------------------------------------------------------------------------------------------------
# transforms (PIL + numpy)
# ------------------------------------------------------------------------------------------------


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of :func:`to_tensor` (values clipped to [-1, 1])."""
    arr = ((tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().cpu().numpy()
    return Image.fromarray(arr.transpose(1, 2, 0))


def load_training_image(
    path: str | Path, resolution: int, center_crop: bool = True, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Read, resize, crop and normalise one training image to a (3, resolution, resolution) tensor."""
    img = resize_shorter_side(open_rgb(path), resolution)
    return to_tensor(crop_square(img, resolution, center=center_crop, rng=rng))


def relative_name(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder``, with forward slashes: how a held-out image is named (a file name
    in a flat folder)."""
    return Path(path).relative_to(folder).as_posix()


# ------------------------------------------------------------------------------------------------
# tokenisation
# ------------------------------------------------------------------------------------------------


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, model_max_length), padded and truncated as diffusers' ``tokenize_prompt``."""
    return tokenizer(
        list(prompts),
        truncation=True,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------


class DreamBoothDataset(torch.utils.data.Dataset):
    """Instance images (with per-image prompts) paired with class images, as in diffusers' script.

    The length is ``max(#instance, #class)``; item ``i`` holds instance image ``i % #instance`` and
    class image ``i % #class``. Every image is decoded once when the dataset is built
    (``check_images``), so a corrupt file stops the run before training, not hours into it. The index may exceed the length: ``i // len`` is then the epoch, which
    seeds the random crop when ``center_crop`` is off, so every epoch is reproducible. ``holdout`` names
    instance images (relative to ``instance_dir``, as :func:`relative_name`) left out of training.
    """

    def __init__(
        self,
        instance_dir: str | Path,
        tokenizer,
        instance_prompt: str,
        resolution: int = 512,
        center_crop: bool = True,
        class_dir: str | Path | None = None,
        class_prompt: str | None = None,
        num_class_images: int | None = None,
        seed: int = 0,
        check_images: bool = True,
        load_pixels: bool = True,
        holdout: Sequence[str] = (),
    ):
        self.resolution = resolution
        self.center_crop = center_crop
        self.seed = seed
        self.load_pixels = load_pixels
        self.instance_paths = require_images(instance_dir, "instance_dir")
        if holdout:
            held = set(holdout)
            self.instance_paths = [p for p in self.instance_paths if relative_name(p, instance_dir) not in held]
            if not self.instance_paths:
                raise DataFolderError(f"instance_dir holds no images besides the {len(held)} held out: {instance_dir}")
        self.instance_prompts = [read_caption(p, instance_prompt) for p in self.instance_paths]
        self.instance_ids = tokenize_prompts(tokenizer, self.instance_prompts)
        self.class_paths: list[Path] = []
        if class_dir is not None:
            self.class_paths = require_images(class_dir, "class_dir")
            if num_class_images is not None:
                self.class_paths = self.class_paths[:num_class_images]
            self.class_ids = tokenize_prompts(tokenizer, [class_prompt or ""])[0]
        if check_images:
            check_readable(self.instance_paths + self.class_paths)

    @property
    def with_prior_preservation(self) -> bool:
        return bool(self.class_paths)

    def __len__(self) -> int:
        return max(len(self.instance_paths), len(self.class_paths))

    def _rng(self, index: int, which: int) -> np.random.Generator | None:
        if self.center_crop:
            return None
        return np.random.default_rng((self.seed, index, which))

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.instance_paths)
        example = {"instance_ids": self.instance_ids[i], "instance_index": i}
        if self.load_pixels:
            example["instance_pixels"] = load_training_image(
                self.instance_paths[i], self.resolution, self.center_crop, self._rng(index, 0)
            )
        if self.class_paths:
            j = index % len(self.class_paths)
            example["class_ids"] = self.class_ids
            example["class_index"] = j
            if self.load_pixels:
                example["class_pixels"] = load_training_image(
                    self.class_paths[j], self.resolution, self.center_crop, self._rng(index, 1)
                )
        return example


def collate_examples(examples: list[dict], with_prior_preservation: bool) -> dict:
    """Stack a batch; with prior preservation the class examples follow the instance ones (one forward).

    ``instance_index``/``class_index`` name the images (for cached latents); ``pixel_values`` is there
    when the dataset loads pixels.
    """
    ids = [e["instance_ids"] for e in examples]
    batch = {"instance_index": torch.tensor([e["instance_index"] for e in examples])}
    if with_prior_preservation:
        ids += [e["class_ids"] for e in examples]
        batch["class_index"] = torch.tensor([e["class_index"] for e in examples])
    batch["input_ids"] = torch.stack(ids)
    if "instance_pixels" in examples[0]:
        pixels = [e["instance_pixels"] for e in examples]
        if with_prior_preservation:
            pixels += [e["class_pixels"] for e in examples]
        batch["pixel_values"] = torch.stack(pixels).contiguous()
    return batch


# ------------------------------------------------------------------------------------------------
# sampler: the data order is a pure function of (seed, step), so a resumed run sees the same batches
# ------------------------------------------------------------------------------------------------


@dataclass
class StepBatchSampler(torch.utils.data.Sampler):
    """Endless batches of dataset indices; batch ``m`` depends only on ``(seed, m)``.

    Each epoch is a fresh permutation from ``seed + epoch``, cut into batches of
    ``batch_size * num_replicas`` (the last one may be smaller, as with ``drop_last=False``); a process
    takes its ``rank``-th share. Iteration starts at batch ``start``, which is how training resumes
    mid-epoch. Indices carry the epoch (``epoch * length + i``) for the dataset's random crops.
    """

    length: int
    batch_size: int
    seed: int = 0
    start: int = 0
    num_replicas: int = 1
    rank: int = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.length / (self.batch_size * self.num_replicas))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch ``epoch``."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=gen)

    def batch(self, m: int) -> list[int]:
        """The indices of batch ``m`` for this process."""
        epoch, b = divmod(m, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        size = self.batch_size * self.num_replicas
        chunk = order[b * size : (b + 1) * size]
        share = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        if len(share) == 0:  # a short last batch: this process repeats the chunk's first items
            share = chunk[: self.batch_size]
        return [epoch * self.length + int(i) for i in share]

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            yield self.batch(m)
            m += 1
