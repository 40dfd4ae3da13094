"""The images to rate: :class:`RatingItem` s read from a run's ``images.json`` records, and their order."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runs import IMAGES_JSON, VALIDATION_PREFIX, RunLayout, read_images_json

# every validation step's record, relative to the run folder: "validation/step-*/images.json"
VALIDATION_PATTERN = f"{RunLayout(Path()).validation.as_posix()}/{VALIDATION_PREFIX}*/{IMAGES_JSON}"


@dataclass(frozen=True)
class RatingItem:
    """One image to rate.

    Args:
        path: POSIX path of the image relative to the run folder; the key under which ratings are stored.
        group: the value being compared (a training step, a scheduler name, ...).
        seed: the generation seed of the image, if recorded.
        excluded: ``True`` when the safety checker flagged (and blacked out) the image; it is never rated.
        meta: the top-level keys of the ``images.json`` plus the image's own record.
    """

    path: str
    group: Any
    seed: int | None = None
    excluded: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def group_sort_key(group: Any) -> tuple:
    """A sort key that orders numbers numerically, then everything else by its text (mixed types never clash)."""
    if isinstance(group, numbers.Real) and not isinstance(group, bool):
        return (0, float(group), "")
    if group is None:
        return (2, 0.0, "")
    return (1, 0.0, str(group))


def item_sort_key(item: RatingItem) -> tuple:
    """Order items by group (:func:`group_sort_key`), then by path."""
    return (group_sort_key(item.group), item.path)


def collect_items(
    run_dir: str | os.PathLike,
    pattern: str = VALIDATION_PATTERN,
    group_key: str = "step",
) -> list[RatingItem]:
    """Read every ``images.json`` under ``run_dir`` matching ``pattern`` into :class:`RatingItem` s.

    Each file's top-level ``group_key`` is the group of its images; an image whose ``nsfw`` flag is ``True`` is
    marked ``excluded``. The result is sorted by group, then path.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: an ``images.json`` is unreadable, malformed or lacks ``group_key``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    items: list[RatingItem] = []
    for json_path in sorted(run_dir.glob(pattern)):
        data = read_images_json(json_path)
        if group_key not in data:
            raise ValueError(f"{json_path} has no {group_key!r} key to group its images by")
        top = {k: v for k, v in data.items() if k != "images"}
        folder = json_path.parent.relative_to(run_dir)
        for k, record in enumerate(data["images"]):
            if not record["file"]:
                raise ValueError(f"{json_path}: images[{k}] has no 'file' name")
            items.append(
                RatingItem(
                    path=(folder / record["file"]).as_posix(),
                    group=data[group_key],
                    seed=record.get("seed"),
                    excluded=record.get("nsfw") is True,
                    meta={**top, **record},
                )
            )
    return sorted(items, key=item_sort_key)
